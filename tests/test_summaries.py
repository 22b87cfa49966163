"""Customer-day summaries (issue 18): what ingest keeps day by day equals the summaries of all events, whatever the
deliveries (late lines, re-sent files, another writer committing to the events table), and featurize over them,
keeping the training snapshots whose inputs did not change, builds the features the events give after every
delivery."""

import datetime as dt
import json
import logging
import random
from collections import Counter

from delta.tables import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from test_schedule import land, raw_lines_by_day

from behavior_spark import features, ingest, lake, summaries
from behavior_spark.config import load_settings

DELIVERIES = 4


def comparable(days):
    """Summaries with their arrays in a fixed order."""
    return days.select(
        *(c for c in days.columns if c not in ("categories", "recent")),
        F.sort_array("categories").alias("categories"),
        F.sort_array("recent").alias("recent"),
    )


def test_summaries_kept_by_ingest_equal_the_summaries_of_all_events(spark, tmp_path, pseudonym_key, caplog):
    settings = load_settings(
        None,
        [
            f"lake.root={tmp_path}/lake",
            f"ingest.input={tmp_path}/raw",
            "spark.shuffle_partitions=2",
            "generate.rows=3000",
            "generate.days=10",
            "features.label_window_days=3",
            "features.cutoffs=2",
            "features.cutoff_step_days=2",
            "features.sequence_length=4",  # short: days hold more events than a sequence keeps
            "features.totals_lag_days=3",  # 3 to 6 days behind: the second of these four-day deliveries rolls them
        ],
    )
    by_day = raw_lines_by_day(spark, settings)
    days = sorted(by_day)
    per_delivery = len(days) // DELIVERIES + 1
    draw = random.Random(18)
    held_back: list[str] = []
    # some lines of the second delivery's last day arrive with the last delivery: the kept totals hold that day by
    # then, but it lies after the earlier cutoff's label window (whose snapshot is still kept)
    very_late = set(by_day[days[7]][::7])
    outcomes, kept_with_rows = [], []
    for n in range(DELIVERIES):
        lines = [line for day in days[n * per_delivery : (n + 1) * per_delivery] for line in by_day[day]]
        lines = [line for line in lines if line not in very_late]
        draw.shuffle(lines)
        # a fifth of the middle deliveries' lines arrive a delivery late (the first's would reach back before the
        # kept totals' date and make them anew: the second delivery is the one that rolls them forward)
        late = [] if n in (0, DELIVERIES - 1) else lines[: len(lines) // 5]
        oldest = sorted(very_late) if n == DELIVERIES - 1 else []  # they change a day the kept totals hold
        land(tmp_path / "raw" / f"delivery-{n}", "events.csv", lines[len(late) :] + held_back + oldest + lines[:3])
        held_back = late
        if n == 1:  # a source re-sends an earlier file under another name: its lines are replays (of a day the
            # kept totals do not hold, for the same reason)
            land(tmp_path / "raw" / "resent", "events.csv", by_day[days[2]])
        ingest.run(spark, settings)
        outcomes.append(summaries.recorded_commit(spark, settings)["events_version"])
        events = lake.read(spark, settings.lake, lake.EVENTS)
        kept = lake.read(spark, settings.lake, lake.CUSTOMER_DAYS)
        assertDataFrameEqual(comparable(kept), comparable(summaries.customer_days(events, 5)))
        result = features.run(spark, settings)
        with_rows = {r[0].isoformat() for r in training_cutoffs(spark, settings)}
        kept_with_rows += [c for c in result.kept_cutoffs if c in with_rows]
        assert_features_equal_a_fresh_build(spark, settings, result)
        if n == 1:  # another writer (a compaction) commits to the events: the next batch cannot build on the table
            DeltaTable.forPath(spark, lake.path(settings.lake, lake.EVENTS)).optimize().executeCompaction()

    # a day later, with nothing new: the kept totals, now four days behind, serve without being written again
    totals_commits = len(lake.commits(spark, lake.path(settings.lake, lake.CUSTOMER_TOTALS)))
    day_later = dt.date.fromisoformat(result.scoring_date) + dt.timedelta(days=1)
    later = settings.model_copy(update={"score": settings.score.model_copy(update={"scoring_date": day_later})})
    assert_features_equal_a_fresh_build(spark, later, features.run(spark, later))
    assert len(lake.commits(spark, lake.path(settings.lake, lake.CUSTOMER_TOTALS))) == totals_commits, "written again"

    history = DeltaTable.forPath(spark, lake.path(settings.lake, lake.CUSTOMER_DAYS)).history()
    replaced = history.filter(F.col("operationParameters")["predicate"].contains("event_date IN")).count()
    assert replaced >= DELIVERIES - 2  # every batch but the first and the one after the compaction replaced its days
    assert outcomes == sorted(outcomes)
    totals = DeltaTable.forPath(spark, lake.path(settings.lake, lake.CUSTOMER_TOTALS)).history()
    rolled_from = [json.loads(r[0]).get("rolled_from") for r in totals.select("userMetadata").collect()]
    assert rolled_from[0] is None, "the late lines of an old day did not make the kept totals anew"
    assert any(rolled_from), "no run rolled the kept totals forward: the incremental path did not run"
    assert kept_with_rows, "no delivery kept a training snapshot with rows: the incremental path did not run"
    assert result.kept_cutoffs != result.cutoffs  # the last delivery's late lines reach one label window

    # kept totals of an earlier release (other columns: its commit does not list them) are made anew, not read
    kept = json.loads(totals.orderBy(F.desc("version")).first()["userMetadata"])
    earlier = json.dumps({k: v for k, v in kept.items() if k != "columns"})
    old_totals = lake.read(spark, settings.lake, lake.CUSTOMER_TOTALS).drop("purchase_days", "first_purchase_day")
    lake.overwrite(old_totals.localCheckpoint(), settings.lake, lake.CUSTOMER_TOTALS, userMetadata=earlier)
    assert_features_equal_a_fresh_build(spark, later, features.run(spark, later))
    newest = lake.commits(spark, lake.path(settings.lake, lake.CUSTOMER_TOTALS), 1)[0]
    assert json.loads(newest["userMetadata"])["rolled_from"] is None

    # a new day two days on, for some customers: the scoring snapshot carries the other customers' array features
    # (categories, brands, sequences) from the previous one and computes the day's customers' anew
    new_day = days[-1] + dt.timedelta(days=2)
    moved = [line.replace(days[-1].isoformat(), new_day.isoformat(), 1) for line in by_day[days[-1]][::3]]
    land(tmp_path / "raw" / "new-day", "events.csv", [line for line in moved if new_day.isoformat() in line])
    ingest.run(spark, settings)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="behavior_spark.features"):
        assert_features_equal_a_fresh_build(spark, settings, features.run(spark, settings))
    assert "array features carried" in caplog.text, "the scoring snapshot computed every customer's arrays anew"


def test_days_appended_in_order_are_summarised_where_ingest_shuffled_them(spark, tmp_path, pseudonym_key):
    """Deliveries of whole new days (no late lines: the batches append, nothing is MERGEd): each batch's summaries
    are made from its rows in ingest's shuffle, not read back, and equal the summaries of all events."""
    settings = load_settings(
        None,
        [f"lake.root={tmp_path}/lake", f"ingest.input={tmp_path}/raw", "generate.rows=2000", "generate.days=6"],
    )
    by_day = raw_lines_by_day(spark, settings)
    days = sorted(by_day)
    for n, chunk in enumerate((days[:2], days[2:4], days[4:])):
        land(tmp_path / "raw" / f"day-{n}", "events.csv", [line for day in chunk for line in by_day[day]])
        ingest.run(spark, settings)
        events = lake.read(spark, settings.lake, lake.EVENTS)
        kept = lake.read(spark, settings.lake, lake.CUSTOMER_DAYS)
        from_events = summaries.customer_days(events, summaries.recent_per_day(settings))
        assertDataFrameEqual(comparable(kept), comparable(from_events))
    history = DeltaTable.forPath(spark, lake.path(settings.lake, lake.CUSTOMER_DAYS)).history()
    replaced = history.filter(F.col("operationParameters")["predicate"].contains("event_date IN")).count()
    assert (history.count(), replaced) == (3, 2)  # the first load made the table, each later batch replaced its days


def training_cutoffs(spark, settings):
    """The cutoffs of the training snapshots that have rows."""
    table = lake.read(spark, settings.lake, lake.FEATURES).filter(F.col("split") != features.SCORE_SPLIT)
    return table.select("cutoff_date").distinct().collect()


def assert_features_equal_a_fresh_build(spark, settings, result):
    """The features table equals every snapshot built anew from the summaries of all events."""
    events = lake.read(spark, settings.lake, lake.EVENTS)
    from_events = summaries.customer_days(events, settings.features.sequence_length + 1)
    cfg = settings.features
    expected = [features.build_features(from_events, dt.date.fromisoformat(c), cfg) for c in result.cutoffs]
    expected.append(features.build_features(from_events, dt.date.fromisoformat(result.scoring_date), cfg, scoring=True))
    built = lake.read(spark, settings.lake, lake.FEATURES)
    union = expected[0]
    for snapshot in expected[1:]:
        union = union.unionByName(snapshot)
    assert built.count() > 0
    assertDataFrameEqual(built.select(*union.columns), union)


CATEGORY_ENTRIES = st.lists(st.tuples(st.sampled_from([None, "1", "10", "2", "a"]), st.integers(1, 5)), max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(customers=st.lists(st.lists(CATEGORY_ENTRIES, min_size=1, max_size=4), min_size=1, max_size=4))
def test_categories_rolled_up_are_summed_per_category_in_order_missing_last(spark, customers):
    """Whatever the rows' (category, events) entries, repeated or missing categories included: one entry per
    category, its events summed, categories in order and a missing one last (`summaries.summed_by_category`)."""
    rows = [(str(c), entries) for c, days in enumerate(customers) for entries in days]
    df = spark.createDataFrame(rows, "customer_id string, categories array<struct<category_id:string,n:bigint>>")
    got = df.groupBy("customer_id").agg(
        summaries.summed_by_category(F.flatten(F.collect_list("categories"))).alias("c")
    )
    for row in got.collect():
        totals = Counter()
        for entries in customers[int(row["customer_id"])]:
            for category, n in entries:
                totals[category] += n
        expected = sorted(totals.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
        assert [(e["category_id"], e["n"]) for e in row["c"]] == expected


def test_changed_days_are_known_only_from_a_complete_history_of_day_replacements():
    day = [dt.date(2026, 1, d) for d in range(1, 5)]

    def commit(events_version, *days):  # as `summaries.commit_log` gives them, newest first
        return {"events_version": events_version, "recent_per_day": 51, "days": [d.isoformat() for d in days]}

    rebuild = {"events_version": 2, "recent_per_day": 51}  # a rebuild records no days: any may have changed
    log = [commit(5, day[3], day[1]), commit(4, day[2]), commit(3, day[1]), rebuild]
    assert summaries.changed_days(log, 5, 5) == []
    assert summaries.changed_days(log, 3, 5) == [day[1], day[2], day[3]]
    assert summaries.changed_days(log, 4, 5) == [day[1], day[3]]
    assert summaries.changed_days(log, 2, 3) == [day[1]]
    assert summaries.changed_days([log[0], {**rebuild, "events_version": 4}, *log[2:]], 3, 5) is None  # rebuilt
    assert summaries.changed_days(log[:2], 3, 5) is None  # history cleaned up past version 3
    assert summaries.changed_days(log[1:], 3, 5) is None  # no commit reflects version 5
    assert summaries.changed_days(log, 5, 3) is None
