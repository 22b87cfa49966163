"""Score: every customer's purchase propensity and embedding, through `predict_batch_udf`, into Delta."""

from __future__ import annotations

import datetime as dt
import logging

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
        F.lit(metadata["model_version"]).alias("model_version"),
        F.lit(scoring_date).alias("scoring_date"),
    )
    lake.replace(scores, settings.lake, lake.SCORES, f"scoring_date = '{scoring_date}'", partition_by=["scoring_date"])
    written = lake.read(spark, settings.lake, lake.SCORES).filter(F.col("scoring_date") == F.lit(scoring_date))
    return {
        "scoring_date": scoring_date.isoformat(),
        "customers_scored": written.count(),
        "test_auc": test_auc(written, table),
    }


def latest_snapshot(features: DataFrame) -> DataFrame:
    """The rows of the latest cutoff: today's picture of every customer."""
    latest = features.agg(F.max("cutoff_date")).first()[0]
    return features.filter(F.col("cutoff_date") == F.lit(latest))


def score(table: DataFrame, metadata: dict, model_dir: str, batch_size: int) -> DataFrame:
    """Add `propensity` and `embedding` to a features DataFrame, batch by batch on the executors."""
    length = metadata["sequence_length"]
    predict = predict_batch_udf(
        _make_predict_fn(model_dir, metadata),
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


def _make_predict_fn(model_dir: str, metadata: dict):
    def make_predict_fn():
        """Runs once per Python worker: load the model, size TensorFlow's threads to this task's cores."""
        import tensorflow as tf
        from pyspark import TaskContext

        from behavior_spark.model import load_model, scoring_inputs

        context = TaskContext.get()
        cores = context.cpus() if context is not None else 1
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        model = load_model(model_dir, metadata)

        def predict(numeric, seq_event_type, seq_category, seq_gap_bucket):
            columns = {
                "numeric": numeric,
                "seq_event_type": seq_event_type,
                "seq_category": seq_category,
                "seq_gap_bucket": seq_gap_bucket,
            }
            propensity, embedding = model(scoring_inputs(columns), training=False)
            return {"propensity": propensity.numpy()[:, 0], "embedding": embedding.numpy()}

        return predict

    return make_predict_fn
