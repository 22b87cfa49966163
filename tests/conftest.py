"""One local, Delta-enabled SparkSession for the whole test run, the Spark settings of every JVM the tests start, and
the test-only pseudonymisation key."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyspark
import pytest
from cluster import free_port

from behavior_spark.config import Settings, SparkSettings, load_settings
from behavior_spark.results import StageResult
from behavior_spark.session import local_session

TEST_KEY = "test-only-pseudonym-key-not-a-secret"
# A whole pipeline run at the smallest size that still trains and segments (the schedule and Spark Connect tests).
SMALL_RUN = [
    "spark.shuffle_partitions=2",
    "generate.rows=6000",
    "features.cutoffs=1",
    "train.num_proc=2",
    "train.epochs=1",
    "train.batch_size=64",
    "train.importance_rows=500",
    "segment.k=3",
    "segment.restarts=1",
]
# Spark settings for tests' tiny jobs, where compiling generated code costs more than running it: expressions are
# interpreted and no whole-stage code is generated (same results; what it saves is in the README). Given through a
# Spark conf folder of the tests' own, so every JVM the tests start gets them: the in-process session, the jobs
# started through spark-submit, the Spark Connect server, the standalone cluster's.
TEST_SPARK_DEFAULTS = ["spark.sql.codegen.wholeStage false", "spark.sql.codegen.factoryMode NO_CODEGEN"]


def spark_conf_dir() -> Path:
    """A copy of the venv's Spark conf folder (the Delta JARs `scripts/setup.sh` put in its spark-defaults) with
    TEST_SPARK_DEFAULTS added."""
    folder = Path(tempfile.mkdtemp(prefix="behavior-spark-conf-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    venv_conf = Path(pyspark.__file__).parent / "conf"
    if venv_conf.is_dir():  # made by set-up; without it the session says what is missing
        shutil.copytree(venv_conf, folder, dirs_exist_ok=True)
    defaults = folder / "spark-defaults.conf"
    existing = defaults.read_text() if defaults.exists() else ""
    defaults.write_text(existing + "".join(f"{line}\n" for line in TEST_SPARK_DEFAULTS))
    return folder


os.environ["SPARK_CONF_DIR"] = str(spark_conf_dir())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


@pytest.fixture(scope="session")
def spark():
    session = local_session(SparkSettings(master="local[2]", shuffle_partitions=2, driver_memory="3g"))
    yield session
    session.stop()


def pipeline_settings(root: Path, warehouse_url: str, *extra: str) -> Settings:
    """A whole run on a tiny generated log: two raw files read in two batches, two Horovod processes, 3-4 segments,
    a fixed scoring date. The shared lakehouse (`small_lake`) and the cluster run (test_end_to_end) both use it."""
    return load_settings(
        None,
        [
            f"lake.root={root}",
            "generate.rows=12000",
            "generate.files=2",
            f"generate.output={root}/raw/events",
            f"ingest.input={root}/raw/events",
            "ingest.max_files_per_trigger=3",
            "spark.shuffle_partitions=2",
            "train.epochs=2",
            "train.batch_size=128",
            "train.importance_rows=500",
            f"train.model_dir={root}/models/propensity",
            "segment.k_min=3",
            "segment.k_max=4",
            "segment.restarts=1",
            "score.scoring_date=2026-06-01",
            f"warehouse.url={warehouse_url}",
            *extra,
        ],
    )


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    settings: Settings
    results: dict[str, StageResult]  # per stage, as `pipeline.run_all` returns them
    summary: str  # what a user reads at the end of the run


@pytest.fixture(scope="session")
def small_lake(spark, tmp_path_factory, postgres) -> PipelineRun:
    """One small lakehouse for the whole test run: generate, then every stage from ingest to report, in this process.

    Tests read it; a test that changes it works on a copy (`copy_of`).
    """
    from behavior_spark import console, generate, pipeline

    settings = pipeline_settings(tmp_path_factory.mktemp("small-lake") / "lakehouse", postgres.url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", TEST_KEY)
        patch.setenv("BEHAVIOR_SPARK_WAREHOUSE_USER", postgres.user)
        patch.setenv("BEHAVIOR_SPARK_WAREHOUSE_PASSWORD", postgres.password)
        generate.run(spark, settings)
        results = pipeline.run_all(spark, settings)
    return PipelineRun(settings, results, console.summary(results, settings.lake.root))


def copy_of(settings: Settings, folder: Path) -> Settings:
    """The same settings on a copy of their lakehouse (and model) in `folder`."""
    copy = folder / "lakehouse"
    shutil.copytree(settings.lake.root, copy)
    model_dir = Path(settings.train.model_dir)
    inside = model_dir.is_relative_to(settings.lake.root)
    model_copy = copy / model_dir.relative_to(settings.lake.root) if inside else folder / "model"
    if not inside:
        shutil.copytree(model_dir, model_copy)
    return settings.model_copy(
        update={
            "lake": settings.lake.model_copy(update={"root": str(copy)}),
            "train": settings.train.model_copy(update={"model_dir": str(model_copy)}),
            "generate": settings.generate.model_copy(update={"output": str(copy / "raw" / "events")}),
            "ingest": settings.ingest.model_copy(update={"input": str(copy / "raw" / "events")}),
        }
    )


@pytest.fixture
def pseudonym_key(monkeypatch) -> str:
    monkeypatch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", TEST_KEY)
    return TEST_KEY


@dataclasses.dataclass(frozen=True)
class Postgres:
    url: str
    user: str
    password: str


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (Debian's, installed by scripts/setup.sh) on a free loopback port.

    Password authentication, with a password drawn for this run only.
    """
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL server not installed: run scripts/setup.sh (make test does)")
    bin_dir = Path(bins[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="behavior-spark-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    password = secrets.token_urlsafe(16)
    (folder / "pwfile").write_text(password)
    if as_postgres:
        for path in (folder, folder / "pwfile"):
            shutil.chown(path, "postgres", "postgres")
    port = free_port()
    data = folder / "data"
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True)
    run(
        [
            *as_postgres,
            bin_dir / "initdb",
            "-D",
            data,
            "-U",
            "warehouse",
            "--auth=scram-sha-256",
            f"--pwfile={folder / 'pwfile'}",
            "-E",
            "UTF8",
        ]
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-l", folder / "log", "-o", options, "-w", "start"])
    yield Postgres(f"jdbc:postgresql://127.0.0.1:{port}/postgres", "warehouse", password)
    run([*as_postgres, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"])
    shutil.rmtree(folder, ignore_errors=True)
