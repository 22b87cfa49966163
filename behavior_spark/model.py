"""The customer model: a dense tower over numeric features and a 1D-CNN over the recent-event sequence, joined into
a customer embedding with three heads on it, trained together:
- the purchase propensity (sigmoid; binary cross-entropy);
- the expected number of purchase days in the label window (softplus rate; Poisson loss);
- the revenue in the label window (zero-inflated lognormal, Wang, Liu and Miao 2019: the logit of buying at all,
  and the mean and scale of the log amount; its expected value is P(buy) * exp(mu + sigma^2 / 2)).

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
PURCHASES_LAYER = "expected_purchases"
REVENUE_LAYER = "revenue"
# The label column each head learns, and how much its loss counts beside the propensity's.
TARGETS = {PROPENSITY_LAYER: "label", PURCHASES_LAYER: "label_purchases", REVENUE_LAYER: "label_revenue"}
LOSS_WEIGHTS = {PROPENSITY_LAYER: 1.0, PURCHASES_LAYER: 0.5, REVENUE_LAYER: 0.25}


def build_model(
    numeric_dim: int,
    sequence_length: int,
    event_types: int,
    category_buckets: int,
    gap_buckets: int,
    numeric_edges: list[list[float]] | None = None,
    bg_nbd: dict | None = None,
) -> tf.keras.Model:
    """numeric -> 128 -> 64; sequence embeddings -> 2 x Conv1D(64, 3) -> max pool; concat -> 64 -> the three heads.
    With `numeric_edges` (bin edges per numeric input, `features.bin_edges`), each numeric input enters the tower
    embedded (`PiecewiseLinearEmbedding`) rather than raw. With `bg_nbd` (`BgNbdView`'s configuration), BG/NBD's view
    of each customer enters the tower beside them."""
    layers = tf.keras.layers
    numeric = layers.Input((numeric_dim,), name="numeric", dtype="float32")
    numeric_in = numeric
    if numeric_edges is not None:
        numeric_in = layers.Flatten(name="numeric_flat")(
            PiecewiseLinearEmbedding(numeric_edges, name="numeric_ple")(numeric)
        )
    if bg_nbd is not None:
        numeric_in = layers.Concatenate(name="numeric_and_bg_nbd")([numeric_in, BgNbdView(**bg_nbd)(numeric)])
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
    tower = layers.Dense(128, activation="relu", name="dense_128")(numeric_in)
    tower = layers.Dense(64, activation="relu", name="dense_64")(tower)
    joined = layers.Concatenate(name="joined")([tower, sequence])
    embedding = layers.Dense(64, activation="relu", name=EMBEDDING_LAYER)(joined)
    heads = [
        layers.Dense(1, activation="sigmoid", name=PROPENSITY_LAYER)(embedding),
        layers.Dense(1, activation="softplus", name=PURCHASES_LAYER)(embedding),
        layers.Dense(3, name=REVENUE_LAYER)(embedding),  # logit of buying, mu, raw sigma of the log amount
    ]
    return tf.keras.Model(inputs=[numeric, *seq_inputs.values()], outputs=heads, name="customer_model")


@tf.keras.utils.register_keras_serializable(package="behavior_spark")
class PiecewiseLinearEmbedding(tf.keras.layers.Layer):
    """Each numeric input as a vector (Gorishniy, Rubachev and Babenko, "On Embeddings for Numerical Features in
    Tabular Deep Learning", 2022: PLE with quantile bins, then a linear layer and ReLU per feature).

    A value x of a feature with bin edges e_0 < ... < e_T becomes T numbers, bin t's clip((x - e_(t-1)) / (e_t -
    e_(t-1)), 0, 1): 1 for every bin below x, x's place in its own bin, 0 above. Each feature has its own linear map
    of those to `width` numbers. A feature with fewer distinct edges has its unused bins masked to 0. The edges are
    in the layer's configuration, so a saved model carries them.
    """

    def __init__(self, edges: list[list[float]], width: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.edges = [[float(e) for e in feature] for feature in edges]
        self.width = width
        bins = max(len(feature) - 1 for feature in self.edges)
        lower, span, mask = (np.zeros((len(self.edges), bins), np.float32) for _ in range(3))
        span += 1.0
        for f, feature in enumerate(self.edges):
            n = len(feature) - 1
            lower[f, :n], span[f, :n], mask[f, :n] = feature[:-1], np.diff(feature), 1.0
        self.lower, self.span, self.mask = (tf.constant(a) for a in (lower, span, mask))

    def build(self, input_shape) -> None:
        features, bins = self.lower.shape
        self.kernel = self.add_weight(name="kernel", shape=(features, bins, self.width), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(features, self.width), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        encoded = tf.clip_by_value((inputs[:, :, None] - self.lower) / self.span, 0.0, 1.0) * self.mask
        return tf.nn.relu(tf.einsum("bft,ftw->bfw", encoded, self.kernel) + self.bias)

    def get_config(self) -> dict:
        return {**super().get_config(), "edges": self.edges, "width": self.width}


@tf.keras.utils.register_keras_serializable(package="behavior_spark")
class BgNbdView(tf.keras.layers.Layer):
    """BG/NBD's view of each customer (`btyd`: fitted on the training split, no weights learned here) as three more
    inputs: the probability that the customer is still alive, the log of their purchase rate if alive ((r + x) /
    (alpha + T) purchase days a week), and the log1p of the purchase days that rate and probability give in the label
    window. Customers without a purchase get zeros (the purchase days say which they are).

    x, t_x and T are read back from the standardised log1p inputs `purchase_days`, `purchase_span_days` and
    `days_per_purchase_day` (`columns`: name -> [index, mean, standard deviation]), so the scoring stage and the
    reasons feed the model as they always have, and a saved model carries the fit in its configuration.
    """

    def __init__(self, params: dict[str, float], columns: dict[str, list[float]], window_weeks: float, **kwargs):
        kwargs.setdefault("name", "bg_nbd")
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.params = {k: float(v) for k, v in params.items()}
        self.columns = {k: [float(v) for v in c] for k, c in columns.items()}
        self.window_weeks = float(window_weeks)

    def _raw(self, inputs: tf.Tensor, name: str) -> tf.Tensor:
        index, mean, std = self.columns[name]
        return tf.math.expm1(inputs[:, int(index)] * (std if std > 1e-9 else 1.0) + mean)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        r, alpha, a, b = (self.params[k] for k in ("r", "alpha", "a", "b"))
        days = tf.maximum(self._raw(inputs, "purchase_days"), 0.0)
        bought = days > 0.5
        x = tf.maximum(days - 1.0, 0.0)  # repeat purchase days
        t_x = tf.maximum(self._raw(inputs, "purchase_span_days"), 0.0) / 7.0
        T = tf.maximum(self._raw(inputs, "days_per_purchase_day") * days / 7.0, t_x)
        log_odds = (
            math.log(a)
            - tf.math.log(b + tf.maximum(x - 1.0, 0.0))
            + (r + x) * (tf.math.log(alpha + T) - tf.math.log(alpha + t_x))
        )
        p_alive = tf.where(x > 0.5, tf.sigmoid(-tf.clip_by_value(log_odds, -30.0, 30.0)), 1.0)
        log_rate = tf.math.log((r + x) / (alpha + T))
        expected = tf.math.log1p(p_alive * tf.exp(log_rate) * self.window_weeks)
        zero = tf.zeros_like(days)
        return tf.stack([tf.where(bought, v, zero) for v in (p_alive, log_rate, expected)], axis=1)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "params": self.params,
            "columns": self.columns,
            "window_weeks": self.window_weeks,
        }


def ziln_loss(labels: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """Negative log-likelihood of the amounts under the zero-inflated lognormal: whether the customer buys (a
    logistic term) plus, for those who do, the lognormal density of what they spend."""
    amount = tf.reshape(tf.cast(labels, tf.float32), [-1])
    bought = tf.cast(amount > 0, tf.float32)
    logit, mu, sigma = outputs[:, 0], outputs[:, 1], _sigma(outputs[:, 2])
    buys = tf.nn.sigmoid_cross_entropy_with_logits(labels=bought, logits=logit)
    log_amount = tf.math.log(tf.where(amount > 0, amount, tf.ones_like(amount)))
    spends = log_amount + tf.math.log(sigma) + 0.5 * math.log(2 * math.pi)
    spends += tf.square(log_amount - mu) / (2 * tf.square(sigma))
    return buys + bought * spends


def expected_amount(outputs: tf.Tensor) -> tf.Tensor:
    """E[amount] under the zero-inflated lognormal: P(buy) * exp(mu + sigma^2 / 2), one column."""
    logit, mu, sigma = outputs[:, 0:1], outputs[:, 1:2], _sigma(outputs[:, 2:3])
    return tf.sigmoid(logit) * tf.exp(mu + 0.5 * tf.square(sigma))


def _sigma(raw: tf.Tensor) -> tf.Tensor:
    return tf.nn.softplus(raw) + 0.01  # kept away from 0, where the density is infinite


def scoring_model(model: tf.keras.Model, prior_shift: float = 0.0, revenue_scale: float = 1.0) -> tf.keras.Model:
    """The same weights, answering the propensity, the 64-dimension customer embedding, the expected purchase days
    and the expected revenue in the label window.

    `prior_shift` undoes class weighting: a model trained with weights w0, w1 learns odds w1/w0 times the true
    ones, so adding log(w0/w1) to its logit gives back a calibrated probability. `revenue_scale` undoes the scaling
    of the revenue label in training (amounts in units of the training split's mean positive revenue).
    """
    head = model.get_layer(PROPENSITY_LAYER)
    embedding = model.get_layer(EMBEDDING_LAYER).output
    calibrated = tf.keras.layers.Dense(1, activation="sigmoid", name="calibrated_propensity")
    propensity = calibrated(embedding)
    kernel, bias = head.get_weights()
    calibrated.set_weights([kernel, bias + prior_shift])
    purchases = model.get_layer(PURCHASES_LAYER).output
    revenue = tf.keras.layers.Lambda(lambda outputs: expected_amount(outputs) * revenue_scale, name="expected_revenue")(
        model.get_layer(REVENUE_LAYER).output
    )
    return tf.keras.Model(inputs=model.inputs, outputs=[propensity, embedding, purchases, revenue])


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
    return scoring_model(model, prior_shift(metadata.training["class_weight"]), metadata.revenue_scale)


def scoring_inputs(columns: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's inputs in order, in the dtypes it was built with."""
    return [
        columns["numeric"].astype(np.float32),
        *(columns[name].astype(np.int32) for name in ("seq_event_type", "seq_category", "seq_gap_bucket")),
    ]
