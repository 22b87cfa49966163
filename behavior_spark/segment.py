"""Segment: customers grouped by KMeans, each segment profiled, named in plain words, and kept stable across runs.

- Features: the 64-dimension embedding, the propensity and log recency, frequency and monetary value, scaled.
- k: fixed (`segment.k`), else the previous run's k, else the best silhouette over `segment.k_min`..`segment.k_max`
  chosen on a bounded sample.
- Restarts: KMeans finds a local optimum that depends on its seed and on the row order; the new model is the
  lowest-cost of `segment.restarts` fits.
- Warm start: customers assigned to the nearest of the previous run's centroids are a candidate too, and they are
  kept unless the new model's cost is lower by more than `segment.keep_tolerance`. Demo-like data has several
  near-equal optima, so without this a re-run with another seed (or rewritten files) could regroup a fifth of
  the customers for a cost gain of a fraction of a percent.
- Stable ids: each run's centroids (means of the unscaled features) are matched to the previous run's, nearest
  first, so "segment 2" keeps its meaning next week; customers who moved between segments are counted.
- Privacy: a segment smaller than `segment.min_segment_size` (k-anonymity) keeps its customers but its profile
  is suppressed: no statistics, no top categories, in the table or the report.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import operator

from pyspark.ml.clustering import KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment

from behavior_spark import features, lake, naming, run_record
from behavior_spark.config import SegmentSettings, Settings
from behavior_spark.results import SegmentResult

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["propensity", "expected_purchases", "expected_revenue"]  # the model's answers
HISTORY_COLUMNS = ["days_since_last_event", "purchases", "revenue", "events", "activity_trend"]  # the snapshot's
PROFILE_COLUMNS = [*SCORE_COLUMNS, *HISTORY_COLUMNS]  # averaged per segment
MEMBER_COLUMNS = ["customer_id", "segment_id", "segment_name", "segment_description", *SCORE_COLUMNS]
DATED = ["value_decile", "scoring_date"]  # after the customer's reasons (from score), where scoring made them
VALUE_DECILES = 10
TOP_CATEGORIES = 3
SUPPRESSED = "suppressed (too few customers)"


def run(spark: SparkSession, settings: Settings) -> SegmentResult:
    cfg = settings.segment
    scores = lake.read(spark, settings.lake, lake.SCORES)
    scoring_date = run_record.scoring_date(spark, settings)  # the date the score stage scored
    customers = (
        scores.filter(F.col("scoring_date") == F.lit(scoring_date))
        .join(
            lake.read(spark, settings.lake, lake.FEATURES)
            .filter(F.col("split") == features.SCORE_SPLIT)
            .select("customer_id", "cutoff_date", *HISTORY_COLUMNS, "tenure_days", "top_category_id"),
            on=["customer_id", "cutoff_date"],
            how="inner",
        )
        .transform(with_segment_features)
        .transform(with_value_decile)
        .cache()
    )
    previous = previous_centroids(spark, settings, scoring_date)  # k rows of the run before, or none
    k = cfg.k or len(previous) or choose_k(customers, cfg)
    clustered = fit_clusters(customers, k, cfg, previous)
    centroids = cluster_centroids(clustered)  # k rows
    ids = match_segments(centroids, previous)
    assigned = clustered.withColumn("segment_id", _lookup(ids)[F.col("cluster")]).drop("cluster")
    profiles = (
        profile(assigned, cfg.min_segment_size, settings.features.label_window_days)
        .transform(with_category_labels, lake.read(spark, settings.lake, lake.EVENTS))
        .withColumn("scoring_date", F.lit(scoring_date))
        .cache()
    )
    profiles = with_names(profiles, segment_names(profiles.collect(), previous_names(spark, settings, scoring_date)))
    named = assigned.join(profiles.select("segment_id", "segment_name", "segment_description"), "segment_id", "inner")
    moved = moves(spark, settings, named, scoring_date)
    where = f"scoring_date = '{scoring_date}'"
    lake.replace(
        named.select(*MEMBER_COLUMNS, *(["reasons"] if "reasons" in named.columns else []), *DATED),
        settings.lake,
        lake.SEGMENTS,
        where,
        partition_by=["scoring_date"],
    )
    lake.replace(profiles, settings.lake, lake.SEGMENT_PROFILES, where)
    centroid_rows = [(scoring_date, ids[c], vector) for c, vector in centroids.items()]
    lake.replace(
        spark.createDataFrame(centroid_rows, "scoring_date date, segment_id int, centroid array<double>"),
        settings.lake,
        lake.SEGMENT_CENTROIDS,
        where,
    )
    customers.unpersist()
    profiles.unpersist()
    sizes = {r["segment_name"]: r["customers"] for r in profiles.orderBy("segment_id").collect()}  # k rows
    return SegmentResult(k=k, segments=sizes, customers_moved=moved, matched_previous_run=bool(previous))


def with_segment_features(customers: DataFrame) -> DataFrame:
    """`segment_features`: embedding, propensity, log recency / frequency / monetary, as one vector."""
    extra = F.array(
        F.col("propensity").cast("double"),
        F.log1p(F.col("days_since_last_event")),
        F.log1p(F.col("purchases")),
        F.log1p(F.col("revenue")),
    )
    return customers.withColumn(
        "segment_features", array_to_vector(F.concat(F.col("embedding").cast("array<double>"), extra))
    )


def with_value_decile(customers: DataFrame) -> DataFrame:
    """`value_decile`: 1 for the tenth of customers with the highest expected revenue, .. 10 for the lowest; cut at
    approximate quantiles (one pass), so no global sort or single-partition window is needed."""
    shares = [i / VALUE_DECILES for i in range(1, VALUE_DECILES)]
    edges = customers.approxQuantile("expected_revenue", shares, 0.001)
    above = sum((F.col("expected_revenue") > F.lit(edge)).cast("int") for edge in edges)
    return customers.withColumn("value_decile", (F.lit(VALUE_DECILES) - above).cast("int"))


def fit_clusters(
    customers: DataFrame, k: int, cfg: SegmentSettings, previous: dict[int, list[float]] | None = None
) -> DataFrame:
    """`cluster` (0..k-1) per customer: the lowest-cost of `cfg.restarts` KMeans fits on the standardised features,
    or the assignment to the previous run's centroids when it costs at most `cfg.keep_tolerance` more."""
    scaler = StandardScaler(inputCol="segment_features", outputCol="scaled", withMean=True, withStd=True).fit(customers)
    scaled = scaler.transform(customers)
    fits = [
        KMeans(k=k, seed=cfg.seed + i, featuresCol="scaled", predictionCol="cluster").fit(scaled)
        for i in range(max(cfg.restarts, 1))
    ]
    best = min(fits, key=lambda model: model.summary.trainingCost)
    log.info("KMeans costs by seed: %s", [round(model.summary.trainingCost, 1) for model in fits])
    if previous and len(previous) == k:
        mean, std = scaler.mean.toArray(), scaler.std.toArray()
        centers = [[(x - m) / s if s else 0.0 for x, m, s in zip(c, mean, std, strict=True)] for c in previous.values()]
        kept = nearest_center(scaled, centers)
        kept_cost = lake.one_row(kept.agg(F.sum("_distance")))[0]
        log.info("cost of keeping the previous centroids: %.1f", kept_cost)
        if kept_cost <= best.summary.trainingCost * (1 + cfg.keep_tolerance):
            return kept.drop("scaled", "_distance")
    return best.transform(scaled).drop("scaled")


def nearest_center(scaled: DataFrame, centers: list[list[float]]) -> DataFrame:
    """`cluster` (index into `centers`) and `_distance` (squared) of each row's nearest center, in Spark SQL."""
    point = vector_to_array(F.col("scaled"))
    distances = F.transform(
        F.array(*[F.array(*[F.lit(float(x)) for x in center]) for center in centers]),
        lambda center: F.aggregate(F.zip_with(point, center, lambda a, b: (a - b) * (a - b)), F.lit(0.0), operator.add),
    )
    return (
        scaled.withColumn("_distances", distances)
        .withColumn("_distance", F.array_min("_distances"))
        .withColumn("cluster", F.array_position("_distances", F.col("_distance")).cast("int") - 1)
        .drop("_distances")
    )


def choose_k(customers: DataFrame, cfg: SegmentSettings) -> int:
    """The k in `k_min`..`k_max` with the best silhouette, fitted and scored on at most `k_sample_rows` customers."""
    total = customers.count()
    sample = customers.sample(fraction=min(1.0, cfg.k_sample_rows / max(total, 1)), seed=cfg.seed).cache()
    evaluator = ClusteringEvaluator(featuresCol="scaled_", predictionCol="cluster")
    scaler = StandardScaler(inputCol="segment_features", outputCol="scaled_", withMean=True, withStd=True)
    scaled = scaler.fit(sample).transform(sample).cache()
    silhouettes = {}
    for k in range(cfg.k_min, cfg.k_max + 1):
        model = KMeans(k=k, seed=cfg.seed, featuresCol="scaled_", predictionCol="cluster").fit(scaled)
        silhouettes[k] = evaluator.evaluate(model.transform(scaled))
    scaled.unpersist()
    sample.unpersist()
    best = max(silhouettes, key=lambda k: silhouettes[k])
    log.info("silhouette by k: %s; k = %d", {k: round(v, 3) for k, v in silhouettes.items()}, best)
    return best


def cluster_centroids(clustered: DataFrame) -> dict[int, list[float]]:
    rows = (
        clustered.groupBy("cluster")
        .agg(vector_to_array(Summarizer.mean(F.col("segment_features"))).alias("centroid"))
        .collect()  # k rows
    )
    return {r["cluster"]: list(r["centroid"]) for r in rows}


def previous_centroids(spark: SparkSession, settings: Settings, scoring_date: dt.date) -> dict[int, list[float]]:
    """The latest stored centroids on or before this scoring date (a re-run matches its own first run)."""
    if not lake.exists(spark, settings.lake, lake.SEGMENT_CENTROIDS):
        return {}
    stored = lake.read(spark, settings.lake, lake.SEGMENT_CENTROIDS).filter(F.col("scoring_date") <= scoring_date)
    latest = lake.one_row(stored.agg(F.max("scoring_date")))[0]
    if latest is None:
        return {}
    return {r["segment_id"]: list(r["centroid"]) for r in stored.filter(F.col("scoring_date") == latest).collect()}


def match_segments(current: dict[int, list[float]], previous: dict[int, list[float]]) -> dict[int, int]:
    """cluster -> segment id: the previous run's ids matched to this run's clusters so that the summed distance
    between matched centroids is least (the assignment problem, SciPy's `linear_sum_assignment`).

    Clusters left over (k grew) get new ids after the largest previous one.
    """
    clusters, old_ids = sorted(current), sorted(previous)
    ids: dict[int, int] = {}
    if clusters and old_ids:
        distances = [[math.dist(current[c], previous[o]) for o in old_ids] for c in clusters]
        rows, columns = linear_sum_assignment(distances)
        ids = {clusters[r]: old_ids[c] for r, c in zip(rows, columns, strict=True)}
    next_id = max(previous, default=-1) + 1
    for cluster in clusters:
        if cluster not in ids:
            ids[cluster], next_id = next_id, next_id + 1
    return ids


def moves(spark: SparkSession, settings: Settings, named: DataFrame, scoring_date: dt.date) -> int | None:
    """Customers whose segment differs from the previous scoring date's; None on the first run."""
    if not lake.exists(spark, settings.lake, lake.SEGMENTS):
        return None
    segments = lake.read(spark, settings.lake, lake.SEGMENTS)
    before = lake.one_row(segments.filter(F.col("scoring_date") < scoring_date).agg(F.max("scoring_date")))[0]
    if before is None:
        return None
    previous = segments.filter(F.col("scoring_date") == before).select(
        "customer_id", F.col("segment_id").alias("previous_segment_id")
    )
    joined = named.join(previous, on="customer_id", how="inner")
    return joined.filter(F.col("segment_id") != F.col("previous_segment_id")).count()


def with_category_labels(profiles: DataFrame, events: DataFrame) -> DataFrame:
    """`top_category_labels`: each top category's most frequent code in the events ("electronics.audio"), or its id
    where the source has no codes. Only the few top categories (k x TOP_CATEGORIES) are looked up."""
    top = profiles.select(F.explode("top_categories").alias("category_id")).distinct().collect()  # <= k x 3 rows
    ids = [r["category_id"] for r in top if r["category_id"] is not None]
    codes = (
        events.filter(F.col("category_id").isin(ids) & F.col("category_code").isNotNull())
        .groupBy("category_id", "category_code")
        .count()
        .groupBy("category_id")
        .agg(F.max_by("category_code", F.struct("count", "category_code")).alias("code"))
        .collect()  # one row per top category
    )
    if not codes:
        return profiles.withColumn("top_category_labels", F.transform("top_categories", lambda c: c.cast("string")))
    labels = F.create_map(*[F.lit(x) for r in codes for x in (r["category_id"], r["code"])])
    label = lambda c: F.coalesce(labels[c], c.cast("string"))  # noqa: E731
    return profiles.withColumn("top_category_labels", F.transform("top_categories", label))


def profile(assigned: DataFrame, min_segment_size: int, window_days: int) -> DataFrame:
    """Size, mean profile, expected revenue and revenue at risk and top categories per segment; small segments
    suppressed.

    Revenue at risk: what the segment's customers spent per `window_days` so far (their revenue over their tenure,
    at least one window) beyond what the model expects them to spend in the next window, summed."""
    spent_per_window = F.col("revenue") / F.greatest(F.col("tenure_days"), F.lit(float(window_days))) * window_days
    stats = assigned.groupBy("segment_id").agg(
        F.count(F.lit(1)).alias("customers"),
        *(F.avg(c).alias(f"mean_{c}") for c in PROFILE_COLUMNS),
        F.sum("expected_revenue").alias("expected_revenue"),
        F.sum(F.greatest(spent_per_window - F.col("expected_revenue"), F.lit(0.0))).alias("revenue_at_risk"),
    )
    ranked = Window.partitionBy("segment_id").orderBy(F.desc("n"), "top_category_id")
    top = (
        assigned.groupBy("segment_id", "top_category_id")
        .agg(F.count(F.lit(1)).alias("n"))
        .withColumn("rank", F.row_number().over(ranked))
        .filter(F.col("rank") <= TOP_CATEGORIES)
        .groupBy("segment_id")
        .agg(F.sort_array(F.collect_list(F.struct("rank", "top_category_id"))).alias("_top"))
        .select("segment_id", F.col("_top.top_category_id").alias("top_categories"))
    )
    small = F.col("customers") < min_segment_size
    profiles = stats.join(top, on="segment_id", how="left").withColumn("suppressed", small)
    hidden = [f"mean_{c}" for c in PROFILE_COLUMNS] + ["expected_revenue", "revenue_at_risk", "top_categories"]
    return profiles.select(
        "segment_id",
        "customers",
        "suppressed",
        *(F.when(small, F.lit(None)).otherwise(F.col(c)).alias(c) for c in hidden),
    )


def segment_names(profiles: list, previous: dict[int, str]) -> dict[int, naming.Named]:
    """The names of the profiled segments (k rows), last run's kept where still true."""
    return naming.name_segments([r.asDict() for r in profiles], previous)


def with_names(profiles: DataFrame, names: dict[int, naming.Named]) -> DataFrame:
    """`segment_name` and `segment_description` of each segment (`naming`); a suppressed segment is named so, by id."""
    suppressed = F.concat(F.lit(f"{SUPPRESSED} #"), F.col("segment_id").cast("string"))
    if not names:
        return profiles.withColumns({"segment_name": suppressed, "segment_description": F.lit(None).cast("string")})
    by_id = lambda field: F.create_map(  # noqa: E731
        *[F.lit(x) for segment_id, named in names.items() for x in (segment_id, getattr(named, field))]
    )[F.col("segment_id")]
    return profiles.withColumns(
        {
            "segment_name": F.when(F.col("suppressed"), suppressed).otherwise(by_id("name")),
            "segment_description": F.when(~F.col("suppressed"), by_id("description")),
        }
    )


def previous_names(spark: SparkSession, settings: Settings, scoring_date: dt.date) -> dict[int, str]:
    """segment_id -> name on the latest scoring date before this one (k rows), or nothing."""
    if not lake.exists(spark, settings.lake, lake.SEGMENT_PROFILES):
        return {}
    stored = lake.read(spark, settings.lake, lake.SEGMENT_PROFILES).filter(F.col("scoring_date") < scoring_date)
    latest = lake.one_row(stored.agg(F.max("scoring_date")))[0]
    if latest is None:
        return {}
    rows = stored.filter(F.col("scoring_date") == latest).select("segment_id", "segment_name").collect()
    return {r["segment_id"]: r["segment_name"] for r in rows}


def _lookup(mapping: dict[int, int]):
    return F.create_map(*[F.lit(x) for pair in mapping.items() for x in pair])
