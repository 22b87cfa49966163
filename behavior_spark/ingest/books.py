"""The books of a batch: every raw line and row accounted for before anything is written, the audit row
after, and a batch that does not add up failed and audited as such."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import lake, sources
from behavior_spark.config import Settings
from behavior_spark.ingest.sessions import BOT, CLEAN, DUPLICATE, NOT_QUARANTINED, SUPERSEDED
from behavior_spark.ingest.tables import Written
from behavior_spark.session import timed
from behavior_spark.sources import SourceMapping

log = logging.getLogger(__name__)


class GuardRailError(RuntimeError):
    """One rule would remove an implausible share of a batch (`ingest.fail_share`): nothing of it is written."""


class ReconciliationError(RuntimeError):
    """The rows written do not add up to the rows read: something would be lost."""


@dataclasses.dataclass(frozen=True)
class LineBooks:
    """A batch's physical lines: counted by the text reader, and where the parser says they went."""

    raw_lines: int
    whitespace_lines: int  # empty or only spaces, by the text reader
    header_lines: int
    record_lines: int  # lines inside the parser's records (a quoted field may hold line breaks)

    @property
    def blank_lines(self) -> int:
        """Lines the parser skipped: between 0 and the whitespace lines when no record was lost."""
        return self.raw_lines - self.header_lines - self.record_lines

    def problems(self) -> list[str]:
        if 0 <= self.blank_lines <= self.whitespace_lines:
            return []
        return [
            f"the files hold {self.raw_lines} lines ({self.whitespace_lines} blank) but the parser accounts for "
            f"{self.header_lines} header lines and {self.record_lines} lines of records"
        ]


@dataclasses.dataclass(frozen=True)
class FileTally:
    """Rows per source file and reject reason, and what follows from them."""

    rows_read: int
    files: list[str]
    rejected_by_reason: dict[str, int]
    valid_rows: int
    days: int  # calendar days the valid rows span
    lines: LineBooks | None  # None for a source without lines (Parquet)


def file_tally(parsed: DataFrame, lines: sources.LineCount | None, header_lines: int) -> FileTally:
    rows = (
        parsed.groupBy("source_file", "reject_reason")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum("line_span").alias("lines"),
            F.min("event_time").alias("first"),
            F.max("event_time").alias("last"),
        )
        .collect()  # one row per file and reason: <= max_files_per_trigger x reasons
    )
    rejected: dict[str, int] = {}
    for r in rows:
        if r["reject_reason"] is not None:
            rejected[r["reject_reason"]] = rejected.get(r["reject_reason"], 0) + r["rows"]
    rows_read = sum(r["rows"] for r in rows)
    books = None
    if lines is not None:
        books = LineBooks(lines.lines, lines.blank, header_lines, record_lines=sum(r["lines"] for r in rows))
    return FileTally(
        rows_read=rows_read,
        files=sorted({r["source_file"] for r in rows}),
        rejected_by_reason=rejected,
        valid_rows=rows_read - sum(rejected.values()),
        days=days_spanned(rows),
        lines=books,
    )


def days_spanned(tally: list) -> int:
    """Calendar days between the first and the last valid event of the batch (at least 1)."""
    valid = [r for r in tally if r["reject_reason"] is None and r["first"] is not None]
    if not valid:
        return 1
    return (max(r["last"] for r in valid).date() - min(r["first"] for r in valid).date()).days + 1


@dataclasses.dataclass(frozen=True)
class StatusCounts:
    by_status: dict[str, int]  # clean, duplicate, bot and every reject reason
    same_key_variants: int
    clean_days: list[dt.date]
    returns: int = 0  # clean rows that are returns


def status_counts(classified: DataFrame, tally: FileTally) -> StatusCounts:
    with timed(log, "status counts"):
        rows = (
            classified.groupBy("status", "event_date")
            .agg(
                F.count(F.lit(1)).alias("count"),
                F.count(F.when(F.col("is_variant"), 1)).alias("variants"),
                F.count(F.when(F.col("event_type") == "return", 1)).alias("returns"),
            )
            .collect()  # 3 x days rows
        )
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + r["count"]
    return StatusCounts(
        by_status={**by_status, **tally.rejected_by_reason},
        same_key_variants=sum(r["variants"] for r in rows if r["status"] == CLEAN),
        clean_days=sorted({r["event_date"] for r in rows if r["status"] == CLEAN}),
        returns=sum(r["returns"] for r in rows if r["status"] == CLEAN),
    )


def books_problems(tally: FileTally, by_status: dict[str, int]) -> list[str]:
    """What is wrong with the books before anything is written: every line of the files is a header, a blank line
    or inside a record, and every record read has exactly one status."""
    accounted = sum(by_status.values())
    problems = tally.lines.problems() if tally.lines else []
    if accounted != tally.rows_read:
        problems.append(f"{tally.rows_read} rows read but {accounted} given a status")
    return problems


AUDIT_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("batch_id", T.LongType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
        T.StructField("source_mapping", T.StringType(), False),
        T.StructField("input", T.StringType(), False),
        T.StructField("files", T.LongType(), False),
        T.StructField("rows_read", T.LongType(), False),
        T.StructField("clean", T.LongType(), False),
        T.StructField("replays", T.LongType(), False),
        T.StructField("duplicates", T.LongType(), False),
        T.StructField("bot_rows", T.LongType(), False),
        T.StructField("quarantined", T.LongType(), False),
        T.StructField("quarantined_by_reason", T.MapType(T.StringType(), T.LongType()), False),
        T.StructField("quarantined_written", T.LongType(), False),
        T.StructField("events_added", T.LongType(), False),
        T.StructField("sessions_relinked", T.LongType(), False),
        T.StructField("events_version", T.LongType(), False),
        T.StructField("same_key_variants", T.LongType(), True),
        T.StructField("status", T.StringType(), True),  # ok | failed (nothing of the batch kept)
        T.StructField("problems", T.StringType(), True),
        T.StructField("raw_lines", T.LongType(), True),  # by the text reader; null for Parquet
        T.StructField("header_lines", T.LongType(), True),
        T.StructField("blank_lines", T.LongType(), True),  # skipped by the parser
        T.StructField("superseded", T.LongType(), True),  # lines a later line of the batch with their key corrects
        T.StructField("corrections", T.LongType(), True),  # events of the table a line of the batch replaced
        T.StructField("returns", T.LongType(), True),  # clean rows that are returns
        T.StructField("warnings", T.StringType(), True),  # the guard rails' warnings, " | " between them
    ]
)


AUDIT_SUMMARY = [
    "rows_read", "clean", "replays", "duplicates", "superseded", "bot_rows", "quarantined", "same_key_variants",
    "corrections", "returns",
]  # fmt: skip


ACCOUNTED = ("clean", "replays", "quarantined", "duplicates", "superseded", "bot_rows")  # adds up to rows_read


NOTHING_WRITTEN = Written(0, 0, 0, 0, 0, "", -1, "", -1)


def audit_row(
    batch_id: int,
    mapping_name: str,
    source: str,
    tally: FileTally,
    counts: StatusCounts,
    written: Written | None,
    events_version: int,
    warnings: list[str] | None = None,
) -> dict:
    """Where every row of a batch went (`written` None: nothing was). Clean rows that were already in the table
    count as replays; clean rows that replaced an event of the same key are corrections (and clean); kept rows
    sharing another's key (customer, type, item, time) are counted as variants."""
    by_status = counts.by_status
    written = written or NOTHING_WRITTEN
    reasons = {k: v for k, v in by_status.items() if k not in NOT_QUARANTINED}
    lines = tally.lines
    return {
        "run_id": uuid.uuid4().hex,
        "batch_id": batch_id,
        "ingested_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
        "source_mapping": mapping_name,
        "input": source,
        "files": len(tally.files),
        "rows_read": tally.rows_read,
        "clean": written.inserted + written.corrected,
        "replays": by_status.get(CLEAN, 0) - written.inserted - written.corrected,
        "duplicates": by_status.get(DUPLICATE, 0),
        "superseded": by_status.get(SUPERSEDED, 0),
        "bot_rows": by_status.get(BOT, 0),
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": reasons,
        "quarantined_written": written.quarantined,
        "events_added": written.events_added,
        "sessions_relinked": written.relinked,
        "corrections": written.corrected,
        "events_version": events_version,
        "same_key_variants": counts.same_key_variants,
        "status": "ok",
        "problems": None,
        "raw_lines": lines and lines.raw_lines,
        "header_lines": lines and lines.header_lines,
        "blank_lines": lines and lines.blank_lines,
        "returns": counts.returns,
        "warnings": " | ".join(warnings) if warnings else None,
    }


def reconciliation_problems(audit: dict) -> list[str]:
    """Rows read = clean + replays + quarantined + duplicates + superseded + bot rows, and Delta wrote exactly
    those (corrections replace events: the table grows by the clean rows less the corrections)."""
    accounted = sum(audit[k] for k in ACCOUNTED)
    problems = []
    if accounted != audit["rows_read"]:
        problems.append(f"{audit['rows_read']} rows read but {accounted} accounted for")
    if audit["replays"] < 0:
        problems.append(f"the MERGE wrote {audit['clean']} rows, more than the batch's clean rows")
    grew = audit["clean"] - audit["corrections"]
    if audit["events_added"] != grew:
        problems.append(f"{grew} clean rows inserted but the events table grew by {audit['events_added']}")
    if audit["quarantined_written"] != audit["quarantined"]:
        problems.append(f"{audit['quarantined']} rejected rows but {audit['quarantined_written']} quarantined")
    return problems


def check_reconciliation(audit: dict) -> None:
    problems = reconciliation_problems(audit)
    if problems:
        raise ReconciliationError(f"ingest batch {audit['batch_id']} does not reconcile: " + "; ".join(problems))


def append_audit(spark: SparkSession, settings: Settings, audit: dict) -> None:
    (
        spark.createDataFrame([audit], AUDIT_SCHEMA)
        .write.format("delta")
        .mode("append")
        .option("mergeSchema", "true")  # audit tables made before a column was added get it
        .save(lake.path(settings.lake, lake.INGEST_AUDIT))
    )


def raise_failed(
    spark: SparkSession,
    settings: Settings,
    batch_id: int,
    mapping: SourceMapping,
    tally: FileTally,
    counts: StatusCounts,
    problems: list[str],
    audit: dict | None = None,
    error: type[Exception] = ReconciliationError,
) -> None:
    """Audit the batch as failed, with its problems, and raise `error` (ReconciliationError: the books do not add up;
    GuardRailError: a rule removes too much); its writes are already undone."""
    if audit is None:
        version = lake.version(spark, settings.lake, lake.EVENTS)
        audit = audit_row(batch_id, mapping.name, settings.ingest.input, tally, counts, None, version)
    what = "does not reconcile" if error is ReconciliationError else "is stopped by a guard rail"
    message = f"ingest batch {batch_id} {what}: " + "; ".join(problems)
    append_audit(spark, settings, {**audit, "clean": 0, "replays": 0, "status": "failed", "problems": message})
    raise error(message + " (nothing of it is kept; the audit row says so)")
