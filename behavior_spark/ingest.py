"""Ingest: raw event logs into a trusted, pseudonymised, sessionised Delta table, with every row accounted for.

Each raw row gets exactly one status: a quarantine reason, `duplicate`, `bot` or `clean`. Clean rows become the
events table, quarantined rows keep their raw content and reason, and one audit row per run records how many rows
went where. The run fails if the counts Delta wrote do not add up to the rows read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import uuid

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import lake
from behavior_spark.config import ConfigError, IngestSettings, Settings
from behavior_spark.generate import RAW_COLUMNS

log = logging.getLogger(__name__)

EVENT_TYPES = ["view", "cart", "remove_from_cart", "purchase"]
REES46_TIME_FORMAT = "yyyy-MM-dd HH:mm:ss 'UTC'"
EARLIEST_EVENT = dt.datetime(2000, 1, 1)
CORRUPT = "_corrupt_record"
EVENT_KEY = ["user_id", "event_type", "product_id", "event_time"]  # same user, type, item and time: a replay
CLEAN, DUPLICATE, BOT = "clean", "duplicate", "bot"
EVENTS_COLUMNS = [
    "event_time", "event_date", "event_type", "product_id", "category_id", "category_code", "brand", "price",
    "customer_id", "session_id", "session_number",
]


class ReconciliationError(RuntimeError):
    """The rows written do not add up to the rows read: something would be lost."""


def run(spark: SparkSession, settings: Settings) -> dict:
    """Read the raw logs, clean them, write the events, quarantine and audit tables; return the audit row."""
    cfg = settings.ingest
    key = pseudonym_key(cfg)
    raw = read_raw(spark, cfg)
    classified = classify(parse_rees46(raw, cfg), cfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_status = {row["status"]: row["count"] for row in classified.groupBy("status").count().collect()}
        quarantine = classified.filter(~F.col("status").isin(CLEAN, DUPLICATE, BOT)).transform(to_quarantine_rows)
        lake.overwrite(quarantine, settings.lake, lake.QUARANTINE)
        quarantined_written = int(lake.last_commit_metrics(spark, settings.lake, lake.QUARANTINE)["numOutputRows"])
        events = (
            classified.filter(F.col("status") == CLEAN)
            .transform(with_customer_id, key)
            .transform(with_sessions, cfg.session_gap_minutes)
            .select(*EVENTS_COLUMNS)
        )
        lake.overwrite(events, settings.lake, lake.EVENTS, partition_by=["event_date"])
        clean_written = int(lake.last_commit_metrics(spark, settings.lake, lake.EVENTS)["numOutputRows"])
    finally:
        classified.unpersist()
    audit = audit_row(
        rows_read=raw.count(),
        by_status=by_status,
        clean_written=clean_written,
        quarantined_written=quarantined_written,
        events_version=lake.version(spark, settings.lake, lake.EVENTS),
        source=cfg.input,
    )
    lake.append(spark.createDataFrame([audit], AUDIT_SCHEMA), settings.lake, lake.INGEST_AUDIT)
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


def read_raw(spark: SparkSession, cfg: IngestSettings) -> DataFrame:
    """The raw rows as strings, with their source file; a line that does not fit the layout keeps its text."""
    schema = T.StructType([T.StructField(name, T.StringType()) for name in RAW_COLUMNS])
    if not _path_exists(spark, cfg.input):
        raise ConfigError(f"setting 'ingest.input': no such path {cfg.input}")
    if cfg.format == "csv":
        reader = spark.read.option("header", True).option("mode", "PERMISSIVE")
        reader = reader.option("columnNameOfCorruptRecord", CORRUPT).schema(schema.add(CORRUPT, T.StringType()))
        df = reader.csv(cfg.input)
    elif cfg.format == "json":
        df = spark.read.schema(schema.add(CORRUPT, T.StringType())).option("columnNameOfCorruptRecord", CORRUPT).json(
            cfg.input
        )
    else:
        df = spark.read.parquet(cfg.input).select(*(F.col(c).cast("string") for c in RAW_COLUMNS))
        df = df.withColumn(CORRUPT, F.lit(None).cast("string"))
    return df.withColumn("source_file", F.col("_metadata.file_path"))


def parse_rees46(raw: DataFrame, cfg: IngestSettings) -> DataFrame:
    """Typed columns beside the raw strings, and the first reason (if any) the row cannot be trusted."""
    event_time = F.try_to_timestamp(F.trim("event_time"), F.lit(REES46_TIME_FORMAT))
    price = F.col("price").try_cast("double")
    product_id = F.col("product_id").try_cast("long")
    user_id = F.trim("user_id")
    reason = (
        F.when(F.col(CORRUPT).isNotNull(), "malformed_line")
        .when(user_id.isNull() | (user_id == ""), "missing_user_id")
        .when(event_time.isNull(), "unparseable_timestamp")
        .when((event_time < F.lit(EARLIEST_EVENT)) | (event_time > F.current_timestamp() + F.expr("INTERVAL 1 DAY")),
              "timestamp_out_of_range")
        .when(~F.col("event_type").isin(EVENT_TYPES) | F.col("event_type").isNull(), "unknown_event_type")
        .when(product_id.isNull(), "missing_product_id")
        .when(F.col("price").isNotNull() & price.isNull(), "unparseable_price")
        .when((price < 0) | (price > cfg.max_price), "invalid_price")
    )
    return raw.select(
        F.to_json(F.struct(*RAW_COLUMNS)).alias("raw"),
        F.col(CORRUPT),
        "source_file",
        reason.alias("reject_reason"),
        event_time.alias("event_time"),
        F.col("event_type"),
        product_id.alias("product_id"),
        F.col("category_id").try_cast("long").alias("category_id"),
        F.nullif(F.trim("category_code"), F.lit("")).alias("category_code"),
        F.nullif(F.trim("brand"), F.lit("")).alias("brand"),
        price.alias("price"),
        user_id.alias("user_id"),
    )


def classify(parsed: DataFrame, cfg: IngestSettings) -> DataFrame:
    """One status per row: its quarantine reason, else `duplicate` (a later copy of an event), `bot` or `clean`."""
    rejected = parsed.filter(F.col("reject_reason").isNotNull()).withColumn("status", F.col("reject_reason"))
    valid = parsed.filter(F.col("reject_reason").isNull()).withColumn(
        "copy_number", F.row_number().over(Window.partitionBy(*EVENT_KEY).orderBy("raw", "source_file"))
    )
    bots = bot_users(valid.filter(F.col("copy_number") == 1), cfg.bot_events_per_minute)
    checked = valid.join(bots, on="user_id", how="left").withColumn(
        "status",
        F.when(F.col("copy_number") > 1, DUPLICATE).when(F.col("is_bot"), BOT).otherwise(CLEAN),
    )
    return rejected.unionByName(checked.drop("copy_number", "is_bot"))


def bot_users(events: DataFrame, max_events_per_minute: int) -> DataFrame:
    """Users who fired more than `max_events_per_minute` events within one calendar minute."""
    return (
        events.groupBy("user_id", F.date_trunc("minute", "event_time").alias("minute"))
        .count()
        .filter(F.col("count") > max_events_per_minute)
        .select("user_id", F.lit(True).alias("is_bot"))
        .distinct()
    )


def with_customer_id(events: DataFrame, key: bytes) -> DataFrame:
    """Replace the raw user id by its keyed hash (HMAC-SHA256); the raw id does not leave this function."""
    return events.withColumn("customer_id", hmac_sha256(F.col("user_id"), key)).drop("user_id")


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


def with_sessions(events: DataFrame, gap_minutes: int) -> DataFrame:
    """Split each customer's events into sessions at gaps longer than `gap_minutes` (a gap of exactly that stays)."""
    by_time = Window.partitionBy("customer_id").orderBy("event_time", "event_type", "product_id")
    seconds = F.col("event_time").cast("long")
    gap = seconds - F.lag(seconds).over(by_time)
    starts_session = F.when(gap.isNull() | (gap > gap_minutes * 60), 1).otherwise(0)
    return (
        events.withColumn("starts_session", starts_session)
        .withColumn("session_number", F.sum("starts_session").over(by_time.rowsBetween(Window.unboundedPreceding, 0)))
        .withColumn("session_id", F.substring(F.sha2(F.concat_ws(":", "customer_id", "session_number"), 256), 1, 32))
        .withColumn("session_number", F.col("session_number").cast("int"))
        .withColumn("event_date", F.to_date("event_time"))
        .drop("starts_session")
    )


def to_quarantine_rows(rejected: DataFrame) -> DataFrame:
    return rejected.select(
        F.col("status").alias("reason"),
        F.coalesce(F.col(CORRUPT), F.col("raw")).alias("raw"),
        "source_file",
        F.current_timestamp().alias("quarantined_at"),
    )


AUDIT_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("ingested_at", T.TimestampType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("rows_read", T.LongType(), False),
    T.StructField("clean", T.LongType(), False),
    T.StructField("duplicates", T.LongType(), False),
    T.StructField("bot_rows", T.LongType(), False),
    T.StructField("quarantined", T.LongType(), False),
    T.StructField("quarantined_by_reason", T.MapType(T.StringType(), T.LongType()), False),
    T.StructField("clean_written", T.LongType(), False),
    T.StructField("quarantined_written", T.LongType(), False),
    T.StructField("events_version", T.LongType(), False),
])


def audit_row(rows_read: int, by_status: dict[str, int], clean_written: int, quarantined_written: int,
              events_version: int, source: str) -> dict:
    reasons = {k: v for k, v in by_status.items() if k not in (CLEAN, DUPLICATE, BOT)}
    return {
        "run_id": uuid.uuid4().hex,
        "ingested_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        "source": source,
        "rows_read": rows_read,
        "clean": by_status.get(CLEAN, 0),
        "duplicates": by_status.get(DUPLICATE, 0),
        "bot_rows": by_status.get(BOT, 0),
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": reasons,
        "clean_written": clean_written,
        "quarantined_written": quarantined_written,
        "events_version": events_version,
    }


def check_reconciliation(audit: dict) -> None:
    """Rows read = clean + quarantined + duplicates + bot rows, and Delta wrote exactly the clean and quarantined."""
    accounted = audit["clean"] + audit["quarantined"] + audit["duplicates"] + audit["bot_rows"]
    problems = []
    if accounted != audit["rows_read"]:
        problems.append(f"{audit['rows_read']} rows read but {accounted} accounted for")
    if audit["clean_written"] != audit["clean"]:
        problems.append(f"{audit['clean']} clean rows but {audit['clean_written']} written to the events table")
    if audit["quarantined_written"] != audit["quarantined"]:
        problems.append(f"{audit['quarantined']} rejected rows but {audit['quarantined_written']} quarantined")
    if problems:
        raise ReconciliationError(f"ingest run {audit['run_id']} does not reconcile: " + "; ".join(problems))


def _path_exists(spark: SparkSession, location: str) -> bool:
    """Whether a path or glob exists, on any file system Hadoop knows (local, s3://, dbfs:/, abfss://)."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(location)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    matches = fs.globStatus(hadoop_path)
    return matches is not None and len(matches) > 0
