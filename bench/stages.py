"""Ingest and featurize at growing sizes, each against its floor measured in the same run on the same data.

- ingest against the I/O floor: Spark reads the same raw CSV files and writes them as Parquet unchanged;
- featurize against one shuffle of the same events: read them, groupBy customer, count.

Growth is each size's time against the smallest size's time.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import types as T

from bench.common import bench_settings, ratio_table
from behavior_spark import features, ingest, lake
from behavior_spark.generate import RAW_COLUMNS, generate_events, write_raw
from behavior_spark.session import local_session


def main(sizes: list[int], workdir: Path) -> str:
    ingest_rows, featurize_rows = [], []
    for size in sizes:
        folder = workdir / f"stages-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        settings = bench_settings(folder, size)
        spark = local_session(settings.spark)
        write_raw(generate_events(spark, settings.generate), settings.generate)

        floor_s = _seconds(lambda: copy_to_parquet(spark, settings.generate.output, str(folder / "floor")))
        started = time.monotonic()
        result = ingest.run(spark, settings)
        ingest_rows.append((result["rows_read"], time.monotonic() - started, floor_s))

        events = lake.read(spark, settings.lake, lake.EVENTS)
        n_events = events.count()
        floor_s = _seconds(lambda: events.groupBy("customer_id").count().write.mode("overwrite").format("noop").save())
        featurize_s = _seconds(lambda: features.run(spark, settings))
        featurize_rows.append((n_events, featurize_s, floor_s))
        print(f"size {size}: ingest {ingest_rows[-1]}, featurize {featurize_rows[-1]}", flush=True)
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return "\n\n".join([
        ratio_table(ingest_rows, "raw rows", "ingest", "read CSV, write Parquet"),
        ratio_table(featurize_rows, "events", "featurize", "groupBy customer count"),
    ])


def copy_to_parquet(spark, source: str, target: str) -> None:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS])
    spark.read.option("header", True).schema(schema).csv(source).write.mode("overwrite").parquet(target)


def _seconds(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started
