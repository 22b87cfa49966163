"""Ingest against its I/O floor: the same raw files read by Spark and written as Parquet unchanged.

Both are timed in the same run on the same files, so the ratio holds on a noisy machine; growth is the time at
each size against the time at the smallest.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import types as T

from behavior_spark import ingest
from behavior_spark.config import load_settings
from behavior_spark.generate import RAW_COLUMNS, generate_events, write_raw
from behavior_spark.session import local_session


def main(sizes: list[int], workdir: Path) -> str:
    rows = []
    for size in sizes:
        folder = workdir / f"ingest-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        settings = load_settings(
            None,
            [
                f"lake.root={folder / 'lake'}",
                f"generate.rows={size}",
                f"generate.output={folder / 'raw'}",
                f"generate.files={max(2, size // 500_000)}",
                f"ingest.input={folder / 'raw'}",
                "spark.shuffle_partitions=16",
                "spark.driver_memory=12g",
            ],
        )
        spark = local_session(settings.spark)
        write_raw(generate_events(spark, settings.generate), settings.generate)
        floor_s = _timed(lambda: _copy_to_parquet(spark, settings.generate.output, str(folder / "floor")))
        started = time.monotonic()
        result = ingest.run(spark, settings)
        ingest_s = time.monotonic() - started
        rows.append((size, result["rows_read"], ingest_s, floor_s))
        print(
            f"ingest bench {size}: {result['rows_read']} rows, ingest {ingest_s:.1f} s, floor {floor_s:.1f} s",
            flush=True,
        )
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return _table(rows)


def _copy_to_parquet(spark, source: str, target: str) -> None:
    schema = T.StructType([T.StructField(c, T.StringType()) for c in RAW_COLUMNS])
    spark.read.option("header", True).schema(schema).csv(source).write.mode("overwrite").parquet(target)


def _timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def _table(rows: list[tuple[int, int, float, float]]) -> str:
    base = rows[0][2]
    lines = [
        "| raw rows | ingest s | rows/s | I/O floor s | ingest / floor | time / smallest |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for _, read, ingest_s, floor_s in rows:
        lines.append(
            f"| {read:,} | {ingest_s:.1f} | {read / ingest_s:,.0f} | {floor_s:.1f} | "
            f"{ingest_s / floor_s:.2f}x | {ingest_s / base:.2f}x |"
        )
    return "\n".join(lines)
