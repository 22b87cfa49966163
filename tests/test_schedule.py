"""Four scheduled days (issue 15): each day new raw files land (one late, some dirty), and the stages run as the
deploy definitions run them: ingest, featurize, score, segment, export and report every day, and train every few
days with the flags the job passes (`--resume` and the scheduler's run id).

On days 1 to 3 two or three stages are first started as the deploy starts them (spark-submit) and SIGKILLed once their
first write has begun (a data file of its Delta table, a checkpoint, the warehouse's staging table, the report), then
run again: the day's checks must hold as on any other day. Every stage is killed once.

Checked every day: every raw line is accounted for once; every customer with events before the scoring date is
scored, from that date's snapshot; every training run trained from scratch (or, retried, resumed its own run); the
warehouse, the report and the Delta tables agree on the day's count, and no staging table is left.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import SMALL_RUN, TEST_KEY
from pyspark.sql import functions as F
from test_ingest import REES46_HEADER
from waiting import wait_until

from behavior_spark import artifacts, lake, model_artifact, pipeline, train
from behavior_spark.config import as_dict, load_settings
from behavior_spark.generate import generate_events

pytestmark = pytest.mark.submit

ROOT = Path(__file__).resolve().parents[1]

DAYS = 4
HISTORY_DAYS = 40  # the backfill the schedule starts from: enough for a labelled training snapshot
TRAIN_EVERY = 3  # days 0 and 3
DAILY = ["ingest", "featurize", "score", "segment", "export", "report"]
KILLED = {1: {"ingest", "score"}, 2: {"featurize", "segment"}, 3: {"train", "export", "report"}}  # day: stages


def settings_for(root: Path, postgres, *extra: str):
    return load_settings(
        None,
        [
            *SMALL_RUN,
            f"lake.root={root}/lake",
            f"ingest.input={root}/raw",
            f"generate.days={HISTORY_DAYS + DAYS}",
            "features.label_window_days=7",
            f"train.model_dir={root}/model",
            f"warehouse.url={postgres.url}",
            *extra,
        ],
    )


def raw_lines_by_day(spark, settings) -> dict[dt.date, list[str]]:
    """The generator's CSV lines (its own dirt included), grouped by the day of their event (small: test data)."""
    rows = generate_events(spark, settings.generate).toPandas()
    columns = REES46_HEADER.strip().split(",")
    lines = pd.Series([csv_line(values) for values in rows[columns].fillna("").astype(str).to_numpy()])
    days = pd.to_datetime(rows["event_time"].str[:10], errors="coerce", format="%Y-%m-%d")
    first = settings.generate.start_date  # the generator's dirty lines (no date) land with the history
    days = days.dt.date.where(days.notna(), first)
    return {day: sorted(group) for day, group in lines.groupby(days.to_numpy())}


def csv_line(values) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    return out.getvalue()


def land(folder: Path, name: str, lines: list[str], modified: dt.datetime | None = None) -> int:
    """Write a CSV file as a source system would; return its physical lines (the header included)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(REES46_HEADER + "".join(line + "\n" for line in lines))
    if modified is not None:
        os.utime(path, (modified.timestamp(), modified.timestamp()))
    return len(lines) + 1


def files_under(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def staging_tables(postgres) -> int:
    """Staging tables in the warehouse (psql beside the test server: the check must not use the code under test)."""
    psql = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1])
    port = re.search(r":(\d+)/", postgres.url).group(1)
    query = r"SELECT count(*) FROM pg_tables WHERE tablename LIKE '%\_\_staging\_%'"
    done = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", port, "-U", postgres.user, "-d", "postgres", "-tAc", query],
        env={**os.environ, "PGPASSWORD": postgres.password},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def first_write(stage: str, settings, postgres) -> Callable[[], int]:
    """A count that grows when `stage` starts writing its output."""
    if stage == "train":
        return lambda: files_under(artifacts.join(settings.train.model_dir, train.CHECKPOINTS))
    if stage == "export":
        return lambda: staging_tables(postgres)
    table = {"ingest": lake.EVENTS, "featurize": lake.FEATURES, "score": lake.SCORES, "segment": lake.SEGMENTS}
    return lambda: files_under(lake.path(settings.lake, table.get(stage, "reports")))


def kill_mid_write(stage: str, settings, folder: Path, written: Callable[[], int]) -> None:
    """Start `stage` through spark-submit and SIGKILL it, with every process it started, once `written` grows."""
    conf = folder / f"{stage}-killed.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    before = written()
    with open(folder / f"{stage}-killed.log", "w") as log:
        process = subprocess.Popen(
            [spark_submit, "--master", "local[2]", ROOT / "jobs" / f"{stage}.py", "--conf", conf],
            cwd=ROOT,
            env={**os.environ, "PATH": f"{spark_submit.parent}:{os.environ['PATH']}"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: process.poll() is not None or written() != before, 900, f"{stage} wrote nothing", 0.02)
        try:
            tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        assert process.wait() == -signal.SIGKILL, f"{stage} ended before its first write: {conf.with_suffix('.log')}"


def test_scheduled_days(spark, tmp_path, postgres, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", TEST_KEY)
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_USER", postgres.user)
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_PASSWORD", postgres.password)
    settings = settings_for(tmp_path, postgres)
    by_day = raw_lines_by_day(spark, settings)
    first_scheduled = settings.generate.start_date + dt.timedelta(days=HISTORY_DAYS)
    history = [line for day, lines in by_day.items() if day < first_scheduled for line in lines]
    raw = tmp_path / "raw"
    lines_landed = land(raw / "backfill", "history.csv", history)
    records_landed = len(history)
    held_back: list[str] = []

    for number in range(DAYS):
        day = first_scheduled + dt.timedelta(days=number)
        today = by_day.get(day, [])
        on_time, late = today[: len(today) * 2 // 3], today[len(today) * 2 // 3 :]
        dirty = [f"{day} 10:00:00 UTC,click,1,2,x,y,1.0,u{number},s", "not,a,valid,line"]
        lines_landed += land(raw / f"{day}", "events.csv", on_time + dirty + on_time[:2])  # two lines sent twice
        records_landed += len(on_time) + len(dirty) + 2
        if held_back:  # yesterday's late third arrives today, with yesterday's modification time
            yesterday = dt.datetime.combine(day - dt.timedelta(days=1), dt.time(23))
            lines_landed += land(raw / f"{day - dt.timedelta(days=1)}", "late.csv", held_back, yesterday)
            records_landed += len(held_back)
        held_back = late

        results = {}
        as_deployed = settings_for(tmp_path, postgres, "train.resume=true", f"train.run_id=job-run-{number}")
        trains = ["train"] if number % TRAIN_EVERY == 0 else []
        for stage in DAILY[:2] + trains + DAILY[2:]:
            stage_settings = as_deployed if stage == "train" else settings
            if stage in KILLED.get(number, ()):
                kill_mid_write(stage, stage_settings, tmp_path, first_write(stage, settings, postgres))
            results[stage] = pipeline.run_stage(stage, spark, stage_settings)
        print(f"day {number}:", {stage: result.seconds for stage, result in results.items()})  # shown on failure

        if trains:
            trained = results["train"]  # published, or kept out by the champion gate
            epochs = trained.epochs_run + trained.resumed_after_epoch
            resumed_own_run = "train" in KILLED.get(number, ())  # only the killed run's retry continues it
            assert epochs >= 1 and (trained.resumed_after_epoch == 0 or resumed_own_run), f"day {number}"
            published = model_artifact.load_metadata(settings.train.model_dir).model_version
            assert published == trained.model_version or not trained.published, f"day {number}: the gate's word"

        audits = lake.read(spark, settings.lake, lake.INGEST_AUDIT).filter(F.col("status") == "ok")
        books = audits.agg(F.sum("rows_read"), F.sum("raw_lines"), F.sum("clean"), F.sum("quarantined")).first()
        assert (books[0], books[1]) == (records_landed, lines_landed), f"day {number}: every line read once"

        scoring_date = day + dt.timedelta(days=1)
        assert results["score"].scoring_date == scoring_date.isoformat(), f"day {number}: today's picture"
        customers = (
            lake.read(spark, settings.lake, lake.EVENTS)
            .filter(F.col("event_date") < scoring_date)
            .select("customer_id")
            .distinct()
            .count()
        )
        scores = lake.read(spark, settings.lake, lake.SCORES).filter(F.col("scoring_date") == scoring_date)
        assert scores.count() == customers, f"day {number}: every customer scored"
        assert {r[0] for r in scores.select("cutoff_date").distinct().collect()} == {scoring_date}

        segments = lake.read(spark, settings.lake, lake.SEGMENTS).filter(F.col("scoring_date") == scoring_date)
        assert segments.count() == customers == results["export"].exported, f"day {number}: warehouse"
        report = Path(results["report"].report).read_text()
        assert re.search(rf"\b{customers:,} customers scored", report), f"day {number}: report"
        assert staging_tables(postgres) == 0, f"day {number}: a staging table left in the warehouse"
