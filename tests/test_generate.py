import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from behavior_spark.config import load_settings
from behavior_spark.generate import RAW_COLUMNS, generate_events


@pytest.fixture(scope="module")
def raw(spark):
    settings = load_settings(None, ["generate.rows=30000", "generate.files=2"]).generate
    return generate_events(spark, settings).cache()


def test_rees46_layout_of_strings(raw):
    assert raw.columns == RAW_COLUMNS
    assert all(dtype == "string" for _, dtype in raw.dtypes)


def test_same_seed_same_rows_other_seed_other_rows(spark, raw):
    again = generate_events(spark, load_settings(None, ["generate.rows=30000", "generate.files=3"]).generate)
    assertDataFrameEqual(again, raw)  # partitioning does not change the data
    other = generate_events(spark, load_settings(None, ["generate.rows=30000", "generate.seed=8"]).generate)
    assert other.exceptAll(raw).count() > 0.9 * other.count()


def test_row_count_follows_the_setting(raw):
    assert 0.8 * 30000 < raw.count() < 1.2 * 30000


def test_funnel_shares(raw):
    shares = {r["event_type"]: r["count"] / raw.count() for r in raw.groupBy("event_type").count().collect()}
    assert shares["view"] > 0.6
    assert shares["cart"] > shares["purchase"]
    assert 0.01 < shares["purchase"] < 0.04


def test_activity_is_heavy_tailed(raw):
    per_user = raw.filter(F.trim("user_id") != "").groupBy("user_id").count()
    stats = per_user.agg(F.max("count").alias("top"), F.percentile_approx("count", 0.5).alias("median")).first()
    assert stats["top"] > 20 * stats["median"]


def test_logs_carry_the_usual_dirt(raw):
    assert raw.filter(F.col("user_id").isNull()).count() > 0
    assert raw.filter(F.trim("user_id") == "").count() > 0
    assert raw.filter(F.try_to_timestamp("event_time", F.lit("yyyy-MM-dd HH:mm:ss 'UTC'")).isNull()).count() > 0
    assert raw.filter(F.col("price").startswith("-")).count() > 0
    assert raw.filter(F.col("event_type") == "click").count() > 0
    assert raw.count() - raw.distinct().count() > 0  # exact duplicates


def test_bots_fire_dozens_of_events_a_minute(raw):
    per_minute = raw.groupBy("user_id", F.substring("event_time", 1, 16)).count()
    assert per_minute.agg(F.max("count")).first()[0] > 30
