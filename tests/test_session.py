"""The session's shared helpers: kept rows are computed on entering the block and released when it ends; a job's
session takes its run-time settings."""

from pyspark.sql import functions as F

from behavior_spark.config import SparkSettings
from behavior_spark.session import get_spark, materialized


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
