"""Drift: the population stability index (PSI) of each model input between training and scoring data.

Bin edges are the training data's deciles of each feature (as the model sees it, `features.model_input_value`);
both populations are counted into those bins in one aggregation each, and

    PSI = sum over bins of (scoring share - training share) * ln(scoring share / training share)

Rules of thumb: below 0.1 stable, 0.1-0.2 shifting, above 0.2 drifted (a warning; `score.drift_fail_psi` makes it
fail the job).

Like is compared with like: a feature measured against the calendar (`tenure_days`) grows with the history behind a
snapshot, so a scoring snapshot a month after the training one would always look drifted (PSI 0.38 on the demo
before this). Such features are compared as a share of their snapshot's history (tenure over the longest tenure in
that snapshot): customers arriving at a steady rate give the same shares at any date; a flood of new ones does not.
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.features import model_input_value
from behavior_spark.lake import one_row

BINS = 10
WARN_PSI = 0.2
_SHARE_FLOOR = 1e-4  # an empty bin counts as this share, so the logarithm stays finite
CALENDAR_FEATURES = ["tenure_days"]  # grows with the history behind a snapshot, not with behaviour


def decile_edges(training: DataFrame, names: list[str]) -> dict[str, list[float]]:
    """The distinct inner decile edges of each feature on the training data (a few numbers per feature)."""
    values = training.select(*(model_input_value(n).alias(n) for n in names))
    quantiles = values.approxQuantile(names, [i / BINS for i in range(1, BINS)], 0.001)
    return {name: sorted(set(edges)) for name, edges in zip(names, quantiles, strict=True)}


def bin_shares(df: DataFrame, edges: dict[str, list[float]]) -> dict[str, list[float]]:
    """Share of rows in each bin of each feature: each row's bins as (feature, bin) pairs, counted in one groupBy
    (features x bins small counts; one aggregate of that many conditional counts was slower).
    Every row gives one pair per feature, so the first feature's counts add up to the rows: no second pass."""
    names = list(edges)
    pairs = F.inline(
        F.array(
            *(
                F.struct(F.lit(i).alias("f"), _bin(model_input_value(n), edges[n]).alias("b"))
                for i, n in enumerate(names)
            )
        )
    )
    counts = df.select(pairs).groupBy("f", "b").count().collect()  # features x bins rows
    rows = sum(r["count"] for r in counts if r["f"] == 0)
    shares = {name: [0.0] * (len(edges[name]) + 1) for name in names}
    for r in counts:
        shares[names[r["f"]]][r["b"]] = r["count"] / max(rows, 1)
    return shares


def psi(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _SHARE_FLOOR), max(a, _SHARE_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def feature_psi(training: DataFrame, scoring: DataFrame, names: list[str]) -> dict[str, float]:
    training, scoring = relative_to_history(training), relative_to_history(scoring)
    edges = decile_edges(training, names)
    expected, actual = bin_shares(training, edges), bin_shares(scoring, edges)
    return {name: psi(expected[name], actual[name]) for name in names}


def relative_to_history(snapshot: DataFrame) -> DataFrame:
    """Calendar features as a share of the snapshot's longest value (one aggregation; other columns unchanged)."""
    present = [c for c in CALENDAR_FEATURES if c in snapshot.columns]
    if not present:
        return snapshot
    spans = one_row(snapshot.agg(*(F.max(c).alias(c) for c in present)))
    return snapshot.withColumns({c: F.col(c) / F.lit(float(spans[c] or 1.0)) for c in present})


def _bin(value: Column, bounds: list[float]) -> Column:
    """0 .. len(bounds): how many edges the value lies above."""
    index = F.lit(0)
    for bound in bounds:
        index = index + (value > F.lit(bound)).cast("int")
    return index
