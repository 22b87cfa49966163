"""Drift: the population stability index (PSI) of each model input between training and scoring data.

Bin edges are the training data's deciles of each feature (as the model sees it, `features.model_input_value`);
both populations are counted into those bins in one aggregation each, and

    PSI = sum over bins of (scoring share - training share) * ln(scoring share / training share)

Rules of thumb: below 0.1 stable, 0.1-0.2 shifting, above 0.2 drifted (a warning; `score.drift_fail_psi` makes it
fail the job).
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.features import model_input_value

BINS = 10
WARN_PSI = 0.2
_SHARE_FLOOR = 1e-4  # an empty bin counts as this share, so the logarithm stays finite


def decile_edges(training: DataFrame, names: list[str]) -> dict[str, list[float]]:
    """The distinct inner decile edges of each feature on the training data (a few numbers per feature)."""
    values = training.select(*(model_input_value(n).alias(n) for n in names))
    quantiles = values.approxQuantile(names, [i / BINS for i in range(1, BINS)], 0.001)
    return {name: sorted(set(edges)) for name, edges in zip(names, quantiles, strict=True)}


def bin_shares(df: DataFrame, edges: dict[str, list[float]]) -> dict[str, list[float]]:
    """Share of rows in each bin of each feature, in one aggregation over `df`."""
    counts = df.agg(
        F.count(F.lit(1)).alias("_rows"),
        *(
            F.count_if(_bin(model_input_value(name), bounds) == b).alias(f"{name}__{b}")
            for name, bounds in edges.items()
            for b in range(len(bounds) + 1)
        ),
    ).first()
    rows = max(counts["_rows"], 1)
    return {name: [counts[f"{name}__{b}"] / rows for b in range(len(bounds) + 1)] for name, bounds in edges.items()}


def psi(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _SHARE_FLOOR), max(a, _SHARE_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def feature_psi(training: DataFrame, scoring: DataFrame, names: list[str]) -> dict[str, float]:
    edges = decile_edges(training, names)
    expected, actual = bin_shares(training, edges), bin_shares(scoring, edges)
    return {name: psi(expected[name], actual[name]) for name in names}


def _bin(value: Column, bounds: list[float]) -> Column:
    """0 .. len(bounds): how many edges the value lies above."""
    index = F.lit(0)
    for bound in bounds:
        index = index + (value > F.lit(bound)).cast("int")
    return index
