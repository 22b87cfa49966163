"""The propensity model: a dense tower over numeric features and a 1D-CNN over the recent-event sequence.

Imported only where TensorFlow runs (training workers, scoring workers), never by the data-preparation code.
"""

from __future__ import annotations

import math
import tempfile

import numpy as np
import tensorflow as tf

from behavior_spark import artifacts
from behavior_spark.model_artifact import ModelMetadata

EMBEDDING_LAYER = "customer_embedding"
PROPENSITY_LAYER = "propensity"


def build_model(
    numeric_dim: int, sequence_length: int, event_types: int, category_buckets: int, gap_buckets: int
) -> tf.keras.Model:
    """numeric -> 128 -> 64; sequence embeddings -> 2 x Conv1D(64, 3) -> max pool; concat -> 64 -> sigmoid."""
    layers = tf.keras.layers
    numeric = layers.Input((numeric_dim,), name="numeric", dtype="float32")
    seq_inputs = {
        name: layers.Input((sequence_length,), name=name, dtype="int32")
        for name in ("seq_event_type", "seq_category", "seq_gap_bucket")
    }
    embedded = layers.Concatenate(name="sequence_embedding")(
        [
            layers.Embedding(event_types, 8, name="event_type_embedding")(seq_inputs["seq_event_type"]),
            layers.Embedding(category_buckets, 16, name="category_embedding")(seq_inputs["seq_category"]),
            layers.Embedding(gap_buckets, 4, name="gap_embedding")(seq_inputs["seq_gap_bucket"]),
        ]
    )
    sequence = layers.Conv1D(64, 3, activation="relu", padding="same", name="conv_1")(embedded)
    sequence = layers.Conv1D(64, 3, activation="relu", padding="same", name="conv_2")(sequence)
    sequence = layers.GlobalMaxPooling1D(name="sequence_pool")(sequence)
    tower = layers.Dense(128, activation="relu", name="dense_128")(numeric)
    tower = layers.Dense(64, activation="relu", name="dense_64")(tower)
    joined = layers.Concatenate(name="joined")([tower, sequence])
    embedding = layers.Dense(64, activation="relu", name=EMBEDDING_LAYER)(joined)
    propensity = layers.Dense(1, activation="sigmoid", name=PROPENSITY_LAYER)(embedding)
    return tf.keras.Model(inputs=[numeric, *seq_inputs.values()], outputs=propensity, name="purchase_propensity")


def scoring_model(model: tf.keras.Model, prior_shift: float = 0.0) -> tf.keras.Model:
    """The same weights, answering the propensity and the 64-dimension customer embedding.

    `prior_shift` undoes class weighting: a model trained with weights w0, w1 learns odds w1/w0 times the true
    ones, so adding log(w0/w1) to its logit gives back a calibrated probability.
    """
    head = model.get_layer(PROPENSITY_LAYER)
    embedding = model.get_layer(EMBEDDING_LAYER).output
    calibrated = tf.keras.layers.Dense(1, activation="sigmoid", name="calibrated_propensity")
    propensity = calibrated(embedding)
    kernel, bias = head.get_weights()
    calibrated.set_weights([kernel, bias + prior_shift])
    return tf.keras.Model(inputs=model.inputs, outputs=[propensity, embedding])


def prior_shift(class_weight: dict | None) -> float:
    """log(w0 / w1) of the training class weights (JSON may have turned their keys into strings)."""
    if not class_weight:
        return 0.0
    weights = {int(k): float(v) for k, v in class_weight.items()}
    return math.log(weights[0] / weights[1])


def load_model(model_dir: str, metadata: ModelMetadata) -> tf.keras.Model:
    """The saved model as a calibrated scoring model (propensity, embedding)."""
    with tempfile.NamedTemporaryFile(suffix=".h5") as saved:
        saved.write(artifacts.read_bytes(artifacts.join(model_dir, metadata.model_file)))
        saved.flush()
        model = tf.keras.models.load_model(saved.name, compile=False)
    return scoring_model(model, prior_shift(metadata.training["class_weight"]))


def scoring_inputs(columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's inputs in order, in the dtypes it was built with."""
    return [
        columns["numeric"].astype(np.float32),
        *(columns[name].astype(np.int32) for name in ("seq_event_type", "seq_category", "seq_gap_bucket")),
    ]
