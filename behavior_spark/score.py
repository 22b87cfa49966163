"""Score: every customer's purchase propensity, expected purchases and revenue, and embedding, through an Arrow-batch
UDF (`mapInArrow`), into Delta."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import console, drift, features, lake, model_artifact, predict, reasons, run_record
from behavior_spark.config import Settings
from behavior_spark.model_artifact import ModelMetadata
from behavior_spark.results import ScoreResult

log = logging.getLogger(__name__)


def run(spark: SparkSession, settings: Settings) -> ScoreResult:
    """Score the scoring snapshot (every customer as of the scoring date) with the published model; replace that
    date's scores in one commit."""
    metadata = model_artifact.load_metadata(settings.train.model_dir)
    expected = features.numeric_feature_names()
    if metadata.feature_names != expected:
        raise ValueError(
            f"the model at {settings.train.model_dir} was trained on other features than this code "
            f"builds ({len(metadata.feature_names)} against {len(expected)}): retrain it"
        )
    scoring_date = run_record.scoring_date(spark, settings)
    table = scoring_snapshot(spark, settings, scoring_date)
    console.step("score", f"drift of the scoring snapshot of {scoring_date}")
    drifted, deciles = check_drift(spark, settings, metadata, table, scoring_date)
    console.step("score", f"scoring every customer as of {scoring_date}")
    cfg = settings.score
    scored = predict.predictions(
        table, metadata, settings.train.model_dir, cfg.batch_size, ["customer_id", "cutoff_date"], cfg.reason_steps
    )
    if cfg.reason_steps:
        scored = reasons.with_reasons(scored, metadata.feature_names, deciles)
    scores = scored.select(
        "customer_id",
        "cutoff_date",
        "propensity",
        "embedding",
        "expected_purchases",
        "expected_revenue",
        *(["reasons"] if cfg.reason_steps else []),
        F.lit(metadata.model_version).alias("model_version"),
        F.lit(scoring_date).alias("scoring_date"),
    )
    lake.replace(scores, settings.lake, lake.SCORES, f"scoring_date = '{scoring_date}'", partition_by=["scoring_date"])
    written = lake.read(spark, settings.lake, lake.SCORES).filter(F.col("scoring_date") == F.lit(scoring_date))
    return ScoreResult(
        scoring_date=scoring_date.isoformat(),
        model_version=metadata.model_version,
        drifted_features=drifted,
        customers_scored=written.count(),
    )


def scoring_snapshot(spark: SparkSession, settings: Settings, scoring_date: dt.date) -> DataFrame:
    """The features of every customer as of `scoring_date` (featurize's `score` split for that date)."""
    table = lake.read(spark, settings.lake, lake.FEATURES).filter(
        (F.col("split") == features.SCORE_SPLIT) & (F.col("cutoff_date") == F.lit(scoring_date))
    )
    if table.isEmpty():
        raise ValueError(
            f"the features table has no scoring snapshot as of {scoring_date}: run featurize with the same "
            "score.scoring_date (it builds one for that date)"
        )
    return table


class DriftError(RuntimeError):
    """A feature drifted beyond `score.drift_fail_psi`; nothing was scored."""


def check_drift(
    spark: SparkSession, settings: Settings, metadata: ModelMetadata, table: DataFrame, scoring_date: dt.date
) -> tuple[dict[str, float], drift.Profile]:
    """PSI of every model input, the snapshot to score against the one before it (`drift`); written to the feature
    drift table, with this snapshot's profile for the next date's check, before any score. Returns the judged
    features that drifted (PSI above 0.2), and this snapshot's profile (its deciles rank the reasons' values)."""
    names = metadata.feature_names
    reference, described = drift_reference(spark, settings, metadata, scoring_date)
    values = drift.compare(reference, table) if reference else {}
    today = drift.profile(table, names)
    rows = [
        (
            scoring_date,
            metadata.model_version,
            name,
            described,
            values.get(name),
            drift.judged(name),
            drift.judged(name) and values.get(name, 0.0) > drift.WARN_PSI,
            today.edges[name],
            today.shares[name],
        )
        for name in names
    ]
    lake.replace(
        spark.createDataFrame(rows, DRIFT_SCHEMA), settings.lake, lake.FEATURE_DRIFT, f"scoring_date = '{scoring_date}'"
    )
    judged = {name: value for name, value in values.items() if drift.judged(name)}
    drifted = {name: round(value, 3) for name, value in judged.items() if value > drift.WARN_PSI}
    if drifted:
        log.warning("features drifted since the %s (PSI > %.1f): %s", described, drift.WARN_PSI, drifted)
    limit = settings.score.drift_fail_psi
    if limit is not None and judged and max(judged.values()) > limit:
        worst = max(judged, key=lambda name: judged[name])
        raise DriftError(
            f"feature {worst!r} drifted with PSI {judged[worst]:.3f} > score.drift_fail_psi={limit} since the "
            f"{described}; nothing scored (see the {lake.FEATURE_DRIFT} table)"
        )
    return drifted, today


DRIFT_SCHEMA = (
    "scoring_date date, model_version string, feature string, compared_with string, psi double, judged boolean, "
    "drifted boolean, edges array<double>, shares array<double>"
)


def drift_reference(
    spark: SparkSession, settings: Settings, metadata: ModelMetadata, scoring_date: dt.date
) -> tuple[drift.Profile | None, str]:
    """The profile to compare the scoring snapshot with, and what it is: the previous scoring snapshot's, kept in
    the drift table; else the latest training snapshot of the model's features; else none."""
    if lake.exists(spark, settings.lake, lake.FEATURE_DRIFT):
        kept = lake.read(spark, settings.lake, lake.FEATURE_DRIFT).filter(
            (F.col("scoring_date") < F.lit(scoring_date)) & F.col("edges").isNotNull()
        )
        before = lake.one_row(kept.agg(F.max("scoring_date")))[0]
        if before is not None:
            rows = kept.filter(F.col("scoring_date") == F.lit(before)).collect()  # one row per feature
            if {r["feature"] for r in rows} >= set(metadata.feature_names):
                edges = {r["feature"]: list(r["edges"]) for r in rows}
                shares = {r["feature"]: list(r["shares"]) for r in rows}
                return drift.Profile(edges, shares), f"scoring snapshot of {before}"
    training = lake.read(spark, settings.lake, lake.FEATURES, version=metadata.features_version).filter(
        F.col("split") != features.SCORE_SPLIT
    )
    latest = lake.one_row(training.agg(F.max("cutoff_date")))[0]
    if latest is None:
        return None, "nothing (no snapshot before this one)"
    snapshot = training.filter(F.col("cutoff_date") == F.lit(latest))
    return drift.profile(snapshot, metadata.feature_names), f"training snapshot of {latest}"
