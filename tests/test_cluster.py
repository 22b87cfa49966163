"""A worker lost mid-job on a real Spark standalone cluster (issue 19): a master and three 1-core workers started from
the venv's Spark (`tests/cluster.py`), the driver submitted by `spark-submit --master spark://...` as a user submits
it. The whole pipeline on such a cluster is `tests/test_end_to_end.py`'s run.

`make cluster-test` runs both files.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from cluster import finished, kill_tree, standalone, submit
from conftest import TEST_KEY
from pyspark.sql import functions as F

from behavior_spark import generate, lake
from behavior_spark.config import as_dict, load_settings


def books(spark, settings) -> dict[str, int]:
    """The ingest audit's totals over its completed batches, and the rows the events table holds."""
    audits = lake.read(spark, settings.lake, lake.INGEST_AUDIT).filter(F.col("status") == "ok")
    totals = audits.agg(*(F.sum(c).alias(c) for c in ("rows_read", "clean", "quarantined", "duplicates", "bot_rows")))
    row = {k: v or 0 for k, v in totals.first().asDict().items()}
    return {**row, "events": lake.read(spark, settings.lake, lake.EVENTS).count()}


def test_a_worker_killed_mid_ingest_loses_nothing(spark, tmp_path):
    """One of three workers is SIGKILLed (with its executor) once the first of two batches is committed. The job
    either recovers on the others or fails saying so; either way the tables hold whole batches only, and a re-run
    brings in the rest, every raw row accounted for once."""
    settings = load_settings(
        None,
        [
            f"lake.root={tmp_path}/lake",
            f"generate.output={tmp_path}/raw",
            f"ingest.input={tmp_path}/raw",
            "generate.rows=10000",
            "generate.files=2",
            "ingest.max_files_per_trigger=1",
            "spark.shuffle_partitions=2",
        ],
    )
    generate.run(spark, settings)
    raw_rows = spark.read.option("header", True).csv(settings.generate.output).count()
    conf = tmp_path / "ingest.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    env = {"BEHAVIOR_SPARK_PSEUDONYM_KEY": TEST_KEY}

    with standalone(tmp_path, workers=3) as cluster:
        victim = cluster.processes[-1]  # the last worker: two stay whichever the job's tasks run on
        job = submit(cluster.url, "ingest", conf, env)
        recorded = Path(lake.path(settings.lake, lake.INGESTED_FILES))
        deadline = time.monotonic() + 600
        while job.poll() is None and not any(recorded.glob("**/*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.poll() is None, "ingest ended before its first batch was recorded: nothing was killed mid-run"
        kill_tree(victim.pid)
        code, _, err = finished(job)
        assert code == 0 or any("ingest failed: " in line for line in err.splitlines()), err[-3000:]

        after_kill = books(spark, settings)  # whole batches only: what the events hold is what the audits counted
        assert after_kill["events"] == after_kill["clean"]
        assert after_kill["rows_read"] == sum(after_kill[k] for k in ("clean", "quarantined", "duplicates", "bot_rows"))

        code, _, err = finished(submit(cluster.url, "ingest", conf, env))
        assert code == 0, err[-3000:]
    after_retry = books(spark, settings)
    assert after_retry["rows_read"] == raw_rows
    assert after_retry["events"] == after_retry["clean"]
