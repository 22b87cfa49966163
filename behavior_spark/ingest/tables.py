"""The events table (schema, constraints, key fingerprint) and what a batch writes: events, quarantine,
identity map."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import lake
from behavior_spark.config import ConfigError, Settings
from behavior_spark.contracts import EVENT_TYPES
from behavior_spark.ingest.identity import EVENT_ID_PROPERTY, EVENT_ID_SCHEME, event_key
from behavior_spark.ingest.sessions import shuffle_by_day, with_sessions
from behavior_spark.session import materialized, timed

log = logging.getLogger(__name__)


EVENTS_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_time", T.TimestampType(), False),
        T.StructField("event_date", T.DateType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("product_id", T.StringType(), True),  # as the log writes it
        T.StructField("category_id", T.StringType(), True),
        T.StructField(
            "order_id", T.StringType(), True
        ),  # the invoice or basket of an order line, where the log has one
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


# Delta keeps min/max statistics per file for these columns only: the ones readers filter on. By default it would
# also track the hashed ids and free-text columns, which skip nothing and cost a third of the write.
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"


STATS_COLUMNS = ["event_time", "event_type", "product_id", "category_id"]


KEY_FINGERPRINT_PROPERTY = "behavior_spark.pseudonymKeyFingerprint"


CHECK_CONSTRAINTS = {
    "known_event_type": "event_type IN ({})".format(", ".join(f"'{t}'" for t in EVENT_TYPES)),
    "non_negative_price": "price IS NULL OR price >= 0",
    "positive_quantity": "quantity > 0",
    "date_matches_time": "event_date = CAST(event_time AS DATE)",
}


class IngestError(RuntimeError):
    """The input cannot be ingested as asked (for example: it has no rows)."""


def ensure_events_table(spark: SparkSession, path: str, scheme: str = EVENT_ID_SCHEME) -> None:
    """Create the events table with its NOT NULL columns, CHECK constraints and statistics columns, once.

    Delta keeps CHECK constraints as `delta.constraints.<name>` table properties, so a new table gets them in its
    one creating commit, not in a commit and a validating scan per ALTER TABLE ADD CONSTRAINT.
    A table created before a constraint or property existed gets it by ALTER TABLE.
    """
    properties = {STATS_COLUMNS_PROPERTY: ",".join(STATS_COLUMNS), EVENT_ID_PROPERTY: scheme}
    properties.update({f"delta.constraints.{name}": check for name, check in CHECK_CONSTRAINTS.items()})
    columns = ", ".join(
        f"{f.name} {f.dataType.simpleString()}{'' if f.nullable else ' NOT NULL'}" for f in EVENTS_SCHEMA
    )
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {lake.sql_name(path)} ({columns}) USING DELTA "
        f"PARTITIONED BY (event_date) TBLPROPERTIES ({lake.sql_properties(properties)})"
    )
    check_column_types(spark, path)
    existing = lake.properties(spark, path)
    if existing.get(EVENT_ID_PROPERTY) != scheme:
        if not spark.read.format("delta").load(path).isEmpty():  # its events would not match re-read ones
            raise IngestError(
                f"the events table at {path} holds event ids made otherwise "
                f"({existing.get(EVENT_ID_PROPERTY, 'customer, type, item, time: an earlier behavior-spark')}) than "
                f"the source mapping's identity and same_key make them ({scheme}); keep the mapping the table was made "
                "with, or rebuild it from the raw files: remove the events, events_quarantine, ingest_audit and "
                "ingested_files tables and run ingest again"
            )
        set_properties(spark, path, {EVENT_ID_PROPERTY: scheme})
    if existing.get(STATS_COLUMNS_PROPERTY) != properties[STATS_COLUMNS_PROPERTY]:
        set_properties(spark, path, {STATS_COLUMNS_PROPERTY: properties[STATS_COLUMNS_PROPERTY]})
    for name, check in CHECK_CONSTRAINTS.items():
        if f"delta.constraints.{name}" not in existing:
            spark.sql(f"ALTER TABLE {lake.sql_name(path)} ADD CONSTRAINT {name} CHECK ({check})")


def check_column_types(spark: SparkSession, path: str) -> None:
    """Refuse, with the way out, an events table whose columns have other types than EVENTS_SCHEMA: one written
    before product and category ids were kept as text (as the log writes them) could not take a SKU."""
    table = spark.read.format("delta").load(path).schema
    differing = [f.name for f in EVENTS_SCHEMA if f.name in table.names and table[f.name].dataType != f.dataType]
    if differing:
        name = differing[0]
        raise IngestError(
            f"the events table at {path} keeps {name} as {table[name].dataType.simpleString()}, where this version "
            f"keeps {EVENTS_SCHEMA[name].dataType.simpleString()} (ids as the log writes them); rebuild it from the "
            "raw files: remove the events, events_quarantine, ingest_audit, ingested_files and customer_days tables "
            "and run ingest again"
        )


def set_properties(spark: SparkSession, path: str, properties: dict[str, str]) -> None:
    spark.sql(f"ALTER TABLE {lake.sql_name(path)} SET TBLPROPERTIES ({lake.sql_properties(properties)})")


def check_key(spark: SparkSession, path: str, current: str, key_env: str) -> None:
    """Record the key's fingerprint (`current`) on the events table, or fail if the table's events were made with
    another key (every customer would get a second pseudonym)."""
    recorded = lake.properties(spark, path).get(KEY_FINGERPRINT_PROPERTY)
    if recorded == current:
        return
    if recorded is not None:
        raise ConfigError(
            f"the pseudonym key in {key_env} (setting 'ingest.pseudonym_key_env') is not the key the events at {path} "
            f"were made with (fingerprint {recorded}, this key's {current}); set the original key, or rotate the key "
            "as the README says (re-pseudonymise the tables through the identity map)"
        )
    set_properties(spark, path, {KEY_FINGERPRINT_PROPERTY: current})


@dataclasses.dataclass(frozen=True)
class Written:
    """What a batch wrote, as Delta counted it, and the versions to go back to."""

    inserted: int
    relinked: int
    corrected: int  # events of the table replaced by a later line of the same key (same_key: keep_latest)
    events_added: int
    quarantined: int
    events_path: str
    events_before: int  # version
    quarantine_path: str
    quarantine_before: int  # version, -1 where the batch created the table
    appended: bool = False  # the clean rows were appended to days the table did not hold (no MERGE)

    def undo(self, spark: SparkSession) -> None:
        """Put the events and the quarantine back as they were before the batch."""
        for path, version in ((self.events_path, self.events_before), (self.quarantine_path, self.quarantine_before)):
            if lake.version_at(spark, path) == version:
                continue
            name = lake.sql_name(path)
            spark.sql(f"RESTORE TABLE {name} TO VERSION AS OF {version}" if version >= 0 else f"DELETE FROM {name}")
            log.warning("ingest: %s restored to version %s after a batch that did not reconcile", path, version)


def write_batch(
    spark: SparkSession,
    settings: Settings,
    rejected: DataFrame,
    clean: DataFrame,
    files: list[str],
    clean_days: list[dt.date],
    buckets: int,
    keep_latest: bool,
) -> Written:
    """Write the rejected rows to the quarantine and the clean ones to the events; what Delta says was written."""
    events_path = lake.path(settings.lake, lake.EVENTS)
    quarantine_path = lake.path(settings.lake, lake.QUARANTINE)
    events_before, quarantine_before = lake.version_at(spark, events_path), lake.version_at(spark, quarantine_path)
    quarantined = write_quarantine(rejected, files, settings)
    rows_before = spark.read.format("delta").load(events_path).count()  # from the log's statistics: no scan
    with timed(log, "write events"):
        gap = settings.ingest.session_gap_minutes
        inserted, relinked, corrected, appended = write_events(
            spark, clean, clean_days, events_path, gap, buckets, keep_latest
        )
    rows_after = spark.read.format("delta").load(events_path).count()
    return Written(
        inserted,
        relinked,
        corrected,
        rows_after - rows_before,
        quarantined,
        events_path,
        events_before,
        quarantine_path,
        quarantine_before,
        appended,
    )


def write_events(
    spark: SparkSession,
    clean: DataFrame,
    days: list[dt.date],
    path: str,
    gap_minutes: int,
    buckets: int,
    keep_latest: bool = False,
) -> tuple[int, int, int, bool]:
    """Add the batch's clean events (on `days`); return (rows inserted, sessions re-linked, events corrected, whether
    they were appended).

    Where the table holds nothing on the batch's days (a first load, a new day) an append is exactly what a MERGE
    would do, at a fraction of the cost. Otherwise the batch is MERGEd on its event id together with the table's
    events of the same customers and days, so replays are skipped and sessions that late events bridge re-linked.
    Under `keep_latest` it is MERGEd on the event key instead, and an event of the table whose key a batch row
    shares with other content is replaced by that row (a correction).
    """
    if not days:
        return 0, 0, 0, False
    same_days = spark.read.format("delta").load(path).filter(F.col("event_date").isin(days))
    before = lake.version_at(spark, path)
    if same_days.isEmpty():
        clean.select(*EVENTS_COLUMNS).write.format("delta").mode("append").save(path)
        return int(lake.commit_metrics(spark, path, before).get("numOutputRows", 0)), 0, 0, True
    new = clean.select(*(c for c in EVENTS_COLUMNS if c not in ("session_id", "session_index")))
    same_customer_days = new.select("event_date", "customer_id").distinct()
    context = same_days.join(same_customer_days, on=["event_date", "customer_id"], how="inner").select(*new.columns)
    corrected = 0
    if keep_latest:
        corrected = corrections(new, context)
        keys = new.select(event_key(F.col("event_id")).alias("key")).distinct()
        context = context.withColumn("key", event_key(F.col("event_id"))).join(keys, "key", "left_anti").drop("key")
    source = (
        context.unionByName(new)
        .dropDuplicates(["event_id"])
        .transform(shuffle_by_day, buckets)
        .transform(with_sessions, gap_minutes)
        .select(*EVENTS_COLUMNS)
    )
    day_list = ", ".join(f"DATE'{day}'" for day in days)
    match = "substring(t.event_id, 1, 16) = substring(s.event_id, 1, 16)" if keep_latest else "t.event_id = s.event_id"
    # MERGE reads its source twice: both reads must see the same rows
    with materialized(source) as kept_source, lake.as_view(kept_source) as view:
        spark.sql(
            f"MERGE INTO {lake.sql_name(path)} t USING {view} s "
            f"ON t.event_date IN ({day_list}) AND t.event_date = s.event_date AND {match} "
            "WHEN MATCHED AND t.event_id <> s.event_id THEN UPDATE SET * "  # a correction (keep_latest only)
            "WHEN MATCHED AND (t.session_id <> s.session_id OR t.session_index <> s.session_index) "
            "THEN UPDATE SET session_id = s.session_id, session_index = s.session_index "
            "WHEN NOT MATCHED THEN INSERT *"
        )
    metrics = lake.commit_metrics(spark, path, before)
    updated = int(metrics.get("numTargetRowsUpdated", 0))
    return int(metrics.get("numTargetRowsInserted", 0)), updated - corrected, corrected, False


def corrections(new: DataFrame, table_rows: DataFrame) -> int:
    """How many of the table's events a batch row of the same key and other content replaces."""
    old = table_rows.select(event_key(F.col("event_id")).alias("key"), F.col("event_id").alias("old_id"))
    incoming = new.select(event_key(F.col("event_id")).alias("key"), "event_id")
    return incoming.join(old, on="key").filter(F.col("old_id") != F.col("event_id")).count()


def write_quarantine(rejected: DataFrame, files: list[str], settings: Settings) -> int:
    """Replace the quarantine rows of this batch's files (so a re-run does not double them); return rows written."""
    rejected = rejected.select(
        F.col("reject_reason").alias("reason"),
        "raw",
        "source_file",
        F.current_timestamp().alias("quarantined_at"),
    )
    location = lake.path(settings.lake, lake.QUARANTINE)
    before = lake.version_at(rejected.sparkSession, location)
    writer = rejected.write.format("delta")
    if before >= 0 and files:
        quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        writer = writer.mode("overwrite").option("replaceWhere", f"source_file IN ({quoted})")
    else:
        writer = writer.mode("append")
    writer.save(location)
    return int(lake.commit_metrics(rejected.sparkSession, location, before).get("numOutputRows", 0))


def write_identity_map(clean: DataFrame, location: str) -> None:
    """pseudonym -> raw id, kept apart from the lakehouse, for re-identification at warehouse export only."""
    pairs = clean.select("customer_id", "user_id").distinct()
    spark = clean.sparkSession
    if not lake.is_table(spark, location):
        pairs.write.format("delta").save(location)
        return
    with lake.as_view(pairs) as view:
        spark.sql(
            f"MERGE INTO {lake.sql_name(location)} t USING {view} s ON t.customer_id = s.customer_id "
            "WHEN NOT MATCHED THEN INSERT *"
        )
