"""Ingest: raw event logs into a trusted, pseudonymised, sessionised Delta table, with every row accounted for.

New raw files are found by comparing a listing of the input with the `ingested_files` table (path, size and
modification time of every file ingested), so a file is read once whenever it arrives, whatever its age, and a
batch's files are recorded only after its writes (a killed batch is read again). In each batch every raw row gets
exactly one status: a quarantine reason, `duplicate` (a second copy within the batch), `replay` (already in the
table), `bot` or `clean`. Clean rows are MERGEd into the events table on their event id, which makes a re-run change
nothing; the quarantine keeps rejected rows with their reason and fields, the user id pseudonymised
(`quarantine_text`); an audit row per batch records where every row and every raw line went, and the batch fails if
those counts, the raw line count and what Delta wrote do not add up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import artifacts, lake, privacy, sources, summaries
from behavior_spark.config import ConfigError, IngestSettings, Settings
from behavior_spark.session import in_utc, is_connect, materialized
from behavior_spark.sources import EVENT_TYPES, SourceMapping

log = logging.getLogger(__name__)

CLEAN, DUPLICATE, BOT = "clean", "duplicate", "bot"  # replays are clean rows the MERGE found already present
SUPERSEDED = "superseded"  # same_key: keep_latest: a line a later line of the same key in the batch corrects
NOT_QUARANTINED = (CLEAN, DUPLICATE, BOT, SUPERSEDED)
# Rows are shuffled by (day, bucket of customers): a customer's day is the largest unit of work, sessions never cross
# midnight, and each task writes one file per day it holds. ROWS_PER_FILE sizes the buckets.
PARTITION_KEYS = ["event_date", "bucket"]
# The windows sort by their keys in this order: the hashed customer id first gives the sort a prefix that tells rows
# apart (a partition holds one or a few days), which measured 10-20% faster than the day first at 4M rows.
WINDOW_KEYS = ["customer_id", *PARTITION_KEYS]
ROWS_PER_FILE = 1_000_000
FILE_COLUMNS = ["path", "size", "modified_ns"]  # what identifies a raw file as ingested
EVENTS_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_time", T.TimestampType(), False),
        T.StructField("event_date", T.DateType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField("product_id", T.LongType(), True),
        T.StructField("category_id", T.LongType(), True),
        T.StructField("category_code", T.StringType(), True),
        T.StructField("brand", T.StringType(), True),
        T.StructField("price", T.DoubleType(), True),
        T.StructField("quantity", T.IntegerType(), False),
        T.StructField("customer_id", T.StringType(), False),
        T.StructField("session_id", T.StringType(), False),
        T.StructField("session_index", T.IntegerType(), False),
    ]
)
EVENTS_COLUMNS = EVENTS_SCHEMA.fieldNames()
# Canonical columns used only to decide the reject reason (and what the quarantine keeps of a rejected row, `raw`).
CANONICAL_ONLY = {
    "raw_line",
    "missing_column",
    "raw_fields",
    "malformed",
    "repeated_header",
    "bad_encoding",
    "time_out_of_range",
    "raw_event_type",
    "raw_product_id",
    "raw_category_id",
    "raw_price",
    "raw_quantity",
}
# Delta keeps min/max statistics per file for these columns only: the ones readers filter on. By default it would
# also track the hashed ids and free-text columns, which skip nothing and cost a third of the write.
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
STATS_COLUMNS = ["event_time", "event_type", "product_id", "category_id"]
# How event ids are made (`event_id`): a table of another scheme cannot take re-read rows without duplicating them.
EVENT_ID_PROPERTY = "behavior_spark.eventIdScheme"
EVENT_ID_SCHEME = "key-sha256+content-sha256"
KEY_FINGERPRINT_PROPERTY = "behavior_spark.pseudonymKeyFingerprint"
CHECK_CONSTRAINTS = {
    "known_event_type": "event_type IN ({})".format(", ".join(f"'{t}'" for t in EVENT_TYPES)),
    "non_negative_price": "price IS NULL OR price >= 0",
    "positive_quantity": "quantity > 0",
    "date_matches_time": "event_date = CAST(event_time AS DATE)",
}


class IngestError(RuntimeError):
    """The input cannot be ingested as asked (for example: it has no rows)."""


class ReconciliationError(RuntimeError):
    """The rows written do not add up to the rows read: something would be lost."""


def run(spark: SparkSession, settings: Settings) -> dict:
    """Ingest every raw file not yet ingested, in batches of `ingest.max_files_per_trigger`; return their totals."""
    cfg = settings.ingest
    in_utc(spark)  # dates, midnights and zone-less timestamps: the same on any cluster
    mapping = sources.load_mapping(cfg.source)
    if is_connect(spark):  # the key stays on the server: its workers hash and fingerprint with their own
        pseudonym, current = privacy.keyed_hash_on_workers(cfg), privacy.fingerprint_on_workers(spark, cfg)
    else:
        key = privacy.pseudonym_key(cfg)
        pseudonym, current = privacy.keyed_hash(spark, key), privacy.fingerprint(key)
    found = sources.find_files(cfg.input)
    if not found and not artifacts.exists(cfg.input):
        raise ConfigError(f"setting 'ingest.input': no such path {cfg.input}")
    ensure_events_table(spark, lake.path(settings.lake, lake.EVENTS), event_id_scheme(mapping))
    check_key(spark, lake.path(settings.lake, lake.EVENTS), current, cfg.pseudonym_key_env)  # before reading data
    source = f"{mapping.name}:{cfg.input}"
    pending = new_files(spark, settings, source, found)
    first_batch = next_batch_id(spark, settings, mapping.name, cfg.input)
    audits: list[dict] = []
    for offset in range(0, len(pending), cfg.max_files_per_trigger):
        batch_files = pending[offset : offset + cfg.max_files_per_trigger]
        batch_id = first_batch + len(audits)
        batch = sources.read_files(spark, mapping, [path for path, _, _ in batch_files])
        audit = process_batch(spark, batch, batch_id, mapping, pseudonym, settings)
        record_files(spark, settings, source, batch_files, batch_id)  # after the batch's writes: a kill re-reads
        log.info("ingest batch %d (%d files): %s", batch_id, len(batch_files), {k: audit[k] for k in AUDIT_SUMMARY})
        audits.append(audit)
    totals = {k: sum(a[k] for a in audits) for k in AUDIT_SUMMARY}
    if totals["rows_read"] == 0 and lake.read(spark, settings.lake, lake.EVENTS).isEmpty():
        raise IngestError(f"no rows to ingest in {cfg.input}: the input is empty")
    reasons: dict[str, int] = {}
    for audit in audits:
        for reason, count in audit["quarantined_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    return {
        "batches": len(audits),
        **totals,
        "quarantined_by_reason": reasons,
        "events_version": lake.version(spark, settings.lake, lake.EVENTS),
    }


def new_files(
    spark: SparkSession, settings: Settings, source: str, found: list[tuple[str, int, int]]
) -> list[tuple[str, int, int]]:
    """The files of `found` not yet ingested for `source` (a path, size and modification time never recorded in the
    ingested-files table), oldest first.

    Files are compared with a record of what was ingested, not by age: a file that arrives late, carries an old
    modification time (a backfill copied with its times) or lands in a folder already processed is read; a file
    rewritten in place is read again (its rows already in the table count as replays).
    """
    if not found or not lake.exists(spark, settings.lake, lake.INGESTED_FILES):
        return sorted(found, key=lambda f: (f[2], f[0]))
    done = lake.read(spark, settings.lake, lake.INGESTED_FILES).filter(F.col("source") == source)
    listed = spark.createDataFrame(found, FILE_COLUMNS)
    pending = listed.join(done.select(*FILE_COLUMNS), on=FILE_COLUMNS, how="left_anti").orderBy("modified_ns", "path")
    return [tuple(r) for r in pending.collect()]  # the new files only


def next_batch_id(spark: SparkSession, settings: Settings, mapping_name: str, location: str) -> int:
    """One more than the last audited batch of this mapping and input (0 for the first)."""
    if not lake.exists(spark, settings.lake, lake.INGEST_AUDIT):
        return 0
    audits = lake.read(spark, settings.lake, lake.INGEST_AUDIT)
    last = audits.filter((F.col("source_mapping") == mapping_name) & (F.col("input") == location))
    latest = last.agg(F.max("batch_id")).first()[0]
    return 0 if latest is None else latest + 1


def record_files(
    spark: SparkSession, settings: Settings, source: str, files: list[tuple[str, int, int]], batch_id: int
) -> None:
    """Record a batch's files as ingested, once (a retried batch id appends nothing)."""
    rows = spark.createDataFrame(files, FILE_COLUMNS).select(
        F.lit(source).alias("source"), *FILE_COLUMNS, F.lit(batch_id).cast("long").alias("batch_id")
    )
    (
        rows.write.format("delta")
        .mode("append")
        .option("txnAppId", f"ingest-files-{_short_hash(source)}")
        .option("txnVersion", batch_id)
        .save(lake.path(settings.lake, lake.INGESTED_FILES))
    )


def process_batch(
    spark: SparkSession,
    batch: sources.RawBatch,
    batch_id: int,
    mapping: SourceMapping,
    pseudonym: Callable[[Column], Column],
    settings: Settings,
) -> dict:
    """Classify one batch of raw rows, check the books, then write the quarantine and the events and audit the batch.

    The raw files are parsed once and kept; valid rows are shuffled once, by customer and day, every ordered step
    (dedup, sessions) runs on that partitioning, and the result is kept for the counts and the write. Nothing is
    written unless every row read has a status; a write that Delta reports otherwise than counted is undone.
    """
    cfg = settings.ingest
    lines = sources.count_lines(spark, mapping, batch.paths)
    with contextlib.ExitStack() as kept:
        parsed_rows = (
            sources.canonical(batch.rows, mapping)
            .withColumn("reject_reason", reject_reason(cfg))
            .withColumn("customer_id", pseudonym(F.col("user_id")))
            .transform(for_cache, pseudonym, keep_user_id=cfg.identity_map is not None)
        )
        with _timed("parse to checked rows"), materialized(parsed_rows) as parsed:  # released once `checked` is kept
            tally = file_tally(parsed, lines, batch.header_lines)
            rejected = kept.enter_context(materialized(parsed.filter(F.col("reject_reason").isNotNull())))
            valid = parsed.filter(F.col("reject_reason").isNull())
            buckets = buckets_per_day(tally.valid_rows, tally.days)
            checked = kept.enter_context(materialized(with_checks(valid, mapping, cfg.session_gap_minutes, buckets)))
        bots = kept.enter_context(materialized(bot_customers(checked, cfg.bot_events_per_minute)))  # a few rows
        classified = classify(checked, bots)
        counts = status_counts(classified, tally)
        problems = books_problems(tally, counts.by_status)
        if problems:  # before any write
            raise_failed(spark, settings, batch_id, mapping, tally, counts, problems)
        clean = classified.filter(F.col("status") == CLEAN)
        if cfg.identity_map:
            write_identity_map(clean, cfg.identity_map)
        keep_latest = mapping.same_key == "keep_latest"
        written = write_batch(spark, settings, rejected, clean, tally.files, counts.clean_days, buckets, keep_latest)
    version = lake.version(spark, settings.lake, lake.EVENTS)
    audit = audit_row(batch_id, mapping.name, cfg.input, tally, counts, written, version)
    problems = reconciliation_problems(audit)
    if problems:
        written.undo(spark)
        raise_failed(spark, settings, batch_id, mapping, tally, counts, problems, audit)
    with _timed("summaries"):
        summarised = summaries.update(spark, settings, counts.clean_days, written.events_before)
    log.info("ingest batch %d: customer-day summaries %s", batch_id, summarised)
    append_audit(spark, settings, audit)
    return audit


@dataclasses.dataclass(frozen=True)
class LineBooks:
    """A batch's physical lines: counted by the text reader, and where the parser says they went."""

    raw_lines: int
    whitespace_lines: int  # empty or only spaces, by the text reader
    header_lines: int
    record_lines: int  # lines inside the parser's records (a quoted field may hold line breaks)

    @property
    def blank_lines(self) -> int:
        """Lines the parser skipped: between 0 and the whitespace lines when no record was lost."""
        return self.raw_lines - self.header_lines - self.record_lines

    def problems(self) -> list[str]:
        if 0 <= self.blank_lines <= self.whitespace_lines:
            return []
        return [
            f"the files hold {self.raw_lines} lines ({self.whitespace_lines} blank) but the parser accounts for "
            f"{self.header_lines} header lines and {self.record_lines} lines of records"
        ]


@dataclasses.dataclass(frozen=True)
class FileTally:
    """Rows per source file and reject reason, and what follows from them."""

    rows_read: int
    files: list[str]
    rejected_by_reason: dict[str, int]
    valid_rows: int
    days: int  # calendar days the valid rows span
    lines: LineBooks | None  # None for a source without lines (Parquet)


def file_tally(parsed: DataFrame, lines: sources.LineCount | None, header_lines: int) -> FileTally:
    rows = (
        parsed.groupBy("source_file", "reject_reason")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum("line_span").alias("lines"),
            F.min("event_time").alias("first"),
            F.max("event_time").alias("last"),
        )
        .collect()  # one row per file and reason: <= max_files_per_trigger x reasons
    )
    rejected: dict[str, int] = {}
    for r in rows:
        if r["reject_reason"] is not None:
            rejected[r["reject_reason"]] = rejected.get(r["reject_reason"], 0) + r["rows"]
    rows_read = sum(r["rows"] for r in rows)
    books = None
    if lines is not None:
        books = LineBooks(lines.lines, lines.blank, header_lines, record_lines=sum(r["lines"] for r in rows))
    return FileTally(
        rows_read=rows_read,
        files=sorted({r["source_file"] for r in rows}),
        rejected_by_reason=rejected,
        valid_rows=rows_read - sum(rejected.values()),
        days=days_spanned(rows),
        lines=books,
    )


@dataclasses.dataclass(frozen=True)
class StatusCounts:
    by_status: dict[str, int]  # clean, duplicate, bot and every reject reason
    same_key_variants: int
    clean_days: list[dt.date]


def status_counts(classified: DataFrame, tally: FileTally) -> StatusCounts:
    with _timed("status counts"):
        rows = (
            classified.groupBy("status", "event_date")
            .agg(F.count(F.lit(1)).alias("count"), F.count(F.when(F.col("is_variant"), 1)).alias("variants"))
            .collect()  # 3 x days rows
        )
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + r["count"]
    return StatusCounts(
        by_status={**by_status, **tally.rejected_by_reason},
        same_key_variants=sum(r["variants"] for r in rows if r["status"] == CLEAN),
        clean_days=sorted({r["event_date"] for r in rows if r["status"] == CLEAN}),
    )


def books_problems(tally: FileTally, by_status: dict[str, int]) -> list[str]:
    """What is wrong with the books before anything is written: every line of the files is a header, a blank line
    or inside a record, and every record read has exactly one status."""
    accounted = sum(by_status.values())
    problems = tally.lines.problems() if tally.lines else []
    if accounted != tally.rows_read:
        problems.append(f"{tally.rows_read} rows read but {accounted} given a status")
    return problems


@dataclasses.dataclass(frozen=True)
class Written:
    """What a batch wrote, as Delta counted it, and the versions to go back to."""

    inserted: int
    relinked: int
    corrected: int  # events of the table replaced by a later line of the same key (same_key: keep_latest)
    events_added: int
    quarantined: int
    events_path: str
    events_before: int  # version
    quarantine_path: str
    quarantine_before: int  # version, -1 where the batch created the table

    def undo(self, spark: SparkSession) -> None:
        """Put the events and the quarantine back as they were before the batch."""
        for path, version in ((self.events_path, self.events_before), (self.quarantine_path, self.quarantine_before)):
            if lake.version_at(spark, path) == version:
                continue
            name = lake.sql_name(path)
            spark.sql(f"RESTORE TABLE {name} TO VERSION AS OF {version}" if version >= 0 else f"DELETE FROM {name}")
            log.warning("ingest: %s restored to version %s after a batch that did not reconcile", path, version)


def write_batch(
    spark: SparkSession,
    settings: Settings,
    rejected: DataFrame,
    clean: DataFrame,
    files: list[str],
    clean_days: list[dt.date],
    buckets: int,
    keep_latest: bool,
) -> Written:
    """Write the rejected rows to the quarantine and the clean ones to the events; what Delta says was written."""
    events_path = lake.path(settings.lake, lake.EVENTS)
    quarantine_path = lake.path(settings.lake, lake.QUARANTINE)
    events_before, quarantine_before = lake.version_at(spark, events_path), lake.version_at(spark, quarantine_path)
    quarantined = write_quarantine(rejected, files, settings)
    rows_before = spark.read.format("delta").load(events_path).count()  # from the log's statistics: no scan
    with _timed("write events"):
        gap = settings.ingest.session_gap_minutes
        inserted, relinked, corrected = write_events(spark, clean, clean_days, events_path, gap, buckets, keep_latest)
    rows_after = spark.read.format("delta").load(events_path).count()
    return Written(
        inserted,
        relinked,
        corrected,
        rows_after - rows_before,
        quarantined,
        events_path,
        events_before,
        quarantine_path,
        quarantine_before,
    )


def append_audit(spark: SparkSession, settings: Settings, audit: dict) -> None:
    (
        spark.createDataFrame([audit], AUDIT_SCHEMA)
        .write.format("delta")
        .mode("append")
        .option("mergeSchema", "true")  # audit tables made before a column was added get it
        .save(lake.path(settings.lake, lake.INGEST_AUDIT))
    )


def raise_failed(
    spark: SparkSession,
    settings: Settings,
    batch_id: int,
    mapping: SourceMapping,
    tally: FileTally,
    counts: StatusCounts,
    problems: list[str],
    audit: dict | None = None,
) -> None:
    """Audit the batch as failed, with its problems, and raise ReconciliationError; its writes are already undone."""
    if audit is None:
        version = lake.version(spark, settings.lake, lake.EVENTS)
        audit = audit_row(batch_id, mapping.name, settings.ingest.input, tally, counts, None, version)
    message = f"ingest batch {batch_id} does not reconcile: " + "; ".join(problems)
    append_audit(spark, settings, {**audit, "clean": 0, "replays": 0, "status": "failed", "problems": message})
    raise ReconciliationError(message + " (nothing of it is kept; the audit row says so)")


def reject_reason(cfg: IngestSettings) -> Column:
    """The first reason a canonical row cannot be trusted, or null."""
    latest = F.current_timestamp() + F.expr(f"INTERVAL {cfg.max_future_hours} HOURS")
    return (
        F.when(F.col("missing_column").isNotNull(), "missing_column")
        .when(F.col("malformed"), "malformed_line")
        .when(F.col("repeated_header"), "repeated_header")
        .when(F.col("bad_encoding"), "bad_encoding")
        .when(F.col("user_id").isNull(), "missing_user_id")
        .when(F.col("time_out_of_range"), "timestamp_out_of_range")
        .when(F.col("event_time").isNull(), "unparseable_timestamp")
        .when(
            (F.col("event_time") < F.lit(cfg.earliest_event_date)) | (F.col("event_time") > latest),
            "timestamp_out_of_range",
        )
        .when(F.col("event_type").isNull(), "unknown_event_type")
        .when(F.col("raw_product_id").isNotNull() & F.col("product_id").isNull(), "unparseable_product_id")
        .when(F.col("raw_category_id").isNotNull() & F.col("category_id").isNull(), "unparseable_category_id")
        .when(F.col("raw_quantity").isNotNull() & F.col("quantity").isNull(), "unparseable_quantity")
        .when(F.col("raw_price").isNotNull() & F.col("price").isNull(), "unparseable_price")
        .when((F.col("price") < 0) | (F.col("price") > cfg.max_price), "invalid_price")
        .when(F.col("quantity") <= 0, "invalid_quantity")
    )


def for_cache(rows: DataFrame, pseudonym: Callable[[Column], Column], keep_user_id: bool) -> DataFrame:
    """What later steps need of a parsed row: what the quarantine keeps of it if it is rejected, typed fields, the
    reason. Dropping the raw text of good rows (and the raw id unless an identity map is written) halves what is
    cached."""
    kept = [c for c in rows.columns if c not in CANONICAL_ONLY and (keep_user_id or c != "user_id")]
    return rows.select(quarantine_text(pseudonym).alias("raw"), *kept)


def quarantine_text(pseudonym: Callable[[Column], Column]) -> Column:
    """What the quarantine keeps of a rejected row, as JSON, with no raw id and no personal column.

    A row split into fields keeps its mapped fields with the user id replaced by its pseudonym (personal columns are
    never read). A line that could not be split (malformed, or in a file lacking a column) keeps its length and a
    keyed hash of its text, which tells copies apart and finds the line again with the key, but shows nothing of it.
    """
    rejected = F.col("reject_reason").isNotNull()
    unsplit = F.col("malformed") | F.col("missing_column").isNotNull()
    line = F.when(rejected & unsplit, F.col("raw_line"))  # hashed for these rows only
    line_json = F.to_json(F.struct(F.length(line).alias("line_length"), pseudonym(line).alias("line_hash")))
    fields_json = F.to_json(F.struct(F.col("customer_id"), F.col("raw_fields").alias("fields")))
    return F.when(rejected, F.when(unsplit, line_json).otherwise(fields_json))


def event_id() -> Column:
    """An event's identity: 16 hex characters of its key (customer, type, item, time, and the source's own event id
    where the mapping names one), then 16 of its whole content.

    Exact copies share an id (a duplicate in a batch, a replay across batches); lines that differ in any mapped
    field are different events, both kept; and the variants of one key sort next to each other, so one ordered
    pass finds copies and variants alike.
    """

    def text(name: str) -> Column:  # null as empty, in place: concat_ws would drop it and shift the fields
        return F.coalesce(F.col(name).cast("string"), F.lit(""))

    millis = F.unix_millis(F.col("event_time")).cast("string")
    key = F.concat_ws("|", text("customer_id"), text("event_type"), text("product_id"), millis, text("source_event_id"))
    content = F.concat_ws("|", key, *(text(c) for c in ("category_id", "category_code", "brand", "price", "quantity")))
    return F.concat(F.substring(F.sha2(key, 256), 1, 16), F.substring(F.sha2(content, 256), 1, 16))


def event_key(event_id: Column) -> Column:
    """The key half of an event id (customer, type, item, time and source id)."""
    return F.substring(event_id, 1, 16)


def same_key(first: Column, second: Column) -> Column:
    """Whether two event ids share their key half (the same customer, type, item, time and source id)."""
    return event_key(first) == event_key(second)


def event_id_scheme(mapping: SourceMapping) -> str:
    """How the events table's ids are made and kept (`ingest.EVENT_ID_PROPERTY`): a table cannot change it."""
    scheme = EVENT_ID_SCHEME + ("+line-in-file" if mapping.identity == "line" else "")
    return scheme + ("; later line of a key corrects" if mapping.same_key == "keep_latest" else "")


def with_checks(valid: DataFrame, mapping: SourceMapping, gap_minutes: int, buckets_per_day: int) -> DataFrame:
    """Valid rows after one shuffle (by day and customer bucket) and one sort (by time and event id), with `is_copy`
    (a later exact copy of an event), `is_variant` (another event with the same key), `is_superseded` (a line a
    later one of its key corrects, under `same_key: keep_latest`) and `session_id`.

    Only what the events table needs is shuffled: the source file path alone (a hundred bytes a row) made the
    whole ingest about 13% slower at 4M rows.
    """
    rows = valid.withColumn("event_date", F.to_date("event_time")).withColumn("event_id", event_id())
    if mapping.identity == "line":
        rows = rows.withColumn("file_hash", F.xxhash64("source_file"))
    checked = (
        rows.withColumn("ts", F.unix_micros("event_time"))
        .drop("raw", "source_file", "source_modified", "reject_reason", "source_event_id")  # not worth shuffling
        .transform(shuffle_by_day, buckets_per_day)
    )
    if mapping.identity == "line":
        checked = one_event_per_line(checked)
    by_time = _in_time_order()
    checked = (
        checked.select(
            "*", F.lag("event_id").over(by_time).alias("previous_id"), F.lag("ts").over(by_time).alias("previous_ts")
        )
        .withColumn("is_copy", F.coalesce(F.col("previous_id") == F.col("event_id"), F.lit(False)))
        .withColumn(
            "is_variant",
            F.coalesce(same_key(F.col("previous_id"), F.col("event_id")) & ~F.col("is_copy"), F.lit(False)),
        )
    )
    if mapping.same_key == "keep_latest":
        checked = latest_of_each_key(checked)
    else:
        checked = checked.withColumn("is_superseded", F.lit(False))
    return checked.transform(with_sessions, gap_minutes).drop("previous_id")


def one_event_per_line(rows: DataFrame) -> DataFrame:
    """`identity: line`: the n-th of the identical lines of a file gets an id of its own (the content, the file and n),
    so identical lines are as many events, and reading the same file again gives the same ids (replays).

    The window's keys include the shuffle's, so it sorts within the partitions the rows are already in.
    """
    copies = Window.partitionBy(*WINDOW_KEYS, "event_id", "file_hash").orderBy("ts")
    line_id = F.sha2(F.concat_ws("|", "event_id", "file_hash", F.row_number().over(copies)), 256)
    return rows.withColumn("event_id", F.concat(event_key(F.col("event_id")), F.substring(line_id, 1, 16))).drop(
        "file_hash"
    )


def latest_of_each_key(rows: DataFrame) -> DataFrame:
    """`same_key: keep_latest`: of the lines sharing a key, the one that arrived last (`sources.arrival_order`) is the
    event and the others are superseded by it (copies of it stay duplicates); no kept event has a variant."""
    same_key_rows = Window.partitionBy(*WINDOW_KEYS, event_key(F.col("event_id")))
    latest = F.max_by("event_id", "arrival").over(same_key_rows)
    return (
        rows.withColumn("is_superseded", F.col("event_id") != latest)
        .withColumn("is_variant", F.lit(False))
        .drop("arrival")
    )


def shuffle_by_day(rows: DataFrame, buckets_per_day: int) -> DataFrame:
    """Hash rows into (day, customer bucket) partitions; windows over WINDOW_KEYS then need no further shuffle."""
    bucketed = rows.withColumn("bucket", F.pmod(F.xxhash64("customer_id"), F.lit(buckets_per_day)).cast("int"))
    # No partition count: spark.sql.shuffle.partitions sets it, and adaptive execution coalesces small partitions.
    return bucketed.repartition(*PARTITION_KEYS)


def days_spanned(tally: list) -> int:
    """Calendar days between the first and the last valid event of the batch (at least 1)."""
    valid = [r for r in tally if r["reject_reason"] is None and r["first"] is not None]
    if not valid:
        return 1
    return (max(r["last"] for r in valid).date() - min(r["first"] for r in valid).date()).days + 1


def buckets_per_day(valid_rows: int, days: int) -> int:
    """Customer buckets per day so that one (day, bucket) holds about ROWS_PER_FILE rows."""
    return max(1, math.ceil(valid_rows / max(days, 1) / ROWS_PER_FILE))


def bot_customers(checked: DataFrame, max_events_per_minute: int) -> DataFrame:
    """The customers who ever fired more than `max_events_per_minute` events (copies aside) in a calendar minute."""
    # The day and bucket keys change no group (a minute has one day, a customer one bucket) but let the counting
    # reuse the rows' partitioning instead of shuffling every event again.
    return (
        checked.filter(~F.col("is_copy") & ~F.col("is_superseded"))
        .groupBy(*WINDOW_KEYS, F.date_trunc("minute", "event_time").alias("minute"))
        .count()
        .filter(F.col("count") > max_events_per_minute)
        .select("customer_id")
        .distinct()
        .withColumn("is_bot", F.lit(True))
    )


def classify(checked: DataFrame, bots: DataFrame) -> DataFrame:
    """`duplicate` for later copies, `superseded` for lines a later one corrects, `bot` for every row of a bot
    customer (`bot_customers`), else `clean`."""
    # Bot customers are few (a handful per million users): broadcast them rather than shuffle every event.
    status = (
        F.when(F.col("is_copy"), DUPLICATE)
        .when(F.col("is_superseded"), SUPERSEDED)
        .when(F.col("is_bot"), BOT)
        .otherwise(CLEAN)
    )
    return checked.join(F.broadcast(bots), on="customer_id", how="left").withColumn("status", status)


def with_sessions(events: DataFrame, gap_minutes: int) -> DataFrame:
    """`session_id` per event: a session ends at a gap longer than `gap_minutes` (a gap of exactly that stays) and
    at midnight UTC, as web analytics tools split them; so one customer's day is all a session ever needs."""
    if "event_date" not in events.columns:  # keep an existing column: the rows may already be partitioned on it
        events = events.withColumn("event_date", F.to_date("event_time"))
    if "ts" not in events.columns:
        events = events.withColumn("ts", F.unix_micros("event_time"))
    if "bucket" not in events.columns:
        events = events.withColumn("bucket", F.lit(0))
    if "previous_ts" not in events.columns:
        events = events.withColumn("previous_ts", F.lag("ts").over(_in_time_order()))
    gap = F.col("ts") - F.col("previous_ts")
    starts = F.when(gap.isNull() | (gap > gap_minutes * 60_000_000), F.col("ts"))
    so_far = _in_time_order().rowsBetween(Window.unboundedPreceding, 0)
    session_start = F.max(starts).over(so_far)
    session_id = F.sha2(F.concat_ws("|", F.col("customer_id"), session_start.cast("string")), 256)
    return (
        events.withColumn("session_id", F.substring(session_id, 1, 32))
        .withColumn("session_index", F.count(starts).over(so_far).cast("int"))  # 1, 2, ... in the customer's day
        .drop("previous_ts")
    )


def _in_time_order() -> Window:
    return Window.partitionBy(*WINDOW_KEYS).orderBy("ts", "event_id")


def ensure_events_table(spark: SparkSession, path: str, scheme: str = EVENT_ID_SCHEME) -> None:
    """Create the events table with its NOT NULL columns, CHECK constraints and statistics columns, once.

    Delta keeps CHECK constraints as `delta.constraints.<name>` table properties, so a new table gets them in its
    one creating commit, not in a commit and a validating scan per ALTER TABLE ADD CONSTRAINT.
    A table created before a constraint or property existed gets it by ALTER TABLE.
    """
    properties = {STATS_COLUMNS_PROPERTY: ",".join(STATS_COLUMNS), EVENT_ID_PROPERTY: scheme}
    properties.update({f"delta.constraints.{name}": check for name, check in CHECK_CONSTRAINTS.items()})
    columns = ", ".join(
        f"{f.name} {f.dataType.simpleString()}{'' if f.nullable else ' NOT NULL'}" for f in EVENTS_SCHEMA
    )
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {lake.sql_name(path)} ({columns}) USING DELTA "
        f"PARTITIONED BY (event_date) TBLPROPERTIES ({lake.sql_properties(properties)})"
    )
    existing = lake.properties(spark, path)
    if existing.get(EVENT_ID_PROPERTY) != scheme:
        if not spark.read.format("delta").load(path).isEmpty():  # its events would not match re-read ones
            raise IngestError(
                f"the events table at {path} holds event ids made otherwise "
                f"({existing.get(EVENT_ID_PROPERTY, 'customer, type, item, time: an earlier behavior-spark')}) than "
                f"the source mapping's identity and same_key make them ({scheme}); keep the mapping the table was made "
                "with, or rebuild it from the raw files: remove the events, events_quarantine, ingest_audit and "
                "ingested_files tables and run ingest again"
            )
        set_properties(spark, path, {EVENT_ID_PROPERTY: scheme})
    if existing.get(STATS_COLUMNS_PROPERTY) != properties[STATS_COLUMNS_PROPERTY]:
        set_properties(spark, path, {STATS_COLUMNS_PROPERTY: properties[STATS_COLUMNS_PROPERTY]})
    for name, check in CHECK_CONSTRAINTS.items():
        if f"delta.constraints.{name}" not in existing:
            spark.sql(f"ALTER TABLE {lake.sql_name(path)} ADD CONSTRAINT {name} CHECK ({check})")


def set_properties(spark: SparkSession, path: str, properties: dict[str, str]) -> None:
    spark.sql(f"ALTER TABLE {lake.sql_name(path)} SET TBLPROPERTIES ({lake.sql_properties(properties)})")


def check_key(spark: SparkSession, path: str, current: str, key_env: str) -> None:
    """Record the key's fingerprint (`current`) on the events table, or fail if the table's events were made with
    another key (every customer would get a second pseudonym)."""
    recorded = lake.properties(spark, path).get(KEY_FINGERPRINT_PROPERTY)
    if recorded == current:
        return
    if recorded is not None:
        raise ConfigError(
            f"the pseudonym key in {key_env} (setting 'ingest.pseudonym_key_env') is not the key the events at {path} "
            f"were made with (fingerprint {recorded}, this key's {current}); set the original key, or rotate the key "
            "as the README says (re-pseudonymise the tables through the identity map)"
        )
    set_properties(spark, path, {KEY_FINGERPRINT_PROPERTY: current})


def write_events(
    spark: SparkSession,
    clean: DataFrame,
    days: list[dt.date],
    path: str,
    gap_minutes: int,
    buckets: int,
    keep_latest: bool = False,
) -> tuple[int, int, int]:
    """Add the batch's clean events (on `days`); return (rows inserted, sessions re-linked, events corrected).

    Where the table holds nothing on the batch's days (a first load, a new day) an append is exactly what a MERGE
    would do, at a fraction of the cost. Otherwise the batch is MERGEd on its event id together with the table's
    events of the same customers and days, so replays are skipped and sessions that late events bridge re-linked.
    Under `keep_latest` it is MERGEd on the event key instead, and an event of the table whose key a batch row
    shares with other content is replaced by that row (a correction).
    """
    if not days:
        return 0, 0, 0
    same_days = spark.read.format("delta").load(path).filter(F.col("event_date").isin(days))
    before = lake.version_at(spark, path)
    if same_days.isEmpty():
        clean.select(*EVENTS_COLUMNS).write.format("delta").mode("append").save(path)
        return int(lake.commit_metrics(spark, path, before).get("numOutputRows", 0)), 0, 0
    new = clean.select(*(c for c in EVENTS_COLUMNS if c not in ("session_id", "session_index")))
    same_customer_days = new.select("event_date", "customer_id").distinct()
    context = same_days.join(same_customer_days, on=["event_date", "customer_id"], how="inner").select(*new.columns)
    corrected = 0
    if keep_latest:
        corrected = corrections(new, context)
        keys = new.select(event_key(F.col("event_id")).alias("key")).distinct()
        context = context.withColumn("key", event_key(F.col("event_id"))).join(keys, "key", "left_anti").drop("key")
    source = (
        context.unionByName(new)
        .dropDuplicates(["event_id"])
        .transform(shuffle_by_day, buckets)
        .transform(with_sessions, gap_minutes)
        .select(*EVENTS_COLUMNS)
    )
    day_list = ", ".join(f"DATE'{day}'" for day in days)
    match = "substring(t.event_id, 1, 16) = substring(s.event_id, 1, 16)" if keep_latest else "t.event_id = s.event_id"
    # MERGE reads its source twice: both reads must see the same rows
    with materialized(source) as kept_source, lake.as_view(kept_source) as view:
        spark.sql(
            f"MERGE INTO {lake.sql_name(path)} t USING {view} s "
            f"ON t.event_date IN ({day_list}) AND t.event_date = s.event_date AND {match} "
            "WHEN MATCHED AND t.event_id <> s.event_id THEN UPDATE SET * "  # a correction (keep_latest only)
            "WHEN MATCHED AND (t.session_id <> s.session_id OR t.session_index <> s.session_index) "
            "THEN UPDATE SET session_id = s.session_id, session_index = s.session_index "
            "WHEN NOT MATCHED THEN INSERT *"
        )
    metrics = lake.commit_metrics(spark, path, before)
    updated = int(metrics.get("numTargetRowsUpdated", 0))
    return int(metrics.get("numTargetRowsInserted", 0)), updated - corrected, corrected


def corrections(new: DataFrame, table_rows: DataFrame) -> int:
    """How many of the table's events a batch row of the same key and other content replaces."""
    old = table_rows.select(event_key(F.col("event_id")).alias("key"), F.col("event_id").alias("old_id"))
    incoming = new.select(event_key(F.col("event_id")).alias("key"), "event_id")
    return incoming.join(old, on="key").filter(F.col("old_id") != F.col("event_id")).count()


def write_quarantine(rejected: DataFrame, files: list[str], settings: Settings) -> int:
    """Replace the quarantine rows of this batch's files (so a re-run does not double them); return rows written."""
    rejected = rejected.select(
        F.col("reject_reason").alias("reason"),
        "raw",
        "source_file",
        F.current_timestamp().alias("quarantined_at"),
    )
    location = lake.path(settings.lake, lake.QUARANTINE)
    before = lake.version_at(rejected.sparkSession, location)
    writer = rejected.write.format("delta")
    if before >= 0 and files:
        quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        writer = writer.mode("overwrite").option("replaceWhere", f"source_file IN ({quoted})")
    else:
        writer = writer.mode("append")
    writer.save(location)
    return int(lake.commit_metrics(rejected.sparkSession, location, before).get("numOutputRows", 0))


def write_identity_map(clean: DataFrame, location: str) -> None:
    """pseudonym -> raw id, kept apart from the lakehouse, for re-identification at warehouse export only."""
    pairs = clean.select("customer_id", "user_id").distinct()
    spark = clean.sparkSession
    if not lake.is_table(spark, location):
        pairs.write.format("delta").save(location)
        return
    with lake.as_view(pairs) as view:
        spark.sql(
            f"MERGE INTO {lake.sql_name(location)} t USING {view} s ON t.customer_id = s.customer_id "
            "WHEN NOT MATCHED THEN INSERT *"
        )


AUDIT_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType(), False),
        T.StructField("batch_id", T.LongType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
        T.StructField("source_mapping", T.StringType(), False),
        T.StructField("input", T.StringType(), False),
        T.StructField("files", T.LongType(), False),
        T.StructField("rows_read", T.LongType(), False),
        T.StructField("clean", T.LongType(), False),
        T.StructField("replays", T.LongType(), False),
        T.StructField("duplicates", T.LongType(), False),
        T.StructField("bot_rows", T.LongType(), False),
        T.StructField("quarantined", T.LongType(), False),
        T.StructField("quarantined_by_reason", T.MapType(T.StringType(), T.LongType()), False),
        T.StructField("quarantined_written", T.LongType(), False),
        T.StructField("events_added", T.LongType(), False),
        T.StructField("sessions_relinked", T.LongType(), False),
        T.StructField("events_version", T.LongType(), False),
        T.StructField("same_key_variants", T.LongType(), True),
        T.StructField("status", T.StringType(), True),  # ok | failed (nothing of the batch kept)
        T.StructField("problems", T.StringType(), True),
        T.StructField("raw_lines", T.LongType(), True),  # by the text reader; null for Parquet
        T.StructField("header_lines", T.LongType(), True),
        T.StructField("blank_lines", T.LongType(), True),  # skipped by the parser
        T.StructField("superseded", T.LongType(), True),  # lines a later line of the batch with their key corrects
        T.StructField("corrections", T.LongType(), True),  # events of the table a line of the batch replaced
    ]
)
AUDIT_SUMMARY = [
    "rows_read", "clean", "replays", "duplicates", "superseded", "bot_rows", "quarantined", "same_key_variants",
    "corrections",
]  # fmt: skip
ACCOUNTED = ("clean", "replays", "quarantined", "duplicates", "superseded", "bot_rows")  # adds up to rows_read
NOTHING_WRITTEN = Written(0, 0, 0, 0, 0, "", -1, "", -1)


def audit_row(
    batch_id: int,
    mapping_name: str,
    source: str,
    tally: FileTally,
    counts: StatusCounts,
    written: Written | None,
    events_version: int,
) -> dict:
    """Where every row of a batch went (`written` None: nothing was). Clean rows that were already in the table
    count as replays; clean rows that replaced an event of the same key are corrections (and clean); kept rows
    sharing another's key (customer, type, item, time) are counted as variants."""
    by_status = counts.by_status
    written = written or NOTHING_WRITTEN
    reasons = {k: v for k, v in by_status.items() if k not in NOT_QUARANTINED}
    lines = tally.lines
    return {
        "run_id": uuid.uuid4().hex,
        "batch_id": batch_id,
        "ingested_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
        "source_mapping": mapping_name,
        "input": source,
        "files": len(tally.files),
        "rows_read": tally.rows_read,
        "clean": written.inserted + written.corrected,
        "replays": by_status.get(CLEAN, 0) - written.inserted - written.corrected,
        "duplicates": by_status.get(DUPLICATE, 0),
        "superseded": by_status.get(SUPERSEDED, 0),
        "bot_rows": by_status.get(BOT, 0),
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": reasons,
        "quarantined_written": written.quarantined,
        "events_added": written.events_added,
        "sessions_relinked": written.relinked,
        "corrections": written.corrected,
        "events_version": events_version,
        "same_key_variants": counts.same_key_variants,
        "status": "ok",
        "problems": None,
        "raw_lines": lines and lines.raw_lines,
        "header_lines": lines and lines.header_lines,
        "blank_lines": lines and lines.blank_lines,
    }


def reconciliation_problems(audit: dict) -> list[str]:
    """Rows read = clean + replays + quarantined + duplicates + superseded + bot rows, and Delta wrote exactly
    those (corrections replace events: the table grows by the clean rows less the corrections)."""
    accounted = sum(audit[k] for k in ACCOUNTED)
    problems = []
    if accounted != audit["rows_read"]:
        problems.append(f"{audit['rows_read']} rows read but {accounted} accounted for")
    if audit["replays"] < 0:
        problems.append(f"the MERGE wrote {audit['clean']} rows, more than the batch's clean rows")
    grew = audit["clean"] - audit["corrections"]
    if audit["events_added"] != grew:
        problems.append(f"{grew} clean rows inserted but the events table grew by {audit['events_added']}")
    if audit["quarantined_written"] != audit["quarantined"]:
        problems.append(f"{audit['quarantined']} rejected rows but {audit['quarantined_written']} quarantined")
    return problems


def check_reconciliation(audit: dict) -> None:
    problems = reconciliation_problems(audit)
    if problems:
        raise ReconciliationError(f"ingest batch {audit['batch_id']} does not reconcile: " + "; ".join(problems))


@contextlib.contextmanager
def _timed(step: str):
    started = time.monotonic()
    yield
    log.debug("ingest step %s: %.1f s", step, time.monotonic() - started)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
