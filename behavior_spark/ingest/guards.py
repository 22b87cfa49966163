"""Guard rails, as data-quality expectations: the share of a batch's rows each rule removes (each quarantine reason,
bots, duplicates), checked before anything is written.

Above `ingest.warn_share` a rule is a warning in the audit and the run's summary; above `ingest.fail_share` the batch
fails before anything is written: half of a log gone is a broken mapping, not dirty data. A batch where more than 2%
of the rows collapse as duplicates or same-key variants gets a warning too: the mapping usually leaves out a column
that tells lines apart. Each message names the rule, the share, a few example rows (pseudonymised, personal columns
never read) and the setting to change.
"""

from __future__ import annotations

import dataclasses

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from behavior_spark.config import IngestSettings
from behavior_spark.ingest.books import FileTally, StatusCounts
from behavior_spark.ingest.sessions import BOT, DUPLICATE

COLLAPSE_WARN_SHARE = 0.02  # beyond what re-sent lines make (the generator re-sends 1%): the mapping may merge lines
EXAMPLES = 3


@dataclasses.dataclass(frozen=True)
class Verdict:
    warnings: list[str]
    failures: list[str]


def removed_shares(tally: FileTally, counts: StatusCounts) -> dict[str, float]:
    """rule -> the share of the batch's rows it removes: every quarantine reason, `bot` and `duplicate`."""
    if tally.rows_read == 0:
        return {}
    removed = {
        **tally.rejected_by_reason,
        BOT: counts.by_status.get(BOT, 0),
        DUPLICATE: counts.by_status.get(DUPLICATE, 0),
    }
    return {rule: rows / tally.rows_read for rule, rows in sorted(removed.items()) if rows}


def check(
    tally: FileTally, counts: StatusCounts, cfg: IngestSettings, rejected: DataFrame, classified: DataFrame
) -> Verdict:
    """The warnings and failures of one batch, with examples for the rules that trip (read only then)."""
    warnings, failures = [], []
    for rule, share in removed_shares(tally, counts).items():
        if share > cfg.fail_share:
            failures.append(
                f"{rule} removes {share:.1%} of the batch's {tally.rows_read:,} rows, above ingest.fail_share "
                f"({cfg.fail_share:.0%}), for example {examples(rule, rejected, classified)}: fix the source "
                "mapping, or raise ingest.fail_share if this is what the log holds"
            )
        elif share > cfg.warn_share:
            warnings.append(
                f"{rule} removes {share:.1%} of the batch's rows (above ingest.warn_share, {cfg.warn_share:.0%}), "
                f"for example {examples(rule, rejected, classified)}"
            )
    collapsed = counts.by_status.get(DUPLICATE, 0) + counts.same_key_variants
    if tally.rows_read and collapsed / tally.rows_read > COLLAPSE_WARN_SHARE:
        warnings.append(
            f"{collapsed / tally.rows_read:.1%} of the batch's rows are duplicates or same-key variants: if lines that "
            "differ in the log look alike here, the mapping leaves out a column that tells them apart (name it in "
            "fields.event_id, or say identity: line)"
        )
    return Verdict(warnings, failures)


def examples(rule: str, rejected: DataFrame, classified: DataFrame) -> str:
    """A few rows a rule removed, as the quarantine keeps them (pseudonymised customer, mapped fields only)."""
    if rule in (BOT, DUPLICATE):
        rows = classified.filter(F.col("status") == rule).select(
            F.to_json(F.struct("customer_id", "event_type", "event_time", "product_id")).alias("raw")
        )
    else:
        rows = rejected.filter(F.col("reject_reason") == rule).select("raw")
    return "; ".join(r["raw"] for r in rows.limit(EXAMPLES).collect())  # a few rows
