"""The whole pipeline and every invariant of a finished run, checked on two runs of the same settings
(`conftest.pipeline_settings`, a tiny generated log):

- `in-process` (fast tier): the session's shared lakehouse (`small_lake`), every stage run in this process;
- `cluster` (tier `cluster`): as a user submits it (`spark-submit --master spark://... jobs/run.py --conf ...`) to a
  real Spark standalone cluster (a master and three 1-core workers, `tests/cluster.py`), one of which is SIGKILLed,
  with its executor, in the middle of ingest: the run must recover on the two left and every check hold as for an
  undisturbed run.

Real Spark, real Delta tables, two real Horovod processes reading through Petastorm, real Arrow scoring UDFs, a real
PostgreSQL warehouse. What depends on the code alone, not on how the run was made (exports again, the report, the
notebooks, scoring again), is checked on the in-process run; what changes the lakehouse works on a copy.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cluster import finished, kill_tree, standalone, submit
from conftest import TEST_KEY, copy_of, pipeline_settings
from pyspark.sql import functions as F
from waiting import wait_until

from behavior_spark import lake, model_artifact
from behavior_spark.config import as_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["in-process", pytest.param("cluster", marks=pytest.mark.cluster)])
def finished_run(request, spark, tmp_path_factory, postgres):
    """The settings and the printed summary of a finished run: the shared lakehouse, or the cluster run."""
    if request.param == "in-process":
        run = request.getfixturevalue("small_lake")
        return run.settings, run.summary
    return cluster_run(spark, tmp_path_factory, postgres)


def cluster_run(spark, tmp_path_factory, postgres):
    """Every stage run once through spark-submit on a standalone cluster that loses a worker once ingest has committed
    the first of its two batches: the settings and the printed summary."""
    from behavior_spark import generate

    root = tmp_path_factory.mktemp("e2e") / "lakehouse"
    settings = pipeline_settings(root, postgres.url, "warehouse.table=cluster_segments")
    generate.run(spark, settings)  # its own step: `run` reads the configured input and never generates
    conf = root.parent / "e2e.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    env = {
        "BEHAVIOR_SPARK_PSEUDONYM_KEY": TEST_KEY,
        "BEHAVIOR_SPARK_WAREHOUSE_USER": postgres.user,
        "BEHAVIOR_SPARK_WAREHOUSE_PASSWORD": postgres.password,
    }
    with standalone(root.parent, workers=3) as cluster:
        job = submit(cluster.url, "run", conf, env)
        kill_a_worker_after_the_first_batch(cluster, job, settings)
        code, out, err = finished(job, timeout=1800)
        if code != 0:  # a batch's kept rows may go with the executor: ingest then fails saying so, and a retry ends it
            assert "ingest failed: " in err, err[-3000:]
            code, out, err = finished(submit(cluster.url, "run", conf, env), timeout=1800)
    failures = [line for line in err.splitlines() if " failed: " in line]
    assert code == 0, "\n".join(failures) or err[-3000:]
    return settings, out


def kill_a_worker_after_the_first_batch(cluster, job, settings) -> None:
    """SIGKILL the last worker (two stay, whichever the tasks run on) once ingest has recorded its first batch."""
    recorded = Path(lake.path(settings.lake, lake.INGESTED_FILES))
    wait_until(
        lambda: job.poll() is not None or any(recorded.glob("**/*.parquet")), 900, "ingest recorded no batch", 0.05
    )
    assert job.poll() is None, "the run ended before ingest recorded its first batch: nothing was killed mid-run"
    kill_tree(cluster.processes[-1].pid)


def test_summary_is_a_table_of_every_stage(finished_run):
    _, summary = finished_run
    first_cells = {line.split("│")[1].strip() for line in summary.splitlines() if line.startswith("│")}
    assert {"ingest", "featurize", "train", "score", "segment", "export", "report"} <= first_cells
    assert "generate" not in first_cells
    assert "quarantined by reason: " in summary  # the generator's dirt, by reason, under the table


def test_ingest_counts_reconcile_even_after_a_lost_worker(spark, finished_run):
    settings, _ = finished_run
    audits = lake.read(spark, settings.lake, lake.INGEST_AUDIT)
    audits = audits.filter(F.col("status") == "ok")  # a batch failed by the lost worker is audited as such
    assert audits.count() == audits.select("batch_id").distinct().count() > 1  # each batch (one file) once
    columns = ("rows_read", "clean", "quarantined", "duplicates", "bot_rows")
    audit = audits.agg(*(F.sum(c).alias(c) for c in columns)).first()
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


def test_one_feature_row_per_customer_and_snapshot_labelled_for_training_not_for_scoring(spark, finished_run):
    settings, _ = finished_run
    table = lake.read(spark, settings.lake, lake.FEATURES)
    training = table.filter(F.col("split") != "score")
    assert training.count() == training.select("customer_id").distinct().count() > 100
    assert {r["label"] for r in training.select("label").distinct().collect()} == {0, 1}
    scoring = table.filter(F.col("split") == "score")
    assert {r["cutoff_date"] for r in scoring.select("cutoff_date").distinct().collect()} == {
        settings.score.scoring_date
    }
    assert scoring.count() == scoring.select("customer_id").distinct().count() > training.count()  # newer customers
    assert scoring.filter(F.col("label").isNotNull()).count() == 0


def test_two_horovod_processes_ran_the_same_steps(finished_run):
    settings, _ = finished_run
    metadata = model_artifact.load_metadata(settings.train.model_dir)
    steps = metadata.steps_per_rank
    assert len(steps) == 2 and steps[0] == steps[1] > 0
    assert len(metadata.feature_names) == len(metadata.normalisation)


def test_every_customer_scored_once_in_0_1(spark, finished_run):
    settings, _ = finished_run
    scores = lake.read(spark, settings.lake, lake.SCORES)
    before = F.col("event_date") < F.lit(settings.score.scoring_date)
    customers = lake.read(spark, settings.lake, lake.EVENTS).filter(before).select("customer_id").distinct()
    assert scores.count() == scores.select("customer_id").distinct().count() == customers.count()  # all, as of then
    assert {r["cutoff_date"] for r in scores.select("cutoff_date").distinct().collect()} == {
        settings.score.scoring_date
    }
    assert scores.filter(~F.col("propensity").between(0, 1) | F.col("propensity").isNull()).count() == 0
    value = (F.col("expected_purchases") >= 0) & (F.col("expected_revenue") >= 0)
    assert (
        scores.filter(~value | F.col("expected_purchases").isNull() | F.col("expected_revenue").isNull()).count() == 0
    )
    assert scores.filter(F.size("embedding") != 64).count() == 0


def test_every_customer_in_exactly_one_segment(spark, finished_run):
    settings, _ = finished_run
    segments = lake.read(spark, settings.lake, lake.SEGMENTS)
    scores = lake.read(spark, settings.lake, lake.SCORES)
    assert segments.count() == segments.select("customer_id").distinct().count() == scores.count()
    assert settings.segment.k_min <= segments.select("segment_id").distinct().count() <= settings.segment.k_max


def test_scores_equal_the_models_own_predictions(spark, finished_run):
    from behavior_spark import features, model

    settings, _ = finished_run
    metadata = model_artifact.load_metadata(settings.train.model_dir)
    table = lake.read(spark, settings.lake, lake.FEATURES).transform(features.model_inputs, metadata.normalisation)
    answers = ["propensity", "expected_purchases", "expected_revenue"]
    scores = lake.read(spark, settings.lake, lake.SCORES).select("customer_id", "cutoff_date", *answers)
    sample = table.join(scores, on=["customer_id", "cutoff_date"]).limit(300).toPandas()
    columns = {name: np.stack(sample[name].to_numpy()) for name in features.MODEL_INPUT_COLUMNS}
    predicted = model.load_model(settings.train.model_dir, metadata).predict(model.scoring_inputs(columns), verbose=0)
    for name, output in zip(answers, (predicted[0], predicted[2], predicted[3]), strict=True):
        np.testing.assert_allclose(sample[name].to_numpy(), output[:, 0], rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_warehouse_table_equals_the_delta_table(spark, finished_run, postgres):
    settings, _ = finished_run
    warehouse = read_warehouse(spark, postgres, settings.warehouse.table)
    delta = lake.read(spark, settings.lake, lake.SEGMENTS).select("customer_id", "segment_id", "segment_name")
    assert warehouse.count() == delta.count() > 0
    assert warehouse.select("customer_id", "segment_id", "segment_name").exceptAll(delta).count() == 0
    deciles = {r["value_decile"] for r in warehouse.select("value_decile").distinct().collect()}
    assert deciles <= set(range(1, 11)) and len(deciles) > 5  # the value deciles reach the warehouse


def test_exporting_the_same_date_again_changes_nothing(spark, small_lake, postgres, monkeypatch):
    from behavior_spark import warehouse

    settings = small_lake.settings
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_USER", postgres.user)
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_PASSWORD", postgres.password)
    before = read_warehouse(spark, postgres, settings.warehouse.table).toPandas()
    warehouse.run(spark, settings)
    after = read_warehouse(spark, postgres, settings.warehouse.table).toPandas()
    key = ["customer_id"]
    pd.testing.assert_frame_equal(before.sort_values(key, ignore_index=True), after.sort_values(key, ignore_index=True))


def test_wrong_credentials_or_an_unreachable_warehouse_fail_clearly(spark, small_lake, postgres, monkeypatch):
    from behavior_spark import warehouse

    settings = small_lake.settings
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_USER", postgres.user)
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_PASSWORD", "not-the-password")
    with pytest.raises(warehouse.WarehouseError, match="password authentication failed"):
        warehouse.run(spark, settings)
    elsewhere = settings.warehouse.model_copy(update={"url": "jdbc:postgresql://127.0.0.1:1/postgres"})
    unreachable = settings.model_copy(update={"warehouse": elsewhere})
    with pytest.raises(
        warehouse.WarehouseError, match="cannot connect to the warehouse at jdbc:postgresql://127.0.0.1:1"
    ):
        warehouse.run(spark, unreachable)
    assert read_warehouse(spark, postgres, settings.warehouse.table).count() > 0  # nothing half-written


def test_an_export_that_does_not_add_up_rolls_back_and_leaves_no_staging_table(
    spark, small_lake, postgres, monkeypatch
):
    from behavior_spark import warehouse

    settings = small_lake.settings
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_USER", postgres.user)
    monkeypatch.setenv("BEHAVIOR_SPARK_WAREHOUSE_PASSWORD", postgres.password)
    before = read_warehouse(spark, postgres, settings.warehouse.table).toPandas()
    real_count = warehouse.staged_rows

    def one_row_lost(link, staging):  # the warehouse holds one row fewer than Delta wrote
        return real_count(link, staging) - 1

    monkeypatch.setattr(warehouse, "staged_rows", one_row_lost)
    with pytest.raises(warehouse.WarehouseError, match="rows staged .* but the Delta tables hold"):
        warehouse.run(spark, settings)
    after = read_warehouse(spark, postgres, settings.warehouse.table).toPandas()
    key = ["customer_id"]
    pd.testing.assert_frame_equal(before.sort_values(key, ignore_index=True), after.sort_values(key, ignore_index=True))
    tables = read_warehouse(spark, postgres, "information_schema.tables").select("table_name")
    assert tables.filter(F.col("table_name").contains("staging")).count() == 0


def test_the_report_renders_with_its_images_fits_a_window_and_holds_no_customer_ids(small_lake, tmp_path):
    settings = small_lake.settings
    report = Path(lake.path(settings.lake, "reports"), f"report-{settings.score.scoring_date}.html")
    html = report.read_text()
    assert re.search(r"\b[0-9a-f]{64}\b", html) is None  # no pseudonymous id, let alone a raw one
    chromium = shutil.which("chromium")
    assert chromium, "chromium not installed: run scripts/setup.sh (make test does)"
    headless = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run([*headless, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    counts = re.search(r'data-images="(\d+)" data-images-rendered="(\d+)"', dom.stdout)
    assert counts, dom.stderr[-2000:]
    images, rendered = map(int, counts.groups())
    assert images >= 5 and rendered == images
    in_a_window = [*headless, "--window-size=1280,900", "--dump-dom", report.as_uri()]
    dom = subprocess.run(in_a_window, capture_output=True, text=True, timeout=120)
    widths = re.search(r'data-page-width="(\d+)" data-window-width="(\d+)"', dom.stdout)
    assert widths, dom.stderr[-2000:]
    page, window = map(int, widths.groups())
    assert 1200 < window <= 1280 and page <= window, f"a {page}-pixel page scrolls sideways in a {window}-pixel window"
    screenshot = tmp_path / "report.png"
    subprocess.run([*headless, f"--screenshot={screenshot}", "--window-size=1000,2400", report.as_uri()], timeout=120)
    assert screenshot.stat().st_size > 20_000


@pytest.mark.parametrize("name", ["exploration.ipynb", "segment_insight.ipynb"])
def test_the_notebooks_execute_against_the_run(small_lake, monkeypatch, name):
    import nbclient
    import nbformat

    settings = small_lake.settings
    path = ROOT / "notebooks" / name
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "clear outputs in git"
    monkeypatch.setenv("BEHAVIOR_SPARK_LAKE", settings.lake.root)
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


def read_warehouse(spark, postgres, table):
    properties = {"user": postgres.user, "password": postgres.password, "driver": "org.postgresql.Driver"}
    return spark.read.jdbc(postgres.url, table, properties=properties)


def test_rescoring_and_resegmenting_the_same_date_changes_nothing(spark, small_lake, tmp_path):
    """On a copy of the run's lakehouse, so the other tests see the run as it wrote it, in any order."""
    from behavior_spark import score, segment

    run_settings = small_lake.settings
    settings = copy_of(run_settings, tmp_path)
    before_scores = lake.read(spark, settings.lake, lake.SCORES).drop("embedding").toPandas()
    before_segments = lake.read(spark, settings.lake, lake.SEGMENTS).select("customer_id", "segment_id").toPandas()
    score.run(spark, settings)
    result = segment.run(spark, settings)  # another seed's stable ids: test_segment_and_drift, on controlled data
    after_scores = lake.read(spark, settings.lake, lake.SCORES).drop("embedding").toPandas()
    after_segments = lake.read(spark, settings.lake, lake.SEGMENTS).select("customer_id", "segment_id").toPandas()
    key = ["customer_id"]
    pd.testing.assert_frame_equal(
        before_scores.sort_values(key, ignore_index=True), after_scores.sort_values(key, ignore_index=True)
    )
    assert result.matched_previous_run
    merged = before_segments.merge(after_segments, on="customer_id", suffixes=("_before", "_after"))
    assert len(merged) == len(before_segments)
    assert (merged["segment_id_before"] == merged["segment_id_after"]).mean() > 0.95  # ids kept their meaning
