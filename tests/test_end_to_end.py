"""The whole pipeline, as a user submits it (`spark-submit jobs/run.py --conf ...`), on a tiny generated dataset.

Real Spark, real Delta tables, two real Horovod processes reading through Petastorm, real predict_batch_udf.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from behavior_spark import lake
from behavior_spark.config import as_dict
from behavior_spark.train import METADATA_FILE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """Run every stage once through spark-submit; yield the settings and the run's printed summary."""
    from behavior_spark.config import load_settings

    root = tmp_path_factory.mktemp("e2e") / "lakehouse"
    settings = load_settings(
        None,
        [
            f"lake.root={root}",
            "generate.rows=20000",
            "generate.files=2",
            f"generate.output={root}/raw/events",
            f"ingest.input={root}/raw/events",
            "spark.shuffle_partitions=2",
            "train.epochs=2",
            "train.batch_size=128",
            f"train.model_dir={root}/models/propensity",
            "segment.k=4",
        ],
    )
    conf = root.parent / "e2e.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {
        **os.environ,
        "BEHAVIOR_SPARK_PSEUDONYM_KEY": "test-only-pseudonym-key-not-a-secret",
        "PATH": f"{spark_submit.parent}{os.pathsep}{os.environ['PATH']}",
    }  # as with the venv activated
    result = subprocess.run(
        [str(spark_submit), "--master", "local[2]", str(ROOT / "jobs" / "run.py"), "--conf", str(conf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return settings, result.stdout


def test_summary_names_every_stage(finished_run):
    _, summary = finished_run
    for stage in ("generate", "ingest", "featurize", "train", "score", "segment"):
        assert f"  {stage}" in summary


def test_ingest_counts_reconcile(spark, finished_run):
    settings, _ = finished_run
    audit = lake.read(spark, settings.lake, lake.INGEST_AUDIT).first()
    assert audit["rows_read"] == audit["clean"] + audit["quarantined"] + audit["duplicates"] + audit["bot_rows"]
    assert audit["clean"] == lake.read(spark, settings.lake, lake.EVENTS).count()
    assert audit["quarantined"] == lake.read(spark, settings.lake, lake.QUARANTINE).count()
    assert min(audit["duplicates"], audit["bot_rows"], audit["quarantined"]) > 0
    raw_rows = spark.read.option("header", True).csv(settings.generate.output).count()
    assert audit["rows_read"] == raw_rows


def test_no_raw_user_id_reaches_the_events(spark, finished_run):
    settings, _ = finished_run
    events = lake.read(spark, settings.lake, lake.EVENTS)
    assert "user_id" not in events.columns
    assert events.filter(F.length("customer_id") != 64).count() == 0


def test_one_feature_row_per_customer_with_a_label(spark, finished_run):
    settings, _ = finished_run
    table = lake.read(spark, settings.lake, lake.FEATURES)
    assert table.count() == table.select("customer_id").distinct().count() > 100
    assert {r["label"] for r in table.select("label").distinct().collect()} == {0, 1}


def test_two_horovod_processes_ran_the_same_steps(finished_run):
    settings, _ = finished_run
    metadata = json.loads(Path(settings.train.model_dir, METADATA_FILE).read_text())
    steps = metadata["steps_per_rank"]
    assert len(steps) == 2 and steps[0] == steps[1] > 0
    assert len(metadata["feature_names"]) == len(metadata["normalisation"])


def test_every_customer_scored_once_in_0_1(spark, finished_run):
    settings, _ = finished_run
    scores = lake.read(spark, settings.lake, lake.SCORES)
    customers = lake.read(spark, settings.lake, lake.FEATURES).select("customer_id")
    assert scores.count() == scores.select("customer_id").distinct().count() == customers.count()
    assert scores.filter(~F.col("propensity").between(0, 1) | F.col("propensity").isNull()).count() == 0
    assert scores.filter(F.size("embedding") != 64).count() == 0


def test_every_customer_in_exactly_one_segment(spark, finished_run):
    settings, _ = finished_run
    segments = lake.read(spark, settings.lake, lake.SEGMENTS)
    scores = lake.read(spark, settings.lake, lake.SCORES)
    assert segments.count() == segments.select("customer_id").distinct().count() == scores.count()
    assert segments.select("segment_id").distinct().count() == settings.segment.k
