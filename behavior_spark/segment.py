"""Segment: customers grouped by KMeans on their embedding and propensity, each segment profiled and named."""

from __future__ import annotations

import logging

from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from behavior_spark import lake
from behavior_spark.config import SegmentSettings, Settings

log = logging.getLogger(__name__)

PROFILE_COLUMNS = ["propensity", "days_since_last_event", "purchases", "revenue", "events"]


def run(spark: SparkSession, settings: Settings) -> dict:
    scores = lake.read(spark, settings.lake, lake.SCORES)
    customers = scores.join(
        lake.read(spark, settings.lake, lake.FEATURES).select("customer_id", "cutoff_date", *PROFILE_COLUMNS[1:]),
        on=["customer_id", "cutoff_date"],
        how="inner",
    )
    assigned = assign_segments(customers, settings.segment)
    profiles = profile(assigned)
    named = assigned.join(profiles.select("segment_id", "segment_name"), on="segment_id", how="inner")
    lake.overwrite(
        named.select("customer_id", "segment_id", "segment_name", "propensity", "scoring_date"),
        settings.lake,
        lake.SEGMENTS,
    )
    lake.overwrite(profiles, settings.lake, lake.SEGMENT_PROFILES)
    sizes = {r["segment_name"]: r["customers"] for r in profiles.collect()}  # one row per segment
    return {"segments": sizes}


def assign_segments(customers: DataFrame, cfg: SegmentSettings) -> DataFrame:
    """KMeans over the 64-dimension embedding plus the propensity; `segment_id` per customer."""
    assembler = VectorAssembler(inputCols=["embedding_vector", "propensity"], outputCol="segment_features")
    prepared = assembler.transform(customers.withColumn("embedding_vector", array_to_vector("embedding")))
    model = KMeans(k=cfg.k, seed=cfg.seed, featuresCol="segment_features", predictionCol="segment_id").fit(prepared)
    return model.transform(prepared).drop("embedding_vector", "segment_features")


def profile(assigned: DataFrame) -> DataFrame:
    """Size and mean profile per segment, with a plain-words name drawn from how it ranks against the others."""
    stats = assigned.groupBy("segment_id").agg(
        F.count(F.lit(1)).alias("customers"), *(F.avg(c).alias(f"mean_{c}") for c in PROFILE_COLUMNS)
    )
    name = (
        F.when(F.col("mean_propensity") == F.max("mean_propensity").over(_all()), "likely buyers")
        .when(F.col("mean_revenue") == F.max("mean_revenue").over(_all()), "high spenders")
        .when(F.col("mean_days_since_last_event") == F.max("mean_days_since_last_event").over(_all()), "lapsing")
        .when(F.col("mean_propensity") == F.min("mean_propensity").over(_all()), "window shoppers")
        .otherwise("regulars")
    )
    numbered = F.row_number().over(_all().orderBy("segment_id"))
    return stats.withColumn("segment_name", F.concat_ws(" ", name, F.concat(F.lit("#"), numbered.cast("string"))))


def _all() -> Window:
    """All segments in one window: there are only k of them."""
    return Window.partitionBy(F.lit(0))
