"""Why a customer got their score: the three inputs that moved their propensity most, in words a marketer reads.

Attribution (`attributions`, in the scoring UDF's Arrow pass on the executors): each standardised numeric input's
contribution to the propensity's logit against the average training customer (0 in standardised space), by
integrated gradients with `score.reason_steps` steps. With one step it is gradient x input at the customer, and
the forward pass that scores the batch is the one the gradient flows back through, so reasons cost one backward
pass. The recent-event sequence enters the model too; it is held as it is (its weight in the model is in the
permutation importance, `recent_sequence`), so reasons speak of the numeric features.

Words (`with_reasons`, Spark SQL over the scored rows, no Python): the feature's value as a phrase ("3 purchases
in the last 30 days"), where it ranks among today's customers ("top 10%": the share at or above its bin of the
deciles the drift check keeps of the scoring snapshot), and whether it raises or lowers the chance to buy.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.contracts import FUNNEL_EVENTS
from behavior_spark.drift import Profile
from behavior_spark.features import SHARE_FEATURES, WINDOW_DAYS

TOP = 3
_EVENT_WORDS = {
    "view": "views",
    "cart": "add-to-carts",
    "remove_from_cart": "removals from cart",
    "purchase": "purchases",
}
PHRASES = {  # feature -> (what its value reads as, with %s for the value; decimals)
    "days_since_last_event": ("last seen %s days ago", 0),
    "days_since_last_purchase": ("last purchase %s days ago", 0),
    "tenure_days": ("a customer for %s days", 0),
    "events": ("%s events in all", 0),
    "purchases": ("%s purchase lines in all", 0),
    "purchase_days": ("%s days with a purchase", 0),
    "purchase_span_days": ("%s days from first to last purchase", 0),
    "days_per_purchase_day": ("a purchase day every %s days", 0),
    "purchase_overdue": ("%s x the usual gap since the last purchase", 1),
    "revenue": ("%s spent in all", 2),
    "avg_order_value": ("%s per order", 2),
    "view_to_cart": ("%s of views carted", 2),
    "cart_to_purchase": ("%s of carts bought", 2),
    "activity_trend": ("last week's activity %s x the weeks before", 1),
    "mean_gap_hours": ("%s hours between visits", 0),
    "weekend_share": ("%s of activity at weekends", 2),
    "evening_share": ("%s of activity in the evening", 2),
    "night_share": ("%s of activity at night", 2),
    "sessions": ("%s sessions", 0),
    "events_per_session": ("%s events a session", 1),
    "avg_session_minutes": ("%s minutes a session", 0),
    "purchase_session_share": ("%s of sessions with a purchase", 2),
    "distinct_categories": ("%s categories", 0),
    "top_category_share": ("%s of activity in one category", 2),
    "category_entropy": ("category spread %s", 2),
    "distinct_brands": ("%s brands", 0),
    **{
        f"{event}_{days}d": (f"%s {_EVENT_WORDS[event]} in the last {days} days", 0)
        for days in WINDOW_DAYS
        for event in FUNNEL_EVENTS
    },
}


_COMPILED: dict[tuple[int, int], Callable] = {}  # per Python worker: (model, steps) -> the traced attribution


def attributions(model, inputs: list, steps: int):
    """(the model's four outputs at `inputs`, each numeric input's contribution to the propensity's logit), by
    integrated gradients from the all-zero numeric input; TensorFlow, on a worker, traced into one graph."""
    key = (id(model), steps)
    if key not in _COMPILED:
        _COMPILED[key] = _traced(model, steps)
    outputs, contributions = _COMPILED[key](*inputs)
    return outputs, contributions.numpy()


def _traced(model, steps: int):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def attribute(numeric, *rest):
        total = tf.zeros_like(numeric)
        outputs = None
        for step in range(steps):
            alpha = 1.0 if steps == 1 else (step + 0.5) / steps  # midpoints; one step: at the customer
            point = numeric * alpha
            with tf.GradientTape() as tape:
                tape.watch(point)
                answered = model([point, *rest], training=False)
                p = tf.clip_by_value(answered[0], 1e-6, 1 - 1e-6)
                logit = tf.math.log(p) - tf.math.log1p(-p)
            total += tape.gradient(logit, point)
            if steps == 1:
                outputs = answered
        if outputs is None:
            outputs = model([numeric, *rest], training=False)
        return outputs, numeric * total / steps

    return attribute


def top_reasons(contributions, numeric, normalisation: list[tuple[float, float]], k: int = TOP):
    """Each row's `k` largest contributions by size, largest first: (feature indices, contributions, the features'
    values as the model reads them, standardisation undone); numpy."""
    import numpy as np

    k = min(k, contributions.shape[1])
    order = np.argsort(-np.abs(contributions), axis=1)[:, :k]
    mean = np.array([m for m, _ in normalisation], dtype=np.float64)
    scale = np.array([s if s > 1e-9 else 1.0 for _, s in normalisation], dtype=np.float64)
    values = np.take_along_axis(numeric, order, axis=1) * scale[order] + mean[order]
    return (
        order.astype(np.int32),
        np.take_along_axis(contributions, order, axis=1).astype(np.float32),
        values.astype(np.float64),
    )


def with_reasons(scored: DataFrame, names: list[str], deciles: Profile) -> DataFrame:
    """`reasons`: each row's top reasons (`reason_index`, `reason_contribution`, `reason_value` from the UDF) as
    structs of the feature, its value, its words and its contribution."""
    feature_names = F.array(*(F.lit(n) for n in names))
    logged = F.array(*(F.lit(n not in SHARE_FEATURES) for n in names))

    def reason(index: Column, contribution: Column, model_value: Column) -> Column:
        value = F.when(logged[index], F.expm1(model_value)).otherwise(model_value)  # as the log holds it
        return F.struct(
            feature_names[index].alias("feature"),
            value.alias("value"),
            F.concat(
                _phrase(names, index, value),
                F.lit(" ("),
                _rank(names, deciles, index, model_value),
                F.lit("), "),
                F.when(contribution >= 0, F.lit("raises")).otherwise(F.lit("lowers")),
                F.lit(" the chance to buy"),
            ).alias("text"),
            contribution.alias("contribution"),
        )

    triples = F.arrays_zip("reason_index", "reason_contribution", "reason_value")
    return scored.withColumn(
        "reasons",
        F.transform(triples, lambda r: reason(r["reason_index"], r["reason_contribution"], r["reason_value"])),
    ).drop("reason_index", "reason_contribution", "reason_value")


def _phrase(names: list[str], index: Column, value: Column) -> Column:
    templates = F.array(*(F.lit(PHRASES.get(n, (n.replace("_", " ") + " %s", 2))[0]) for n in names))
    decimals = F.array(*(F.lit(PHRASES.get(n, ("", 2))[1]) for n in names))
    shown = F.when(decimals[index] == 0, F.format_number(F.round(value, 0), 0)).otherwise(F.format_number(value, 2))
    return F.regexp_replace(templates[index], "%s", shown)


def _rank(names: list[str], deciles: Profile, index: Column, model_value: Column) -> Column:
    """ "top 5%" .. "bottom 40%": the share of today's customers at or above the value's bin (or at or below it),
    from the scoring snapshot's profile (its bins' edges and shares, `drift.Profile`)."""

    def per_feature(values: dict[str, list[float]]) -> Column:
        return F.array(
            *(F.array(*(F.lit(float(v)) for v in values.get(n, [])), F.lit(None).cast("double")) for n in names)
        )

    tails = {n: [sum(shares[b:]) for b in range(len(shares))] for n, shares in deciles.shares.items()}
    heads = {n: [sum(shares[: b + 1]) for b in range(len(shares))] for n, shares in deciles.shares.items()}
    edges = per_feature(deciles.edges)[index]
    above = lambda edge: edge.isNotNull() & (model_value > edge + 1e-6)  # noqa: E731 (undoing standardisation)
    bin_ = F.size(F.filter(edges, above))
    top, bottom = per_feature(tails)[index][bin_], per_feature(heads)[index][bin_]
    percent = lambda share: F.greatest(F.round(share * 100), F.lit(1)).cast("int").cast("string")  # noqa: E731
    return (
        F.when(top.isNull(), F.lit("rank unknown"))
        .when(top <= 0.5, F.concat(F.lit("top "), percent(top), F.lit("%")))
        .otherwise(F.concat(F.lit("bottom "), percent(bottom), F.lit("%")))
    )
