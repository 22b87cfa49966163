"""Export: one scoring date's scores and segments to the company's warehouse over JDBC, replacing that date.

PostgreSQL locally; Redshift or any warehouse that speaks `CREATE TABLE ... (LIKE ...)` by URL on clusters.
Spark writes the rows in parallel to a staging table; then one transaction on the driver deletes the date's rows
from the target and inserts the staged ones, so readers see the old rows or the new ones, never half, and a re-run
of the same date changes nothing. Credentials come from environment variables named in the settings; raw ids are
exported only when `warehouse.reidentify` is on and the ingest identity map exists.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import uuid

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import features, lake
from behavior_spark.config import ConfigError, Settings, WarehouseSettings
from behavior_spark.privacy import redact_url

log = logging.getLogger(__name__)

STAGING_SUFFIX = "__staging_"  # a run's staging table: the target's name, this, and 12 hex characters
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


class WarehouseError(RuntimeError):
    """The warehouse is unreachable, refused the credentials, or failed the write; the message says which."""


def run(spark: SparkSession, settings: Settings) -> dict:
    cfg = settings.warehouse
    if cfg.url is None:
        return {"exported": 0, "skipped": "warehouse.url is not set"}
    if not _IDENTIFIER.match(cfg.table):
        raise ConfigError(f"setting 'warehouse.table' must be a table name like schema.table, got {cfg.table!r}")
    user, password = credentials(cfg)
    scoring_date = features.scoring_date(spark, settings)  # the date the score stage scored
    rows = export_rows(spark, settings, scoring_date)
    if cfg.reidentify:
        rows = reidentified(spark, settings, rows)
    exported = replace_date(spark, rows, cfg, user, password, scoring_date)
    log.info("exported %d customers for %s to %s", exported, scoring_date, cfg.table)
    return {"exported": exported, "table": cfg.table, "scoring_date": str(scoring_date)}


def credentials(cfg: WarehouseSettings) -> tuple[str, str]:
    missing = [name for name in (cfg.user_env, cfg.password_env) if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"warehouse credentials missing: set the environment variable(s) {', '.join(missing)}")
    return os.environ[cfg.user_env], os.environ[cfg.password_env]


def export_rows(spark: SparkSession, settings: Settings, scoring_date: dt.date) -> DataFrame:
    """One row per customer: pseudonymous id, segment, propensity, expected purchases and revenue, value decile,
    model version, scoring date."""
    on_date = F.col("scoring_date") == F.lit(scoring_date)
    segments = lake.read(spark, settings.lake, lake.SEGMENTS).filter(on_date)
    scores = lake.read(spark, settings.lake, lake.SCORES).filter(on_date).select("customer_id", "model_version")
    return segments.join(scores, on="customer_id", how="inner").select(
        "customer_id",
        "segment_id",
        "segment_name",
        "propensity",
        "expected_purchases",
        "expected_revenue",
        "value_decile",
        "model_version",
        "scoring_date",
    )


def reidentified(spark: SparkSession, settings: Settings, rows: DataFrame) -> DataFrame:
    """Add the raw user id from the identity map: the one place a raw id may leave the lakehouse."""
    location = settings.ingest.identity_map
    if location is None:
        raise ConfigError("warehouse.reidentify needs ingest.identity_map: no identity map was written")
    identities = spark.read.format("delta").load(location).select("customer_id", "user_id")
    return rows.join(identities, on="customer_id", how="left")


def replace_date(
    spark: SparkSession, rows: DataFrame, cfg: WarehouseSettings, user: str, password: str, scoring_date: dt.date
) -> int:
    """Stage `rows` in parallel in a table of this run's own, then swap the date's rows into the target in one
    transaction, checked against the Delta count; the staging table is dropped whatever happens. Rows exported."""
    expected = rows.count()
    columns = ", ".join(rows.columns)  # by name, never by position
    connection = connect(spark, cfg, user, password)  # fails fast, before anything is written
    drop_leftover_staging(connection, cfg.table)
    staging = f"{cfg.table}{STAGING_SUFFIX}{uuid.uuid4().hex[:12]}"
    try:
        rows.write.jdbc(
            cfg.url,
            staging,
            mode="overwrite",
            properties={"user": user, "password": password, "driver": cfg.driver, "batchsize": str(cfg.batch_size)},
        )
        connection.setAutoCommit(False)
        _execute(connection, f"CREATE TABLE IF NOT EXISTS {cfg.table} (LIKE {staging})")
        _execute(connection, f"DELETE FROM {cfg.table} WHERE scoring_date = DATE '{scoring_date}'")
        inserted = _execute(connection, f"INSERT INTO {cfg.table} ({columns}) SELECT {columns} FROM {staging}")
        if inserted != expected:
            raise WarehouseError(f"{inserted} rows inserted for {scoring_date} but the Delta tables hold {expected}")
        connection.commit()
        return inserted
    except Exception as error:  # Py4JJavaError from the connection, PySpark's own errors from the staged write
        if not connection.getAutoCommit():
            connection.rollback()  # the target keeps its previous rows
        raise WarehouseError(f"writing {cfg.table} at {redact_url(cfg.url)} failed: {_message(error)}") from None
    finally:
        _drop(connection, staging)
        connection.close()


def drop_leftover_staging(connection, table: str) -> None:
    """Drop the staging tables of `table` that exports killed before their `finally` left behind."""
    schema, _, name = table.rpartition(".")
    meta = connection.getMetaData()
    case = str.lower if meta.storesLowerCaseIdentifiers() else str.upper if meta.storesUpperCaseIdentifiers() else str
    prefix = case(name + STAGING_SUFFIX)
    found = meta.getTables(None, case(schema) or None, prefix + "%", None)  # "_" matches any character here
    leftovers = []
    while found.next():
        if found.getString("TABLE_NAME").startswith(prefix):
            leftovers.append(".".join(p for p in (found.getString("TABLE_SCHEM"), found.getString("TABLE_NAME")) if p))
    found.close()
    for leftover in leftovers:
        log.warning("dropping %s, the staging table of an export that was killed before it could drop it", leftover)
        _drop(connection, leftover)


def _drop(connection, table: str) -> None:
    """Drop a staging table (it may hold raw ids when `warehouse.reidentify` is on); a failure is logged."""
    try:
        connection.setAutoCommit(True)
        _execute(connection, f"DROP TABLE IF EXISTS {table}")
    except Py4JJavaError as error:
        log.error("could not drop the staging table %s: %s; drop it by hand", table, _message(error))


def connect(spark: SparkSession, cfg: WarehouseSettings, user: str, password: str):
    """A java.sql.Connection from the driver, or WarehouseError naming the cause (unreachable, credentials)."""
    jvm = spark.sparkContext._jvm
    properties = jvm.java.util.Properties()
    properties.setProperty("user", user)
    properties.setProperty("password", password)
    try:
        # The JDBC JAR arrives through spark.jars, which java.sql.DriverManager cannot see until Spark registers it.
        jvm.org.apache.spark.sql.execution.datasources.jdbc.DriverRegistry.register(cfg.driver)
        return jvm.java.sql.DriverManager.getConnection(cfg.url, properties)
    except Py4JJavaError as error:
        raise WarehouseError(f"cannot connect to the warehouse at {redact_url(cfg.url)}: {_message(error)}") from None


def _execute(connection, sql: str) -> int:
    statement = connection.createStatement()
    try:
        statement.execute(sql)
        return statement.getUpdateCount()
    finally:
        statement.close()


def _message(error: Exception) -> str:
    """The first line of the Java exception's message (or of the Python one)."""
    text = str(error.java_exception.getMessage()) if isinstance(error, Py4JJavaError) else str(error)
    return (text.strip().splitlines() or ["(no message)"])[0]
