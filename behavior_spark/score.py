"""Score: every customer's purchase propensity and embedding, through an Arrow-batch UDF (`mapInArrow`), into Delta."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import drift, features, lake, train
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
    """Score the scoring snapshot (every customer as of the scoring date) with the published model; replace that
    date's scores in one commit."""
    metadata = train.load_metadata(settings.train.model_dir)
    expected = features.numeric_feature_names()
    if metadata["feature_names"] != expected:
        raise ValueError(
            f"the model at {settings.train.model_dir} was trained on other features than this code "
            f"builds ({len(metadata['feature_names'])} against {len(expected)}): retrain it"
        )
    scoring_date = features.scoring_date(spark, settings)
    table = scoring_snapshot(spark, settings, scoring_date)
    drifted = check_drift(spark, settings, metadata, table, scoring_date)
    scores = score(
        table, metadata, settings.train.model_dir, settings.score.batch_size, keep=["customer_id", "cutoff_date"]
    ).select(
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
        "model_version": metadata["model_version"],
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


def score(table: DataFrame, metadata: dict, model_dir: str, batch_size: int, keep: list[str]) -> DataFrame:
    """`keep` columns of a features DataFrame with `propensity` and `embedding`, batch by batch on the executors.

    An Arrow-batch UDF (`mapInArrow`): each Arrow batch's array columns become model inputs with one zero-copy
    reshape, and the outputs go back as Arrow arrays, where `predict_batch_udf` stacks arrays row by row in Python
    and rebuilds the embedding as a list per row (`bench score` measures both against the model in one process).
    The model is loaded once per Python worker, with TensorFlow's threads sized to the task's cores.
    """
    stats = {name: tuple(value) for name, value in metadata["normalisation"].items()}
    inputs = table.transform(features.model_inputs, stats).select(*keep, *train.INPUT_COLUMNS)
    schema = T.StructType([*(inputs.schema[c] for c in keep), *PREDICTION_TYPE.fields])
    return inputs.mapInArrow(_predict_batches(model_dir, metadata, batch_size, keep), schema)


_MODELS: dict[tuple[str, str], object] = {}  # per Python worker: (model dir, version) -> loaded scoring model


def _worker_model(model_dir: str, metadata: dict):
    """The scoring model, loaded on the first batch a Python worker sees and kept for the next ones."""
    key = (model_dir, metadata["model_version"])
    if key not in _MODELS:
        import tensorflow as tf
        from pyspark import TaskContext

        from behavior_spark.model import load_model

        context = TaskContext.get()
        tf.config.threading.set_intra_op_parallelism_threads(context.cpus() if context is not None else 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        _MODELS[key] = load_model(model_dir, metadata)
    return _MODELS[key]


def _predict_batches(model_dir: str, metadata: dict, batch_size: int, keep: list[str]):
    def predict(batches):
        import numpy as np
        import pyarrow as pa

        from behavior_spark.model import scoring_inputs

        model = _worker_model(model_dir, metadata)
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                part = batch.slice(start, batch_size)
                rows = part.num_rows
                columns = {name: _matrix(part.column(name), rows) for name in train.INPUT_COLUMNS}
                propensity, embedding = model(scoring_inputs(columns), training=False)
                flat = pa.array(np.ascontiguousarray(embedding.numpy(), dtype=np.float32).ravel())
                yield pa.RecordBatch.from_arrays(
                    [
                        *(part.column(name) for name in keep),
                        pa.array(propensity.numpy()[:, 0].astype(np.float32)),
                        pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * EMBEDDING_DIM), flat),
                    ],
                    names=[*keep, "propensity", "embedding"],
                )

    return predict


def _matrix(column, rows: int):
    """A fixed-length list column as a (rows, length) numpy matrix, without a Python loop over rows."""
    return column.flatten().to_numpy(zero_copy_only=False).reshape(rows, -1)
