"""Score: every customer's purchase propensity, expected purchases and revenue, and embedding, through an Arrow-batch
UDF (`mapInArrow`), into Delta."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import drift, features, lake, model_artifact, predict, run_record
from behavior_spark.config import Settings
from behavior_spark.model_artifact import ModelMetadata

log = logging.getLogger(__name__)


def run(spark: SparkSession, settings: Settings) -> dict:
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
    drifted = check_drift(spark, settings, metadata, table, scoring_date)
    scores = predict.predictions(
        table, metadata, settings.train.model_dir, settings.score.batch_size, keep=["customer_id", "cutoff_date"]
    ).select(
        "customer_id",
        "cutoff_date",
        "propensity",
        "embedding",
        "expected_purchases",
        "expected_revenue",
        F.lit(metadata.model_version).alias("model_version"),
        F.lit(scoring_date).alias("scoring_date"),
    )
    lake.replace(scores, settings.lake, lake.SCORES, f"scoring_date = '{scoring_date}'", partition_by=["scoring_date"])
    written = lake.read(spark, settings.lake, lake.SCORES).filter(F.col("scoring_date") == F.lit(scoring_date))
    return {
        "scoring_date": scoring_date.isoformat(),
        "model_version": metadata.model_version,
        "drifted_features": drifted,
        "customers_scored": written.count(),
    }


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
) -> dict[str, float]:
    """PSI of every model input, training split (the model's features version) against the rows to score.

    Written to the feature-drift table before any score; returns the drifted features (PSI above 0.2).
    """
    training = lake.read(spark, settings.lake, lake.FEATURES, version=metadata.features_version)
    values = drift.feature_psi(training.filter(F.col("split") == "train"), table, metadata.feature_names)
    rows = [
        (scoring_date, metadata.model_version, name, value, value > drift.WARN_PSI) for name, value in values.items()
    ]
    schema = "scoring_date date, model_version string, feature string, psi double, drifted boolean"
    lake.replace(
        spark.createDataFrame(rows, schema), settings.lake, lake.FEATURE_DRIFT, f"scoring_date = '{scoring_date}'"
    )
    drifted = {name: round(value, 3) for name, value in values.items() if value > drift.WARN_PSI}
    if drifted:
        log.warning("features drifted since training (PSI > %.1f): %s", drift.WARN_PSI, drifted)
    limit = settings.score.drift_fail_psi
    if limit is not None and max(values.values()) > limit:
        worst = max(values, key=lambda name: values[name])
        raise DriftError(
            f"feature {worst!r} drifted with PSI {values[worst]:.3f} > score.drift_fail_psi={limit}; "
            f"nothing scored (see the {lake.FEATURE_DRIFT} table)"
        )
    return drifted
