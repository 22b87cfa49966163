"""Customer-day summaries: one row per customer and day holding everything featurize reads, kept by ingest.

A customer's day is closed under everything ingest does (sessions end at midnight; duplicates, replays, corrections
and re-linked sessions stay within their day), so a summary row is a function of that customer's events of that
day alone. Ingest therefore replaces only the days a batch touched (late events included): a daily run costs what
the day brought, and featurize reads summaries instead of every event. A batch that only appended new days is
summarised from its own kept rows, where ingest's shuffle left them; a MERGEd batch's days are read back.

A row holds counts by event type and time of day, first, last and last purchase times, revenue, session counts and
lengths, the day's categories (events in each) and brands (distinct), and the day's last events (as many as a
sequence needs, plus one for its first gap).

Each commit records the events version it reflects. Featurize uses the table only when that is exactly the events
version it builds from; otherwise (a lake made before this table, a kill between the events commit and this one,
an older events version) the summaries are made from the events, and written when they are the latest.

Customer totals roll a customer's days up into one row of the same columns (`roll_up`). Featurize keeps them for the
scoring snapshot in their own table (`totals_before`), one to two lags (`features.totals_lag_days`, a week) behind
the scoring date, and rolls them forward when they fall further behind.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.window import WindowSpec

from behavior_spark import lake
from behavior_spark.config import Settings
from behavior_spark.contracts import EVENT_TYPES
from behavior_spark.session import JOINED_WHERE_THEY_ARE, with_conf

log = logging.getLogger(__name__)

KEYS = ["customer_id", "event_date"]
RECENT_FIELDS = ["event_time", "event_type", "product_id", "category_id"]
COUNTS = [
    "n",
    *(f"n_{event}" for event in EVENT_TYPES),
    "n_evening",
    "n_night",
    "n_weekend",
    "sessions",
    "session_seconds",
    "purchase_sessions",
    "purchase_days",
]
TOTAL_COLUMNS = [
    *COUNTS,
    "first",
    "last",
    "last_purchase",
    "first_purchase_day",
    "revenue",
    "categories",
    "brands",
    "recent",
]


def recent_per_day(settings: Settings) -> int:
    """The day's last events a summary keeps: a sequence's length and one more, for the oldest event's gap."""
    return settings.features.sequence_length + 1


def customer_days(events: DataFrame, recent: int, partitioned_by: Sequence[str] = ()) -> DataFrame:
    """The summaries of `events`: one row per customer and day, keeping the day's last `recent` events.

    The events are shuffled once, by customer and day; the session, category and recent-event aggregations and
    their joins all run on that partitioning. Rows already hash-partitioned by columns that never split a customer's
    day (`partitioned_by`: ingest's day and customer bucket) are not shuffled: the aggregations group by those
    columns too and run where the rows are.
    """
    keys = [*KEYS, *(c for c in partitioned_by if c not in KEYS)]
    by_day = events if partitioned_by else events.repartition(*KEYS)
    activity, categories = day_activity(by_day, keys), day_categories(by_day, keys)
    return (
        activity.join(categories, on=keys)
        .join(day_recent_events(by_day, recent, keys), on=keys)
        .drop(*keys[len(KEYS) :])
    )


def day_activity(events: DataFrame, keys: list[str] = KEYS) -> DataFrame:
    """Counts by type and time of day, first and last times, revenue net of returns, and the day's sessions (count,
    summed length in seconds, how many had a purchase)."""
    is_type = {event: F.col("event_type") == event for event in EVENT_TYPES}
    hour = F.hour("event_time")
    sessions = events.groupBy(*keys, "session_id").agg(
        F.count(F.lit(1)).alias("n"),
        *(F.count(F.when(is_type[event], 1)).alias(f"n_{event}") for event in EVENT_TYPES),
        F.count(F.when(hour.between(17, 22), 1)).alias("n_evening"),
        F.count(F.when(hour.between(0, 5), 1)).alias("n_night"),
        F.min("event_time").alias("first"),
        F.max("event_time").alias("last"),
        F.max(F.when(is_type["purchase"], F.col("event_time"))).alias("last_purchase"),
        F.sum(
            F.when(is_type["purchase"], F.col("price") * F.col("quantity")).when(
                is_type["return"], -F.col("price") * F.col("quantity")
            )
        ).alias("revenue"),  # net of returns
    )
    counts = ["n", *(f"n_{event}" for event in EVENT_TYPES), "n_evening", "n_night"]
    return sessions.groupBy(*keys).agg(
        *(F.sum(c).alias(c) for c in counts),
        F.min("first").alias("first"),
        F.max("last").alias("last"),
        F.max("last_purchase").alias("last_purchase"),
        F.sum("revenue").alias("revenue"),
        F.count(F.lit(1)).alias("sessions"),
        F.sum(F.col("last").cast("long") - F.col("first").cast("long")).alias("session_seconds"),
        F.count(F.when(F.col("n_purchase") > 0, 1)).alias("purchase_sessions"),
    )


def day_categories(events: DataFrame, keys: list[str] = KEYS) -> DataFrame:
    """The day's categories with their events, and its distinct brands (sorted: the same day gives the same row)."""
    per_category = events.groupBy(*keys, "category_id").agg(
        F.count(F.lit(1)).alias("n"), F.collect_set("brand").alias("brands")
    )
    return per_category.groupBy(*keys).agg(
        F.collect_list(F.struct("category_id", "n")).alias("categories"),
        F.array_sort(F.array_distinct(F.flatten(F.collect_list("brands")))).alias("brands"),
    )


def day_recent_events(events: DataFrame, recent: int, keys: list[str] = KEYS) -> DataFrame:
    """The day's last `recent` events, in the order sequences rank them (time, then type and product)."""
    return (
        events.withColumn("rank", F.row_number().over(latest_first(keys)))
        .filter(F.col("rank") <= recent)
        .groupBy(*keys)
        .agg(F.collect_list(F.struct(*RECENT_FIELDS)).alias("recent"))
    )


def latest_first(partition: list[str]) -> WindowSpec:
    """Events newest first; events at the same instant by type and product (with the customer and time: the key)."""
    return Window.partitionBy(*partition).orderBy(
        F.desc("event_time"), F.desc("event_type"), F.desc_nulls_last("product_id")
    )


def day_rows(days: DataFrame) -> DataFrame:
    """Customer-day summaries in the columns of customer totals (`roll_up`): their weekend events counted, a day
    with a purchase counted as a purchase day (what BG/NBD and the value labels count: a basket of many lines is
    one) and its date kept as the first purchase day, the day dropped."""
    weekend = F.dayofweek("event_date").isin(1, 7)
    bought = F.col("n_purchase") > 0
    return days.withColumns(
        {
            "n_weekend": F.when(weekend, F.col("n")).otherwise(F.lit(0)).cast("long"),
            "purchase_days": F.when(bought, F.lit(1)).otherwise(F.lit(0)).cast("long"),
            "first_purchase_day": F.when(bought, F.col("event_date")),
        }
    ).select("customer_id", *TOTAL_COLUMNS)


def roll_up(rows: DataFrame, recent: int) -> DataFrame:
    """Summaries (`day_rows`, or earlier totals with the days since) rolled up to one row per customer, in the same
    columns: counts, sessions and revenue summed, the first and last times kept, each category's events summed, the
    brands merged, the customer's last `recent` events kept (newest first). Rolling up totals with later days equals
    rolling up all the days. One groupBy: the arrays are gathered per customer and merged with higher-order functions
    (a heavy customer's arrays are bounded by their days times what a day keeps, and by their distinct categories).
    """
    return (
        rows.groupBy("customer_id")
        .agg(
            *(F.sum(c).cast("long").alias(c) for c in COUNTS),
            F.min("first").alias("first"),
            F.max("last").alias("last"),
            F.max("last_purchase").alias("last_purchase"),
            F.min("first_purchase_day").alias("first_purchase_day"),
            F.sum("revenue").alias("revenue"),
            summed_by_category(F.flatten(F.collect_list("categories"))).alias("categories"),
            F.array_sort(F.array_distinct(F.flatten(F.collect_list("brands")))).alias("brands"),
            newest_first(F.flatten(F.collect_list("recent")), recent).alias("recent"),
        )
        .select("customer_id", *TOTAL_COLUMNS)
    )


def summed_by_category(entries: Column) -> Column:
    """(category_id, n) entries merged: one per category (a missing category too, last), its events summed, in
    category order (the same rows give the same array). Sorted once, then each run of one category summed."""
    ordered = F.sort_array(  # a missing category last
        F.transform(
            entries,
            lambda c: F.struct(
                c["category_id"].isNull().alias("missing"), c["category_id"].alias("category_id"), c["n"].alias("n")
            ),
        )
    )
    return let(ordered, _summed_runs)


def _summed_runs(ordered: Column) -> Column:
    """Entries sorted by category -> one (category_id, n) per run of the same category, its n summed."""

    def first_of_run(c: Column, i: Column) -> Column:  # i counts from 0, as `F.get` does: c's neighbour is i - 1
        return (i == 0) | ~c["category_id"].eqNullSafe(F.get(ordered, F.greatest(i - 1, F.lit(0)))["category_id"])

    starts = F.filter(F.transform(ordered, lambda c, i: F.when(first_of_run(c, i), i + 1)), lambda s: s.isNotNull())

    def run_total(starts: Column) -> Column:
        def total(start: Column, k: Column) -> Column:
            end = F.coalesce(F.get(starts, k + 1), F.size(ordered) + 1)
            return F.struct(
                F.element_at(ordered, start)["category_id"].alias("category_id"),
                F.aggregate(F.slice(ordered, start, end - start), F.lit(0).cast("long"), lambda t, c: t + c["n"]).alias(
                    "n"
                ),
            )

        return F.transform(starts, total)

    return let(starts, run_total)


def let(value: Column, body: Callable[[Column], Column]) -> Column:
    """`body(value)`, computing `value` once: Spark computes an expression used inside a higher-order function's
    lambda again for every element (a sort inside a lambda over the sorted array is quadratic)."""
    return F.element_at(F.transform(F.array(value), body), 1)


def newest_first(events: Column, keep: int) -> Column:
    """The first `keep` of an array of recent events (RECENT_FIELDS) in the order of `latest_first`: newest first,
    events at the same instant by type and product, descending (a null product last)."""
    by_key = F.transform(events, lambda e: F.struct(e["event_time"], e["event_type"], e["product_id"], e.alias("e")))
    return F.transform(F.slice(F.sort_array(by_key, asc=False), 1, keep), lambda k: k["e"])


def totals_before(
    spark: SparkSession,
    settings: Settings,
    days: DataFrame,
    events_version: int,
    as_of: dt.date,
    commits: list[dict],
    customers: DataFrame | None = None,
) -> DataFrame:
    """Every customer's summaries before `as_of`, rolled up (`roll_up`): the kept totals plus the days since.

    The customer-totals table keeps the summaries rolled up through a date `features.totals_lag_days` (the lag)
    before the scoring date, or up to twice that: a run rolls the kept totals forward with the days after them
    (`rolled_forward`), so it reads one row per customer and at most twice the lag in days, not the history, and it
    moves the kept totals forward (writes one row per customer) only when they fall more than twice the lag behind,
    once every lag days on a daily schedule. The kept totals serve while no day before their date has changed since
    (`changed_days`); late events for an earlier day, a rebuild of the summaries or another definition make them
    anew from every day. Runs on another events version than the summaries table's neither read nor write them.
    `commits` is the summaries table's `commit_log`. `customers` (customer ids): the totals of those customers only,
    their kept totals and days picked before anything is shuffled (the kept totals are still moved for all).
    """

    def picked(rows: DataFrame) -> DataFrame:
        return rows if customers is None else rows.join(customers, on="customer_id", how="left_semi")

    recent = recent_per_day(settings)
    if not reflects(commits[0] if commits else {}, events_version, recent):
        return roll_up(day_rows(picked(days.filter(F.col("event_date") < as_of))), recent)
    lag = dt.timedelta(days=settings.features.totals_lag_days)
    target = as_of - lag
    through = kept_totals_date(spark, settings, events_version, as_of, commits)
    if through is None or through < target - lag:
        since = F.col("event_date") >= through if through else F.lit(True)
        totals = roll_up(day_rows(days.filter(since & (F.col("event_date") < target))), recent)
        if through is not None:
            totals = rolled_forward(lake.read(spark, settings.lake, lake.CUSTOMER_TOTALS), totals, recent)
        metadata = {
            "events_version": events_version,
            "recent_per_day": recent,
            "columns": TOTAL_COLUMNS,
            "through": target.isoformat(),
            "rolled_from": through.isoformat() if through else None,  # None: made from every day
        }
        log.info("customer totals through %s: %s", target, f"rolled from {through}" if through else "made anew")
        lake.overwrite(totals, settings.lake, lake.CUSTOMER_TOTALS, userMetadata=json.dumps(metadata))
        through = target
    days_since = roll_up(
        day_rows(picked(days.filter((F.col("event_date") >= through) & (F.col("event_date") < as_of)))), recent
    )
    return rolled_forward(picked(lake.read(spark, settings.lake, lake.CUSTOMER_TOTALS)), days_since, recent)


def rolled_forward(totals: DataFrame, later: DataFrame, recent: int) -> DataFrame:
    """Customer totals (`roll_up`) with the totals of later days (`later`: each customer's days there come after
    all of theirs in `totals`), in the same columns: equal to rolling up all their days. One full outer join, each
    array merged with at most one other, so the kept totals' arrays are never gathered into lists (the sort-based
    aggregation that costs most of a roll-up); their recent events stay behind the later ones without a sort."""
    old, new = totals.alias("old"), later.alias("new")

    def merged(column: str, merge: Callable[[Column, Column], Column]) -> Column:
        a, b = F.col(f"old.{column}"), F.col(f"new.{column}")
        return F.when(a.isNull(), b).when(b.isNull(), a).otherwise(merge(a, b)).alias(column)

    return old.join(new, F.col("old.customer_id") == F.col("new.customer_id"), "full").select(
        F.coalesce(F.col("old.customer_id"), F.col("new.customer_id")).alias("customer_id"),
        *(merged(c, lambda a, b: a + b) for c in [*COUNTS, "revenue"]),
        merged("first", F.least),
        merged("last", F.greatest),
        merged("last_purchase", F.greatest),
        merged("first_purchase_day", F.least),
        merged("categories", lambda a, b: summed_by_category(F.concat(a, b))),
        merged("brands", lambda a, b: F.array_sort(F.array_distinct(F.concat(a, b)))),
        merged("recent", lambda a, b: F.slice(F.concat(b, a), 1, recent)),  # newest first: the later days' first
    )


def kept_totals_date(
    spark: SparkSession, settings: Settings, events_version: int, as_of: dt.date, commits: list[dict]
) -> dt.date | None:
    """The date the kept customer totals reach (they hold every day before it), when they can serve a run on
    `events_version` as of `as_of`: kept in today's columns with as many recent events a day, not after `as_of`, and
    no day before their date changed since (in the summaries' `commits`). None otherwise."""
    newest = lake.commits(spark, lake.path(settings.lake, lake.CUSTOMER_TOTALS), 1)
    kept = json.loads(newest[0]["userMetadata"] or "{}") if newest else {}
    if "through" not in kept or (kept["recent_per_day"], kept.get("columns")) != (
        recent_per_day(settings),
        TOTAL_COLUMNS,
    ):
        return None
    through = dt.date.fromisoformat(kept["through"])
    changed = changed_days(commits, kept["events_version"], events_version)
    if through > as_of or changed is None or any(day < through for day in changed):
        return None
    return through


def update(
    spark: SparkSession,
    settings: Settings,
    days: list[dt.date],
    events_before: int,
    appended: DataFrame | None = None,
    partitioned_by: Sequence[str] = (),
) -> str:
    """After an ingest batch: replace the summaries of `days` if the table reflected the events as they were before
    the batch (`events_before`); otherwise rebuild it. Returns what was done: unchanged, replaced or rebuilt.

    `appended`: the batch's rows when it only appended to days the table did not hold, so they are exactly the
    events of `days`; they are summarised where they are (partitioned by `partitioned_by`, see `customer_days`)
    instead of read back from the table. A first load is summarised from them whole.
    """
    events_now = lake.version(spark, settings.lake, lake.EVENTS)
    recorded = recorded_commit(spark, settings)
    wanted = recent_per_day(settings)
    if reflects(recorded, events_now, wanted):
        return "unchanged"
    previous = reflects(recorded, events_before, wanted)
    whole = appended is not None and not previous and _empty(spark, settings, events_before)  # a first load
    if not whole and (not days or not previous):
        rebuild(spark, settings, events_now)
        return "rebuilt"
    if appended is not None:
        summarised = customer_days(appended, wanted, partitioned_by)  # a task's days, a file each
    else:
        events = lake.read(spark, settings.lake, lake.EVENTS, version=events_now).filter(F.col("event_date").isin(days))
        summarised = one_file_per_day(customer_days(events, wanted))
    with with_conf(spark, JOINED_WHERE_THEY_ARE):
        if whole:
            metadata = _metadata(events_now, wanted)
            lake.overwrite(
                summarised, settings.lake, lake.CUSTOMER_DAYS, partition_by=["event_date"], userMetadata=metadata
            )
            return "rebuilt"
        day_list = ", ".join(f"DATE'{day}'" for day in days)
        (
            summarised.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", f"event_date IN ({day_list})")
            .option("userMetadata", _metadata(events_now, wanted, days))
            .save(lake.path(settings.lake, lake.CUSTOMER_DAYS))
        )
    return "replaced"


def _empty(spark: SparkSession, settings: Settings, events_version: int) -> bool:
    return lake.read(spark, settings.lake, lake.EVENTS, version=events_version).isEmpty()


def rebuild(spark: SparkSession, settings: Settings, events_version: int) -> None:
    """Summarise every event of `events_version` into the table, in one commit."""
    events = lake.read(spark, settings.lake, lake.EVENTS, version=events_version)
    lake.overwrite(
        one_file_per_day(customer_days(events, recent_per_day(settings))),
        settings.lake,
        lake.CUSTOMER_DAYS,
        partition_by=["event_date"],
        userMetadata=_metadata(events_version, recent_per_day(settings)),
    )


def one_file_per_day(days: DataFrame) -> DataFrame:
    """Summaries as they are written: one file per day (a day's summaries are a fraction of its events). Written as
    computed, every task would write a file into every day, and every read would open hundreds of small files."""
    return days.repartition("event_date")


def for_events(spark: SparkSession, settings: Settings, events_version: int) -> DataFrame:
    """The summaries of the events at `events_version`.

    The table's latest commit serves when it reflects that version; for the latest events version a stale table is
    rebuilt first; for an older version the summaries are made from its events (and not written).
    """
    wanted = recent_per_day(settings)
    recorded = recorded_commit(spark, settings)
    if reflects(recorded, events_version, wanted):
        return lake.read(spark, settings.lake, lake.CUSTOMER_DAYS, version=recorded["version"])
    if events_version == lake.version(spark, settings.lake, lake.EVENTS):
        log.warning("customer-day summaries do not reflect events version %d: rebuilding them", events_version)
        rebuild(spark, settings, events_version)
        return lake.read(spark, settings.lake, lake.CUSTOMER_DAYS)
    log.warning("events version %d is not the latest: summarising its events for this run", events_version)
    events = lake.read(spark, settings.lake, lake.EVENTS, version=events_version)
    return customer_days(events, wanted)


def commit_log(spark: SparkSession, settings: Settings, limit: int | None = None) -> list[dict]:
    """The summaries table's commits, newest first: each one's version and what it recorded (`_metadata`: the
    events version it reflects, the recent events a day, the days it replaced); empty when there is no table."""
    location = lake.path(settings.lake, lake.CUSTOMER_DAYS)
    return [
        {**json.loads(c["userMetadata"] or "{}"), "version": c["version"]} for c in lake.commits(spark, location, limit)
    ]


def recorded_commit(spark: SparkSession, settings: Settings) -> dict:
    """The latest commit of the summaries table (`commit_log`); empty when there is no table."""
    newest = commit_log(spark, settings, 1)
    return newest[0] if newest else {}


def changed_days(commits: list[dict], since: int, until: int) -> list[dt.date] | None:
    """The days whose summaries changed between the events versions `since` and `until`, from the summaries'
    commits (`commit_log`) that brought the table from one to the other; None when that is not known (a rebuild in
    between, no commit that reflects `until`, history cleaned up past `since`, or `since` later than `until`): then
    every day may have changed."""
    if since == until:
        return []
    if since > until:
        return None
    between = [c for c in commits if since < c.get("events_version", -1) <= until]
    complete = any(0 <= c.get("events_version", -1) <= since for c in commits)  # history reaches back to `since`
    if not complete or not any(c["events_version"] == until for c in between) or any("days" not in c for c in between):
        return None
    return sorted({dt.date.fromisoformat(day) for c in between for day in c["days"]})


def reflects(recorded: dict, events_version: int, recent: int) -> bool:
    """Whether a summaries commit (`recorded_commit`) summarises `events_version`, keeping `recent` events a day."""
    return recorded.get("events_version") == events_version and recorded.get("recent_per_day", 0) >= recent


def _metadata(events_version: int, recent: int, days: list[dt.date] | None = None) -> str:
    """What a commit records: the events version it reflects, the recent events a day, and the days it replaced
    (none recorded: a rebuild, every day)."""
    recorded: dict[str, object] = {"events_version": events_version, "recent_per_day": recent}
    return json.dumps(recorded if days is None else {**recorded, "days": [day.isoformat() for day in days]})
