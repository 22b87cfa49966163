"""A daily run against a full run (issue 18): 120 days of history, then one new day.

For each size the generator writes 121 days of raw logs; the first 120 land in the input and are ingested and
featurized from scratch (the full run), then the last day lands (with the few events of its sessions past midnight)
and the daily run ingests it (the customer-day summaries of those days are replaced) and featurizes again, moving
the scoring date forward as a scheduled run does. Both are timed in the same process, one after the other,
so the ratio daily / full is measured side by side. Featurize is also set against its floor: one aggregation per
customer over the summaries it reads.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import features, ingest, lake
from behavior_spark.generate import generate_events
from behavior_spark.session import local_session
from bench.common import bench_settings
from bench.stages import WARM_UP_ROWS, noop, timed

HISTORY_DAYS = 120


def main(sizes: list[int], workdir: Path) -> str:
    print(f"warm-up, not in the table: {measure(WARM_UP_ROWS, workdir / 'incremental-warm-up')}", flush=True)
    rows = []
    for size in sizes:
        rows.append(measure(size, workdir / f"incremental-{size}"))
        print(f"size {size}: {rows[-1]}", flush=True)
    lines = [
        "| raw rows (121 days) | full ingest s | full featurize s | day ingest s | day featurize s | day / full "
        "| featurize floor s (one aggregation of the summaries) | day featurize / floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, full_ingest, full_featurize, day_ingest, day_featurize, floor in rows:
        day, full = day_ingest + day_featurize, full_ingest + full_featurize
        lines.append(
            f"| {size:,} | {full_ingest:.1f} | {full_featurize:.1f} | {day_ingest:.1f} | {day_featurize:.1f} | "
            f"{day / full:.2f}x | {floor:.1f} | {day_featurize / floor:.2f}x |"
        )
    return "\n".join(lines)


def measure(size: int, folder: Path) -> tuple:
    """(raw rows, full ingest s, full featurize s, day ingest s, day featurize s, featurize floor s)."""
    shutil.rmtree(folder, ignore_errors=True)
    settings = bench_settings(folder, size, f"generate.days={HISTORY_DAYS + 1}")
    spark = local_session(settings.spark)
    new_day = settings.generate.start_date + dt.timedelta(days=HISTORY_DAYS)
    held = folder / "held"
    write_days(spark, settings, new_day, str(held))
    raw_rows = spark.read.option("header", True).csv([settings.ingest.input, str(held / "day")]).count()

    full_ingest = timed(lambda: ingest.run(spark, settings))
    full_featurize = timed(lambda: features.run(spark, settings))
    shutil.move(str(held / "day"), str(Path(settings.ingest.input) / "day"))
    day_ingest = timed(lambda: ingest.run(spark, settings))
    day_featurize = timed(lambda: features.run(spark, settings))
    floor = timed(lambda: noop(summaries_floor(lake.read(spark, settings.lake, lake.CUSTOMER_DAYS))))
    spark.stop()
    shutil.rmtree(folder, ignore_errors=True)
    return raw_rows, full_ingest, full_featurize, day_ingest, day_featurize, floor


def summaries_floor(days: DataFrame) -> DataFrame:
    """Featurize's floor: one aggregation per customer over the summaries `days`, reading what features read."""
    return days.groupBy("customer_id").agg(
        F.sum("n"), F.max("last"), F.min("first"), F.sum("revenue"), F.sum(F.size("recent"))
    )


def write_days(spark: SparkSession, settings, new_day: dt.date, held: str) -> None:
    """The history's raw files into the input; under `held`/day the new day's, and the few later ones of its sessions
    past midnight, so the daily run's last event day is later than the full run's (lines without a date: history)."""
    raw = generate_events(spark, settings.generate).cache()
    day = F.substring("event_time", 1, 10)
    from_new_day = F.coalesce(day.rlike(r"^\d{4}-\d{2}-\d{2}$") & (day >= F.lit(new_day.isoformat())), F.lit(False))
    raw.filter(~from_new_day).write.option("header", True).csv(settings.ingest.input)
    raw.filter(from_new_day).coalesce(1).write.option("header", True).csv(f"{held}/day")
    raw.unpersist()
