"""Score: every customer's purchase propensity and embedding, through `predict_batch_udf`, into Delta."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import drift, features, feed, lake, train
from behavior_spark.config import Settings

log = logging.getLogger(__name__)

EMBEDDING_DIM = 64
PREDICTION_TYPE = T.StructType(
    [
        T.StructField("propensity", T.FloatType(), True),
        T.StructField("embedding", T.ArrayType(T.FloatType()), True),
    ]
)


def run(spark: SparkSession, settings: Settings) -> dict:
    """Score the latest features table with the trained model; replace the scores table in one commit."""
    metadata = train.load_metadata(settings.train.model_dir)
    expected = features.numeric_feature_names()
    if metadata["feature_names"] != expected:
        raise ValueError(
            f"the model at {settings.train.model_dir} was trained on other features than this code "
            f"builds ({len(metadata['feature_names'])} against {len(expected)}): retrain it"
        )
    table = latest_snapshot(lake.read(spark, settings.lake, lake.FEATURES))
    scoring_date = settings.score.scoring_date or dt.date.today()
    drifted = check_drift(spark, settings, metadata, table, scoring_date)
    scores = score(table, metadata, settings.train.model_dir, settings.score.batch_size).select(
        "customer_id",
        "cutoff_date",
        "propensity",
        "embedding",
        F.lit(metadata["model_version"]).alias("model_version"),
        F.lit(scoring_date).alias("scoring_date"),
    )
    lake.replace(scores, settings.lake, lake.SCORES, f"scoring_date = '{scoring_date}'", partition_by=["scoring_date"])
    written = lake.read(spark, settings.lake, lake.SCORES).filter(F.col("scoring_date") == F.lit(scoring_date))
    return {
        "scoring_date": scoring_date.isoformat(),
        "drifted_features": drifted,
        "customers_scored": written.count(),
        "test_auc": test_auc(written, table),
    }


class DriftError(RuntimeError):
    """A feature drifted beyond `score.drift_fail_psi`; nothing was scored."""


def check_drift(
    spark: SparkSession, settings: Settings, metadata: dict, table: DataFrame, scoring_date: dt.date
) -> dict[str, float]:
    """PSI of every model input, training split (the model's features version) against the rows to score.

    Written to the feature-drift table before any score; returns the drifted features (PSI above 0.2).
    """
    training = lake.read(spark, settings.lake, lake.FEATURES, version=metadata["features_version"])
    values = drift.feature_psi(training.filter(F.col("split") == "train"), table, metadata["feature_names"])
    rows = [
        (scoring_date, metadata["model_version"], name, value, value > drift.WARN_PSI) for name, value in values.items()
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
        worst = max(values, key=values.get)
        raise DriftError(
            f"feature {worst!r} drifted with PSI {values[worst]:.3f} > score.drift_fail_psi={limit}; "
            f"nothing scored (see the {lake.FEATURE_DRIFT} table)"
        )
    return drifted


def latest_snapshot(features: DataFrame) -> DataFrame:
    """The rows of the latest cutoff: today's picture of every customer."""
    latest = features.agg(F.max("cutoff_date")).first()[0]
    return features.filter(F.col("cutoff_date") == F.lit(latest))


def score(table: DataFrame, metadata: dict, model_dir: str, batch_size: int) -> DataFrame:
    """Add `propensity` and `embedding` to a features DataFrame, batch by batch on the executors.

    The model's inputs reach the UDF as one struct of scalar columns, which arrives as one numeric matrix per
    batch: array columns would be stacked row by row in Python (`np.vstack`), several times slower (`bench score`).
    """
    widths = {
        "numeric": len(metadata["feature_names"]),
        **{name: metadata["sequence_length"] for name in features.SEQUENCE_COLUMNS},
    }
    predict = predict_batch_udf(
        _make_predict_fn(model_dir, metadata, widths), return_type=PREDICTION_TYPE, batch_size=batch_size
    )
    stats = {name: tuple(value) for name, value in metadata["normalisation"].items()}
    return (
        table.transform(features.model_inputs, stats)
        .withColumn("prediction", predict(F.struct(*feed.wide_columns(widths))))
        .select(*table.columns, "prediction.propensity", "prediction.embedding")
    )


def test_auc(scores: DataFrame, table: DataFrame) -> float:
    """ROC-AUC of the propensity on the test split (customers the model never trained on)."""
    test = table.filter(F.col("split") == "test").select("customer_id", F.col("label").cast("double"))
    joined = test.join(scores.select("customer_id", F.col("propensity").cast("double")), on="customer_id", how="inner")
    evaluator = BinaryClassificationEvaluator(rawPredictionCol="propensity", labelCol="label")
    return float(evaluator.evaluate(joined))


def _make_predict_fn(model_dir: str, metadata: dict, widths: dict[str, int]):
    def make_predict_fn():
        """Runs once per Python worker: load the model, size TensorFlow's threads to this task's cores."""
        import numpy as np
        import tensorflow as tf
        from pyspark import TaskContext

        from behavior_spark.model import load_model, scoring_inputs

        context = TaskContext.get()
        tf.config.threading.set_intra_op_parallelism_threads(context.cpus() if context is not None else 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        model = load_model(model_dir, metadata)
        bounds = np.cumsum([0, *widths.values()])

        def predict(matrix: np.ndarray) -> dict:
            columns = {name: matrix[:, bounds[i] : bounds[i + 1]] for i, name in enumerate(widths)}
            propensity, embedding = model(scoring_inputs(columns), training=False)
            return {"propensity": propensity.numpy()[:, 0], "embedding": embedding.numpy()}

        return predict

    return make_predict_fn
