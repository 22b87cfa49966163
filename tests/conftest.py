"""One local, Delta-enabled SparkSession for the whole test run, and the test-only pseudonymisation key."""

from __future__ import annotations

import os

import pytest

from behavior_spark.config import SparkSettings
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
