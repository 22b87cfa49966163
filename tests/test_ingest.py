import hashlib
import hmac

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import ingest
from behavior_spark.config import ConfigError, IngestSettings


def test_hmac_sha256_matches_the_standard_library(spark):
    key = b"k" * 20
    df = spark.createDataFrame([("510000001",), ("",), ("ünïcode",)], "user_id string")
    got = {r["user_id"]: r["h"] for r in df.select("user_id", ingest.hmac_sha256(F.col("user_id"), key).alias("h")).collect()}
    for user_id, digest in got.items():
        assert digest == hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


def test_long_keys_are_hashed_first_as_rfc_2104_says(spark):
    key = b"x" * 100
    got = spark.range(1).select(ingest.hmac_sha256(F.lit("abc"), key)).first()[0]
    assert got == hmac.new(key, b"abc", hashlib.sha256).hexdigest()


def test_no_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="BEHAVIOR_SPARK_PSEUDONYM_KEY.*not set"):
        ingest.pseudonym_key(IngestSettings())


def test_sessions_split_after_the_gap_not_at_it(spark):
    schema = T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("event_time", T.StringType()),
                           T.StructField("event_type", T.StringType()), T.StructField("product_id", T.LongType())])
    rows = [
        ("a", "2026-01-01 10:30:00", "view", 2),  # out of order on purpose
        ("a", "2026-01-01 10:00:00", "view", 1),
        ("a", "2026-01-01 11:00:01", "view", 3),  # 30 min 1 s after the previous: a new session
        ("b", "2026-01-01 10:00:00", "view", 1),  # a customer with one event
    ]
    events = spark.createDataFrame(rows, schema).withColumn("event_time", F.to_timestamp("event_time"))
    got = {(r["customer_id"], r["product_id"]): r["session_number"]
           for r in ingest.with_sessions(events, gap_minutes=30).collect()}
    assert got == {("a", 1): 1, ("a", 2): 1, ("a", 3): 2, ("b", 1): 1}


def test_reconciliation_fails_when_rows_go_missing():
    audit = ingest.audit_row(rows_read=10, by_status={"clean": 7, "duplicate": 1, "missing_user_id": 1},
                             clean_written=7, quarantined_written=1, events_version=0, source="x")
    with pytest.raises(ingest.ReconciliationError, match="10 rows read but 9 accounted for"):
        ingest.check_reconciliation(audit)


def test_reconciliation_fails_when_delta_wrote_other_counts():
    audit = ingest.audit_row(rows_read=9, by_status={"clean": 7, "duplicate": 1, "missing_user_id": 1},
                             clean_written=6, quarantined_written=1, events_version=0, source="x")
    with pytest.raises(ingest.ReconciliationError, match="7 clean rows but 6 written"):
        ingest.check_reconciliation(audit)
