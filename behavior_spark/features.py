"""Featurize: point-in-time features per customer and cutoff, and a label from the window after the cutoff.

Features see only events strictly before the cutoff; the label sees only the label window after it. Several
cutoffs (`features.cutoffs`, `features.cutoff_step_days` apart) are stacked into one table. Everything is read
from the customer-day summaries ingest keeps (`summaries`), not from the events: cutoffs are midnights, so a
cutoff never cuts a day. The scoring snapshot, rebuilt every day, reads each customer's kept totals
(`summaries.totals_before`) and the few days since, not the whole history, and carries the array features of the
customers without a new day from the previous one (`carried_arrays`). Every aggregation is a groupBy with
map-side combining over customer-days, and the recent sequence comes from the few last events each day keeps, so a
customer with millions of events never ships them to one task.
The model's input transform (`model_inputs`) lives here too, so training and scoring prepare rows the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from contextlib import nullcontext
from functools import reduce

from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from behavior_spark import console, lake, summaries
from behavior_spark.array_features import ARRAY_FEATURES, SEQUENCE_COLUMNS, array_features
from behavior_spark.config import FeatureSettings, Settings
from behavior_spark.contracts import FUNNEL_EVENTS
from behavior_spark.results import FeaturizeResult
from behavior_spark.run_record import recorded_run
from behavior_spark.session import in_utc, materialized

log = logging.getLogger(__name__)

WINDOW_DAYS = [7, 30, 90]
NO_PURCHASE_DAYS = 365.0  # days since last purchase for customers who never bought
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
        "purchase_days",
        "purchase_span_days",
        "days_per_purchase_day",
        "purchase_overdue",
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


def run(spark: SparkSession, settings: Settings) -> FeaturizeResult:
    """Build, in one commit, the training snapshots (the configured cutoffs, labelled) and the scoring snapshot (as
    of the scoring date, split `score`, no label). A training snapshot of the previous version whose inputs did not
    change since (`reusable_cutoffs`) is kept as it is, not rebuilt."""
    cfg = settings.features
    in_utc(spark)  # cutoff dates and day windows as ingest made them
    events_version = (
        cfg.events_version if cfg.events_version is not None else lake.version(spark, settings.lake, lake.EVENTS)
    )
    days = summaries.for_events(spark, settings, events_version)
    commits = summaries.commit_log(spark, settings)  # read once, after a rebuild `for_events` may have made
    last_day = last_event_day(days)
    cutoffs = cutoff_dates(last_day, cfg)
    as_of = settings.score.scoring_date or last_day + dt.timedelta(days=1)  # today's picture: the day after the last
    record = {
        "events_version": events_version,
        "cutoffs": [c.isoformat() for c in cutoffs],
        "scoring_date": as_of.isoformat(),
        **definition(cfg),
    }
    previous = recorded_run(spark, settings)
    kept = [cutoff for cutoff in reusable_cutoffs(previous, settings, record, commits) if cutoff != as_of]
    built = [cutoff for cutoff in cutoffs if cutoff not in kept]
    console.step("featurize", f"{len(built) + 1} snapshots to build, {len(kept)} kept")
    with materialized(days) if built else nullcontext(days) as days:  # every training snapshot reads all of it
        snapshots = [build_features(days, cutoff, cfg) for cutoff in built]
        totals = summaries.totals_before(spark, settings, days, events_version, as_of, commits)
        arrays = carried_arrays(spark, settings, days, previous, record, commits)
        snapshots.append(build_features(days, as_of, cfg, scoring=True, totals=totals, arrays=arrays))
        write(reduce(DataFrame.unionByName, snapshots), settings, {**record, "kept": [c.isoformat() for c in kept]})
        excluded = sum(customers_without_history(days, cutoff, cfg.label_window_days) for cutoff in built)
    written = lake.read(spark, settings.lake, lake.FEATURES)
    counts = {r["split"]: r["count"] for r in written.groupBy("split").count().collect()}  # four splits
    return FeaturizeResult(
        cutoffs=record["cutoffs"],
        kept_cutoffs=[c.isoformat() for c in kept],
        scoring_date=record["scoring_date"],
        events_version=events_version,
        rows=sum(counts.values()),
        rows_by_split=counts,
        customers_without_history=excluded,
        features_version=lake.version(spark, settings.lake, lake.FEATURES),
    )


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


def same_definition(previous: dict, cfg: FeatureSettings) -> bool:
    return all(previous.get(key) == value for key, value in definition(cfg).items())


def reusable_cutoffs(previous: dict, settings: Settings, record: dict, commits: list[dict]) -> list[dt.date]:
    """The training snapshots of the table's latest version (its `recorded_run`: `previous`) this run can keep as
    they are: built with the same definition for a cutoff this run wants, from summaries that changed since
    (`summaries.changed_days` over their `commits`) only on or after the end of that cutoff's label window. A snapshot
    reads nothing later, so its rows would come out equal."""
    if not same_definition(previous, settings.features):
        return []  # another definition, or no table yet
    changed = summaries.changed_days(commits, previous["events_version"], record["events_version"])
    if changed is None:
        return []
    window = dt.timedelta(days=settings.features.label_window_days)
    had = {dt.date.fromisoformat(c) for c in previous["cutoffs"]}
    wanted = [dt.date.fromisoformat(c) for c in record["cutoffs"]]
    return [c for c in wanted if c in had and all(day >= c + window for day in changed)]


def carried_arrays(
    spark: SparkSession, settings: Settings, days: DataFrame, previous: dict, record: dict, commits: list[dict]
) -> DataFrame | None:
    """Every customer's array features (ARRAY_FEATURES) for the scoring snapshot of `record`: carried from the
    previous scoring snapshot (of `previous`, the table's latest version) for a customer without a day since it,
    computed from the totals for the others only. They read a customer's days, not the date, so a customer without a
    new day keeps them, when the previous run had the same definition and no summary of a day before its scoring date
    changed since (`summaries.changed_days`); None otherwise. (Spark runs the higher-order functions they are made
    with interpreted: computed for every customer, they were most of a day's featurize.)"""
    if "scoring_date" not in previous or not same_definition(previous, settings.features):
        return None
    since, as_of = (dt.date.fromisoformat(run["scoring_date"]) for run in (previous, record))
    changed = summaries.changed_days(commits, previous["events_version"], record["events_version"])
    if changed is None or since > as_of or any(day < since for day in changed):
        return None
    fresh = days.filter((F.col("event_date") >= since) & (F.col("event_date") < as_of)).select("customer_id").distinct()
    totals = summaries.totals_before(spark, settings, days, record["events_version"], as_of, commits, customers=fresh)
    table = lake.read(spark, settings.lake, lake.FEATURES, version=lake.version(spark, settings.lake, lake.FEATURES))
    carried = table.filter((F.col("split") == SCORE_SPLIT) & (F.col("cutoff_date") == since))
    log.info("scoring snapshot: array features carried from %s for customers without a day since", since)
    return array_features(totals, settings.features).unionByName(
        carried.join(fresh, on="customer_id", how="left_anti").select("customer_id", *ARRAY_FEATURES)
    )


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


def last_event_day(days: DataFrame) -> dt.date:
    """The last day with events in the customer-day summaries `days`."""
    last_day = lake.one_row(days.agg(F.max("event_date")))[0]
    if last_day is None:
        raise ValueError("the events table is empty: ingest some events before featurizing")
    return last_day


def cutoff_dates(last_day: dt.date, cfg: FeatureSettings) -> list[dt.date]:
    """The configured cutoff (or the latest with a full label window after `last_day`), and earlier ones a step
    apart."""
    latest = cfg.cutoff or default_cutoff(last_day, cfg.label_window_days)
    return sorted(latest - dt.timedelta(days=i * cfg.cutoff_step_days) for i in range(cfg.cutoffs))


def default_cutoff(last_day: dt.date, label_window_days: int) -> dt.date:
    """The latest cutoff that still has a full label window of data up to `last_day`, moved back to its Monday: the
    training snapshots then stay the same for a week, and the daily runs of that week keep them instead of
    rebuilding."""
    latest = last_day - dt.timedelta(days=label_window_days - 1)
    return latest - dt.timedelta(days=latest.weekday())


def build_features(
    days: DataFrame,
    cutoff: dt.date,
    cfg: FeatureSettings,
    scoring: bool = False,
    totals: DataFrame | None = None,
    arrays: DataFrame | None = None,
) -> DataFrame:
    """One row per customer active before `cutoff`: aggregates, recent sequence, label and split, from the
    customer-day summaries `days` (`summaries.customer_days`, keeping at least `sequence_length + 1` events a day).

    `totals` are the customers' summaries before the cutoff rolled up (`summaries.roll_up`), when the caller keeps
    them (`summaries.totals_before`); otherwise they are rolled up from `days`. Either way the snapshot reads `days`
    only for its windowed counts (the last 90 days) and its label. `arrays`: every customer's array features, when
    the caller has them (`carried_arrays`); otherwise they are read from the totals (`array_features`).
    A scoring snapshot (`scoring`) has split `score` and no label: nothing after its date is known.
    """
    history = days.filter(F.col("event_date") < cutoff)
    if totals is None:
        totals = summaries.roll_up(summaries.day_rows(history), cfg.sequence_length + 1)
    windowed = windowed_counts(history, cutoff)
    counts = [c for c in windowed.columns if c != "customer_id"]
    rows = totals.join(windowed, on="customer_id", how="left").fillna(0, subset=counts)
    numeric: list[str | Column] = ["customer_id", *(c for c in counts if not c.startswith("_")), *activity(cutoff)]
    if arrays is None:
        rows = array_features(rows, cfg, beside=numeric)
    else:
        rows = rows.select(*numeric).join(arrays, on="customer_id", how="left")
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


def windowed_counts(history: DataFrame, cutoff: dt.date) -> DataFrame:
    """Each customer's funnel events in the 7, 30 and 90 days before the cutoff (a window of N days holds the events
    of the N days before it), and all events in the last 7 and 30: one groupBy over the last 90 days' summaries."""
    days_ago = F.datediff(F.lit(cutoff), F.col("event_date"))  # 1 for the day before the cutoff

    def total(column: str, days: int) -> Column:
        return F.sum(F.when(days_ago <= days, F.col(column)).otherwise(0))

    recent = history.filter(F.col("event_date") >= cutoff - dt.timedelta(days=max(WINDOW_DAYS)))
    return recent.groupBy("customer_id").agg(
        *(total(f"n_{event}", days).alias(f"{event}_{days}d") for days in WINDOW_DAYS for event in FUNNEL_EVENTS),
        total("n", 7).alias("_events_7d"),
        total("n", 30).alias("_events_30d"),
    )


def activity(cutoff: dt.date) -> list[Column]:
    """Recency, frequency, monetary, time patterns and session statistics: columns over a customer's totals before
    the cutoff (`summaries.roll_up`) beside their `windowed_counts`."""
    cutoff_seconds = F.lit(dt.datetime.combine(cutoff, dt.time())).cast("long")

    def days_before(column: str) -> Column:
        return (cutoff_seconds - F.col(column).cast("long")) / 86_400.0

    revenue = F.coalesce(F.col("revenue"), F.lit(0.0))
    return [
        F.col("n").alias("events"),
        F.col("n_purchase").alias("purchases"),
        revenue.alias("revenue"),
        F.col("sessions"),
        days_before("last").alias("days_since_last_event"),
        F.coalesce(days_before("last_purchase"), F.lit(NO_PURCHASE_DAYS)).alias("days_since_last_purchase"),
        days_before("first").alias("tenure_days"),
        *purchase_rhythm(cutoff),
        (revenue / F.greatest(F.col("n_purchase"), F.lit(1))).alias("avg_order_value"),
        (F.col("n_cart") / F.greatest(F.col("n_view"), F.lit(1))).alias("view_to_cart"),
        (F.col("n_purchase") / F.greatest(F.col("n_cart"), F.lit(1))).alias("cart_to_purchase"),
        # events a day in the last 7 days against the 23 before them (1 = steady, > 1 = heating up)
        ((F.col("_events_7d") / 7.0 + 0.1) / ((F.col("_events_30d") - F.col("_events_7d")) / 23.0 + 0.1)).alias(
            "activity_trend"
        ),
        # the mean gap between consecutive events is the span over the gaps
        (
            (F.col("last").cast("long") - F.col("first").cast("long")) / 3_600.0 / F.greatest(F.col("n") - 1, F.lit(1))
        ).alias("mean_gap_hours"),
        *((F.col(f"n_{part}") / F.col("n")).alias(f"{part}_share") for part in ("weekend", "evening", "night")),
        (F.col("n") / F.col("sessions")).alias("events_per_session"),
        (F.col("session_seconds") / 60.0 / F.col("sessions")).alias("avg_session_minutes"),
        (F.col("purchase_sessions") / F.col("sessions")).alias("purchase_session_share"),
    ]


def purchase_rhythm(cutoff: dt.date) -> list[Column]:
    """How often a customer buys, in days with a purchase (a basket of many lines, or many baskets a day, is one;
    what BG/NBD and the value labels count): the purchase days, first to last of them (BG/NBD's t_x), days a
    purchase day since the first (BG/NBD's T over x + 1), and the days since the last against the usual gap between
    them (1 = due now). All 0 for a customer without a purchase."""
    bought = F.col("purchase_days") > 0
    first, last = F.col("first_purchase_day"), F.to_date("last_purchase")
    span = F.datediff(last, first)
    usual_gap = F.greatest(span / F.greatest(F.col("purchase_days") - 1, F.lit(1)), F.lit(1.0))

    def rhythm(value: Column) -> Column:
        return F.when(bought, value).otherwise(F.lit(0.0))

    return [
        F.col("purchase_days"),
        rhythm(span).alias("purchase_span_days"),
        rhythm(F.datediff(F.lit(cutoff), first) / F.col("purchase_days")).alias("days_per_purchase_day"),
        rhythm(F.datediff(F.lit(cutoff), last) / usual_gap).alias("purchase_overdue"),
    ]


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


def bin_edges(train: DataFrame, stats: dict[str, tuple[float, float]], bins: int) -> list[list[float]]:
    """Per numeric input in the model's order, the distinct approximate quantiles (0, 1/bins, ..., 1) of its
    standardised values on `train`, one pass (the piecewise-linear encoding's bins); a constant input gets one bin."""
    names = numeric_feature_names()
    standardised = train.transform(model_inputs, stats).select(
        *(F.col("numeric")[i].alias(f"_x{i}") for i in range(len(names)))
    )
    quantiles = standardised.approxQuantile(list(standardised.columns), [k / bins for k in range(bins + 1)], 0.001)
    edges = [sorted(set(q)) for q in quantiles]
    return [e if len(e) > 1 else [e[0] if e else 0.0, (e[0] if e else 0.0) + 1.0] for e in edges]


def read_stats(spark: SparkSession, settings: Settings, version: int) -> dict[str, tuple[float, float]]:
    """The normalisation statistics of a features version's training split, computed from that version (one
    aggregation), so statistics and rows can never come from two different runs."""
    table = lake.read(spark, settings.lake, lake.FEATURES, version=version).filter(F.col("split") == "train")
    return normalisation_stats(lake.one_row(split_statistics(table)))
