"""The session's shared helpers: kept rows are computed on entering the block and released when it ends; a job's
session takes its run-time settings."""

import contextlib

from pyspark.sql import functions as F

from behavior_spark.config import SparkSettings
from behavior_spark.session import COMPILED_BY_THE_JVM, PARTITIONING_KEPT, get_spark, materialized, with_conf


def kept_blocks(spark) -> int:
    """Partitions of RDDs the block manager holds right now (cached or checkpointed)."""
    return sum(info.numCachedPartitions() for info in spark.sparkContext._jsc.sc().getRDDStorageInfo())


def test_materialized_rows_are_kept_inside_the_block_and_released_after_it(spark):
    rows = spark.range(1_000, numPartitions=4).withColumn("double", F.col("id") * 2)
    before = kept_blocks(spark)
    with materialized(rows) as kept:
        assert kept_blocks(spark) == before + 4  # computed on entering the block, one block per partition
        assert kept.agg(F.sum("double")).first()[0] == 999_000
    assert kept_blocks(spark) == before


def test_a_jobs_session_takes_the_shuffle_partitions_of_its_settings(spark):
    """Under spark-submit or on a platform the session is not ours to build, but the setting must still hold."""
    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        given = get_spark(SparkSettings(shuffle_partitions=3))
        assert given.conf.get("spark.sql.shuffle.partitions") == "3"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)


def test_settings_for_a_block_are_restored_after_it_and_a_refused_one_is_left_alone(spark):
    assert spark.conf.get(COMPILED_BY_THE_JVM[0]) == COMPILED_BY_THE_JVM[1]  # HotSpot compiles every generated method
    adaptive = spark.conf.get("spark.sql.adaptive.enabled")
    static = spark.conf.get("spark.sql.extensions")
    with with_conf(spark, {**PARTITIONING_KEPT, "spark.sql.extensions": "refused.at.run.time"}):
        assert spark.conf.get("spark.sql.adaptive.enabled") == "false"
        assert spark.conf.get("spark.sql.extensions") == static
    assert spark.conf.get("spark.sql.adaptive.enabled") == adaptive


def test_rows_kept_under_partitioning_kept_aggregate_by_their_keys_without_a_shuffle(spark):
    rows = spark.range(1000).select((F.col("id") % 7).alias("day"), (F.col("id") % 3).alias("bucket"), "id")
    with contextlib.ExitStack() as stack:
        with with_conf(spark, PARTITIONING_KEPT):
            kept = stack.enter_context(materialized(rows.repartition(4, "day", "bucket")))
        plan = kept.groupBy("day", "bucket", "id").count()._jdf.queryExecution().executedPlan().toString()
    assert "Exchange" not in plan  # planned adaptively, as ingest plans the bots and summaries
