"""Export: one scoring date's scores and segments to the company's warehouse over JDBC, replacing that date.

PostgreSQL locally; Redshift or any warehouse that speaks `CREATE TABLE ... (LIKE ...)` by URL on clusters.
Spark writes the rows in parallel to a staging table; then one transaction deletes the date's rows from the target
and inserts the staged ones, so readers see the old rows or the new ones, never half, and a re-run of the same date
changes nothing. Every statement goes through Spark's JDBC source (`Link`), none through the JVM gateway, so export
runs the same over Spark Connect. Credentials come from environment variables named in the settings; raw ids are
exported only when `warehouse.reidentify` is on and the ingest identity map exists.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import lake, run_record
from behavior_spark.config import ConfigError, Settings, WarehouseSettings
from behavior_spark.privacy import redact_url
from behavior_spark.results import ExportResult

log = logging.getLogger(__name__)

STAGING_SUFFIX = "__staging_"  # a run's staging table: the target's name, this, and 12 hex characters
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


class WarehouseError(RuntimeError):
    """The warehouse is unreachable, refused the credentials, or failed the write; the message says which."""


def run(spark: SparkSession, settings: Settings) -> ExportResult:
    cfg = settings.warehouse
    if cfg.url is None:
        return ExportResult(exported=0, skipped="warehouse.url is not set")
    if not _IDENTIFIER.match(cfg.table):
        raise ConfigError(f"setting 'warehouse.table' must be a table name like schema.table, got {cfg.table!r}")
    user, password = credentials(cfg)
    scoring_date = run_record.scoring_date(spark, settings)  # the date the score stage scored
    rows = export_rows(spark, settings, scoring_date)
    if cfg.reidentify:
        rows = reidentified(spark, settings, rows)
    exported = replace_date(spark, rows, cfg, user, password, scoring_date)
    log.info("exported %d customers for %s to %s", exported, scoring_date, cfg.table)
    return ExportResult(exported=exported, table=cfg.table, scoring_date=str(scoring_date))


def credentials(cfg: WarehouseSettings) -> tuple[str, str]:
    missing = [name for name in (cfg.user_env, cfg.password_env) if not os.environ.get(name)]
    if missing:
        raise ConfigError(f"warehouse credentials missing: set the environment variable(s) {', '.join(missing)}")
    return os.environ[cfg.user_env], os.environ[cfg.password_env]


def export_rows(spark: SparkSession, settings: Settings, scoring_date: dt.date) -> DataFrame:
    """One row per customer: pseudonymous id, segment, propensity, expected purchases and revenue, the top three
    reasons in words, value decile, model version, scoring date."""
    on_date = F.col("scoring_date") == F.lit(scoring_date)
    segments = lake.read(spark, settings.lake, lake.SEGMENTS).filter(on_date)
    scores = lake.read(spark, settings.lake, lake.SCORES).filter(on_date).select("customer_id", "model_version")
    reasons = [
        (F.col("reasons")[i]["text"] if "reasons" in segments.columns else F.lit(None).cast("string")).alias(
            f"reason_{i + 1}"
        )
        for i in range(3)
    ]  # the words of each customer's top three reasons: plain text columns any warehouse holds
    return segments.join(scores, on="customer_id", how="inner").select(
        "customer_id",
        "segment_id",
        "segment_name",
        "segment_description",
        "propensity",
        "expected_purchases",
        "expected_revenue",
        *reasons,
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
    """Stage `rows` in parallel in a table of this run's own, check the staged count against Delta's, then swap the
    date's rows into the target in one transaction; the staging table is dropped whatever happens. Rows exported."""
    expected = rows.count()
    columns = ", ".join(rows.columns)  # by name, never by position
    link = Link(spark, cfg, user, password)
    link.check()  # fails fast, before anything is written
    drop_leftover_staging(link, cfg.table)
    staging = f"{cfg.table}{STAGING_SUFFIX}{uuid.uuid4().hex[:12]}"
    assert cfg.url is not None  # `run` skips the export when warehouse.url is unset
    try:
        rows.write.jdbc(cfg.url, staging, mode="overwrite", properties=link.properties(batchsize=str(cfg.batch_size)))
        staged = staged_rows(link, staging)
        if staged != expected:
            raise WarehouseError(f"{staged} rows staged for {scoring_date} but the Delta tables hold {expected}")
        link.execute(  # one transaction: a failed statement leaves the target as it was
            "BEGIN",
            f"CREATE TABLE IF NOT EXISTS {cfg.table} (LIKE {staging})",
            *new_columns(link, cfg.table, staging),
            f"DELETE FROM {cfg.table} WHERE scoring_date = DATE '{scoring_date}'",
            f"INSERT INTO {cfg.table} ({columns}) SELECT {columns} FROM {staging}",
            "COMMIT",
        )
        return expected
    except WarehouseError:
        raise
    except Exception as error:  # the database's error, raised through Spark's JDBC source
        raise WarehouseError(f"writing {cfg.table} at {redact_url(cfg.url)} failed: {_message(error)}") from None
    finally:
        _drop(link, staging)


def new_columns(link: Link, table: str, staging: str) -> list[str]:
    """`ALTER TABLE .. ADD COLUMN` for each staged column the target, made by an earlier version, lacks."""

    def columns(name: str) -> dict[str, str]:
        sql = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{}'"
        return {r["column_name"]: r["data_type"] for r in link.query(sql.format(name.split(".")[-1].lower()))}

    existing = columns(table)
    if not existing:  # no target yet: CREATE TABLE .. (LIKE staging) makes it whole
        return []
    return [f"ALTER TABLE {table} ADD COLUMN {c} {kind}" for c, kind in columns(staging).items() if c not in existing]


class Link:
    """Statements and queries on the warehouse through Spark's JDBC source only (no JVM gateway), so export runs the
    same in a classic session and over Spark Connect. A statement runs as the `sessionInitStatement` of a one-row
    read: once, in one task's connection."""

    def __init__(self, spark: SparkSession, cfg: WarehouseSettings, user: str, password: str):
        self.spark, self.cfg, self.user, self.password = spark, cfg, user, password

    def properties(self, **extra: str) -> dict[str, str]:
        return {"user": self.user, "password": self.password, "driver": self.cfg.driver, **extra}

    def query(self, sql: str, init: str | None = None) -> list:
        reader = self.spark.read.format("jdbc").option("url", self.cfg.url).option("query", sql)
        for name, value in self.properties(**({"sessionInitStatement": init} if init else {})).items():
            reader = reader.option(name, value)
        return reader.load().collect()

    def execute(self, *statements: str) -> None:
        self.query("SELECT 1 AS done", init="; ".join(statements))

    def check(self) -> None:
        """WarehouseError naming the cause when the warehouse is unreachable or refuses the credentials."""
        try:
            self.query("SELECT 1 AS reachable")
        except Exception as error:
            message = f"cannot connect to the warehouse at {redact_url(self.cfg.url)}: {_message(error)}"
            raise WarehouseError(message) from None


def staged_rows(link: Link, staging: str) -> int:
    return int(link.query(f"SELECT count(*) AS n FROM {staging}")[0]["n"])


def drop_leftover_staging(link: Link, table: str) -> None:
    """Drop the staging tables of `table` that exports killed before their `finally` left behind."""
    schema, _, name = table.rpartition(".")
    in_schema = f" AND lower(table_schema) = lower('{schema}')" if schema else ""
    found = link.query(
        "SELECT table_schema, table_name FROM information_schema.tables "
        f"WHERE lower(table_name) LIKE lower('{name}{STAGING_SUFFIX}%'){in_schema}"
    )
    prefix = (name + STAGING_SUFFIX).lower()  # "_" matches any character in LIKE
    for row in found:
        if row["table_name"].lower().startswith(prefix):
            leftover = f"{row['table_schema']}.{row['table_name']}" if schema else row["table_name"]
            log.warning("dropping %s, the staging table of an export that was killed before it could drop it", leftover)
            _drop(link, leftover)


def _drop(link: Link, table: str) -> None:
    """Drop a staging table (it may hold raw ids when `warehouse.reidentify` is on); a failure is logged."""
    try:
        link.execute(f"DROP TABLE IF EXISTS {table}")
    except Exception as error:
        log.error("could not drop the staging table %s: %s; drop it by hand", table, _message(error))


def _message(error: Exception) -> str:
    """The database's own message (the innermost `...SQLException: ...` line), else the error's first line."""
    text = str(error)
    found = re.findall(r"\w*SQL\w*Exception: ([^\n]+)", text)
    return found[-1].strip() if found else (text.strip().splitlines() or ["(no message)"])[0]
