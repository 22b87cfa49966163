"""The stages over Spark Connect (issue 19), as on Databricks shared or serverless compute: a local Spark Connect
server started from the venv's Spark (Delta from its spark-defaults, the pseudonym key in the server's environment
only), and the stages run by the CLI as a client (`--set spark.remote=sc://...`), in processes that hold no key.

Training needs a classic session (horovod.spark drives a SparkContext): it runs here on the test's own session, and
under Connect `train` must say so in one clear error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cluster import BIN, ROOT, free_port, kill_tree
from conftest import SMALL_RUN, TEST_KEY
from pyspark.sql import functions as F
from waiting import wait_until

from behavior_spark import generate, ingest, lake, pipeline, privacy
from behavior_spark.config import as_dict, load_settings

pytestmark = pytest.mark.connect

SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Spark Connect server on loopback (local[2]) with its event log on: (its URL, the event-log folder)."""
    folder = tmp_path_factory.mktemp("connect-server")
    port = free_port()
    event_logs = folder / "event-logs"
    event_logs.mkdir()
    command = [
        *(str(BIN / "spark-submit"), "--master", "local[2]", "--class", SERVER),
        *(
            "--conf",
            f"spark.connect.grpc.binding.port={port}",
            "--conf",
            "spark.connect.grpc.binding.address=127.0.0.1",
        ),
        *("--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.databricks.delta.snapshotPartitions=2"),
        *("--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={event_logs.as_uri()}"),
        *("--conf", "spark.eventLog.compress=false", "--conf", "spark.ui.enabled=false"),
        "spark-internal",
    ]
    env = {**os.environ, "BEHAVIOR_SPARK_PSEUDONYM_KEY": TEST_KEY, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, folder / "server.log")
        yield f"sc://127.0.0.1:{port}", event_logs
    finally:
        kill_tree(process.pid)
        process.wait(timeout=60)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    def listening() -> bool:
        assert process.poll() is None, f"the Spark Connect server stopped: {log.read_text()[-3000:]}"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout, f"the Spark Connect server did not listen on {port}: {log}")


def client(stage: str, conf: Path, url: str, postgres) -> subprocess.CompletedProcess:
    """`python -m behavior_spark <stage>` as a Spark Connect client, with no pseudonym key in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "BEHAVIOR_SPARK_PSEUDONYM_KEY" and not k.startswith("PYSPARK")}
    env.update(BEHAVIOR_SPARK_WAREHOUSE_USER=postgres.user, BEHAVIOR_SPARK_WAREHOUSE_PASSWORD=postgres.password)
    command = [sys.executable, "-m", "behavior_spark", stage, "--conf", str(conf), "--set", f"spark.remote={url}"]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def connected_run(spark, server, postgres, tmp_path_factory):
    """ingest and featurize over Connect, train on the classic session, then score, segment, export and report over
    Connect: the settings and each stage's completed process."""
    url, _ = server
    root = tmp_path_factory.mktemp("connect")
    settings = load_settings(
        None,
        [
            *SMALL_RUN,
            f"lake.root={root}/lake",
            f"generate.output={root}/raw",
            f"ingest.input={root}/raw",
            "generate.files=1",
            f"train.model_dir={root}/model",
            f"warehouse.url={postgres.url}",
            "warehouse.table=public.connect_segments",
        ],
    )
    generate.run(spark, settings)
    conf = root / "settings.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    done = {stage: client(stage, conf, url, postgres) for stage in ("ingest", "featurize", "train")}
    pipeline.run_stage("train", spark, settings)
    done.update({stage: client(stage, conf, url, postgres) for stage in ("score", "segment", "export", "report")})
    return settings, done


def test_every_stage_but_train_runs_over_spark_connect(connected_run):
    _, done = connected_run
    for stage in ("ingest", "featurize", "score", "segment", "export", "report"):
        assert done[stage].returncode == 0, f"{stage}: {done[stage].stderr[-3000:]}"


def test_train_over_connect_fails_in_one_clear_line(connected_run):
    _, done = connected_run
    assert done["train"].returncode == 2
    assert "train needs a classic Spark session" in done["train"].stderr
    assert "Traceback" not in done["train"].stderr


def test_the_server_holds_the_key_and_the_books_add_up(spark, connected_run):
    settings, _ = connected_run
    events = lake.path(settings.lake, lake.EVENTS)
    recorded = lake.properties(spark, events)[ingest.KEY_FINGERPRINT_PROPERTY]
    assert recorded == privacy.fingerprint(TEST_KEY.encode())  # hashed with the server's key; the client had none
    raw = spark.read.option("header", True).csv(settings.generate.output)
    expected = raw.select(F.col("user_id")).distinct().limit(5).collect()
    pseudonyms = {privacy.hmac_hex(TEST_KEY.encode(), row["user_id"]) for row in expected if row["user_id"]}
    customers = lake.read(spark, settings.lake, lake.EVENTS).select("customer_id").distinct()
    assert customers.filter(F.col("customer_id").isin(*pseudonyms)).count() >= len(pseudonyms) - 2  # bots, rejects
    audit = lake.read(spark, settings.lake, lake.INGEST_AUDIT).first()
    assert audit["rows_read"] == raw.count()
    assert audit["rows_read"] == audit["clean"] + audit["quarantined"] + audit["duplicates"] + audit["bot_rows"]
    assert audit["clean"] == lake.read(spark, settings.lake, lake.EVENTS).count()


def test_every_customer_is_scored_segmented_and_exported_over_connect(spark, connected_run, postgres):
    settings, _ = connected_run
    scores = lake.read(spark, settings.lake, lake.SCORES)
    segments = lake.read(spark, settings.lake, lake.SEGMENTS)
    assert scores.count() == scores.select("customer_id").distinct().count() == segments.count() > 0
    properties = {"user": postgres.user, "password": postgres.password, "driver": "org.postgresql.Driver"}
    exported = spark.read.jdbc(postgres.url, settings.warehouse.table, properties=properties)
    assert (
        exported.select("customer_id", "segment_id").exceptAll(segments.select("customer_id", "segment_id")).count()
        == 0
    )
    assert exported.count() == segments.count()
    report = Path(lake.path(settings.lake, "reports"))
    assert any(report.glob("report-*.html"))


def test_no_key_or_password_in_what_the_server_logs(server, connected_run, postgres):
    _, event_logs = server
    text = "".join(f.read_text(errors="replace") for f in sorted(event_logs.rglob("*")) if f.is_file())
    assert "SparkListenerSQLExecutionStart" in text and "pseudonym" in text  # the plans the client sent are in it
    assert TEST_KEY not in text and TEST_KEY.encode().hex() not in text
    assert postgres.password not in text
