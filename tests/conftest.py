"""One local, Delta-enabled SparkSession for the whole test run, and a fresh lakehouse folder per test."""

from __future__ import annotations

import os

import pytest

from behavior_spark.config import SparkSettings, load_settings
from behavior_spark.session import local_session

TEST_KEY = "test-only-pseudonym-key-not-a-secret"
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


@pytest.fixture
def tiny_settings(tmp_path):
    """Settings for a small end-to-end run inside a temporary lakehouse."""
    root = tmp_path / "lakehouse"
    return load_settings(
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
