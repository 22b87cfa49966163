"""The pipeline on a real Spark standalone cluster (issue 19): a master and two 1-core workers started from the venv's
Spark on the loopback interface, each a process of its own, with the driver submitted by `spark-submit --master
spark://...` as a user submits it. Every test starts its own cluster and stops it by the process ids it started.

`make cluster-test` runs this file alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import TEST_KEY
from pyspark.sql import functions as F

from behavior_spark import generate, lake, model_artifact
from behavior_spark.config import as_dict, load_settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's Spark launchers: spark-class, spark-submit


class Cluster:
    """A standalone master and its workers, each started as its own process; `stop` kills exactly those trees."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(folder / "logs")}

    def start(self, workers: int) -> None:
        self._launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                     str(self.port), "--webui-port", str(self.ui_port))  # fmt: skip
        for number in range(workers):
            self.add_worker(number)
        self.wait_for_workers(workers)

    def add_worker(self, number: int) -> subprocess.Popen:
        work = self.folder / f"worker-{number}"
        return self._launch(f"worker-{number}", "org.apache.spark.deploy.worker.Worker", self.url, "--host",
                            "127.0.0.1", "--cores", "1", "--memory", "2g", "--webui-port", "0", "--work-dir",
                            str(work))  # fmt: skip

    def _launch(self, name: str, main_class: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [str(BIN / "spark-class"), main_class, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.state()["aliveworkers"] >= count:
                    return
            time.sleep(0.5)
        raise AssertionError(f"the cluster did not start {count} workers in {timeout} s: see {self.folder}/*.log")

    def stop(self) -> None:
        for process in reversed(self.processes):
            kill_tree(process.pid)
            process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (a worker's executor JVM and its Python workers)."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    started = Cluster(tmp_path)
    try:
        started.start(workers=2)
        yield started
    finally:
        started.stop()


def settings_for(root: Path, postgres, *extra: str):
    return load_settings(
        None,
        [
            f"lake.root={root}/lake",
            f"generate.output={root}/raw",
            f"ingest.input={root}/raw",
            f"train.model_dir={root}/model",
            f"warehouse.url={postgres.url}",
            "generate.files=4",
            "spark.shuffle_partitions=2",
            "train.epochs=2",
            "train.batch_size=128",
            "segment.k_min=3",
            "segment.k_max=4",
            *extra,
        ],
    )


def submit(cluster: Cluster, job: str, settings, postgres, folder: Path) -> subprocess.Popen:
    """Start `jobs/<job>.py` through spark-submit against the cluster, as a user does."""
    conf = folder / f"{job}.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    env = {
        **os.environ,
        "BEHAVIOR_SPARK_PSEUDONYM_KEY": TEST_KEY,
        "BEHAVIOR_SPARK_WAREHOUSE_USER": postgres.user,
        "BEHAVIOR_SPARK_WAREHOUSE_PASSWORD": postgres.password,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    command = [str(BIN / "spark-submit"), "--master", cluster.url, str(ROOT / "jobs" / f"{job}.py"), "--conf", conf]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, timeout: float = 1200) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def books(spark, settings) -> dict[str, int]:
    """The ingest audit's totals over its completed batches, and the rows the events table holds."""
    audits = lake.read(spark, settings.lake, lake.INGEST_AUDIT).filter(F.col("status") == "ok")
    totals = audits.agg(*(F.sum(c).alias(c) for c in ("rows_read", "clean", "quarantined", "duplicates", "bot_rows")))
    row = {k: v or 0 for k, v in totals.first().asDict().items()}
    return {**row, "events": lake.read(spark, settings.lake, lake.EVENTS).count()}


def test_the_whole_pipeline_runs_on_a_standalone_cluster(spark, cluster, tmp_path, postgres):
    settings = settings_for(tmp_path, postgres, "generate.rows=12000", "score.scoring_date=2026-06-01")
    generate.run(spark, settings)
    code, out, err = finished(submit(cluster, "run", settings, postgres, tmp_path))
    failures = [line for line in err.splitlines() if " failed: " in line]
    assert code == 0, "\n".join(failures) or err[-3000:]
    for stage in ("ingest", "featurize", "train", "score", "segment", "export", "report"):
        assert f"  {stage}" in out

    totals = books(spark, settings)
    assert totals["rows_read"] == spark.read.option("header", True).csv(settings.generate.output).count()
    assert totals["rows_read"] == sum(totals[k] for k in ("clean", "quarantined", "duplicates", "bot_rows"))
    assert totals["events"] == totals["clean"]
    metadata = model_artifact.load_metadata(settings.train.model_dir)
    assert len(metadata.steps_per_rank) == 2 and metadata.steps_per_rank[0] == metadata.steps_per_rank[1] > 0
    scoring_date = settings.score.scoring_date
    customers = (
        lake.read(spark, settings.lake, lake.EVENTS)
        .filter(F.col("event_date") < F.lit(scoring_date))
        .select("customer_id")
        .distinct()
        .count()
    )
    scores = lake.read(spark, settings.lake, lake.SCORES).filter(F.col("scoring_date") == F.lit(scoring_date))
    segments = lake.read(spark, settings.lake, lake.SEGMENTS).filter(F.col("scoring_date") == F.lit(scoring_date))
    assert scores.count() == scores.select("customer_id").distinct().count() == customers > 0
    assert segments.count() == customers


def test_a_worker_killed_mid_ingest_loses_nothing(spark, cluster, tmp_path, postgres):
    """One of the two workers is SIGKILLed (with its executor) once the first of four batches is committed. The job
    either recovers on the other worker or fails saying so; either way the tables hold whole batches only, and a
    re-run brings in the rest, every raw row accounted for once."""
    settings = settings_for(tmp_path, postgres, "generate.rows=40000", "ingest.max_files_per_trigger=1")
    generate.run(spark, settings)
    raw_rows = spark.read.option("header", True).csv(settings.generate.output).count()
    victim = cluster.add_worker(2)  # a third worker, so that two stay whichever the job's tasks run on
    cluster.wait_for_workers(3)

    job = submit(cluster, "ingest", settings, postgres, tmp_path)
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

    code, _, err = finished(submit(cluster, "ingest", settings, postgres, tmp_path))
    assert code == 0, err[-3000:]
    after_retry = books(spark, settings)
    assert after_retry["rows_read"] == raw_rows
    assert after_retry["events"] == after_retry["clean"]
