"""How far issue 18's two ratio goals can be met: the least each stage must do, against the reference its goal is
set on, measured side by side in one process on the same data.

- Ingest against its core (`stages.ingest_core`: parse, pseudonymise, shuffle by day, sort, partitioned write);
  goal <= 1.5x. Besides the core, ingest must keep the customer-day summaries (the issue asks for them inside the
  run): summarising every event of the table (`summaries.rebuild`, what a first load's ingest does) is timed alone.
- A day's featurize against one aggregation of the summaries (the floor of `bench.incremental`); goal <= 2x. Every
  customer's scoring row changes every day (the days since their last event move on), so a day's run writes one
  row per customer at least: the scoring snapshot's rows, read back and written to a new Delta table, are timed
  alone.

Each part is a lower bound of what its stage costs (the summaries' as this project computes them; featurize's, as
long as it hands the scoring stage a row per customer): the ratio of the bound to the reference says whether the
goal leaves room.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pyspark.sql import functions as F

from behavior_spark import features, ingest, lake, summaries
from behavior_spark.generate import generate_events, write_raw
from behavior_spark.session import local_session
from bench.common import bench_settings
from bench.incremental import summaries_floor
from bench.stages import WARM_UP_ROWS, ingest_core, noop, timed


def main(sizes: list[int], workdir: Path) -> str:
    print(f"warm-up, not in the table: {measure(WARM_UP_ROWS, workdir / 'bounds-warm-up')}", flush=True)
    rows = []
    for size in sizes:
        rows.append(measure(size, workdir / f"bounds-{size}"))
        print(f"size {size}: {rows[-1]}", flush=True)
    lines = [
        "| raw rows | ingest s | core s | ingest / core | summaries alone s | (core + summaries) / core "
        "| featurize floor s | scoring rows | their write alone s | write / floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, ingest_s, core_s, summaries_s, floor_s, scoring_rows, write_s in rows:
        lines.append(
            f"| {size:,} | {ingest_s:.1f} | {core_s:.1f} | {ingest_s / core_s:.2f}x | {summaries_s:.1f} | "
            f"{(core_s + summaries_s) / core_s:.2f}x | {floor_s:.1f} | {scoring_rows:,} | {write_s:.1f} | "
            f"{write_s / floor_s:.2f}x |"
        )
    return "\n".join(lines)


def measure(size: int, folder: Path) -> tuple:
    """(raw rows, ingest s, core s, summaries alone s, featurize floor s, scoring rows, their write alone s)."""
    shutil.rmtree(folder, ignore_errors=True)
    settings = bench_settings(folder, size)
    spark = local_session(settings.spark)
    write_raw(generate_events(spark, settings.generate), settings.generate)

    core_s = timed(lambda: ingest_core(spark, settings, str(folder / "core")))
    started = time.monotonic()
    result = ingest.run(spark, settings)
    ingest_s = time.monotonic() - started
    events_version = lake.version(spark, settings.lake, lake.EVENTS)
    summaries_s = timed(lambda: summaries.rebuild(spark, settings, events_version))

    features.run(spark, settings)
    floor_s = timed(lambda: noop(summaries_floor(lake.read(spark, settings.lake, lake.CUSTOMER_DAYS))))
    scoring = lake.read(spark, settings.lake, lake.FEATURES).filter(F.col("split") == features.SCORE_SPLIT)
    scoring_rows = scoring.count()
    write_s = timed(lambda: scoring.write.format("delta").save(str(folder / "scoring-rows")))

    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return result.rows_read, ingest_s, core_s, summaries_s, floor_s, scoring_rows, write_s
