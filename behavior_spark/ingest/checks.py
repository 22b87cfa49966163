"""Why a parsed row cannot be trusted, and what the quarantine keeps of it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.config import IngestSettings

log = logging.getLogger(__name__)


# Canonical columns used only to decide the reject reason (and what the quarantine keeps of a rejected row, `raw`).
CANONICAL_ONLY = {
    "raw_line",
    "missing_column",
    "raw_fields",
    "malformed",
    "repeated_header",
    "bad_encoding",
    "time_out_of_range",
    "raw_event_type",
    "raw_price",
    "raw_quantity",
}


def reject_reason(cfg: IngestSettings) -> Column:
    """The first reason a canonical row cannot be trusted, or null."""
    latest = F.current_timestamp() + F.expr(f"INTERVAL {cfg.max_future_hours} HOURS")
    return (
        F.when(F.col("missing_column").isNotNull(), "missing_column")
        .when(F.col("malformed"), "malformed_line")
        .when(F.col("repeated_header"), "repeated_header")
        .when(F.col("bad_encoding"), "bad_encoding")
        .when(F.col("user_id").isNull(), "missing_user_id")
        .when(F.col("time_out_of_range"), "timestamp_out_of_range")
        .when(F.col("event_time").isNull(), "unparseable_timestamp")
        .when(
            (F.col("event_time") < F.lit(cfg.earliest_event_date)) | (F.col("event_time") > latest),
            "timestamp_out_of_range",
        )
        .when(F.col("event_type").isNull(), "unknown_event_type")
        .when(F.col("raw_quantity").isNotNull() & F.col("quantity").isNull(), "unparseable_quantity")
        .when(F.col("quantity") == 0, "zero_quantity")  # a line of nothing (its amount has no price): not an event
        .when(F.col("raw_price").isNotNull() & F.col("price").isNull(), "unparseable_price")
        .when((F.col("price") < 0) | (F.col("price") > cfg.max_price), "invalid_price")
        .when(F.col("quantity") < 0, "invalid_quantity")  # negative, where the mapping declares no returns
    )


def for_cache(rows: DataFrame, pseudonym: Callable[[Column], Column], keep_user_id: bool) -> DataFrame:
    """What later steps need of a parsed row: what the quarantine keeps of it if it is rejected, typed fields, the
    reason. Dropping the raw text of good rows (and the raw id unless an identity map is written) halves what is
    cached."""
    kept = [c for c in rows.columns if c not in CANONICAL_ONLY and (keep_user_id or c != "user_id")]
    return rows.select(quarantine_text(pseudonym).alias("raw"), *kept)


def quarantine_text(pseudonym: Callable[[Column], Column]) -> Column:
    """What the quarantine keeps of a rejected row, as JSON, with no raw id and no personal column.

    A row split into fields keeps its mapped fields with the user id replaced by its pseudonym (personal columns are
    never read). A line that could not be split (malformed, or in a file lacking a column) keeps its length and a
    keyed hash of its text, which tells copies apart and finds the line again with the key, but shows nothing of it.
    """
    rejected = F.col("reject_reason").isNotNull()
    unsplit = F.col("malformed") | F.col("missing_column").isNotNull()
    line = F.when(rejected & unsplit, F.col("raw_line"))  # hashed for these rows only
    line_json = F.to_json(F.struct(F.length(line).alias("line_length"), pseudonym(line).alias("line_hash")))
    fields_json = F.to_json(F.struct(F.col("customer_id"), F.col("raw_fields").alias("fields")))
    return F.when(rejected, F.when(unsplit, line_json).otherwise(fields_json))
