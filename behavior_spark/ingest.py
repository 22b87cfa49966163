"""Ingest: raw event logs into a trusted, pseudonymised, sessionised Delta table, with every row accounted for.

New raw files are found by a Structured Streaming file source (`trigger(availableNow=True)` and a checkpoint), so
files that arrive later are processed once and only once. In each batch every raw row gets exactly one status: a
quarantine reason, `duplicate` (a second copy within the batch), `replay` (already in the table), `bot` or
`clean`. Clean rows are MERGEd into the events table on their event key, which makes a re-run change nothing; the
quarantine keeps rejected rows with their raw text and reason; an audit row per batch records where every row went,
and the batch fails if those counts and what Delta wrote do not add up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import time
import uuid

from delta.tables import DeltaTable
from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import lake, sources
from behavior_spark.config import ConfigError, IngestSettings, Settings
from behavior_spark.session import materialized
from behavior_spark.sources import EVENT_TYPES, SourceMapping

log = logging.getLogger(__name__)

CLEAN, DUPLICATE, BOT = "clean", "duplicate", "bot"  # replays are clean rows the MERGE found already present
NOT_QUARANTINED = (CLEAN, DUPLICATE, BOT)
# Rows are shuffled by (day, bucket of customers): a customer's day is the largest unit of work, sessions never cross
# midnight, and each task writes one file per day it holds. ROWS_PER_FILE sizes the buckets.
PARTITION_KEYS = ["event_date", "bucket"]
# The windows sort by their keys in this order: the hashed customer id first gives the sort a prefix that tells rows
# apart (a partition holds one or a few days), which measured 10-20% faster than the day first at 4M rows.
WINDOW_KEYS = ["customer_id", *PARTITION_KEYS]
ROWS_PER_FILE = 1_000_000
EVENTS_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_time", T.TimestampType(), False),
        T.StructField("event_date", T.DateType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("product_id", T.LongType(), True),
        T.StructField("category_id", T.LongType(), True),
        T.StructField("category_code", T.StringType(), True),
        T.StructField("brand", T.StringType(), True),
        T.StructField("price", T.DoubleType(), True),
        T.StructField("quantity", T.IntegerType(), False),
        T.StructField("customer_id", T.StringType(), False),
        T.StructField("session_id", T.StringType(), False),
        T.StructField("session_index", T.IntegerType(), False),
    ]
)
EVENTS_COLUMNS = EVENTS_SCHEMA.fieldNames()
# Canonical columns used only to decide the reject reason (and the raw text, kept for rejected rows as `raw`).
CANONICAL_ONLY = {
    "raw_line",
    "raw_fields",
    "malformed",
    "bad_encoding",
    "raw_event_type",
    "raw_product_id",
    "raw_price",
}
# Delta keeps min/max statistics per file for these columns only: the ones readers filter on. By default it would
# also track the hashed ids and free-text columns, which skip nothing and cost a third of the write (4M rows: 15 s
# with them, 10 s without).
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
STATS_COLUMNS = ["event_time", "event_type", "product_id", "category_id"]
CHECK_CONSTRAINTS = {
    "known_event_type": "event_type IN ({})".format(", ".join(f"'{t}'" for t in EVENT_TYPES)),
    "non_negative_price": "price IS NULL OR price >= 0",
    "positive_quantity": "quantity > 0",
    "date_matches_time": "event_date = CAST(event_time AS DATE)",
}


class IngestError(RuntimeError):
    """The input cannot be ingested as asked (for example: it has no rows)."""


class ReconciliationError(RuntimeError):
    """The rows written do not add up to the rows read: something would be lost."""


def run(spark: SparkSession, settings: Settings) -> dict:
    """Ingest every raw file not yet ingested; return the totals of this run's batches."""
    cfg = settings.ingest
    mapping = sources.load_mapping(cfg.source)
    key = pseudonym_key(cfg)
    if not _path_exists(spark, cfg.input):
        raise ConfigError(f"setting 'ingest.input': no such path {cfg.input}")
    schema = sources.raw_schema(spark, mapping, cfg.input)
    ensure_events_table(spark, lake.path(settings.lake, lake.EVENTS))
    checkpoint = lake.path(settings.lake, f"_checkpoints/ingest-{mapping.name}-{_short_hash(cfg.input)}")
    audits: list[dict] = []

    def ingest_batch(batch: DataFrame, batch_id: int) -> None:
        audit = process_batch(spark, batch, batch_id, mapping, key, settings)
        log.info("ingest batch %d: %s", batch_id, {k: audit[k] for k in AUDIT_SUMMARY})
        audits.append(audit)

    stream = sources.read_stream(spark, mapping, cfg.input, schema, cfg.max_files_per_trigger)
    query = (
        stream.writeStream.foreachBatch(ingest_batch)
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination()
    except StreamingQueryException as error:
        raise _cause_of(error) from None
    totals = {k: sum(a[k] for a in audits) for k in AUDIT_SUMMARY}
    if totals["rows_read"] == 0 and lake.read(spark, settings.lake, lake.EVENTS).isEmpty():
        raise IngestError(f"no rows to ingest in {cfg.input}: the input is empty")
    reasons: dict[str, int] = {}
    for audit in audits:
        for reason, count in audit["quarantined_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    return {
        "batches": len(audits),
        **totals,
        "quarantined_by_reason": reasons,
        "events_version": lake.version(spark, settings.lake, lake.EVENTS),
    }


def process_batch(
    spark: SparkSession, batch: DataFrame, batch_id: int, mapping: SourceMapping, key: bytes, settings: Settings
) -> dict:
    """Classify, quarantine, write and audit one batch of raw rows.

    The raw files are parsed once and kept; valid rows are shuffled once, by customer and day, every ordered step
    (dedup, sessions) runs on that partitioning, and the result is kept for the counts and the write.
    """
    cfg = settings.ingest
    events_path = lake.path(settings.lake, lake.EVENTS)
    with contextlib.ExitStack() as kept:
        parsed_rows = (
            sources.canonical(batch, mapping)
            .withColumn("reject_reason", reject_reason(cfg))
            .transform(pseudonymise, key)
            .transform(for_cache, keep_user_id=cfg.identity_map is not None)
        )
        with _timed("parse to checked rows"), materialized(parsed_rows) as parsed:  # released once `checked` is kept
            tally = (
                parsed.groupBy("source_file", "reject_reason")
                .agg(
                    F.count(F.lit(1)).alias("rows"),
                    F.min("event_time").alias("first"),
                    F.max("event_time").alias("last"),
                )
                .collect()  # one row per file and reason: <= maxFilesPerTrigger x 11
            )
            rows_read = sum(r["rows"] for r in tally)
            files = sorted({r["source_file"] for r in tally})
            rejected_by_reason: dict[str, int] = {}
            for r in tally:
                if r["reject_reason"] is not None:
                    rejected_by_reason[r["reject_reason"]] = rejected_by_reason.get(r["reject_reason"], 0) + r["rows"]
            quarantined_written = write_quarantine(parsed.filter(F.col("reject_reason").isNotNull()), files, settings)
            valid = parsed.filter(F.col("reject_reason").isNull())
            buckets = buckets_per_day(rows_read - quarantined_written, days_spanned(tally))
            checked = kept.enter_context(materialized(with_checks(valid, cfg.session_gap_minutes, buckets)))
        bots = kept.enter_context(materialized(bot_customers(checked, cfg.bot_events_per_minute)))  # a few rows
        classified = classify(checked, bots)
        with _timed("status counts"):
            by_status_and_day = classified.groupBy("status", "event_date").count().collect()  # 3 x days rows
        by_status = {}
        for r in by_status_and_day:
            by_status[r["status"]] = by_status.get(r["status"], 0) + r["count"]
        by_status.update(rejected_by_reason)
        clean_days = sorted({r["event_date"] for r in by_status_and_day if r["status"] == CLEAN})
        clean = classified.filter(F.col("status") == CLEAN)
        if cfg.identity_map:
            write_identity_map(clean, cfg.identity_map)
        events_before = spark.read.format("delta").load(events_path).count()
        with _timed("write events"):
            inserted, relinked = write_events(spark, clean, clean_days, events_path, cfg.session_gap_minutes, buckets)
        events_after = spark.read.format("delta").load(events_path).count()
    audit = audit_row(
        batch_id,
        mapping.name,
        cfg.input,
        len(files),
        rows_read,
        by_status,
        inserted,
        quarantined_written,
        events_after - events_before,
        relinked,
        lake.version(spark, settings.lake, lake.EVENTS),
    )
    (
        spark.createDataFrame([audit], AUDIT_SCHEMA)
        .write.format("delta")
        .mode("append")
        .option("txnAppId", f"ingest-audit-{mapping.name}-{_short_hash(cfg.input)}")
        .option("txnVersion", batch_id)
        .save(lake.path(settings.lake, lake.INGEST_AUDIT))
    )
    check_reconciliation(audit)
    return audit


def pseudonym_key(cfg: IngestSettings) -> bytes:
    """The HMAC key, from the environment only; there is deliberately no default."""
    value = os.environ.get(cfg.pseudonym_key_env, "")
    if len(value) < 16:
        raise ConfigError(
            f"environment variable {cfg.pseudonym_key_env} (setting 'ingest.pseudonym_key_env') must hold the "
            "pseudonymisation key, at least 16 characters; it is " + ("too short" if value else "not set")
        )
    return value.encode()


def reject_reason(cfg: IngestSettings) -> Column:
    """The first reason a canonical row cannot be trusted, or null."""
    latest = F.current_timestamp() + F.expr(f"INTERVAL {cfg.max_future_hours} HOURS")
    return (
        F.when(F.col("malformed"), "malformed_line")
        .when(F.col("bad_encoding"), "bad_encoding")
        .when(F.col("user_id").isNull(), "missing_user_id")
        .when(F.col("event_time").isNull(), "unparseable_timestamp")
        .when(
            (F.col("event_time") < F.lit(cfg.earliest_event_date)) | (F.col("event_time") > latest),
            "timestamp_out_of_range",
        )
        .when(F.col("event_type").isNull(), "unknown_event_type")
        .when(F.col("raw_product_id").isNotNull() & F.col("product_id").isNull(), "unparseable_product_id")
        .when(F.col("raw_price").isNotNull() & F.col("price").isNull(), "unparseable_price")
        .when((F.col("price") < 0) | (F.col("price") > cfg.max_price), "invalid_price")
        .when(F.col("quantity") <= 0, "invalid_quantity")
    )


def for_cache(rows: DataFrame, keep_user_id: bool) -> DataFrame:
    """What later steps need of a parsed row: its raw text only if it is rejected, typed fields, the reason.

    Dropping the raw text of good rows (and the raw id unless an identity map is written) halves what is cached.
    """
    raw = F.when(F.col("reject_reason").isNotNull(), F.coalesce(F.col("raw_line"), F.to_json("raw_fields")))
    kept = [c for c in rows.columns if c not in CANONICAL_ONLY and (keep_user_id or c != "user_id")]
    return rows.select(raw.alias("raw"), *kept)


def pseudonymise(rows: DataFrame, key: bytes) -> DataFrame:
    """`customer_id` = HMAC-SHA256 of the raw user id; the raw id is kept only as `user_id` for the identity map."""
    return rows.withColumn("customer_id", hmac_sha256(F.col("user_id"), key))


def hmac_sha256(message: Column, key: bytes) -> Column:
    """HMAC-SHA256 (RFC 2104) of a string column as 64 hex characters, with Spark built-ins only."""
    block_size = 64
    if len(key) > block_size:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block_size, b"\0")
    inner_pad = bytearray(b ^ 0x36 for b in key)
    outer_pad = bytearray(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), message.cast("binary")), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)


def event_id() -> Column:
    """The event key: same customer, type, item and time is the same event."""
    millis = F.unix_millis(F.col("event_time")).cast("string")
    return F.substring(
        F.sha2(
            F.concat_ws(
                "|", "customer_id", "event_type", F.coalesce(F.col("product_id").cast("string"), F.lit("")), millis
            ),
            256,
        ),
        1,
        32,
    )


def with_checks(valid: DataFrame, gap_minutes: int, buckets_per_day: int) -> DataFrame:
    """Valid rows after one shuffle (by day and customer bucket) and one sort (by time), with `is_copy` (a later
    copy of the same event: same customer, type, item and time, so copies sort next to each other) and
    `session_id`, both from the same ordered pass.

    Only what the events table needs is shuffled: the source file path alone (a hundred bytes a row) made the
    whole ingest about 13% slower at 4M rows.
    """
    by_time = _in_time_order()
    return (
        valid.withColumn("event_date", F.to_date("event_time"))
        .withColumn("event_id", event_id())
        .withColumn("ts", F.unix_micros("event_time"))
        .drop("raw", "source_file", "reject_reason")  # the quarantine's and the tally's: not worth shuffling
        .transform(shuffle_by_day, buckets_per_day)
        .select(
            "*", F.lag("event_id").over(by_time).alias("previous_id"), F.lag("ts").over(by_time).alias("previous_ts")
        )
        .withColumn("is_copy", F.coalesce(F.col("previous_id") == F.col("event_id"), F.lit(False)))
        .transform(with_sessions, gap_minutes)
        .drop("previous_id")
    )


def shuffle_by_day(rows: DataFrame, buckets_per_day: int) -> DataFrame:
    """Hash rows into (day, customer bucket) partitions; windows over WINDOW_KEYS then need no further shuffle."""
    bucketed = rows.withColumn("bucket", F.pmod(F.xxhash64("customer_id"), F.lit(buckets_per_day)).cast("int"))
    # No partition count: spark.sql.shuffle.partitions sets it, and adaptive execution coalesces small partitions.
    return bucketed.repartition(*PARTITION_KEYS)


def days_spanned(tally: list) -> int:
    """Calendar days between the first and the last valid event of the batch (at least 1)."""
    valid = [r for r in tally if r["reject_reason"] is None and r["first"] is not None]
    if not valid:
        return 1
    return (max(r["last"] for r in valid).date() - min(r["first"] for r in valid).date()).days + 1


def buckets_per_day(valid_rows: int, days: int) -> int:
    """Customer buckets per day so that one (day, bucket) holds about ROWS_PER_FILE rows."""
    return max(1, math.ceil(valid_rows / max(days, 1) / ROWS_PER_FILE))


def bot_customers(checked: DataFrame, max_events_per_minute: int) -> DataFrame:
    """The customers who ever fired more than `max_events_per_minute` events (copies aside) in a calendar minute."""
    # The day and bucket keys change no group (a minute has one day, a customer one bucket) but let the counting
    # reuse the rows' partitioning instead of shuffling every event again.
    return (
        checked.filter(~F.col("is_copy"))
        .groupBy(*WINDOW_KEYS, F.date_trunc("minute", "event_time").alias("minute"))
        .count()
        .filter(F.col("count") > max_events_per_minute)
        .select("customer_id")
        .distinct()
        .withColumn("is_bot", F.lit(True))
    )


def classify(checked: DataFrame, bots: DataFrame) -> DataFrame:
    """`duplicate` for later copies, `bot` for every row of a bot customer (`bot_customers`), else `clean`."""
    # Bot customers are few (a handful per million users): broadcast them rather than shuffle every event.
    return checked.join(F.broadcast(bots), on="customer_id", how="left").withColumn(
        "status", F.when(F.col("is_copy"), DUPLICATE).when(F.col("is_bot"), BOT).otherwise(CLEAN)
    )


def with_sessions(events: DataFrame, gap_minutes: int) -> DataFrame:
    """`session_id` per event: a session ends at a gap longer than `gap_minutes` (a gap of exactly that stays) and
    at midnight UTC, as web analytics tools split them; so one customer's day is all a session ever needs."""
    if "event_date" not in events.columns:  # keep an existing column: the rows may already be partitioned on it
        events = events.withColumn("event_date", F.to_date("event_time"))
    if "ts" not in events.columns:
        events = events.withColumn("ts", F.unix_micros("event_time"))
    if "bucket" not in events.columns:
        events = events.withColumn("bucket", F.lit(0))
    if "previous_ts" not in events.columns:
        events = events.withColumn("previous_ts", F.lag("ts").over(_in_time_order()))
    gap = F.col("ts") - F.col("previous_ts")
    starts = F.when(gap.isNull() | (gap > gap_minutes * 60_000_000), F.col("ts"))
    so_far = _in_time_order().rowsBetween(Window.unboundedPreceding, 0)
    session_start = F.max(starts).over(so_far)
    session_id = F.sha2(F.concat_ws("|", F.col("customer_id"), session_start.cast("string")), 256)
    return (
        events.withColumn("session_id", F.substring(session_id, 1, 32))
        .withColumn("session_index", F.count(starts).over(so_far).cast("int"))  # 1, 2, ... in the customer's day
        .drop("previous_ts")
    )


def _in_time_order() -> Window:
    return Window.partitionBy(*WINDOW_KEYS).orderBy("ts", "event_id")


def ensure_events_table(spark: SparkSession, path: str) -> None:
    """Create the events table with its NOT NULL columns, CHECK constraints and statistics columns, once.

    Delta keeps CHECK constraints as `delta.constraints.<name>` table properties, so a new table gets them in its
    one creating commit (0.3 s, against 4-15 s for a commit and a validating scan per ALTER TABLE ADD CONSTRAINT).
    A table created before a constraint or property existed gets it by ALTER TABLE.
    """
    properties = {STATS_COLUMNS_PROPERTY: ",".join(STATS_COLUMNS)}
    properties.update({f"delta.constraints.{name}": check for name, check in CHECK_CONSTRAINTS.items()})
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(EVENTS_SCHEMA).partitionedBy("event_date")
    for name, value in properties.items():
        builder = builder.property(name, value)
    builder.execute()
    existing = DeltaTable.forPath(spark, path).detail().first()["properties"]
    if existing.get(STATS_COLUMNS_PROPERTY) != properties[STATS_COLUMNS_PROPERTY]:
        spark.sql(
            f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES "
            f"('{STATS_COLUMNS_PROPERTY}' = '{properties[STATS_COLUMNS_PROPERTY]}')"
        )
    for name, check in CHECK_CONSTRAINTS.items():
        if f"delta.constraints.{name}" not in existing:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {name} CHECK ({check})")


def write_events(
    spark: SparkSession, clean: DataFrame, days: list[dt.date], path: str, gap_minutes: int, buckets: int
) -> tuple[int, int]:
    """Add the batch's clean events (on `days`); return (rows inserted, sessions re-linked).

    Where the table holds nothing on the batch's days (a first load, a new day) an append is exactly what a MERGE
    would do, at a fraction of the cost. Otherwise the batch is MERGEd on its event key together with the table's
    events of the same customers and days, so replays are skipped and sessions that late events bridge re-linked.
    """
    if not days:
        return 0, 0
    same_days = spark.read.format("delta").load(path).filter(F.col("event_date").isin(days))
    if same_days.isEmpty():
        clean.select(*EVENTS_COLUMNS).write.format("delta").mode("append").save(path)
        return int(lake.commit_metrics(spark, path).get("numOutputRows", 0)), 0
    new = clean.select(*(c for c in EVENTS_COLUMNS if c not in ("session_id", "session_index")))
    same_customer_days = new.select("event_date", "customer_id").distinct()
    context = same_days.join(same_customer_days, on=["event_date", "customer_id"], how="inner")
    source = (
        context.select(*new.columns)
        .unionByName(new)
        .dropDuplicates(["event_id"])
        .transform(shuffle_by_day, buckets)
        .transform(with_sessions, gap_minutes)
        .select(*EVENTS_COLUMNS)
    )
    day_list = ", ".join(f"DATE'{day}'" for day in days)
    with materialized(source) as kept_source:  # MERGE reads its source twice: both reads must see the same rows
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(
                kept_source.alias("s"),
                f"t.event_date IN ({day_list}) AND t.event_date = s.event_date " "AND t.event_id = s.event_id",
            )
            .whenMatchedUpdate(
                condition="t.session_id <> s.session_id OR t.session_index <> s.session_index",
                set={"session_id": "s.session_id", "session_index": "s.session_index"},
            )
            .whenNotMatchedInsertAll()
            .execute()
        )
    metrics = lake.commit_metrics(spark, path)
    return int(metrics.get("numTargetRowsInserted", 0)), int(metrics.get("numTargetRowsUpdated", 0))


def write_quarantine(rejected: DataFrame, files: list[str], settings: Settings) -> int:
    """Replace the quarantine rows of this batch's files (so a re-run does not double them); return rows written."""
    rejected = rejected.select(
        F.col("reject_reason").alias("reason"),
        "raw",
        "source_file",
        F.current_timestamp().alias("quarantined_at"),
    )
    writer = rejected.write.format("delta")
    if lake.exists(rejected.sparkSession, settings.lake, lake.QUARANTINE) and files:
        quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        writer = writer.mode("overwrite").option("replaceWhere", f"source_file IN ({quoted})")
    else:
        writer = writer.mode("append")
    writer.save(lake.path(settings.lake, lake.QUARANTINE))
    return int(
        lake.commit_metrics(rejected.sparkSession, lake.path(settings.lake, lake.QUARANTINE)).get("numOutputRows", 0)
    )


def write_identity_map(clean: DataFrame, location: str) -> None:
    """pseudonym -> raw id, kept apart from the lakehouse, for re-identification at warehouse export only."""
    pairs = clean.select("customer_id", "user_id").distinct()
    spark = clean.sparkSession
    if not DeltaTable.isDeltaTable(spark, location):
        pairs.write.format("delta").save(location)
        return
    (
        DeltaTable.forPath(spark, location)
        .alias("t")
        .merge(pairs.alias("s"), "t.customer_id = s.customer_id")
        .whenNotMatchedInsertAll()
        .execute()
    )


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
    ]
)
AUDIT_SUMMARY = ["rows_read", "clean", "replays", "duplicates", "bot_rows", "quarantined"]


def audit_row(
    batch_id: int,
    mapping_name: str,
    source: str,
    files: int,
    rows_read: int,
    by_status: dict[str, int],
    inserted: int,
    quarantined_written: int,
    events_added: int,
    sessions_relinked: int,
    events_version: int,
) -> dict:
    """Where every row of a batch went. Clean rows that were already in the table count as replays."""
    reasons = {k: v for k, v in by_status.items() if k not in NOT_QUARANTINED}
    return {
        "run_id": uuid.uuid4().hex,
        "batch_id": batch_id,
        "ingested_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
        "source_mapping": mapping_name,
        "input": source,
        "files": files,
        "rows_read": rows_read,
        "clean": inserted,
        "replays": by_status.get(CLEAN, 0) - inserted,
        "duplicates": by_status.get(DUPLICATE, 0),
        "bot_rows": by_status.get(BOT, 0),
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": reasons,
        "quarantined_written": quarantined_written,
        "events_added": events_added,
        "sessions_relinked": sessions_relinked,
        "events_version": events_version,
    }


def check_reconciliation(audit: dict) -> None:
    """Rows read = clean + replays + quarantined + duplicates + bot rows, and Delta wrote exactly those."""
    accounted = sum(audit[k] for k in ("clean", "replays", "quarantined", "duplicates", "bot_rows"))
    problems = []
    if accounted != audit["rows_read"]:
        problems.append(f"{audit['rows_read']} rows read but {accounted} accounted for")
    if audit["replays"] < 0:
        problems.append(f"the MERGE inserted {audit['clean']} rows, more than the batch's clean rows")
    if audit["events_added"] != audit["clean"]:
        problems.append(f"{audit['clean']} clean rows inserted but the events table grew by {audit['events_added']}")
    if audit["quarantined_written"] != audit["quarantined"]:
        problems.append(f"{audit['quarantined']} rejected rows but {audit['quarantined_written']} quarantined")
    if problems:
        raise ReconciliationError(f"ingest batch {audit['batch_id']} does not reconcile: " + "; ".join(problems))


def _path_exists(spark: SparkSession, location: str) -> bool:
    """Whether a path or glob exists, on any file system Hadoop knows (local, s3://, dbfs:/, abfss://)."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(location)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    matches = fs.globStatus(hadoop_path)
    return matches is not None and len(matches) > 0


@contextlib.contextmanager
def _timed(step: str):
    started = time.monotonic()
    yield
    log.debug("ingest step %s: %.1f s", step, time.monotonic() - started)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cause_of(error: StreamingQueryException) -> Exception:
    """The error raised inside a batch, rather than the streaming wrapper around it."""
    message = str(error)
    for known in (ReconciliationError, IngestError, ConfigError):
        if known.__name__ in message:
            return known(message.split(f"{known.__name__}:", 1)[-1].strip().splitlines()[0])
    return error
