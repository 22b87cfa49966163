"""The features read from a customer's arrays in their totals (`summaries.roll_up`): how concentrated their activity
is over categories and brands, and their recent sequence. They depend on a customer's days before the cutoff, not on
the cutoff itself, so a daily run carries them from the previous scoring snapshot for a customer without a new day
(`features.carried_arrays`).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.config import FeatureSettings
from behavior_spark.contracts import EVENT_TYPE_IDS

GAP_BUCKET_SECONDS = [60, 600, 3_600, 86_400, 7 * 86_400]  # sequence gap buckets: 1 = first, 2.. = up to each bound
GAP_BUCKETS = len(GAP_BUCKET_SECONDS) + 3  # pad, first, one per bound, beyond the last
SEQUENCE_COLUMNS = ["seq_event_type", "seq_category", "seq_gap_bucket"]
# what `array_features` makes
ARRAY_FEATURES = [
    "distinct_categories",
    "top_category_share",
    "category_entropy",
    "top_category_id",
    "distinct_brands",
    *SEQUENCE_COLUMNS,
]


def array_features(
    totals: DataFrame, cfg: FeatureSettings, beside: Sequence[str | Column] = ("customer_id",)
) -> DataFrame:
    """The features read from a customer's arrays in their totals (ARRAY_FEATURES: `category_affinity` and the recent
    sequence), beside the columns `beside`."""
    return totals.withColumn("_steps", recent_sequences(cfg.sequence_length, cfg.category_buckets)).select(
        *beside, *category_affinity(), *padded_sequences(F.col("_steps"), cfg.sequence_length)
    )


def category_affinity() -> list[Column]:
    """How concentrated a customer's activity is: distinct categories, the top one's share, entropy (nats); and
    distinct brands. Columns over a customer's totals (`summaries.roll_up`: events per category, distinct brands)."""
    categories = F.col("categories")
    total = F.aggregate(categories, F.lit(0).cast("long"), lambda acc, c: acc + c["n"])
    n_log_n = F.aggregate(categories, F.lit(0.0), lambda acc, c: acc + c["n"] * F.log(c["n"]))
    by_events = F.transform(categories, lambda c: F.struct(c["n"].alias("n"), c["category_id"].alias("category_id")))
    # entropy = log(N) - sum(n log n) / N, with N the customer's events
    return [
        F.size(categories).alias("distinct_categories"),
        (F.array_max(F.transform(categories, lambda c: c["n"])) / total).alias("top_category_share"),
        (F.log(total) - n_log_n / total).alias("category_entropy"),
        F.array_max(by_events)["category_id"].alias("top_category_id"),  # ties: the higher id
        F.size("brands").alias("distinct_brands"),
    ]


def recent_sequences(length: int, category_buckets: int) -> Column:
    """A customer's last `length` events as (event type, category bucket, gap bucket) structs, most recent last: from
    `recent` of their totals (`summaries.roll_up`: newest first, one more kept for the oldest event's gap)."""
    events = F.col("recent")

    def step(event: Column, i: Column) -> Column:
        gap = event["event_time"].cast("long") - F.get(events, i + 1)["event_time"].cast("long")  # older neighbour
        gap_bucket = F.when(gap.isNull(), 1)
        for n, bound in enumerate(GAP_BUCKET_SECONDS):
            gap_bucket = gap_bucket.when(gap <= bound, n + 2)
        category_hash = F.xxhash64(F.coalesce(event["category_id"], F.lit("")))
        return F.struct(
            F.element_at(_lookup(EVENT_TYPE_IDS), event["event_type"]).cast("int").alias("event_type_id"),
            (1 + F.pmod(category_hash, F.lit(category_buckets - 1))).cast("int").alias("category_bucket"),
            gap_bucket.otherwise(len(GAP_BUCKET_SECONDS) + 2).alias("gap_bucket"),
        )

    return F.reverse(F.transform(F.slice(events, 1, length), step))


def padded_sequences(steps: Column, length: int) -> list[Column]:
    """`recent_sequences` as the fixed-length int arrays the model reads (SEQUENCE_COLUMNS), left-padded with 0."""
    padding = F.array_repeat(F.lit(0), F.lit(length) - F.size(steps))
    return [
        F.concat(padding, steps.getField(field)).alias(name)
        for field, name in zip(["event_type_id", "category_bucket", "gap_bucket"], SEQUENCE_COLUMNS, strict=True)
    ]


def _lookup(mapping: dict) -> Column:
    return F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair])
