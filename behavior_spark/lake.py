"""Reading and writing the lakehouse's Delta tables: the storage edge of every stage."""

from __future__ import annotations

import os

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from behavior_spark import artifacts
from behavior_spark.config import LakeSettings

EVENTS = "events"
QUARANTINE = "events_quarantine"
INGEST_AUDIT = "ingest_audit"
INGESTED_FILES = "ingested_files"
CUSTOMER_DAYS = "customer_days"
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
    return DeltaTable.isDeltaTable(spark, path(lake, table))


def overwrite(df: DataFrame, lake: LakeSettings, table: str, partition_by: list[str] = (), **options: str) -> None:
    """Replace a table's content in one Delta commit (readers see the old or the new version, never a mix)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    for key, value in options.items():
        writer = writer.option(key, value)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path(lake, table))


def replace(df: DataFrame, lake: LakeSettings, table: str, where: str, partition_by: list[str] = ()) -> None:
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
    return DeltaTable.forPath(spark, path(lake, table)).history(1).select("version").first()[0]


def version_at(spark: SparkSession, location: str) -> int:
    """The latest committed version of the table at `location`, or -1 where there is no table yet."""
    if not DeltaTable.isDeltaTable(spark, location):
        return -1
    return DeltaTable.forPath(spark, location).history(1).select("version").first()[0]


def commit_metrics(spark: SparkSession, location: str, after_version: int) -> dict[str, str]:
    """Delta's operation metrics (numOutputRows, numTargetRowsInserted, ...) of the commit a write made on top of
    `after_version`; empty when the write committed nothing (Delta skips a write that changes nothing).

    Not "the latest commit": an auto-compaction or another writer may have committed after this write.
    """
    if not DeltaTable.isDeltaTable(spark, location):
        return {}
    recent = DeltaTable.forPath(spark, location).history(20).filter(f"version = {after_version + 1}")
    row = recent.select("operationMetrics").first()
    return dict(row[0] or {}) if row else {}
