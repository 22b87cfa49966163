"""Ingest: raw event logs into a trusted, pseudonymised, sessionised Delta table, with every row accounted for.

New raw files are found by comparing a listing of the input with the `ingested_files` table (path, size and
modification time of every file ingested), so a file is read once whenever it arrives, whatever its age, and a
batch's files are recorded only after its writes (a killed batch is read again). In each batch every raw row gets
exactly one status: a quarantine reason, `duplicate` (a second copy within the batch), `replay` (already in the
table), `bot` or `clean`. Clean rows are MERGEd into the events table on their event id, which makes a re-run change
nothing; the quarantine keeps rejected rows with their reason and fields, the user id pseudonymised
(`quarantine_text`); an audit row per batch records where every row and every raw line went, and the batch fails if
those counts, the raw line count and what Delta wrote do not add up.

The parts, in the order a batch meets them:

- `batches`: which files are new; one batch from raw rows to committed events (`run`, `process_batch`);
- `checks`: why a parsed row cannot be trusted (the quarantine reasons) and what the quarantine keeps of it;
- `identity`: event ids from each event's key and content;
- `sessions`: one shuffle by day and customer, then copies, variants, sessions and bots in ordered passes;
- `books`: every line and row accounted for before the writes, the audit row after;
- `tables`: the events table's schema and constraints, and the writes.
"""

from behavior_spark.ingest.batches import run
from behavior_spark.ingest.books import (
    ACCOUNTED,
    FileTally,
    GuardRailError,
    ReconciliationError,
    StatusCounts,
    audit_row,
    check_reconciliation,
    status_counts,
)
from behavior_spark.ingest.identity import EVENT_ID_PROPERTY, EVENT_ID_SCHEME
from behavior_spark.ingest.sessions import with_sessions
from behavior_spark.ingest.tables import (
    CHECK_CONSTRAINTS,
    EVENTS_SCHEMA,
    KEY_FINGERPRINT_PROPERTY,
    IngestError,
    ensure_events_table,
    write_quarantine,
)

__all__ = [
    "ACCOUNTED",
    "CHECK_CONSTRAINTS",
    "EVENTS_SCHEMA",
    "EVENT_ID_PROPERTY",
    "EVENT_ID_SCHEME",
    "KEY_FINGERPRINT_PROPERTY",
    "FileTally",
    "GuardRailError",
    "IngestError",
    "ReconciliationError",
    "StatusCounts",
    "audit_row",
    "check_reconciliation",
    "ensure_events_table",
    "run",
    "status_counts",
    "with_sessions",
    "write_quarantine",
]
