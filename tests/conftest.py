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

from behavior_spark.config import SparkSettings
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
