"""Featurize: point-in-time features per customer and a label from the window after the cutoff.

Features see only events strictly before the cutoff; the label sees only the label window after it. One groupBy
pass builds the aggregates, one window pass the recent-event sequence. The model's input transform
(`model_inputs`) lives here too, so training and scoring prepare rows the same way.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import lake
from behavior_spark.config import FeatureSettings, Settings

log = logging.getLogger(__name__)

EVENT_TYPE_IDS = {"view": 1, "cart": 2, "remove_from_cart": 3, "purchase": 4, "wishlist": 5}  # 0 pads
FUNNEL_EVENTS = ["view", "cart", "remove_from_cart", "purchase"]
GAP_BUCKET_SECONDS = [60, 600, 3_600, 86_400, 7 * 86_400]  # sequence gap buckets: 1 = first, 2.. = up to each bound
GAP_BUCKETS = len(GAP_BUCKET_SECONDS) + 3  # pad, first, one per bound, beyond the last
WINDOW_DAYS = [7, 30, 90]
NO_PURCHASE_DAYS = 365.0  # days since last purchase for customers who never bought
SEQUENCE_COLUMNS = ["seq_event_type", "seq_category", "seq_gap_bucket"]


def numeric_feature_names() -> list[str]:
    windowed = [f"{event}_{days}d" for days in WINDOW_DAYS for event in FUNNEL_EVENTS]
    return [
        "days_since_last_event",
        "days_since_last_purchase",
        "tenure_days",
        "events",
        "purchases",
        "revenue",
        "avg_order_value",
        *windowed,
        "sessions",
        "events_per_session",
        "view_to_cart",
        "cart_to_purchase",
        "weekend_share",
        "evening_share",
        "distinct_categories",
    ]


def run(spark: SparkSession, settings: Settings) -> dict:
    """Build the features table for the configured cutoff, and the normalisation statistics of its train split."""
    cfg = settings.features
    events = lake.read(spark, settings.lake, lake.EVENTS)
    events_version = lake.version(spark, settings.lake, lake.EVENTS)
    cutoff = cfg.cutoff or default_cutoff(events, cfg.label_window_days)
    features = build_features(events, cutoff, cfg)
    lake.overwrite(features, settings.lake, lake.FEATURES, userMetadata=f"events_version={events_version}")
    stats = normalisation_stats(lake.read(spark, settings.lake, lake.FEATURES).filter(F.col("split") == "train"))
    lake.overwrite(stats, settings.lake, lake.FEATURE_STATS)
    return {
        "cutoff": cutoff.isoformat(),
        "events_version": events_version,
        "features_version": lake.version(spark, settings.lake, lake.FEATURES),
    }


def default_cutoff(events: DataFrame, label_window_days: int) -> dt.date:
    """The latest cutoff that still has a full label window of data after it."""
    last_day = events.agg(F.max("event_date")).first()[0]
    if last_day is None:
        raise ValueError("the events table is empty: ingest some events before featurizing")
    return last_day - dt.timedelta(days=label_window_days - 1)


def build_features(events: DataFrame, cutoff: dt.date, cfg: FeatureSettings) -> DataFrame:
    """One row per customer active before `cutoff`: aggregates, recent sequence, label and split."""
    cutoff_ts = F.lit(dt.datetime.combine(cutoff, dt.time()))
    history = events.filter(F.col("event_time") < cutoff_ts)
    label_end = dt.datetime.combine(cutoff + dt.timedelta(days=cfg.label_window_days), dt.time())
    future = events.filter((F.col("event_time") >= cutoff_ts) & (F.col("event_time") < F.lit(label_end)))
    labels = (
        future.filter(F.col("event_type") == cfg.label_event)
        .select("customer_id")
        .distinct()
        .withColumn("label", F.lit(1))
    )
    return (
        aggregates(history, cutoff_ts)
        .join(recent_sequences(history, cfg.sequence_length, cfg.category_buckets), on="customer_id", how="left")
        .join(labels, on="customer_id", how="left")
        .select(
            "customer_id",
            F.lit(cutoff).alias("cutoff_date"),
            split_column(F.col("customer_id"), cfg).alias("split"),
            F.coalesce(F.col("label"), F.lit(0)).alias("label"),
            *numeric_feature_names(),
            *SEQUENCE_COLUMNS,
        )
    )


def aggregates(history: DataFrame, cutoff_ts: Column) -> DataFrame:
    """Recency, frequency, monetary, windowed counts, session and time-pattern features in one pass."""
    days_before = (cutoff_ts.cast("long") - F.col("event_time").cast("long")) / 86_400.0
    is_type = {event: F.col("event_type") == event for event in FUNNEL_EVENTS}
    windowed = [
        F.count(F.when(is_type[event] & (days_before <= days), 1)).alias(f"{event}_{days}d")
        for days in WINDOW_DAYS
        for event in FUNNEL_EVENTS
    ]
    weekend = F.dayofweek("event_time").isin(1, 7)
    evening = F.hour("event_time").between(17, 22)
    grouped = (
        history.withColumn("days_before", days_before)
        .groupBy("customer_id")
        .agg(
            F.min("days_before").alias("days_since_last_event"),
            F.min(F.when(is_type["purchase"], F.col("days_before"))).alias("days_since_last_purchase"),
            F.max("days_before").alias("tenure_days"),
            F.count(F.lit(1)).alias("events"),
            F.count(F.when(is_type["purchase"], 1)).alias("purchases"),
            F.coalesce(F.sum(F.when(is_type["purchase"], F.col("price") * F.col("quantity"))), F.lit(0.0)).alias(
                "revenue"
            ),
            F.count(F.when(is_type["view"], 1)).alias("_views"),
            F.count(F.when(is_type["cart"], 1)).alias("_carts"),
            *windowed,
            F.approx_count_distinct("session_id").alias("sessions"),
            F.avg(weekend.cast("double")).alias("weekend_share"),
            F.avg(evening.cast("double")).alias("evening_share"),
            F.approx_count_distinct("category_id").alias("distinct_categories"),
        )
    )
    return (
        grouped.select(
            "*",
            F.coalesce(F.col("days_since_last_purchase"), F.lit(NO_PURCHASE_DAYS)).alias("_since_purchase"),
            (F.col("revenue") / F.greatest(F.col("purchases"), F.lit(1))).alias("avg_order_value"),
            (F.col("events") / F.col("sessions")).alias("events_per_session"),
            (F.col("_carts") / F.greatest(F.col("_views"), F.lit(1))).alias("view_to_cart"),
            (F.col("purchases") / F.greatest(F.col("_carts"), F.lit(1))).alias("cart_to_purchase"),
        )
        .drop("days_since_last_purchase", "_views", "_carts")
        .withColumnRenamed("_since_purchase", "days_since_last_purchase")
    )


def recent_sequences(history: DataFrame, length: int, category_buckets: int) -> DataFrame:
    """The last `length` events per customer as fixed-length int arrays: left-padded with 0, most recent last."""
    latest_first = Window.partitionBy("customer_id").orderBy(
        F.desc("event_time"), F.desc("event_type"), F.desc("product_id")
    )
    previous_ts = F.lead(F.col("event_time").cast("long")).over(latest_first)
    gap = F.col("event_time").cast("long") - previous_ts
    gap_bucket = F.when(gap.isNull(), 1)
    for i, bound in enumerate(GAP_BUCKET_SECONDS):
        gap_bucket = gap_bucket.when(gap <= bound, i + 2)
    gap_bucket = gap_bucket.otherwise(len(GAP_BUCKET_SECONDS) + 2)
    event_type_id = F.element_at(
        F.create_map(*[F.lit(x) for kv in EVENT_TYPE_IDS.items() for x in kv]), F.col("event_type")
    )
    category = 1 + F.pmod(F.xxhash64(F.coalesce(F.col("category_id"), F.lit(-1))), F.lit(category_buckets - 1))
    recent = (
        history.select(
            "customer_id",
            F.row_number().over(latest_first).alias("recency_rank"),
            event_type_id.cast("int").alias("event_type_id"),
            category.cast("int").alias("category_bucket"),
            gap_bucket.cast("int").alias("gap_bucket"),
        )
        .filter(F.col("recency_rank") <= length)
        .groupBy("customer_id")
        .agg(
            F.sort_array(
                F.collect_list(
                    F.struct((-F.col("recency_rank")).alias("order"), "event_type_id", "category_bucket", "gap_bucket")
                )
            ).alias("recent")
        )
    )
    padding = F.array_repeat(F.lit(0), F.lit(length) - F.size("recent"))
    return recent.select(
        "customer_id",
        *(
            F.concat(padding, F.col(f"recent.{field}")).alias(name)
            for field, name in zip(["event_type_id", "category_bucket", "gap_bucket"], SEQUENCE_COLUMNS, strict=False)
        ),
    )


def split_column(customer_id: Column, cfg: FeatureSettings) -> Column:
    """train / validation / test by a hash of the customer id: stable across runs, one split per customer."""
    draw = F.pmod(F.xxhash64(F.lit("split"), customer_id), F.lit(10_000)) / 10_000.0
    return (
        F.when(draw < cfg.split_train, "train")
        .when(draw < cfg.split_train + cfg.split_validation, "validation")
        .otherwise("test")
    )


def model_input_value(name: str) -> Column:
    """Counts, money and durations are heavy-tailed: the model sees log1p of them; shares and rates as they are."""
    column = F.col(name).cast("double")
    if name.endswith("_share") or name in ("view_to_cart", "cart_to_purchase"):
        return column
    return F.log1p(F.greatest(column, F.lit(0.0)))


def normalisation_stats(train: DataFrame) -> DataFrame:
    """Mean and standard deviation of each model input on the training split: one small row per feature."""
    names = numeric_feature_names()
    row = train.agg(
        *(
            agg(model_input_value(n)).alias(f"{n}__{label}")
            for n in names
            for agg, label in [(F.avg, "mean"), (F.stddev_pop, "std")]
        )
    ).first()
    return train.sparkSession.createDataFrame(
        [(n, float(row[f"{n}__mean"] or 0.0), float(row[f"{n}__std"] or 0.0)) for n in names],
        T.StructType(
            [
                T.StructField("feature", T.StringType(), False),
                T.StructField("mean", T.DoubleType(), False),
                T.StructField("std", T.DoubleType(), False),
            ]
        ),
    )


def model_inputs(features: DataFrame, stats: dict[str, tuple[float, float]]) -> DataFrame:
    """The standardised numeric vector (`numeric`, float32) beside the sequences: what the model consumes."""

    def standardised(name: str) -> Column:
        mean, std = stats[name]
        return (model_input_value(name) - mean) / (std if std > 1e-9 else 1.0)

    numeric = F.array(*(standardised(n).cast("float") for n in numeric_feature_names()))
    return features.withColumn("numeric", numeric)


def read_stats(spark: SparkSession, settings: Settings) -> dict[str, tuple[float, float]]:
    rows = lake.read(spark, settings.lake, lake.FEATURE_STATS).collect()  # one row per feature, never per customer
    return {r["feature"]: (r["mean"], r["std"]) for r in rows}
