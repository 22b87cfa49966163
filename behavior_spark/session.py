"""The one place a SparkSession comes from.

On a cluster (spark-submit, Databricks, EMR) the platform owns the session: we take the active one, or build one
from what spark-submit passed, and never set a master. With `spark.remote` set (`sc://host:port`) the session is a
Spark Connect client of that server (Databricks shared and serverless compute, any Spark 4 Connect server); every
stage but `train` runs there. Locally we build a Delta-enabled session ourselves, with the Delta JARs from the
project's cache (filled by `scripts/setup.sh` from Maven Central), so nothing is fetched at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from behavior_spark.config import SparkSettings
from behavior_spark.privacy import REDACTED_CONF_NAMES, REDACTED_PLAN_TEXT

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
JAR_CACHE_ENV = "BEHAVIOR_SPARK_JARS"
DEFAULT_JAR_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "jars"


def get_spark(settings: SparkSettings) -> SparkSession:
    """Return the platform's session when there is one, else a local Delta-enabled session; either computes in UTC."""
    if settings.remote:
        return platform_session(SparkSession.builder.remote(settings.remote).getOrCreate(), settings)
    active = SparkSession.getActiveSession()
    if active is not None:
        return platform_session(active, settings)
    if on_cluster():
        # spark-submit, Databricks and EMR decide the master and the Delta set-up; we only name the app.
        return platform_session(SparkSession.builder.appName(settings.app_name).getOrCreate(), settings)
    return local_session(settings)


def platform_session(spark: SparkSession, settings: SparkSettings) -> SparkSession:
    """The platform's session with the run-time settings a job relies on: UTC, redaction, and the shuffle partitions
    of `spark.shuffle_partitions` (Spark's 200 are too many for a small cluster and too few for a large one)."""
    spark.conf.set("spark.sql.shuffle.partitions", settings.shuffle_partitions)
    set_if_allowed(spark, *COMPILED_BY_THE_JVM)
    return redacting(in_utc(spark))


def set_if_allowed(spark: SparkSession, key: str, value: str) -> bool:
    """Set a SQL setting that only makes the jobs faster; a platform that refuses it (Databricks serverless lets a
    session set a few) keeps its own, and the jobs run as they would."""
    try:
        spark.conf.set(key, value)
    except Exception as refused:  # noqa: BLE001 - each platform refuses with its own exception
        log.info("Spark setting %s left as the platform has it: %s", key, str(refused).splitlines()[0])
        return False
    return True


# Whole-stage code generation fuses a stage's expressions into one Java method; a method over 8,000 bytes of
# bytecode is never compiled by HotSpot's JIT and runs interpreted. Spark's limit (64 KB, the most a method may
# hold) let ingest's parse run so: 28 s at 4M rows, 15 s with the limit at 8,000, which Spark's documentation
# suggests on HotSpot (the stage then runs as separate operators, each compiled).
COMPILED_BY_THE_JVM = ("spark.sql.codegen.hugeMethodLimit", "8000")


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session, which has no SparkContext, broadcast variables or JVM gateway."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def redacting(spark: SparkSession) -> SparkSession:
    """The session with credentials (password=, token=, user:password@) redacted from plans, the UI and event logs.

    (Conf values are redacted by name with `spark.redaction.regex`, which is fixed when the cluster starts: the
    local session and the deploy definitions set it.)
    """
    spark.conf.set("spark.sql.redaction.string.regex", REDACTED_PLAN_TEXT)
    return spark


def in_utc(spark: SparkSession) -> SparkSession:
    """The session with its SQL time zone set to UTC.

    Event dates, the midnight that ends a session and the parsing of zone-less timestamps follow the session's time
    zone; a cluster left in its own zone would shift them, and a re-run from another zone would insert events again.
    """
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    return spark


def on_cluster() -> bool:
    """True under spark-submit (the JVM started first and handed us a gateway) or on Databricks."""
    return "PYSPARK_GATEWAY_PORT" in os.environ or "DATABRICKS_RUNTIME_VERSION" in os.environ


def local_session(settings: SparkSettings) -> SparkSession:
    """A local session with Delta Lake, few shuffle partitions and no UI: for laptops, CI and tests."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers use this interpreter, not PATH's
    builder = (
        SparkSession.builder.master(settings.master)
        .appName(settings.app_name)
        .config("spark.jars", ",".join(str(jar) for jar in delta_jars()))
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
        .config("spark.sql.shuffle.partitions", settings.shuffle_partitions)
        .config("spark.driver.memory", settings.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())  # a progress bar in a terminal
        .config("spark.sql.session.timeZone", "UTC")
        .config(*COMPILED_BY_THE_JVM)
        .config("spark.databricks.delta.snapshotPartitions", 2)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.redaction.regex", REDACTED_CONF_NAMES)
        .config("spark.sql.redaction.string.regex", REDACTED_PLAN_TEXT)
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def delta_jars() -> list[Path]:
    """The cached Delta Lake JARs (and the JDBC driver) that `scripts/setup.sh` downloaded."""
    folder = Path(os.environ.get(JAR_CACHE_ENV, DEFAULT_JAR_CACHE))
    jars = sorted(folder.glob("*.jar"))
    if not any(jar.name.startswith("delta-spark") for jar in jars):
        raise RuntimeError(
            f"no Delta Lake JARs in {folder}: run `make setup` (or scripts/setup.sh) to fetch them from Maven Central, "
            f"or point {JAR_CACHE_ENV} at a folder that has them"
        )
    return jars


@contextlib.contextmanager
def materialized(df: DataFrame) -> Iterator[DataFrame]:
    """`df` computed once and kept (in memory, spilling to disk) for the reads inside the block, then released.

    A local checkpoint keeps the rows as Spark computed them. The columnar cache (`persist`) encodes and compresses
    every column first, which on ingest's checked rows cost more than computing them. The price: the kept rows have
    no lineage, so losing an executor inside the block fails the job, and a re-run (every job is idempotent) starts
    it again.
    """
    kept = df.localCheckpoint(eager=True)
    try:
        yield kept
    finally:
        if not is_connect(df.sparkSession):  # a Connect server releases it when the client lets `kept` go
            kept._jdf.queryExecution().analyzed().rdd().unpersist(False)  # no public call releases a local checkpoint


@contextlib.contextmanager
def with_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Settings that only make the plans made inside the block faster (`set_if_allowed`), the session's own restored
    after it."""
    before = {key: str(spark.conf.get(key)) for key in conf}
    changed = [key for key, value in conf.items() if set_if_allowed(spark, key, value)]
    try:
        yield
    finally:
        for key in changed:
            spark.conf.set(key, before[key])


# Rows `materialized` under these settings keep the partitioning they were shuffled to (adaptive plans hide it from
# a checkpoint, and every later aggregation by the same keys would shuffle the rows again); give such a shuffle its
# partition count, as nothing coalesces small partitions.
PARTITIONING_KEPT = {"spark.sql.adaptive.enabled": "false"}


# Joins of rows that share a partitioning on some of the join keys (a day and a customer bucket) join where they
# are; Spark's default shuffles them to all the keys.
JOINED_WHERE_THEY_ARE = {"spark.sql.requireAllClusterKeysForCoPartition": "false"}


@contextlib.contextmanager
def timed(log: logging.Logger, step: str) -> Iterator[None]:
    """Log at DEBUG how long the block took: per-step timings with `log.level: DEBUG`."""
    started = time.monotonic()
    yield
    log.debug("%s: %.1f s", step, time.monotonic() - started)
