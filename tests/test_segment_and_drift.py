"""Segment ids matched across runs, k-anonymity in profiles, and the population stability index."""

import math
import random

import pytest
from pyspark.sql import functions as F

from behavior_spark import drift, naming, segment
from behavior_spark.config import SegmentSettings


def test_clusters_take_the_id_of_the_nearest_previous_centroid():
    previous = {0: [0.0, 0.0], 1: [10.0, 10.0], 2: [0.0, 10.0]}
    current = {0: [9.5, 10.2], 1: [0.3, 9.8], 2: [0.1, -0.2], 3: [50.0, 50.0]}  # renumbered, plus a new one
    assert segment.match_segments(current, previous) == {0: 1, 1: 2, 2: 0, 3: 3}
    assert segment.match_segments(current, {}) == {0: 0, 1: 1, 2: 2, 3: 3}  # the first run keeps KMeans' ids


def _blobs(spark, centers, per_center=60, seed=3):
    from pyspark.ml.linalg import Vectors

    rng = random.Random(seed)
    rows = [
        (Vectors.dense([x + rng.gauss(0, 1.5), y + rng.gauss(0, 1.5)]),) for x, y in centers for _ in range(per_center)
    ]
    return spark.createDataFrame(rows, ["segment_features"])


def test_a_rerun_keeps_the_previous_centroids_unless_a_new_fit_is_clearly_better(spark):
    customers = _blobs(spark, [(0, 0), (10, 0), (5, 8)])
    settings = SegmentSettings(restarts=2, keep_tolerance=0.01)
    first = segment.fit_clusters(customers, 3, settings)
    centroids = segment.cluster_centroids(first)

    again = segment.fit_clusters(customers, 3, settings.model_copy(update={"seed": 99}), centroids)
    assert segment.cluster_centroids(again).keys() == centroids.keys()
    for cluster, centroid in segment.cluster_centroids(again).items():
        assert math.dist(centroid, centroids[cluster]) < 1e-9  # the same customers in the same clusters

    wrong = {0: [0.0, 0.0], 1: [1.0, 0.0], 2: [2.0, 0.0]}  # a poor start: the new fit wins
    refitted = segment.cluster_centroids(segment.fit_clusters(customers, 3, settings, wrong))
    assert sorted(round(c[0]) for c in refitted.values()) == [0, 5, 10]


def test_segments_below_the_k_anonymity_threshold_are_suppressed(spark):
    # segment, propensity, expected purchases and revenue, days since last event, purchases, revenue, events,
    # activity trend, tenure days, top category
    rows = [(0, 0.9, 2.0, 100.0, 1.0, 3.0, 300.0, 20.0, 1.0, 60.0, "7")] * 25 + [
        (1, 0.1, 0.0, 0.0, 30.0, 0.0, 0.0, 5.0, 1.0, 90.0, "8")
    ] * 25
    rows += [(2, 0.99, 5.0, 500.0, 0.0, 9.0, 999.0, 90.0, 1.0, 10.0, "9")] * 3  # three customers: too few to show
    assigned = spark.createDataFrame(
        rows,
        "segment_id int, propensity double, expected_purchases double, expected_revenue double, "
        "days_since_last_event double, purchases double, revenue double, events double, activity_trend double, "
        "tenure_days double, top_category_id string",
    )
    profiled = segment.profile(assigned, min_segment_size=20, window_days=30)
    names = naming.name_segments([r.asDict() for r in profiled.collect()])
    profiles = {r["segment_id"]: r for r in segment.with_names(profiled, names).collect()}
    small = profiles[2]
    assert small["suppressed"] and small["customers"] == 3
    assert small["segment_name"].startswith(segment.SUPPRESSED) and small["segment_description"] is None
    assert small["mean_revenue"] is None and small["top_categories"] is None and small["revenue_at_risk"] is None
    assert set(names) == {0, 1}  # named among the shown segments only
    assert profiles[0]["segment_name"] != profiles[1]["segment_name"]
    assert profiles[0]["top_categories"] == ["7"] and profiles[1]["mean_days_since_last_event"] == 30.0
    # 300 spent over 60 days is 150 a 30-day window; 100 expected: 50 at risk per customer
    assert profiles[0]["expected_revenue"] == 2500.0 and profiles[0]["revenue_at_risk"] == 1250.0
    assert profiles[1]["revenue_at_risk"] == 0.0


def test_profiles_name_their_top_categories_by_code_where_the_source_has_one(spark):
    profiles = spark.createDataFrame([(0, ["7", "8"]), (1, None)], "segment_id int, top_categories array<string>")
    events = spark.createDataFrame(
        [("7", "electronics.audio")] * 3 + [("7", "electronics")] + [("8", None), ("9", "kids.toys")],
        "category_id string, category_code string",
    )
    labelled = {
        r["segment_id"]: r["top_category_labels"] for r in segment.with_category_labels(profiles, events).collect()
    }
    assert labelled == {0: ["electronics.audio", "8"], 1: None}  # the commonest code; the id where there is none


def test_psi_is_zero_for_the_same_population_and_grows_with_a_shift(spark):
    same = spark.range(10_000).select((F.col("id") % 100).cast("double").alias("events"))
    shifted = spark.range(10_000).select(((F.col("id") % 100) + 40).cast("double").alias("events"))
    assert drift.feature_psi(same, same, ["events"])["events"] == pytest.approx(0.0, abs=1e-9)
    assert drift.feature_psi(same, shifted, ["events"])["events"] > drift.WARN_PSI


def test_lifetime_totals_are_recorded_but_not_judged_and_windowed_features_are():
    assert not drift.judged("tenure_days") and not drift.judged("sessions") and not drift.judged("events")
    assert drift.judged("purchase_30d") and drift.judged("days_since_last_event") and drift.judged("weekend_share")


def test_a_snapshot_is_compared_with_the_kept_profile_of_the_one_before(spark):
    before = spark.range(10_000).select((F.col("id") % 100).cast("double").alias("events"))
    reference = drift.profile(before, ["events"])  # what the score stage keeps of a snapshot: edges and shares
    assert len(reference.shares["events"]) == len(reference.edges["events"]) + 1
    assert drift.compare(reference, before)["events"] == pytest.approx(0.0, abs=1e-9)
    shifted = spark.range(10_000).select(((F.col("id") % 100) + 40).cast("double").alias("events"))
    assert drift.compare(reference, shifted)["events"] > drift.WARN_PSI


def test_psi_by_hand():
    expected, actual = [0.5, 0.5], [0.25, 0.75]
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert drift.psi(expected, actual) == pytest.approx(by_hand)


def segment_profile(segment_id, customers, propensity, days, purchases, value, trend=1.0, category="books"):
    return {
        "segment_id": segment_id, "customers": customers, "suppressed": False, "mean_propensity": propensity,
        "mean_days_since_last_event": days, "mean_purchases": purchases, "mean_expected_revenue": value,
        "mean_activity_trend": trend, "top_category_labels": [category],
    }  # fmt: skip


def test_segment_names_are_distinct_and_say_what_sets_each_apart():
    # Five segments where three would have been "regulars": ordinary on the traits that named the others.
    profiles = [
        segment_profile(0, 900, 0.45, 3, 6.0, 80.0),
        segment_profile(1, 1200, 0.10, 60, 0.5, 5.0),
        segment_profile(2, 1500, 0.20, 15, 2.0, 20.0),
        segment_profile(3, 1400, 0.22, 14, 2.2, 22.0, trend=2.5),
        segment_profile(4, 1300, 0.19, 16, 1.9, 19.0, trend=0.3),
    ]
    named = naming.name_segments(profiles)
    names = [named[i].name for i in range(5)]
    assert len(set(names)) == 5, names
    assert named[3].name == "heating up" and named[4].name == "cooling down"
    assert named[1].name in {"lapsing", "unlikely to buy", "low value", "rare buyers"}
    assert "(all: " in named[0].description and "mostly books" in named[0].description


def test_a_segment_keeps_last_runs_name_while_it_still_fits():
    profiles = [segment_profile(0, 900, 0.45, 3, 6.0, 80.0), segment_profile(1, 1200, 0.10, 60, 0.5, 5.0)]
    first = {i: n.name for i, n in naming.name_segments(profiles).items()}
    assert first == {0: "recently active", 1: "low value"}  # the widest gaps: a tenth of the days, a seventh the value
    kept = naming.name_segments(profiles, previous={0: "frequent buyers", 1: "lapsing"})
    assert kept[0].name == "frequent buyers" and kept[1].name == "lapsing"  # still true of them: kept
    renamed = naming.name_segments(profiles, previous={0: "lapsing", 1: "recently active"})  # no longer true
    assert {i: n.name for i, n in renamed.items()} == first
