"""Evaluate a trained model on the test split, beside the baselines a user would try first.

Every model is scored on the same test rows and measured the same way (`binary_metrics`): ROC-AUC, PR-AUC, log
loss, expected calibration error over ten reliability bins, precision and lift in the top decile, and accuracy at
the configured threshold. The baselines: logistic regression and gradient-boosted trees (Spark MLlib) on the same
standardised numeric features, a recency-frequency heuristic, which ranks but gives no probability (so its
probability metrics are None), and, where customers have purchases, BG/NBD (`btyd`) fitted on the training
customers' purchase days, ranking the test customers who bought before their cutoff by their expected purchases in
the label window (`bg_nbd_purchasers`, beside the model on the same customers, `model_purchasers`). All of it is
Spark aggregation (BG/NBD's four parameters are fitted on the driver over the distinct purchase triples); only the
permutation importance works on a bounded sample in the driver. The model's ROC-AUC is compared with the best
baseline's on the same rows, with a 95% bootstrap interval of the difference and a verdict (`auc_difference`).
Customer value (`customer_value`): the model's expected purchase days and revenue against what the test customers
did, beside BG/NBD + Gamma-Gamma on the customers who bought before (Spearman, mean absolute error, and the error of
the summed forecast). Results go to the `model_evaluation` Delta table and the model's metadata.
"""

from __future__ import annotations

import logging
import math
from functools import reduce
from typing import Literal

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import Bucketizer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import btyd, features, lake, predict, summaries
from behavior_spark.config import Settings
from behavior_spark.model_artifact import ModelMetadata

log = logging.getLogger(__name__)

BINS = 10
_EPSILON = 1e-7
KEY = ["customer_id", "cutoff_date"]  # a test row: the rows every model scores, and pairs them for comparison
FULL_TEST_BASELINES = ["logistic_regression", "gradient_boosted_trees", "recency_frequency"]
AUC_BINS = 200  # score bins per model for the bootstrap of the ROC-AUC difference
REPLICATES = 1000
RANK_BUCKETS = 1000  # approximate-quantile buckets a continuous column is ranked by (Spearman)
SPEND_SAMPLE = 200_000  # training customers Gamma-Gamma is fitted on


def run(spark: SparkSession, settings: Settings, table: DataFrame, metadata: ModelMetadata, model_dir: str) -> dict:
    """Metrics of the model in `model_dir` and the baselines on the test split, written to Delta; importance on
    validation."""
    cfg = settings.train
    inputs = table.transform(features.model_inputs, metadata.normalisation).withColumn(
        "label", F.col("label").cast("double")
    )
    train, validation, test = (inputs.filter(F.col("split") == name) for name in ("train", "validation", "test"))
    keep = [*KEY, "label", *features.VALUE_LABELS]
    predicted = predict.predictions(test, metadata, model_dir, settings.score.batch_size, keep=keep)
    predicted = predicted.persist(StorageLevel.MEMORY_AND_DISK)  # scored once: propensity and value read it
    days = summaries.for_events(spark, settings, metadata.events_version)
    purchase_days = days.filter(F.col("n_purchase") > 0).select("customer_id", "event_date", "revenue")
    forecasts = btyd_forecasts(purchase_days, train, test, settings.features.label_window_days, cfg.seed)
    metrics, reliability, comparison = propensity_metrics(predicted, train, test, forecasts, cfg)
    value = customer_value(predicted, forecasts)
    lift = lift_by_decile(predicted.select(*KEY, "label", F.col("propensity").cast("double").alias("score")))
    for df in (predicted, forecasts):
        if df is not None:
            df.unpersist()
    _write(spark, settings, metadata.model_version, {**metrics, **_prefixed(value)}, comparison)
    log.info("test-split metrics (%s):\n%s", metadata.model_version, format_table(metrics))
    log.info("customer value on the test split:\n%s", format_table(value))
    log.info("model against %s: %s", comparison["baseline"], comparison)
    importance = permutation_importance(validation, metadata, model_dir, cfg.importance_rows, cfg.seed)
    return {
        "test_metrics": metrics,
        "value_metrics": value,
        "comparison": comparison,
        "reliability": reliability["model"],
        "lift_by_decile": lift,
        "permutation_importance": importance,
    }


def propensity_metrics(
    predicted: DataFrame, train: DataFrame, test: DataFrame, forecasts: DataFrame | None, cfg
) -> tuple[dict, dict, dict]:
    """(metrics by model, reliability bins by model, the model's ROC-AUC against the best full-test baseline)."""
    keep = [*KEY, "label"]
    model_scores = predicted.select(*keep, F.col("propensity").cast("double").alias("score"))
    scored = {
        "model": (model_scores, True),
        **{name: (mllib_scores(fit, train, test), True) for name, fit in mllib_baselines(cfg.seed).items()},
        "recency_frequency": (test.select(*keep, recency_frequency().alias("score")), False),
    }
    if forecasts is not None:
        scored["bg_nbd_purchasers"] = (forecasts.select(*keep, F.col("expected_purchases").alias("score")), False)
        scored["model_purchasers"] = (model_scores.join(forecasts.select(*KEY), on=KEY), True)
    metrics, reliability = {}, {}
    for name, (df, probabilities) in scored.items():
        df.persist(StorageLevel.MEMORY_AND_DISK)  # key, label, score: each metric reads it, nothing re-scores
        metrics[name], reliability[name] = binary_metrics(df, cfg.threshold, probabilities)
    best = max(FULL_TEST_BASELINES, key=lambda name: metrics[name]["roc_auc"])
    comparison = {"baseline": best, **auc_difference(scored["model"][0], scored[best][0], cfg.seed)}
    for df, _ in scored.values():
        df.unpersist()
    return metrics, reliability, comparison


def customer_value(predicted: DataFrame, forecasts: DataFrame | None) -> dict[str, dict]:
    """The expected purchase days and revenue against what the test customers did in the label window: the model on
    every test customer, and, where there are purchases, the model and BG/NBD + Gamma-Gamma on the same customers
    (those who bought before their cutoff)."""
    models = {"model": predicted}
    if forecasts is not None:
        models["model_purchasers"] = predicted.join(forecasts.select(*KEY), on=KEY)
        models["bg_nbd_gamma_gamma_purchasers"] = forecasts
    return {
        name: {
            **forecast_errors(df, "expected_purchases", "label_purchases", "purchases"),
            **forecast_errors(df, "expected_revenue", "label_revenue", "revenue"),
        }
        for name, df in models.items()
    }


def forecast_errors(df: DataFrame, forecast: str, actual: str, name: str) -> dict[str, float | None]:
    """Spearman's rank correlation and the mean absolute error per customer, and the relative error of the summed
    forecast over all customers (the number BTYD models are known for)."""
    row = lake.one_row(
        df.agg(
            F.count(F.lit(1)).alias("rows"),
            F.avg(F.abs(F.col(forecast) - F.col(actual))).alias("mae"),
            F.sum(forecast).alias("forecast"),
            F.sum(actual).alias("actual"),
        )
    )
    total = row["actual"]
    return {
        f"{name}_spearman": spearman(df.select(forecast, actual), forecast, actual) if row["rows"] else None,
        f"{name}_mae": row["mae"],
        f"{name}_total_error": (row["forecast"] - total) / total if total else None,
    }


def spearman(df: DataFrame, first: str, second: str) -> float | None:
    """Spearman's rank correlation: Pearson's over mid-ranks (ties share their mean rank). Ranks come from counts per
    approximate-quantile bucket (at most RANK_BUCKETS), so no global sort; a continuous column's values in one
    bucket share its mid-rank."""
    ranked = _mid_ranks(_mid_ranks(df, first), second)
    a, b = f"{first}_rank", f"{second}_rank"
    row = lake.one_row(
        ranked.agg(F.covar_pop(a, b).alias("cov"), F.var_pop(a).alias("var_a"), F.var_pop(b).alias("var_b"))
    )
    if not row["var_a"] or not row["var_b"]:  # no rows, or a column with one value: no rank correlation
        return None
    return float(row["cov"] / math.sqrt(row["var_a"] * row["var_b"]))


def _mid_ranks(df: DataFrame, column: str) -> DataFrame:
    values = df.withColumn(column, F.col(column).cast("double"))
    edges = sorted(set(values.approxQuantile(column, [k / RANK_BUCKETS for k in range(1, RANK_BUCKETS)], 0.0005)))
    if edges:
        bucketizer = Bucketizer(splits=[-math.inf, *edges, math.inf], inputCol=column, outputCol="_bucket")
        bucketed = bucketizer.setHandleInvalid("keep").transform(values)
    else:  # no rows, or no quantile to cut at (Bucketizer needs one): one bucket
        bucketed = values.withColumn("_bucket", F.lit(0.0))
    counts = bucketed.groupBy("_bucket").count().toPandas().sort_values("_bucket")  # at most RANK_BUCKETS + 1 rows
    counts[f"{column}_rank"] = counts["count"].cumsum() - counts["count"] + (counts["count"] + 1) / 2
    ranks = df.sparkSession.createDataFrame(counts[["_bucket", f"{column}_rank"]])
    return bucketed.join(F.broadcast(ranks), on="_bucket").drop("_bucket")


def _prefixed(value: dict[str, dict]) -> dict[str, dict]:
    """Value metrics under model names of their own in the evaluation table ("model (value)")."""
    return {f"{name} (value)": metrics for name, metrics in value.items()}


def auc_difference(first: DataFrame, second: DataFrame, seed: int, replicates: int = REPLICATES) -> dict:
    """ROC-AUC of `first` minus `second` (both key, label, score over the same rows), with a 95% bootstrap interval
    and a verdict: better, worse, or level where the interval holds 0.

    Each model's scores are cut into AUC_BINS quantile bins, and Spark counts the rows of each (bin of first, bin of
    second, label): at most 2 x AUC_BINS^2 cells, whatever the rows. A bootstrap that weighs every row Poisson(1)
    gives each cell a Poisson(count) count, so the driver draws the replicates cell by cell and computes both AUCs
    from the same draw (paired, as the rows are).
    """
    pairs = first.select(*KEY, "label", F.col("score").alias("a")).join(
        second.select(*KEY, F.col("score").alias("b")), on=KEY
    )
    cells = (
        pairs.groupBy(_quantile_bin(pairs, "a").alias("i"), _quantile_bin(pairs, "b").alias("j"), "label")
        .count()
        .toPandas()  # at most 2 x AUC_BINS^2 rows
    )
    i, j, positive = cells["i"].to_numpy(), cells["j"].to_numpy(), cells["label"].to_numpy() == 1
    counts = cells["count"].to_numpy()
    draws = np.random.default_rng(seed).poisson(counts, size=(replicates, len(counts)))
    differences = np.array([_binned_auc(i, positive, w) - _binned_auc(j, positive, w) for w in draws])
    defined = differences[~np.isnan(differences)]  # a draw of a small test split may hold one class only
    point = _binned_auc(i, positive, counts) - _binned_auc(j, positive, counts)
    if np.isnan(point) or len(defined) == 0:
        return {"roc_auc_difference": None, "low_95": None, "high_95": None, "verdict": "undefined: one class"}
    low, high = (float(v) for v in np.percentile(defined, [2.5, 97.5]))
    verdict = "better" if low > 0 else "worse" if high < 0 else "level"
    return {"roc_auc_difference": float(point), "low_95": low, "high_95": high, "verdict": verdict}


def _quantile_bin(df: DataFrame, column: str) -> Column:
    """0..AUC_BINS-1 by approximate quantiles of `column` (equal scores share a bin)."""
    edges = sorted(set(df.approxQuantile(column, [k / AUC_BINS for k in range(1, AUC_BINS)], 0.0005)))
    return reduce(lambda total, edge: total + (F.col(column) > F.lit(edge)).cast("int"), edges, F.lit(0))


def _binned_auc(bins: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> float:
    """ROC-AUC from weighted counts per score bin (ties within a bin count one half)."""
    size = int(bins.max()) + 1
    pos = np.bincount(bins[positive], weights[positive], minlength=size)
    neg = np.bincount(bins[~positive], weights[~positive], minlength=size)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def btyd_forecasts(
    purchase_days: DataFrame, train: DataFrame, test: DataFrame, label_days: int, seed: int
) -> DataFrame | None:
    """The classic forecasts for the test customers with a purchase before their cutoff: BG/NBD's expected purchase
    days in the label window, times Gamma-Gamma's expected spend per purchase day, both fitted on the training
    customers (Gamma-Gamma on a sample of at most SPEND_SAMPLE). Key, labels, `expected_purchases`,
    `expected_revenue`; None where no training customer has a purchase. `purchase_days`: customer_id, event_date,
    revenue."""
    counts = btyd.grouped(btyd.purchase_triples(purchase_days, train.select(*KEY)))  # distinct triples, not customers
    if counts.empty:
        return None
    bg_nbd = btyd.fit(counts)
    spenders = btyd.spend(purchase_days, train.select(*KEY))
    sample = spenders.sample(fraction=min(1.0, SPEND_SAMPLE / max(spenders.count(), 1)), seed=seed)
    spend_rows = sample.select("x", "m").toPandas()  # at most about SPEND_SAMPLE rows
    gamma_gamma = btyd.fit_gamma_gamma(spend_rows) if len(spend_rows) else None
    log.info("BG/NBD on %d training customers: %s; Gamma-Gamma: %s", int(counts["n"].sum()), bg_nbd, gamma_gamma)
    test_triples = btyd.purchase_triples(purchase_days, test.select(*KEY)).localCheckpoint()  # predict reads it twice
    predicted = btyd.predict(bg_nbd, test_triples, label_days / btyd.DAYS_PER_UNIT)
    spend = btyd.spend(purchase_days, test.select(*KEY))
    spend = spend.select(*KEY, (btyd.expected_spend(gamma_gamma) if gamma_gamma else F.col("m")).alias("_spend"))
    return (
        test.select(*KEY, "label", *features.VALUE_LABELS)
        .join(predicted, on=KEY, how="inner")
        .join(spend, on=KEY, how="left")
        .select(
            *KEY,
            "label",
            *features.VALUE_LABELS,
            "expected_purchases",
            (F.col("expected_purchases") * F.coalesce(F.col("_spend"), F.lit(0.0))).alias("expected_revenue"),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


def recency_frequency() -> Column:
    """The heuristic: recent, frequent buyers and browsers first."""
    recent_activity = F.col("view_30d") + F.col("cart_30d") + F.col("purchase_30d")
    return ((1 + F.col("purchases")) * (1 + recent_activity) / (1 + F.col("days_since_last_event"))).cast("double")


def binary_metrics(scored: DataFrame, threshold: float, probabilities: bool = True) -> tuple[dict, list[dict]]:
    """Ranking and probability metrics of a (label, score) DataFrame; the reliability bins (at most ten rows)."""
    ranking = {
        "roc_auc": _area(scored, "areaUnderROC"),
        "pr_auc": _area(scored, "areaUnderPR"),
        **_top_decile(scored),
    }
    if not probabilities:
        return {**ranking, "log_loss": None, "expected_calibration_error": None, "accuracy": None}, []
    p = F.least(F.greatest(F.col("score"), F.lit(_EPSILON)), F.lit(1 - _EPSILON))
    y = F.col("label")
    row = lake.one_row(
        scored.agg(
            F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("log_loss"),
            F.avg(((F.col("score") >= threshold).cast("double") == y).cast("double")).alias("accuracy"),
        )
    )
    bins = [
        r.asDict()
        for r in scored.groupBy(F.least(F.floor(F.col("score") * BINS), F.lit(BINS - 1)).alias("bin"))
        .agg(F.count(F.lit(1)).alias("rows"), F.avg("score").alias("mean_score"), F.avg("label").alias("positive_rate"))
        .orderBy("bin")
        .collect()  # at most BINS rows
    ]
    total = sum(b["rows"] for b in bins)
    ece = sum(b["rows"] / total * abs(b["mean_score"] - b["positive_rate"]) for b in bins)
    return {
        **ranking,
        "log_loss": row["log_loss"],
        "expected_calibration_error": ece,
        "accuracy": row["accuracy"],
    }, bins


def lift_by_decile(scored: DataFrame) -> list[dict]:
    """Positive rate and lift per score decile, highest scores first (ten rows, from approximate deciles)."""
    edges = scored.approxQuantile("score", [i / BINS for i in range(1, BINS)], 0.001)
    decile = F.lit(BINS)
    for edge in edges:
        decile = decile - (F.col("score") > F.lit(edge)).cast("int")  # 1 = the highest scores
    base = lake.one_row(scored.agg(F.avg("label")))[0] or 0.0
    rows = (
        scored.groupBy(decile.alias("decile"))
        .agg(F.count(F.lit(1)).alias("rows"), F.avg("label").alias("positive_rate"))
        .orderBy("decile")
        .collect()  # ten rows
    )
    return [{**r.asDict(), "lift": r["positive_rate"] / base if base else None} for r in rows]


def format_table(metrics: dict[str, dict]) -> str:
    names = list(next(iter(metrics.values())))
    lines = [f"{'model':<32}" + "".join(f"{n[:14]:>16}" for n in names)]
    for model, values in metrics.items():
        cells = "".join(f"{'-' if values[n] is None else f'{values[n]:.4f}':>16}" for n in names)
        lines.append(f"{model:<32}{cells}")
    return "\n".join(lines)


def permutation_importance(
    validation: DataFrame, metadata: ModelMetadata, model_dir: str, rows: int, seed: int
) -> dict[str, float]:
    """ROC-AUC lost when one input is shuffled across a random sample of `rows` validation rows (the sequence as
    one input)."""
    from behavior_spark.model import load_model, scoring_inputs

    wanted = ["numeric", *features.SEQUENCE_COLUMNS, "label"]
    # A top-k by a random number: each partition keeps its own k, no shuffle of the split; `rows` bounds the result.
    sample = validation.select(*wanted).orderBy(F.rand(seed)).limit(rows).toPandas()
    labels = sample["label"].to_numpy()
    if len(sample) == 0 or labels.min() == labels.max():
        return {}
    model = load_model(model_dir, metadata)
    columns = {name: np.stack(list(sample[name])) for name in ["numeric", *features.SEQUENCE_COLUMNS]}
    rng = np.random.default_rng(seed)

    def auc_with(columns: dict) -> float:
        scores = model.predict(scoring_inputs(columns), batch_size=8192, verbose=0)[0][:, 0]
        return roc_auc(labels, scores)

    baseline = auc_with(columns)
    importance = {}
    for index, name in enumerate(metadata.feature_names):
        shuffled = columns["numeric"].copy()
        shuffled[:, index] = rng.permutation(shuffled[:, index])
        importance[name] = baseline - auc_with({**columns, "numeric": shuffled})
    order = rng.permutation(len(labels))
    importance["recent_sequence"] = baseline - auc_with(
        {**columns, **{name: columns[name][order] for name in features.SEQUENCE_COLUMNS}}
    )
    return dict(sorted(((k, round(float(v), 5)) for k, v in importance.items()), key=lambda kv: -kv[1]))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC with tied scores sharing their rank."""
    ranks = pd.Series(scores).rank().to_numpy()
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mllib_baselines(seed: int) -> dict:
    """The MLlib baselines by name, unfitted: logistic regression and gradient-boosted trees."""
    return {
        "logistic_regression": LogisticRegression(maxIter=50, regParam=0.01),
        "gradient_boosted_trees": GBTClassifier(maxIter=30, maxDepth=5, seed=seed),
    }


def mllib_scores(estimator, train: DataFrame, test: DataFrame) -> DataFrame:
    """Fit an MLlib classifier on the standardised numeric vector; (label, probability of 1) on the test split."""

    def prepared(df: DataFrame) -> DataFrame:
        return df.select(array_to_vector(F.col("numeric")).alias("features"), "label", *KEY)

    fitted = estimator.setFeaturesCol("features").setLabelCol("label").fit(prepared(train))
    predictions = fitted.transform(prepared(test))
    return predictions.select(*KEY, "label", vector_to_array(F.col("probability"))[1].alias("score"))


def _area(scored: DataFrame, metric: Literal["areaUnderROC", "areaUnderPR"]) -> float:
    evaluator = BinaryClassificationEvaluator(rawPredictionCol="score", labelCol="label", metricName=metric)
    return float(evaluator.evaluate(scored))


def _top_decile(scored: DataFrame) -> dict:
    """Precision among the 10% highest scores, and its lift over the base rate."""
    cut = lake.one_row(scored.agg(F.percentile_approx("score", 0.9).alias("cut"), F.avg("label").alias("base")))
    top = lake.one_row(scored.filter(F.col("score") >= cut["cut"]).agg(F.avg("label")))[0] or 0.0
    return {"top_decile_precision": float(top), "top_decile_lift": float(top / cut["base"]) if cut["base"] else None}


def _write(
    spark: SparkSession, settings: Settings, model_version: str, metrics: dict[str, dict], comparison: dict
) -> None:
    """Every model's metrics, and the model's ROC-AUC difference from the best baseline with its interval."""
    rows = [
        (model_version, model, metric, None if value is None else float(value))
        for model, values in metrics.items()
        for metric, value in values.items()
    ]
    against = f"model - {comparison['baseline']}"
    rows += [(model_version, against, k, comparison[k]) for k in ("roc_auc_difference", "low_95", "high_95")]
    df = spark.createDataFrame(rows, "model_version string, model string, metric string, value double")
    lake.replace(df, settings.lake, lake.MODEL_EVALUATION, f"model_version = '{model_version}'")
