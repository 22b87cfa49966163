"""Segment names a marketer can act on, from what sets each segment apart in its profile, and a line describing it.

Each shown segment is measured against all shown customers on five traits (`TRAITS`): the log of its mean over
theirs ("twice the value" and "half the days" weigh the same on any trait). A name is a trait and a direction ("high
value", "lapsing"); names are dealt out so that each segment gets a different one and the summed distinctness is
greatest (the assignment problem, SciPy's `linear_sum_assignment`). A segment keeps last run's name while that name
is still true of it (its trait at least `KEEP_MIN` on the same side), so names are as stable as the ids. There are
only k segments: this runs on the driver over k rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from scipy.optimize import linear_sum_assignment


@dataclasses.dataclass(frozen=True)
class Trait:
    column: str  # a segment profile's column
    high: str  # the name of a segment far above the others
    low: str  # ... and far below
    words: str  # the trait in a description
    unit: str  # how its value reads: "share", "days", "count", "money"


TRAITS = [
    Trait("mean_expected_revenue", "high value", "low value", "expected revenue per customer", "money"),
    Trait("mean_propensity", "likely to buy", "unlikely to buy", "chance to buy", "share"),
    Trait("mean_days_since_last_event", "lapsing", "recently active", "days since the last visit", "days"),
    Trait("mean_purchases", "frequent buyers", "rare buyers", "purchase days so far", "count"),
    Trait("mean_activity_trend", "heating up", "cooling down", "last week's activity vs the weeks before", "ratio"),
]
KEEP_MIN = 0.1  # a log ratio: last run's name stays while its trait is at least ~10% to that side of everyone's
KEEP_BONUS = 100.0  # beyond any log ratio: a name still true is kept before any other is dealt
UNNAMED = "segment"


@dataclasses.dataclass(frozen=True)
class Named:
    name: str
    description: str


def name_segments(profiles: list[Mapping], previous: Mapping[int, str] | None = None) -> dict[int, Named]:
    """segment_id -> a distinct name and a one-line description, for the shown segments of `profiles` (rows with
    `segment_id`, `customers`, `suppressed`, the trait columns and `top_category_labels`)."""
    shown = [p for p in profiles if not p["suppressed"]]
    if not shown:
        return {}
    previous = previous or {}
    scores = {p["segment_id"]: standing(p, shown) for p in shown}
    labels = [(trait, side) for trait in TRAITS for side in (1, -1)]
    fit = [[_fit(scores[p["segment_id"]][t.column] * side, previous.get(p["segment_id"]) == _name(t, side))
            for t, side in labels] for p in shown]  # fmt: skip
    rows, columns = linear_sum_assignment(fit, maximize=True)
    chosen = {shown[r]["segment_id"]: labels[c] for r, c in zip(rows, columns, strict=True)}
    named = {}
    for p in shown:
        segment_id = p["segment_id"]
        label = chosen.get(segment_id)
        name = _name(*label) if label else f"{UNNAMED} {segment_id}"  # more segments than names
        named[segment_id] = Named(name, describe(p, shown, scores[segment_id], label[0] if label else None))
    return named


def standing(segment: Mapping, shown: list[Mapping]) -> dict[str, float]:
    """Per trait: the log of the segment's mean over the mean of every shown customer."""
    customers = sum(p["customers"] for p in shown)
    result = {}
    for trait in TRAITS:
        overall = sum(float(p[trait.column] or 0.0) * p["customers"] for p in shown) / customers
        result[trait.column] = _log(segment[trait.column], trait.unit) - _log(overall, trait.unit)
    return result


def describe(segment: Mapping, shown: list[Mapping], scores: Mapping[str, float], named: Trait | None = None) -> str:
    """The trait it is named for and the other that sets the segment apart most, in numbers against all shown
    customers, and its top category: "expected revenue per customer 41.20 (all: 12.85); days since the last visit 3
    (all: 19); mostly electronics.audio"."""
    customers = sum(p["customers"] for p in shown)
    parts = []
    ranked = sorted(TRAITS, key=lambda t: (t != named, -abs(scores[t.column])))
    for trait in ranked[:2]:
        overall = sum(p[trait.column] * p["customers"] for p in shown) / customers
        parts.append(f"{trait.words} {_reads(segment[trait.column], trait.unit)} (all: {_reads(overall, trait.unit)})")
    categories = segment.get("top_category_labels") or []
    if categories:
        parts.append(f"mostly {categories[0]}")
    return "; ".join(parts)


def _name(trait: Trait, side: int) -> str:
    return trait.high if side > 0 else trait.low


def _fit(score: float, was_its_name: bool) -> float:
    return score + (KEEP_BONUS if was_its_name and score >= KEEP_MIN else 0.0)


def _log(value: float | None, unit: str) -> float:
    """Shares and ratios as they are (floored), counts, days and money plus one (a zero stays finite)."""
    value = max(float(value or 0.0), 0.0)
    return math.log(max(value, 1e-3)) if unit in ("share", "ratio") else math.log1p(value)


def _reads(value: float | None, unit: str) -> str:
    value = float(value or 0.0)
    if unit == "share":
        return f"{value:.0%}"
    if unit == "days":
        return f"{value:.0f}"
    if unit == "money":
        return f"{value:,.2f}"
    return f"{value:.1f}"
