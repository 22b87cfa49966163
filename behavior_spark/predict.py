"""The predictor: a published model applied to features DataFrames, batch by batch on the executors.

Used by the score stage (every customer) and by evaluation (the test split).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from behavior_spark import features
from behavior_spark.model_artifact import ModelMetadata

EMBEDDING_DIM = 64
PREDICTION_TYPE = T.StructType(
    [
        T.StructField("propensity", T.FloatType(), True),
        T.StructField("embedding", T.ArrayType(T.FloatType()), True),
        T.StructField("expected_purchases", T.FloatType(), True),  # purchase days in the next label window
        T.StructField("expected_revenue", T.FloatType(), True),  # revenue in the next label window
    ]
)


REASON_TYPE = T.StructType(
    [
        T.StructField("reason_index", T.ArrayType(T.IntegerType()), True),  # into the model's feature names
        T.StructField("reason_contribution", T.ArrayType(T.FloatType()), True),  # to the propensity's logit
        T.StructField("reason_value", T.ArrayType(T.DoubleType()), True),  # the feature as the model reads it
    ]
)


def predictions(
    table: DataFrame,
    metadata: ModelMetadata,
    model_dir: str,
    batch_size: int,
    keep: list[str],
    reason_steps: int = 0,
) -> DataFrame:
    """`keep` columns of a features DataFrame with the model's answers (`PREDICTION_TYPE`: propensity, embedding,
    expected purchases and revenue), batch by batch on the executors.

    An Arrow-batch UDF (`mapInArrow`): each Arrow batch's array columns become model inputs with one zero-copy
    reshape, and the outputs go back as Arrow arrays, where `predict_batch_udf` stacks arrays row by row in Python
    and rebuilds the embedding as a list per row (`bench score` measures both against the model in one process).
    The model is loaded once per Python worker, with TensorFlow's threads sized to the task's cores. With
    `reason_steps`, each row's top reasons come in the same pass (`REASON_TYPE`, `reasons.attributions`).
    """
    inputs = table.transform(features.model_inputs, metadata.normalisation).select(*keep, *features.MODEL_INPUT_COLUMNS)
    fields = [*PREDICTION_TYPE.fields, *(REASON_TYPE.fields if reason_steps else [])]
    schema = T.StructType([*(inputs.schema[c] for c in keep), *fields])
    return inputs.mapInArrow(_predict_batches(model_dir, metadata, batch_size, keep, reason_steps), schema)


_MODELS: dict[tuple[str, str], object] = {}  # per Python worker: (model dir, version) -> loaded scoring model


def _worker_model(model_dir: str, metadata: ModelMetadata):
    """The scoring model, loaded on the first batch a Python worker sees and kept for the next ones."""
    key = (model_dir, metadata.model_version)
    if key not in _MODELS:
        import tensorflow as tf
        from pyspark import TaskContext

        from behavior_spark.model import load_model

        context = TaskContext.get()
        tf.config.threading.set_intra_op_parallelism_threads(context.cpus() if context is not None else 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        _MODELS[key] = load_model(model_dir, metadata)
    return _MODELS[key]


def _predict_batches(model_dir: str, metadata: ModelMetadata, batch_size: int, keep: list[str], reason_steps: int):
    def predict(batches):
        import numpy as np
        import pyarrow as pa

        from behavior_spark.model import scoring_inputs
        from behavior_spark.reasons import attributions, top_reasons

        model = _worker_model(model_dir, metadata)
        normalisation = [metadata.normalisation[name] for name in metadata.feature_names]
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                part = batch.slice(start, batch_size)
                rows = part.num_rows
                columns = {name: _matrix(part.column(name), rows) for name in features.MODEL_INPUT_COLUMNS}
                inputs = scoring_inputs(columns)
                why = []
                if reason_steps:
                    outputs, contributions = attributions(model, inputs, reason_steps)
                    why = [_lists(m) for m in top_reasons(contributions, inputs[0], normalisation)]
                else:
                    outputs = _forward(model)(*inputs)
                propensity, embedding, purchases, revenue = (np.asarray(o) for o in outputs)
                yield pa.RecordBatch.from_arrays(
                    [
                        *(part.column(name) for name in keep),
                        _column(propensity),
                        _lists(np.asarray(embedding)),
                        _column(purchases),
                        _column(revenue),
                        *why,
                    ],
                    names=[*keep, *PREDICTION_TYPE.names, *(REASON_TYPE.names if reason_steps else [])],
                )

    return predict


_FORWARD: dict[int, Callable] = {}  # per Python worker: model -> its forward pass traced into one graph


def _forward(model) -> Callable:
    """The model's answers as one traced graph: Keras's eager call runs layer by layer in Python."""
    if id(model) not in _FORWARD:
        import tensorflow as tf

        _FORWARD[id(model)] = tf.function(lambda *inputs: model(list(inputs), training=False), reduce_retracing=True)
    return _FORWARD[id(model)]


def _lists(matrix):
    """A (rows, width) numpy matrix as an Arrow list array, one list per row, without a Python loop over rows."""
    import numpy as np
    import pyarrow as pa

    rows, width = matrix.shape
    flat = pa.array(np.ascontiguousarray(matrix).ravel())
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width), flat)


def _column(output):
    """A model output of one value per row as an Arrow float array."""
    import numpy as np
    import pyarrow as pa

    return pa.array(np.asarray(output)[:, 0].astype(np.float32))


def _matrix(column, rows: int):
    """A fixed-length list column as a (rows, length) numpy matrix, without a Python loop over rows."""
    return column.flatten().to_numpy(zero_copy_only=False).reshape(rows, -1)
