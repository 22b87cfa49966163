"""Ingest and featurize at growing sizes, each against its floor measured in the same run on the same data.

- ingest against the I/O floor: Spark reads the same raw CSV files and writes them as Parquet unchanged;
- featurize against one shuffle of the same events: read them, groupBy customer, count.

Each table also has a reference that does only the unavoidable core of the stage, to show how much of the gap to
the floor any design must pay: for ingest, parse, pseudonymise, shuffle by day, sort by customer and write the
partitioned Delta table (no quarantine, dedup, sessions, bots or accounting); for featurize, read the columns the
features use and aggregate them per customer in one groupBy (no windows, sequences, joins or writes).

Growth is each size's time against the smallest size's time. A small warm-up run comes first and is left out of
the table: without it the smallest size pays the JVM's one-time costs (loading and compiling the CSV, Delta and
window code), which a cluster job pays once too but which say nothing about how the stage scales.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import canonical, features, ingest, lake, privacy, sources
from behavior_spark.config import Settings
from behavior_spark.generate import RAW_COLUMNS, generate_events, write_raw
from behavior_spark.session import local_session
from bench.common import bench_settings, ratio_table

WARM_UP_ROWS = 50_000


def main(sizes: list[int], workdir: Path) -> str:
    warm_ingest, warm_featurize = measure(WARM_UP_ROWS, workdir / "stages-warm-up")
    print(f"warm-up, not in the table: ingest {warm_ingest}, featurize {warm_featurize}", flush=True)
    ingest_rows, featurize_rows = [], []
    for size in sizes:
        ingest_row, featurize_row = measure(size, workdir / f"stages-{size}")
        ingest_rows.append(ingest_row)
        featurize_rows.append(featurize_row)
        print(f"size {size}: ingest {ingest_row}, featurize {featurize_row}", flush=True)
    return "\n\n".join(
        [
            ratio_table(ingest_rows, "raw rows", "ingest", "read CSV, write Parquet", "parse, hash, shuffle, write"),
            ratio_table(featurize_rows, "events", "featurize", "groupBy customer count", "one aggregation"),
        ]
    )


def measure(size: int, folder: Path) -> tuple[tuple, tuple]:
    """(raw rows, ingest s, I/O floor s, core s) and (events, featurize s, shuffle floor s, core s) for one size."""
    shutil.rmtree(folder, ignore_errors=True)
    settings = bench_settings(folder, size)
    spark = local_session(settings.spark)
    write_raw(generate_events(spark, settings.generate), settings.generate)

    io_floor_s = timed(lambda: copy_to_parquet(spark, settings.generate.output, str(folder / "floor")))
    ingest_core_s = timed(lambda: ingest_core(spark, settings, str(folder / "core")))
    started = time.monotonic()
    result = ingest.run(spark, settings)
    ingest_s = time.monotonic() - started

    events = lake.read(spark, settings.lake, lake.EVENTS)
    n_events = events.count()
    shuffle_floor_s = timed(lambda: noop(events.groupBy("customer_id").count()))
    featurize_core_s = timed(lambda: noop(featurize_core(events)))
    featurize_s = timed(lambda: features.run(spark, settings))

    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return (
        (result.rows_read, ingest_s, io_floor_s, ingest_core_s),
        (n_events, featurize_s, shuffle_floor_s, featurize_core_s),
    )


def timed(step) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def noop(df: DataFrame) -> None:
    df.write.mode("overwrite").format("noop").save()


def copy_to_parquet(spark: SparkSession, source: str, target: str) -> None:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS])
    spark.read.option("header", True).schema(schema).csv(source).write.mode("overwrite").parquet(target)


def ingest_core(spark: SparkSession, settings: Settings, target: str) -> None:
    """Parse, pseudonymise, shuffle by day, sort by customer and time, write partitioned Delta: nothing else."""
    mapping = sources.load_mapping(settings.ingest.source)
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS])
    typed = (
        spark.read.option("header", True)
        .schema(schema)
        .csv(settings.ingest.input)
        .select(
            canonical.parse_timestamp(F.col("event_time"), mapping.timestamp_format).alias("event_time"),
            privacy.keyed_hash(spark, privacy.pseudonym_key(settings.ingest))(F.col("user_id")).alias("customer_id"),
            "event_type",
            F.col("product_id").try_cast("long").alias("product_id"),
            F.col("category_id").try_cast("long").alias("category_id"),
            "category_code",
            "brand",
            F.col("price").try_cast("double").alias("price"),
        )
        .withColumn("event_date", F.to_date("event_time"))
    )
    (
        typed.repartition("event_date")
        .sortWithinPartitions("customer_id", "event_date", "event_time")
        .write.format("delta")
        .partitionBy("event_date")
        .save(target)
    )


def featurize_core(events: DataFrame) -> DataFrame:
    """One groupBy customer over the columns the features read, with an aggregate of each."""
    return events.groupBy("customer_id").agg(
        F.count(F.lit(1)),
        F.min("event_time"),
        F.max("event_time"),
        F.count(F.when(F.col("event_type") == "purchase", 1)),
        F.sum(F.col("price") * F.col("quantity")),
        F.approx_count_distinct("session_id"),
        F.approx_count_distinct("category_id"),
        F.approx_count_distinct("brand"),
        F.max("product_id"),
        F.max("event_date"),
    )
