"""Score: every customer's purchase propensity and embedding, through `predict_batch_udf`, into Delta."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import features, lake, train
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
    scores = score(table, metadata, settings.train.model_dir, settings.score.batch_size).select(
        "customer_id",
        "cutoff_date",
        "propensity",
        "embedding",
        F.lit(metadata["trained_at"]).alias("model_version"),
        F.lit(scoring_date).alias("scoring_date"),
    )
    lake.overwrite(scores, settings.lake, lake.SCORES)
    written = lake.read(spark, settings.lake, lake.SCORES)
    return {"customers_scored": written.count(), "test_auc": test_auc(written, table)}


def latest_snapshot(features: DataFrame) -> DataFrame:
    """The rows of the latest cutoff: today's picture of every customer."""
    latest = features.agg(F.max("cutoff_date")).first()[0]
    return features.filter(F.col("cutoff_date") == F.lit(latest))


def score(table: DataFrame, metadata: dict, model_dir: str, batch_size: int) -> DataFrame:
    """Add `propensity` and `embedding` to a features DataFrame, batch by batch on the executors."""
    length = metadata["sequence_length"]
    predict = predict_batch_udf(
        _make_predict_fn(str(Path(model_dir, train.MODEL_FILE).resolve())),
        return_type=PREDICTION_TYPE,
        batch_size=batch_size,
        input_tensor_shapes=[[len(metadata["feature_names"])], [length], [length], [length]],
    )
    stats = {name: tuple(value) for name, value in metadata["normalisation"].items()}
    return (
        table.transform(features.model_inputs, stats)
        .withColumn("prediction", predict(*train.INPUT_COLUMNS))
        .select("*", "prediction.propensity", "prediction.embedding")
        .drop("prediction", "numeric")
    )


def test_auc(scores: DataFrame, table: DataFrame) -> float:
    """ROC-AUC of the propensity on the test split (customers the model never trained on)."""
    test = table.filter(F.col("split") == "test").select("customer_id", F.col("label").cast("double"))
    joined = test.join(scores.select("customer_id", F.col("propensity").cast("double")), on="customer_id", how="inner")
    evaluator = BinaryClassificationEvaluator(rawPredictionCol="propensity", labelCol="label")
    return float(evaluator.evaluate(joined))


def _make_predict_fn(model_path: str):
    def make_predict_fn():
        import numpy as np
        import tensorflow as tf

        from behavior_spark.model import scoring_model

        model = scoring_model(tf.keras.models.load_model(model_path, compile=False))

        def predict(numeric, seq_event_type, seq_category, seq_gap_bucket):
            propensity, embedding = model(
                [
                    numeric.astype(np.float32),
                    seq_event_type.astype(np.int32),
                    seq_category.astype(np.int32),
                    seq_gap_bucket.astype(np.int32),
                ],
                training=False,
            )
            return {"propensity": propensity.numpy()[:, 0], "embedding": embedding.numpy()}

        return predict

    return make_predict_fn
