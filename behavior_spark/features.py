"""Featurize: point-in-time features per customer and cutoff, and a label from the window after the cutoff.

Features see only events strictly before the cutoff; the label sees only the label window after it. Several
cutoffs (`features.cutoffs`, `features.cutoff_step_days` apart) are stacked into one table. Everything is read
from the customer-day summaries ingest keeps (`summaries`), not from the events: cutoffs are midnights, so a
cutoff never cuts a day. Every aggregation is a groupBy with map-side combining, and the windows (the recent
sequence) are cut to their last rows per customer before any shuffle, so a customer with millions of events
never ships them to one task.
The model's input transform (`model_inputs`) lives here too, so training and scoring prepare rows the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from functools import reduce

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from behavior_spark import lake, summaries
from behavior_spark.config import FeatureSettings, Settings
from behavior_spark.session import in_utc, materialized

log = logging.getLogger(__name__)

EVENT_TYPE_IDS = {"view": 1, "cart": 2, "remove_from_cart": 3, "purchase": 4, "wishlist": 5}  # 0 pads
FUNNEL_EVENTS = ["view", "cart", "remove_from_cart", "purchase"]
GAP_BUCKET_SECONDS = [60, 600, 3_600, 86_400, 7 * 86_400]  # sequence gap buckets: 1 = first, 2.. = up to each bound
GAP_BUCKETS = len(GAP_BUCKET_SECONDS) + 3  # pad, first, one per bound, beyond the last
WINDOW_DAYS = [7, 30, 90]
NO_PURCHASE_DAYS = 365.0  # days since last purchase for customers who never bought
SEQUENCE_COLUMNS = ["seq_event_type", "seq_category", "seq_gap_bucket"]
MODEL_INPUT_COLUMNS = ["numeric", *SEQUENCE_COLUMNS]  # what the model consumes: `model_inputs` makes `numeric`
FEATURE_TABLE_VERSION = 2  # the table's columns: 2 added the value labels; a snapshot of another is never kept
VALUE_LABELS = ["label_purchases", "label_revenue"]  # what a training row's customer bought in the label window
SCORE_SPLIT = "score"  # the scoring snapshot's rows: every customer as of the scoring date, no label
SHARE_FEATURES = {
    "view_to_cart",
    "cart_to_purchase",
    "weekend_share",
    "evening_share",
    "night_share",
    "purchase_session_share",
    "top_category_share",
}


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
        "view_to_cart",
        "cart_to_purchase",
        "activity_trend",
        "mean_gap_hours",
        "weekend_share",
        "evening_share",
        "night_share",
        "sessions",
        "events_per_session",
        "avg_session_minutes",
        "purchase_session_share",
        "distinct_categories",
        "top_category_share",
        "category_entropy",
        "distinct_brands",
    ]


def run(spark: SparkSession, settings: Settings) -> dict:
    """Build, in one commit, the training snapshots (the configured cutoffs, labelled) and the scoring snapshot (as
    of the scoring date, split `score`, no label). A training snapshot of the previous version whose inputs did not
    change since (`reusable_cutoffs`) is kept as it is, not rebuilt."""
    cfg = settings.features
    in_utc(spark)  # cutoff dates and day windows as ingest made them
    events_version = (
        cfg.events_version if cfg.events_version is not None else lake.version(spark, settings.lake, lake.EVENTS)
    )
    days = summaries.for_events(spark, settings, events_version)
    cutoffs = cutoff_dates(days, cfg)
    as_of = settings.score.scoring_date or default_scoring_date(days)
    record = {
        "events_version": events_version,
        "cutoffs": [c.isoformat() for c in cutoffs],
        "scoring_date": as_of.isoformat(),
        **definition(cfg),
    }
    kept = [cutoff for cutoff in reusable_cutoffs(spark, settings, record) if cutoff != as_of]
    built = [cutoff for cutoff in cutoffs if cutoff not in kept]
    with materialized(days) as days:  # every snapshot reads it
        snapshots = [build_features(days, cutoff, cfg) for cutoff in built]
        snapshots.append(build_features(days, as_of, cfg, scoring=True))
        write(reduce(DataFrame.unionByName, snapshots), settings, {**record, "kept": [c.isoformat() for c in kept]})
        excluded = sum(customers_without_history(days, cutoff, cfg.label_window_days) for cutoff in built)
    written = lake.read(spark, settings.lake, lake.FEATURES)
    counts = {r["split"]: r["count"] for r in written.groupBy("split").count().collect()}  # four splits
    return {
        "cutoffs": record["cutoffs"],
        "kept_cutoffs": [c.isoformat() for c in kept],
        "scoring_date": record["scoring_date"],
        "events_version": events_version,
        "rows": sum(counts.values()),
        "rows_by_split": counts,
        "customers_without_history": excluded,
        "features_version": lake.version(spark, settings.lake, lake.FEATURES),
    }


def definition(cfg: FeatureSettings) -> dict:
    """What a snapshot's rows depend on besides the events and its cutoff: a kept snapshot must share all of it."""
    return {
        "label_event": cfg.label_event,
        "label_window_days": cfg.label_window_days,
        "features": numeric_feature_names(),
        "sequence_length": cfg.sequence_length,
        "category_buckets": cfg.category_buckets,
        "splits": [cfg.split_train, cfg.split_validation],
        "columns": FEATURE_TABLE_VERSION,
    }


def reusable_cutoffs(spark: SparkSession, settings: Settings, record: dict) -> list[dt.date]:
    """The training snapshots of the table's latest version this run can keep as they are: built with the same
    definition for a cutoff this run wants, from summaries that changed since (`summaries.changed_days`) only on or
    after the end of that cutoff's label window. A snapshot reads nothing later, so its rows would come out equal."""
    if not lake.exists(spark, settings.lake, lake.FEATURES):
        return []
    previous = recorded_run(spark, settings)
    if any(previous.get(key) != value for key, value in definition(settings.features).items()):
        return []
    changed = summaries.changed_days(spark, settings, previous["events_version"], record["events_version"])
    if changed is None:
        return []
    window = dt.timedelta(days=settings.features.label_window_days)
    had = {dt.date.fromisoformat(c) for c in previous["cutoffs"]}
    wanted = [dt.date.fromisoformat(c) for c in record["cutoffs"]]
    return [c for c in wanted if c in had and all(day >= c + window for day in changed)]


def write(table: DataFrame, settings: Settings, record: dict) -> None:
    """One commit: the snapshots built, every other snapshot removed except the kept ones (`record["kept"]`)."""
    metadata = json.dumps(record)
    if not record["kept"]:
        lake.overwrite(table, settings.lake, lake.FEATURES, partition_by=["cutoff_date"], userMetadata=metadata)
        return
    kept = ", ".join(f"DATE'{c}'" for c in record["kept"])
    (
        table.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"cutoff_date NOT IN ({kept})")
        .option("userMetadata", metadata)
        .save(lake.path(settings.lake, lake.FEATURES))
    )


def default_scoring_date(days: DataFrame) -> dt.date:
    """The day after the last event day: today's picture, when the events run up to yesterday."""
    last_day = days.agg(F.max("event_date")).first()[0]
    if last_day is None:
        raise ValueError("the events table is empty: ingest some events before featurizing")
    return last_day + dt.timedelta(days=1)


def scoring_date(spark: SparkSession, settings: Settings) -> dt.date:
    """The date score, segment, export and report work on: `score.scoring_date`, or the one the latest features
    version was built for (recorded in its commit), so every stage of a run agrees on it."""
    if settings.score.scoring_date:
        return settings.score.scoring_date
    recorded = recorded_run(spark, settings).get("scoring_date")
    if recorded is None:
        raise ValueError("the features table has no scoring snapshot (built by an earlier version): run featurize")
    return dt.date.fromisoformat(recorded)


def recorded_run(spark: SparkSession, settings: Settings, version: int | None = None) -> dict:
    """What a features-table version was built from (events version, cutoffs, feature list): to rebuild it exactly."""
    history = lake.history(spark, lake.path(settings.lake, lake.FEATURES))
    if version is not None:
        history = history.filter(F.col("version") == version)
    row = history.orderBy(F.desc("version")).select("userMetadata").first()
    return json.loads(row[0])


def cutoff_dates(days: DataFrame, cfg: FeatureSettings) -> list[dt.date]:
    """The configured cutoff (or the latest with a full label window after it), and earlier ones a step apart."""
    latest = cfg.cutoff or default_cutoff(days, cfg.label_window_days)
    return sorted(latest - dt.timedelta(days=i * cfg.cutoff_step_days) for i in range(cfg.cutoffs))


def default_cutoff(days: DataFrame, label_window_days: int) -> dt.date:
    """The latest cutoff that still has a full label window of data after it, moved back to its Monday: the training
    snapshots then stay the same for a week, and the daily runs of that week keep them instead of rebuilding."""
    last_day = days.agg(F.max("event_date")).first()[0]
    if last_day is None:
        raise ValueError("the events table is empty: ingest some events before featurizing")
    latest = last_day - dt.timedelta(days=label_window_days - 1)
    return latest - dt.timedelta(days=latest.weekday())


def build_features(days: DataFrame, cutoff: dt.date, cfg: FeatureSettings, scoring: bool = False) -> DataFrame:
    """One row per customer active before `cutoff`: aggregates, recent sequence, label and split, from the
    customer-day summaries `days` (`summaries.customer_days`, keeping at least `sequence_length + 1` events a day).

    A scoring snapshot (`scoring`) has split `score` and no label: nothing after its date is known.
    """
    history = days.filter(F.col("event_date") < cutoff)
    recent = summaries.recent_events(history)
    rows = (
        activity(history, cutoff)
        .join(category_affinity(history), on="customer_id", how="left")
        .join(recent_sequences(recent, cfg.sequence_length, cfg.category_buckets), on="customer_id", how="left")
    )
    if scoring:
        split = F.lit(SCORE_SPLIT)
        label, purchases, revenue = (F.lit(None).cast(kind) for kind in ("int", "int", "double"))
    else:
        rows = rows.join(labels(days, cutoff, cfg), on="customer_id", how="left")
        split = split_column(F.col("customer_id"), cfg)
        label, purchases, revenue = (F.coalesce(F.col(c), F.lit(0)) for c in ("label", *VALUE_LABELS))
    return rows.select(
        "customer_id",
        F.lit(cutoff).alias("cutoff_date"),
        split.alias("split"),
        label.alias("label"),
        purchases.cast("int").alias("label_purchases"),
        revenue.cast("double").alias("label_revenue"),
        *(F.col(name).cast("double").alias(name) for name in numeric_feature_names()),
        *SEQUENCE_COLUMNS,
        "top_category_id",  # descriptive, for segment profiles; not a model input
    )


def activity(days: DataFrame, cutoff: dt.date) -> DataFrame:
    """Recency, frequency, monetary, windowed counts, time patterns and session statistics from the customer's
    days before the cutoff: one groupBy. A window of N days holds the events of the N days before the cutoff."""
    cutoff_seconds = F.lit(dt.datetime.combine(cutoff, dt.time())).cast("long")

    def days_before(column: str) -> Column:
        return (cutoff_seconds - F.col(column).cast("long")) / 86_400.0

    def total(column: str, where: Column | None = None) -> Column:
        return F.sum(F.col(column) if where is None else F.when(where, F.col(column)).otherwise(0))

    days_ago = F.datediff(F.lit(cutoff), F.col("event_date"))  # 1 for the day before the cutoff
    windowed = [
        total(f"n_{event}", days_ago <= days).alias(f"{event}_{days}d")
        for days in WINDOW_DAYS
        for event in FUNNEL_EVENTS
    ]
    grouped = days.groupBy("customer_id").agg(
        F.max("last").alias("_last"),
        F.max("last_purchase").alias("_last_purchase"),
        F.min("first").alias("_first"),
        total("n").alias("events"),
        total("n_purchase").alias("purchases"),
        F.coalesce(F.sum("revenue"), F.lit(0.0)).alias("revenue"),
        total("n_view").alias("_views"),
        total("n_cart").alias("_carts"),
        total("n", days_ago <= 7).alias("_events_7d"),
        total("n", days_ago <= 30).alias("_events_30d"),
        *windowed,
        total("n", F.dayofweek("event_date").isin(1, 7)).alias("_weekend"),
        total("n_evening").alias("_evening"),
        total("n_night").alias("_night"),
        total("sessions").alias("sessions"),
        total("session_seconds").alias("_session_seconds"),
        total("purchase_sessions").alias("_purchase_sessions"),
    )
    return grouped.select(
        "*",
        days_before("_last").alias("days_since_last_event"),
        F.coalesce(days_before("_last_purchase"), F.lit(NO_PURCHASE_DAYS)).alias("days_since_last_purchase"),
        days_before("_first").alias("tenure_days"),
        (F.col("revenue") / F.greatest(F.col("purchases"), F.lit(1))).alias("avg_order_value"),
        (F.col("_carts") / F.greatest(F.col("_views"), F.lit(1))).alias("view_to_cart"),
        (F.col("purchases") / F.greatest(F.col("_carts"), F.lit(1))).alias("cart_to_purchase"),
        # events a day in the last 7 days against the 23 before them (1 = steady, > 1 = heating up)
        ((F.col("_events_7d") / 7.0 + 0.1) / ((F.col("_events_30d") - F.col("_events_7d")) / 23.0 + 0.1)).alias(
            "activity_trend"
        ),
        # the mean gap between consecutive events is the span over the gaps
        (
            (F.col("_last").cast("long") - F.col("_first").cast("long"))
            / 3_600.0
            / F.greatest(F.col("events") - 1, F.lit(1))
        ).alias("mean_gap_hours"),
        *((F.col(f"_{part}") / F.col("events")).alias(f"{part}_share") for part in ("weekend", "evening", "night")),
        (F.col("events") / F.col("sessions")).alias("events_per_session"),
        (F.col("_session_seconds") / 60.0 / F.col("sessions")).alias("avg_session_minutes"),
        (F.col("_purchase_sessions") / F.col("sessions")).alias("purchase_session_share"),
    ).drop(*(c for c in grouped.columns if c.startswith("_")))


def labels(days: DataFrame, cutoff: dt.date, cfg: FeatureSettings) -> DataFrame:
    """What each customer active in the `label_window_days` days from the cutoff did there: `label` = 1 if they did
    `label_event`, `label_purchases` = their days with a purchase (orders, as BG/NBD counts them), `label_revenue`."""
    window_end = cutoff + dt.timedelta(days=cfg.label_window_days)
    in_window = (F.col("event_date") >= cutoff) & (F.col("event_date") < window_end)
    return (
        days.filter(in_window)
        .groupBy("customer_id")
        .agg(
            F.max(F.when(F.col(f"n_{cfg.label_event}") > 0, 1)).alias("label"),
            F.count(F.when(F.col("n_purchase") > 0, 1)).alias("label_purchases"),
            F.sum("revenue").alias("label_revenue"),
        )
    )


def category_affinity(days: DataFrame) -> DataFrame:
    """How concentrated a customer's activity is: distinct categories, the top one's share, entropy (nats); and
    distinct brands.

    One aggregation by (customer, category) of the days' categories feeds the first three; distinct brands are
    counted over the days' brands (exact; Spark drops repeated (customer, brand) pairs before the shuffle).
    """
    per_category = (
        days.select("customer_id", F.explode("categories").alias("c"))
        .groupBy("customer_id", F.col("c.category_id").alias("category_id"))
        .agg(F.sum("c.n").alias("n"))
    )
    brands = (
        days.select("customer_id", F.explode("brands").alias("brand"))
        .groupBy("customer_id")
        .agg(F.count_distinct("brand").alias("distinct_brands"))
    )
    totals = per_category.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("distinct_categories"),
        F.sum("n").alias("_total"),
        F.max("n").alias("_top"),
        F.sum(F.col("n") * F.log(F.col("n"))).alias("_n_log_n"),
        F.max(F.struct("n", "category_id"))["category_id"].alias("top_category_id"),  # ties: the higher id
    )
    # entropy = log(N) - sum(n log n) / N, with N the customer's events
    return (
        totals.select(
            "customer_id",
            "distinct_categories",
            (F.col("_top") / F.col("_total")).alias("top_category_share"),
            (F.log(F.col("_total")) - F.col("_n_log_n") / F.col("_total")).alias("category_entropy"),
            "top_category_id",
        )
        .join(brands, on="customer_id", how="left")
        .fillna(0, subset=["distinct_brands"])
    )


def recent_sequences(events: DataFrame, length: int, category_buckets: int) -> DataFrame:
    """The last `length` of `events` (`summaries.RECENT_FIELDS`) per customer as fixed-length int arrays: left-padded
    with 0, most recent last.

    Skew-safe and one small shuffle: `row_number() <= length + 1` over the customer's events becomes Spark's window
    group limit, which keeps at most that many rows per customer in every input partition before the exchange, so
    even a customer with a million events ships a few hundred rows. The extra row gives the oldest kept event its gap.
    Events at the same instant are ordered by type and product: with the customer and time, that is the event key.
    """
    latest_first = summaries.latest_first(["customer_id"])
    event_type_id = F.element_at(_lookup(EVENT_TYPE_IDS), F.col("event_type")).cast("int")
    category_hash = F.xxhash64(F.coalesce(F.col("category_id"), F.lit(-1)))
    category_bucket = (1 + F.pmod(category_hash, F.lit(category_buckets - 1))).cast("int")
    gap = F.col("event_time").cast("long") - F.col("previous_time").cast("long")
    gap_bucket = F.when(gap.isNull(), 1)
    for i, bound in enumerate(GAP_BUCKET_SECONDS):
        gap_bucket = gap_bucket.when(gap <= bound, i + 2)
    recent = (
        events.select("customer_id", *summaries.RECENT_FIELDS)
        .withColumn("recency_rank", F.row_number().over(latest_first))
        .filter(F.col("recency_rank") <= length + 1)
        .withColumn("previous_time", F.lead("event_time").over(latest_first))
        .withColumn("gap_bucket", gap_bucket.otherwise(len(GAP_BUCKET_SECONDS) + 2))
        .filter(F.col("recency_rank") <= length)
        .groupBy("customer_id")
        .agg(
            F.sort_array(
                F.collect_list(
                    F.struct(
                        (-F.col("recency_rank")).alias("order"),
                        event_type_id.alias("event_type_id"),
                        category_bucket.alias("category_bucket"),
                        "gap_bucket",
                    )
                )
            ).alias("recent")
        )
    )
    padding = F.array_repeat(F.lit(0), F.lit(length) - F.size("recent"))
    return recent.select(
        "customer_id",
        *(
            F.concat(padding, F.col(f"recent.{field}")).alias(name)
            for field, name in zip(["event_type_id", "category_bucket", "gap_bucket"], SEQUENCE_COLUMNS, strict=True)
        ),
    )


def customers_without_history(days: DataFrame, cutoff: dt.date, label_window_days: int) -> int:
    """Customers seen in the label window but never before the cutoff: they get no feature row."""
    window_end = cutoff + dt.timedelta(days=label_window_days)
    before = days.filter(F.col("event_date") < cutoff).select("customer_id").distinct()
    after = days.filter(F.col("event_date").between(cutoff, window_end - dt.timedelta(days=1)))
    return after.select("customer_id").distinct().join(before, on="customer_id", how="left_anti").count()


def split_column(customer_id: Column, cfg: FeatureSettings) -> Column:
    """train / validation / test by a hash of the customer id: stable across runs and cutoffs."""
    draw = F.pmod(F.xxhash64(F.lit("split"), customer_id), F.lit(10_000)) / 10_000.0
    return (
        F.when(draw < cfg.split_train, "train")
        .when(draw < cfg.split_train + cfg.split_validation, "validation")
        .otherwise("test")
    )


def model_input_value(name: str) -> Column:
    """Counts, money and durations are heavy-tailed: the model sees log1p of them; shares as they are."""
    column = F.coalesce(F.col(name).cast("double"), F.lit(0.0))
    if name in SHARE_FEATURES:
        return column
    return F.log1p(F.greatest(column, F.lit(0.0)))


def split_statistics(features: DataFrame) -> DataFrame:
    """Per split, in one pass: its rows, and the mean and standard deviation of each model input."""
    return features.groupBy("split").agg(
        F.count(F.lit(1)).alias("rows"),
        *(
            agg(model_input_value(n)).alias(f"{n}__{label}")
            for n in numeric_feature_names()
            for agg, label in [(F.avg, "mean"), (F.stddev_pop, "std")]
        ),
    )


def normalisation_stats(train: Row | None) -> dict[str, tuple[float, float]]:
    """feature -> (mean, standard deviation) on the training split (`split_statistics`'s train row; zeros when there
    is none)."""
    values = train.asDict() if train is not None else {}
    return {
        n: (float(values.get(f"{n}__mean") or 0.0), float(values.get(f"{n}__std") or 0.0))
        for n in numeric_feature_names()
    }


def model_inputs(features: DataFrame, stats: dict[str, tuple[float, float]]) -> DataFrame:
    """The standardised numeric vector (`numeric`, float32) beside the sequences: what the model consumes."""

    def standardised(name: str) -> Column:
        mean, std = stats[name]
        return (model_input_value(name) - mean) / (std if std > 1e-9 else 1.0)

    numeric = F.array(*(standardised(n).cast("float") for n in numeric_feature_names()))
    return features.withColumn("numeric", numeric)


def read_stats(spark: SparkSession, settings: Settings, version: int) -> dict[str, tuple[float, float]]:
    """The normalisation statistics of a features version's training split, computed from that version (one
    aggregation), so statistics and rows can never come from two different runs."""
    table = lake.read(spark, settings.lake, lake.FEATURES, version=version).filter(F.col("split") == "train")
    return normalisation_stats(split_statistics(table).first())


def _lookup(mapping: dict) -> Column:
    return F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair])
