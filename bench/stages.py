"""Ingest and featurize at growing sizes, each against its floor measured in the same run on the same data.

- ingest against the I/O floor: Spark reads the same raw CSV files and writes them as Parquet unchanged;
- featurize against one shuffle of the same events: read them, groupBy customer, count.

Growth is each size's time against the smallest size's time. A small warm-up run comes first and is left out of
the table: without it the smallest size pays the JVM's one-time costs (loading and compiling the CSV, Delta and
window code), which a cluster job pays once too but which say nothing about how the stage scales.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import types as T

from behavior_spark import features, ingest, lake
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
            ratio_table(ingest_rows, "raw rows", "ingest", "read CSV, write Parquet"),
            ratio_table(featurize_rows, "events", "featurize", "groupBy customer count"),
        ]
    )


def measure(size: int, folder: Path) -> tuple[tuple[int, float, float], tuple[int, float, float]]:
    """(raw rows, ingest s, I/O floor s) and (events, featurize s, shuffle floor s) for one size."""
    shutil.rmtree(folder, ignore_errors=True)
    settings = bench_settings(folder, size)
    spark = local_session(settings.spark)
    write_raw(generate_events(spark, settings.generate), settings.generate)

    started = time.monotonic()
    copy_to_parquet(spark, settings.generate.output, str(folder / "floor"))
    io_floor_s = time.monotonic() - started
    started = time.monotonic()
    result = ingest.run(spark, settings)
    ingest_s = time.monotonic() - started

    events = lake.read(spark, settings.lake, lake.EVENTS)
    n_events = events.count()
    started = time.monotonic()
    events.groupBy("customer_id").count().write.mode("overwrite").format("noop").save()
    shuffle_floor_s = time.monotonic() - started
    started = time.monotonic()
    features.run(spark, settings)
    featurize_s = time.monotonic() - started

    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return (result["rows_read"], ingest_s, io_floor_s), (n_events, featurize_s, shuffle_floor_s)


def copy_to_parquet(spark, source: str, target: str) -> None:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS])
    spark.read.option("header", True).schema(schema).csv(source).write.mode("overwrite").parquet(target)
