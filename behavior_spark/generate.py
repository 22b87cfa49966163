"""A synthetic e-commerce clickstream, written by Spark so it scales with the cluster.

The output follows the REES46 e-commerce layout (event_time, event_type, product_id, category_id, category_code,
brand, price, user_id, user_session) and is deterministic for a seed: every random draw is a hash of the seed and
the row's identity, never Spark's `rand()`, so partitioning does not change the data.

The shape a model and the cleaning stage can get their teeth into:
- users with Pareto-distributed activity (a few with thousands of events) browse in sessions;
- some users go through buying cycles: a few sessions over several days with carts, ending in a purchase, so
  recent carting predicts a purchase soon (the signal the propensity model should learn);
- Zipf-like product popularity, lognormal prices, an evening peak and a weekend bump;
- the dirt of real logs: exact duplicates, null or blank user ids, unparseable timestamps, negative prices,
  unknown event types and bot users firing an event a second.
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import artifacts
from behavior_spark.config import ConfigError, GenerateSettings, Settings
from behavior_spark.results import GenerateResult

GENERATED_MARKER = "_GENERATED_BY_BEHAVIOR_SPARK"  # in generate's output folder: it may be replaced by a new run

RAW_COLUMNS = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
]
CATEGORY_CODES = [
    "electronics.smartphone",
    "electronics.audio.headphone",
    "electronics.video.tv",
    "electronics.clocks",
    "electronics.tablet",
    "computers.notebook",
    "computers.desktop",
    "computers.peripherals.printer",
    "appliances.kitchen.refrigerators",
    "appliances.kitchen.washer",
    "appliances.environment.vacuum",
    "appliances.kitchen.kettle",
    "apparel.shoes",
    "apparel.shoes.keds",
    "apparel.costume",
    "furniture.bedroom.bed",
    "furniture.living_room.sofa",
    "furniture.kitchen.table",
    "kids.toys",
    "kids.carriage",
    "sport.bicycle",
    "sport.tennis",
    "auto.accessories.player",
    "construction.tools.drill",
    "accessories.bag",
    "country_yard.lawn_mower",
    "medicine.tools.tonometer",
    "stationery.cartrige",
    "",
    "",  # REES46 leaves many category codes empty
]
BRANDS = [
    "samsung",
    "apple",
    "xiaomi",
    "huawei",
    "lg",
    "sony",
    "bosch",
    "lenovo",
    "acer",
    "hp",
    "asus",
    "philips",
    "nike",
    "adidas",
    "puma",
    "indesit",
    "lego",
    "canon",
    "oppo",
    "redmond",
    "",
]
EVENTS_PER_USER = 35  # measured mean of the shape below; sizes the user base for a requested row count
FIRST_USER_ID = 510_000_000
CATEGORY_ID_BASE = 2_053_013_550_000_000_000
BOT_SHARE = 1 / 500  # one bot per 500 real users
DIRT = {  # share of rows given each defect, as cumulative bands of one uniform draw
    "null_user": 0.002,
    "blank_user": 0.003,
    "bad_timestamp": 0.005,
    "negative_price": 0.007,
    "unknown_event": 0.008,
}
DUPLICATE_SHARE = 0.01


def run(spark: SparkSession, settings: Settings) -> GenerateResult:
    """Write the generated raw logs to `generate.output`; return where and how many rows.

    Refuses to write into a folder that holds anything it did not write itself: raw data is never overwritten.
    """
    cfg = settings.generate
    check_output_is_ours(cfg.output)
    write_raw(generate_events(spark, cfg), cfg)
    artifacts.write_bytes(artifacts.join(cfg.output, GENERATED_MARKER), b"written by behavior-spark generate\n")
    reader = spark.read.option("header", True).csv if cfg.format == "csv" else spark.read.json
    return GenerateResult(output=cfg.output, format=cfg.format, raw_rows=reader(cfg.output).count())


def check_output_is_ours(output: str) -> None:
    """Raise ConfigError when `output` holds files and no marker saying `generate` wrote them."""
    names = artifacts.list_names(output) if artifacts.exists(output) else []
    if names and GENERATED_MARKER not in names:
        raise ConfigError(
            f"setting 'generate.output': {output} holds files generate did not write ({', '.join(sorted(names)[:3])}"
            f"{', ...' if len(names) > 3 else ''}); it never overwrites raw data: choose an empty or new folder"
        )


def generate_events(spark: SparkSession, settings: GenerateSettings) -> DataFrame:
    """The raw clickstream as a DataFrame of strings in the REES46 layout (not yet written)."""
    n_users = max(20, round(settings.rows / EVENTS_PER_USER))
    users = spark.range(n_users, numPartitions=settings.files).withColumnRenamed("id", "user_idx")
    sessions = _browse_sessions(users, settings).unionByName(_cycle_sessions(users, settings))
    bots = spark.range(max(1, round(n_users * BOT_SHARE)), numPartitions=1).withColumnRenamed("id", "bot_idx")
    events = (
        _events(sessions, settings)
        .unionByName(_bot_events(bots, n_users, settings))
        .transform(_with_products, settings.seed, n_products=max(100, settings.rows // 200))
    )
    return events.transform(_as_raw_rows, settings.seed, settings.start_date).transform(_with_dirt, settings.seed)


def write_raw(df: DataFrame, settings: GenerateSettings) -> None:
    """Write the raw rows as a source system would: CSV with a header, or JSON lines."""
    writer = df.write.mode("overwrite")
    if settings.format == "csv":
        writer.option("header", True).csv(settings.output)
    else:
        writer.json(settings.output)


def uniform(seed: int, *parts: Column | str | int) -> Column:
    """A deterministic uniform draw in [0, 1) from the seed and the row's identity."""
    columns = [F.lit(p) if isinstance(p, int) else (F.col(p) if isinstance(p, str) else p) for p in parts]
    return F.pmod(F.xxhash64(F.lit(seed), *columns), F.lit(1 << 53)) / float(1 << 53)


def _browse_sessions(users: DataFrame, settings: GenerateSettings) -> DataFrame:
    seed = settings.seed
    activity = F.least(F.pow(1 - uniform(seed, "user_idx", 1), -1 / 1.3), F.lit(800.0))  # Pareto(1.3), capped
    n_sessions = F.ceil(activity * 1.2).cast("int")
    return (
        users.select("user_idx", F.explode(_one_to(n_sessions)).alias("session_no"))
        .withColumn("start_s", _session_start(seed, settings))
        .select(
            "user_idx",
            (F.col("user_idx") * 100_000 + F.col("session_no")).alias("session_key"),
            F.lit("browse").alias("kind"),
            "start_s",
            F.lit(False).alias("is_final"),
        )
    )


def _cycle_sessions(users: DataFrame, settings: GenerateSettings) -> DataFrame:
    """Buying cycles: m sessions a few days apart, the last of which usually ends in a purchase."""
    seed = settings.seed
    intent = uniform(seed, "user_idx", 2)
    n_cycles = F.floor(F.pow(intent, 2) * 3.5 * (0.5 + uniform(seed, "user_idx", 3))).cast("int")
    cycles = users.select("user_idx", F.explode(_one_to(n_cycles)).alias("cycle_no"))
    n_steps = (2 + F.floor(uniform(seed, "user_idx", "cycle_no", 4) * 4)).cast("int")
    step_days = 0.5 + uniform(seed, "user_idx", "cycle_no", 5) * 2.5
    purchase_s = F.lit(10 * 86_400) + uniform(seed, "user_idx", "cycle_no", 6) * ((settings.days - 10) * 86_400)
    return (
        cycles.withColumn("n_steps", n_steps)
        .withColumn("step_days", step_days)
        .withColumn("purchase_s", purchase_s)
        .select("*", F.explode(_one_to(F.col("n_steps"))).alias("step"))
        .select(
            "user_idx",
            (F.col("user_idx") * 100_000 + 50_000 + F.col("cycle_no") * 10 + F.col("step")).alias("session_key"),
            F.lit("cycle").alias("kind"),
            (F.col("purchase_s") - (F.col("n_steps") - F.col("step")) * F.col("step_days") * 86_400)
            .cast("long")
            .alias("start_s"),
            (F.col("step") == F.col("n_steps")).alias("is_final"),
        )
    )


def _session_start(seed: int, settings: GenerateSettings) -> Column:
    """Seconds since start_date: a day with a weekend bump, an hour with an evening peak."""
    day = F.floor(uniform(seed, "user_idx", "session_no", 10) * settings.days)
    weekday = F.pmod(day + settings.start_date.weekday(), F.lit(7))  # 0 = Monday
    to_saturday = 5 - weekday
    day = F.when(
        (weekday < 5) & (uniform(seed, "user_idx", "session_no", 11) < 0.15) & (day + to_saturday < settings.days),
        day + to_saturday,
    ).otherwise(day)
    evening = uniform(seed, "user_idx", "session_no", 12) < 0.5
    hour = F.when(evening, 17 + F.floor(uniform(seed, "user_idx", "session_no", 13) * 6)).otherwise(
        F.floor(uniform(seed, "user_idx", "session_no", 14) * 24)
    )
    return (day * 86_400 + hour * 3_600 + F.floor(uniform(seed, "user_idx", "session_no", 15) * 3_600)).cast("long")


def _events(sessions: DataFrame, settings: GenerateSettings) -> DataFrame:
    seed = settings.seed
    length = 1 + F.least(F.floor(-F.log(1 - uniform(seed, "session_key", 20)) * 3.5), F.lit(60))
    length = F.when(F.col("is_final"), F.greatest(length, F.lit(2))).otherwise(length).cast("int")
    pace_s = 15 + F.floor(uniform(seed, "session_key", 21) * 75)
    draw = uniform(seed, "session_key", "step_no", 22)
    last = F.col("step_no") == F.col("length")
    event_type = (
        F.when(F.col("is_final") & last & (uniform(seed, "session_key", 23) < 0.85), "purchase")
        .when(F.col("is_final") & (F.col("step_no") == F.col("length") - 1), "cart")
        .when((F.col("kind") == "browse") & last & (uniform(seed, "session_key", 24) < 0.02), "purchase")
        .when(draw < F.when(F.col("kind") == "cycle", 0.25).otherwise(0.05), "cart")
        .when(draw < F.when(F.col("kind") == "cycle", 0.30).otherwise(0.07), "remove_from_cart")
        .otherwise("view")
    )
    return (
        sessions.withColumn("length", length)
        .withColumn("pace_s", pace_s)
        .select("*", F.explode(_one_to(F.col("length"))).alias("step_no"))
        .select(
            "user_idx",
            "session_key",
            (F.col("start_s") + F.col("step_no") * F.col("pace_s")).alias("offset_s"),
            event_type.alias("event_type"),
        )
    )


def _bot_events(bots: DataFrame, n_users: int, settings: GenerateSettings) -> DataFrame:
    """Scrapers: one long session each, a page view every one or two seconds."""
    seed = settings.seed
    start_s = F.floor(uniform(seed, "bot_idx", 30) * (settings.days - 1) * 86_400).cast("long")
    return (
        bots.select(
            (F.col("bot_idx") + n_users).alias("user_idx"),
            start_s.alias("start_s"),
            (300 + F.floor(uniform(seed, "bot_idx", 31) * 300)).cast("int").alias("length"),
        )
        .select("*", F.explode(_one_to(F.col("length"))).alias("step_no"))
        .select(
            "user_idx",
            (F.col("user_idx") * 100_000 + 99_999).alias("session_key"),
            (F.col("start_s") + F.col("step_no") + F.floor(F.col("step_no") / 2)).alias("offset_s"),
            F.lit("view").alias("event_type"),
        )
    )


def _with_products(events: DataFrame, seed: int, n_products: int) -> DataFrame:
    """Zipf-like popularity: rank = floor(n ** u), so rank r is drawn with probability about 1 / r."""
    rank = F.floor(F.exp(uniform(seed, "session_key", "offset_s", 40) * math.log(n_products))).cast("long")
    normal = F.sqrt(-2 * F.log(1 - uniform(seed, "rank", 41))) * F.cos(2 * math.pi * uniform(seed, "rank", 42))
    category = F.pmod(F.xxhash64(F.lit(seed), F.col("rank"), F.lit(43)), F.lit(len(CATEGORY_CODES)))
    brand = F.pmod(F.xxhash64(F.lit(seed), F.col("rank"), F.lit(44)), F.lit(len(BRANDS)))
    return (
        events.withColumn("rank", rank)
        .withColumn("product_id", F.lit(1_000_000) + F.col("rank") * 7)
        .withColumn("category_idx", category.cast("int"))
        .withColumn("category_id", F.lit(CATEGORY_ID_BASE) + category)
        .withColumn("category_code", F.element_at(F.array(*map(F.lit, CATEGORY_CODES)), F.col("category_idx") + 1))
        .withColumn("brand", F.element_at(F.array(*map(F.lit, BRANDS)), brand.cast("int") + 1))
        .withColumn("price", F.round(F.exp(3.8 + 1.1 * normal), 2))
    )


def _as_raw_rows(events: DataFrame, seed: int, start_date: dt.date) -> DataFrame:
    """Strings as a source system writes them, REES46 style (`2019-10-01 00:00:04 UTC`)."""
    session_hash = F.md5(F.concat_ws(":", F.lit(seed), F.col("session_key")))
    uuid = F.concat_ws(
        "-",
        *(F.substring(session_hash, start, length) for start, length in [(1, 8), (9, 4), (13, 4), (17, 4), (21, 12)]),
    )
    return events.select(
        F.date_format(
            F.timestamp_seconds(F.lit(_epoch_seconds(start_date)) + F.col("offset_s")), "yyyy-MM-dd HH:mm:ss 'UTC'"
        ).alias("event_time"),
        "event_type",
        F.col("product_id").cast("string").alias("product_id"),
        F.col("category_id").cast("string").alias("category_id"),
        F.col("category_code"),
        F.col("brand"),
        F.format_string("%.2f", F.col("price")).alias("price"),
        (F.lit(FIRST_USER_ID) + F.col("user_idx")).cast("string").alias("user_id"),
        uuid.alias("user_session"),
        F.col("offset_s").alias("_order"),
    )


def _with_dirt(raw: DataFrame, seed: int) -> DataFrame:
    row_key = F.xxhash64(*RAW_COLUMNS)
    draw = uniform(seed, row_key, 50)
    copies = F.when(uniform(seed, row_key, 51) < DUPLICATE_SHARE, 2).otherwise(1)
    return (
        raw.withColumn(
            "user_id",
            F.when(draw < DIRT["null_user"], F.lit(None))
            .when(draw < DIRT["blank_user"], " ")
            .otherwise(F.col("user_id")),
        )
        .withColumn(
            "event_time",
            F.when(
                (draw >= DIRT["blank_user"]) & (draw < DIRT["bad_timestamp"]), F.lit("2026-02-30 25:61:00 UTC")
            ).otherwise(F.col("event_time")),
        )
        .withColumn(
            "price",
            F.when(
                (draw >= DIRT["bad_timestamp"]) & (draw < DIRT["negative_price"]), F.concat(F.lit("-"), "price")
            ).otherwise(F.col("price")),
        )
        .withColumn(
            "event_type",
            F.when((draw >= DIRT["negative_price"]) & (draw < DIRT["unknown_event"]), F.lit("click")).otherwise(
                F.col("event_type")
            ),
        )
        .select("*", F.explode(F.array_repeat(F.lit(1), copies)).alias("_copy"))
        .sortWithinPartitions("_order")
        .select(*RAW_COLUMNS)
    )


def _one_to(n: Column) -> Column:
    """[1, ..., n], or an empty array when n < 1 (Spark's `sequence(1, 0)` would count down)."""
    return F.when(n >= 1, F.sequence(F.lit(1), n.cast("int"))).otherwise(F.array().cast("array<int>"))


def _epoch_seconds(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
