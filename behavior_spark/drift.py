"""Drift: the population stability index (PSI) of each model input between a snapshot and the one before it.

Like is compared with like. The scoring snapshot is compared with the previous scoring snapshot, through the profile
the score stage kept of it (each feature's decile edges and the share of customers between them; no rows are kept);
on the first scoring date, with the latest training snapshot, which is built the same way some weeks before. Both are
counted into the reference's bins in one aggregation, and

    PSI = sum over bins of (share now - share before) * ln(share now / share before)

Rules of thumb: below 0.1 stable, 0.1-0.2 shifting, above 0.2 drifted (a warning; `score.drift_fail_psi` makes it
fail the job).

Totals over a customer's whole history (tenure, lifetime events, sessions, distinct categories...) grow with the
history behind a snapshot: a month later every customer has had a month more, so they "drift" by construction (the
demo's steady log showed PSI 0.65-1.4 for sessions and the mean gap; divided by tenure they drift the other way, as
small counts over short histories are noisy rates). They are recorded, not judged (`LIFETIME_FEATURES`); the windowed
counts, recency, shares and ratios carry the same behaviour without the calendar in it, and are judged.
"""

from __future__ import annotations

import dataclasses
import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.features import model_input_value

BINS = 10
WARN_PSI = 0.2
_SHARE_FLOOR = 1e-4  # an empty bin counts as this share, so the logarithm stays finite
LIFETIME_FEATURES = frozenset(
    [
        "tenure_days", "events", "purchases", "purchase_days", "purchase_span_days", "days_per_purchase_day", "revenue",
        "sessions", "mean_gap_hours", "distinct_categories", "distinct_brands", "category_entropy",
    ]
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Profile:
    """A snapshot as drift sees it: per feature, its inner decile edges and the share of rows in each bin."""

    edges: dict[str, list[float]]
    shares: dict[str, list[float]]


def profile(snapshot: DataFrame, names: list[str]) -> Profile:
    edges = decile_edges(snapshot, names)
    return Profile(edges, bin_shares(snapshot, edges))


def compare(reference: Profile, snapshot: DataFrame) -> dict[str, float]:
    """PSI of each feature of `snapshot` against the reference, counted into the reference's bins."""
    actual = bin_shares(snapshot, reference.edges)
    return {name: psi(reference.shares[name], actual[name]) for name in reference.edges}


def judged(name: str) -> bool:
    return name not in LIFETIME_FEATURES


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


def feature_psi(before: DataFrame, now: DataFrame, names: list[str]) -> dict[str, float]:
    """PSI of each feature of `now` against `before` (the reference's deciles as bins)."""
    return compare(profile(before, names), now)


def _bin(value: Column, bounds: list[float]) -> Column:
    """0 .. len(bounds): how many edges the value lies above."""
    index = F.lit(0)
    for bound in bounds:
        index = index + (value > F.lit(bound)).cast("int")
    return index
