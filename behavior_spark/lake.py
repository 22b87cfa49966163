"""Reading and writing the lakehouse's Delta tables: the storage edge of every stage.

Tables are read and changed through the DataFrame API and Delta's SQL (`DESCRIBE HISTORY`, `MERGE INTO`, `RESTORE`
on `delta.`path``), never through `delta.tables.DeltaTable`, whose Python API drives the JVM: the same calls then
work in a classic session and over Spark Connect, where a server without the Delta Connect plugin serves them too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession

from behavior_spark import artifacts
from behavior_spark.config import LakeSettings

EVENTS = "events"
QUARANTINE = "events_quarantine"
INGEST_AUDIT = "ingest_audit"
INGESTED_FILES = "ingested_files"
CUSTOMER_DAYS = "customer_days"
CUSTOMER_TOTALS = "customer_totals"
FEATURES = "customer_features"
SCORES = "customer_scores"
SEGMENTS = "customer_segments"
SEGMENT_PROFILES = "segment_profiles"
SEGMENT_CENTROIDS = "segment_centroids"
MODEL_EVALUATION = "model_evaluation"
FEATURE_DRIFT = "feature_drift"


def path(lake: LakeSettings, table: str) -> str:
    """The table's location: a URI (s3://, dbfs:/, abfss://) as given, a local path made absolute."""
    location = lake.table(table)
    return os.path.abspath(location) if artifacts.is_local(location) else location


def read(spark: SparkSession, lake: LakeSettings, table: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path(lake, table))


def exists(spark: SparkSession, lake: LakeSettings, table: str) -> bool:
    return is_table(spark, path(lake, table))


def sql_name(location: str) -> str:
    """The table at `location` as Delta's SQL names it: delta.`location` (a backtick in it doubled)."""
    return "delta.`" + location.replace("`", "``") + "`"


def sql_literal(text: str) -> str:
    """`text` as a SQL string literal (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_properties(properties: dict[str, str]) -> str:
    """Table properties as TBLPROPERTIES lists them: 'name' = 'value', ..."""
    return ", ".join(f"{sql_literal(name)} = {sql_literal(value)}" for name, value in properties.items())


def one_row(df: DataFrame) -> Row:
    """The row of a one-row DataFrame, such as an aggregation without groups (which always has one)."""
    row = df.first()
    if row is None:
        raise ValueError("expected one row, found none")
    return row


def is_table(spark: SparkSession, location: str) -> bool:
    """Whether a Delta table lives at `location` (any other failure to look, such as a denied read, is raised)."""
    try:
        spark.sql(f"DESCRIBE DETAIL {sql_name(location)}").first()
    except AnalysisException as error:
        if not_a_table(error):
            return False
        raise
    return True


def not_a_table(error: AnalysisException) -> bool:
    """Whether Delta refused a statement because no Delta table is at the path it named."""
    return error.getCondition() in ("DELTA_MISSING_DELTA_TABLE", "DELTA_TABLE_ONLY_OPERATION")


def history(spark: SparkSession, location: str, limit: int | None = None) -> DataFrame:
    """The table's commits, newest first: version, operation, operationMetrics, userMetadata, ..."""
    return spark.sql(f"DESCRIBE HISTORY {sql_name(location)}" + (f" LIMIT {int(limit)}" if limit else ""))


def commits(spark: SparkSession, location: str, limit: int | None = None) -> list[Row]:
    """The table's commits, newest first (version, userMetadata, operationMetrics), read from its log at once;
    none where there is no table at `location`. One commit a write: bounded by the log's retention, not the data."""
    try:
        return history(spark, location, limit).select("version", "userMetadata", "operationMetrics").collect()
    except AnalysisException as error:
        if not_a_table(error):
            return []
        raise


def properties(spark: SparkSession, location: str) -> dict[str, str]:
    """The table's properties (its CHECK constraints among them, as `delta.constraints.<name>`)."""
    return dict(one_row(spark.sql(f"DESCRIBE DETAIL {sql_name(location)}"))["properties"])


@contextlib.contextmanager
def as_view(df: DataFrame) -> Iterator[str]:
    """`df` under a temporary view name of its own, for a SQL statement (a MERGE's source) inside the block."""
    name = f"source_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(name)
    try:
        yield name
    finally:
        df.sparkSession.catalog.dropTempView(name)


def overwrite(df: DataFrame, lake: LakeSettings, table: str, partition_by: Sequence[str] = (), **options: str) -> None:
    """Replace a table's content in one Delta commit (readers see the old or the new version, never a mix)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    for key, value in options.items():
        writer = writer.option(key, value)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path(lake, table))


def replace(df: DataFrame, lake: LakeSettings, table: str, where: str, partition_by: Sequence[str] = ()) -> None:
    """Replace the rows matching `where` (SQL) with `df`, in one commit; create the table if it is new.

    Re-running with the same `where` (a scoring date, a model version) leaves other rows alone: idempotent. A column
    this version of the code adds is added to the table (older rows hold null in it).
    """
    if not exists(df.sparkSession, lake, table):
        overwrite(df, lake, table, partition_by)
        return
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", where).option("mergeSchema", "true")
    writer.save(path(lake, table))


def version(spark: SparkSession, lake: LakeSettings, table: str) -> int:
    """The table's latest committed version."""
    return one_row(history(spark, path(lake, table), 1).select("version"))[0]


def version_at(spark: SparkSession, location: str) -> int:
    """The latest committed version of the table at `location`, or -1 where there is no table yet."""
    newest = commits(spark, location, 1)
    return newest[0]["version"] if newest else -1


def commit_metrics(spark: SparkSession, location: str, after_version: int) -> dict[str, str]:
    """Delta's operation metrics (numOutputRows, numTargetRowsInserted, ...) of the commit a write made on top of
    `after_version`; empty when the write committed nothing (Delta skips a write that changes nothing).

    Not "the latest commit": an auto-compaction or another writer may have committed after this write.
    """
    row = next((c for c in commits(spark, location, 20) if c["version"] == after_version + 1), None)
    return dict(row["operationMetrics"] or {}) if row else {}
