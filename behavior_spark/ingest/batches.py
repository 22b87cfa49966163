"""Which raw files are new, and each batch of them from raw rows to committed events."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import artifacts, canonical, console, lake, privacy, sources, summaries
from behavior_spark.config import ConfigError, IngestSettings, Settings
from behavior_spark.ingest import books, guards
from behavior_spark.ingest.checks import for_cache, reject_reason
from behavior_spark.ingest.identity import event_id_scheme
from behavior_spark.ingest.sessions import (
    CLEAN,
    PARTITION_KEYS,
    bot_customers,
    buckets_per_day,
    classify,
    partitions_for,
    with_checks,
)
from behavior_spark.ingest.tables import IngestError, check_key, ensure_events_table, write_batch, write_identity_map
from behavior_spark.results import IngestResult
from behavior_spark.session import PARTITIONING_KEPT, in_utc, is_connect, materialized, timed, with_conf
from behavior_spark.sources import SourceMapping

log = logging.getLogger(__name__)


FILE_COLUMNS = ["path", "size", "modified_ns"]  # what identifies a raw file as ingested


def run(spark: SparkSession, settings: Settings) -> IngestResult:
    """Ingest every raw file not yet ingested, in batches of `ingest.max_files_per_trigger`; return their totals."""
    cfg = settings.ingest
    in_utc(spark)  # dates, midnights and zone-less timestamps: the same on any cluster
    mapping = sources.load_mapping(cfg.source)
    if is_connect(spark):  # the key stays on the server: its workers hash and fingerprint with their own
        pseudonym, current = privacy.keyed_hash_on_workers(spark, cfg), privacy.fingerprint_on_workers(spark, cfg)
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
    batches = -(-len(pending) // cfg.max_files_per_trigger)
    for offset in range(0, len(pending), cfg.max_files_per_trigger):
        batch_files = pending[offset : offset + cfg.max_files_per_trigger]
        batch_id = first_batch + len(audits)
        console.step("ingest", f"batch {batch_id}, {len(batch_files)} files", len(audits), batches)
        batch = sources.read_files(spark, mapping, [path for path, _, _ in batch_files])
        audit = process_batch(spark, batch, batch_id, mapping, pseudonym, settings)
        record_files(spark, settings, source, batch_files, batch_id)  # after the batch's writes: a kill re-reads
        log.info(
            "ingest batch %d (%d files): %s", batch_id, len(batch_files), {k: audit[k] for k in books.AUDIT_SUMMARY}
        )
        audits.append(audit)
    totals = {k: sum(a[k] for a in audits) for k in books.AUDIT_SUMMARY}
    if totals["rows_read"] == 0 and lake.read(spark, settings.lake, lake.EVENTS).isEmpty():
        raise IngestError(f"no rows to ingest in {cfg.input}: the input is empty")
    reasons: dict[str, int] = {}
    for audit in audits:
        for reason, count in audit["quarantined_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    return IngestResult(
        files=len(pending),
        batches=len(audits),
        **totals,
        quarantined_by_reason=reasons,
        warnings=[f"batch {a['batch_id']}: {w}" for a in audits if a["warnings"] for w in a["warnings"].split(" | ")],
        events_version=lake.version(spark, settings.lake, lake.EVENTS),
    )


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
    latest = lake.one_row(last.agg(F.max("batch_id")))[0]
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


@dataclasses.dataclass(frozen=True)
class ClassifiedBatch:
    """A batch's rows, each with its status, and its books, before anything is written (kept until the block of
    `classify_batch`'s ExitStack ends)."""

    tally: books.FileTally
    counts: books.StatusCounts
    rejected: DataFrame  # rows with a reject reason and what the quarantine keeps of them (`raw`)
    classified: DataFrame  # valid rows with `status`: clean, duplicate, superseded or bot
    buckets: int  # customer buckets per day of the shuffle
    verdict: guards.Verdict


def classify_batch(
    batch: sources.RawBatch,
    mapping: SourceMapping,
    pseudonym: Callable[[Column], Column],
    cfg: IngestSettings,
    kept: contextlib.ExitStack,
) -> ClassifiedBatch:
    """Parse, check, order and classify one batch's rows and count them; writes nothing (ingest and `inspect`).

    The raw files are parsed once and kept; valid rows are shuffled once, by customer and day, and every ordered
    step (dedup, sessions, bots) runs on that partitioning; what later steps read is kept in `kept`.
    """
    spark = batch.rows.sparkSession
    lines = sources.count_lines(spark, mapping, batch.paths)
    parsed_rows = (
        canonical.canonical(batch.rows, mapping)
        .withColumn("reject_reason", reject_reason(cfg))
        .withColumn("customer_id", pseudonym(F.col("user_id")))
        .transform(for_cache, pseudonym, keep_user_id=cfg.identity_map is not None)
    )
    with timed(log, "parse to checked rows"), materialized(parsed_rows) as parsed:  # released once `checked` is kept
        tally = books.file_tally(parsed, lines, batch.header_lines)
        rejected = kept.enter_context(materialized(parsed.filter(F.col("reject_reason").isNotNull())))
        valid = parsed.filter(F.col("reject_reason").isNull())
        buckets = buckets_per_day(tally.valid_rows, tally.days)
        partitions = partitions_for(spark, tally.days, buckets)
        with with_conf(spark, PARTITIONING_KEPT):  # bots, counts and summaries aggregate where the rows are
            checks = with_checks(valid, mapping, cfg.session_gap_minutes, buckets, partitions)
            checked = kept.enter_context(materialized(checks))
    bots = kept.enter_context(materialized(bot_customers(checked, mapping, cfg.bot_events_per_minute)))  # a few
    classified = classify(checked, bots)
    counts = books.status_counts(classified, tally)
    verdict = guards.check(tally, counts, cfg, rejected, classified)
    return ClassifiedBatch(tally, counts, rejected, classified, buckets, verdict)


def process_batch(
    spark: SparkSession,
    batch: sources.RawBatch,
    batch_id: int,
    mapping: SourceMapping,
    pseudonym: Callable[[Column], Column],
    settings: Settings,
) -> dict:
    """Classify one batch of raw rows, check the books and the guard rails, then write the quarantine and the events
    and audit the batch.

    Nothing is written unless every row read has a status and no rule removes more than `ingest.fail_share` of
    the rows; a write that Delta reports otherwise than counted is undone.
    """
    cfg = settings.ingest
    with contextlib.ExitStack() as kept:
        done = classify_batch(batch, mapping, pseudonym, cfg, kept)
        tally, counts = done.tally, done.counts
        problems = books.books_problems(tally, counts.by_status)
        if problems:  # before any write
            books.raise_failed(spark, settings, batch_id, mapping, tally, counts, problems)
        if done.verdict.failures:
            failures = done.verdict.failures
            books.raise_failed(spark, settings, batch_id, mapping, tally, counts, failures, error=books.GuardRailError)
        for warning in done.verdict.warnings:
            log.warning("ingest batch %d: %s", batch_id, warning)
        clean = done.classified.filter(F.col("status") == CLEAN)
        if cfg.identity_map:
            write_identity_map(clean, cfg.identity_map)
        keep_latest = mapping.same_key == "keep_latest"
        written = write_batch(
            spark, settings, done.rejected, clean, tally.files, counts.clean_days, done.buckets, keep_latest
        )
        version = lake.version(spark, settings.lake, lake.EVENTS)
        audit = books.audit_row(
            batch_id, mapping.name, cfg.input, tally, counts, written, version, done.verdict.warnings
        )
        problems = books.reconciliation_problems(audit)
        if problems:
            written.undo(spark)
            books.raise_failed(spark, settings, batch_id, mapping, tally, counts, problems, audit)
        with timed(log, "summaries"):  # appended rows are summarised where the shuffle left them, not read back
            appended = clean if written.appended else None
            summarised = summaries.update(
                spark, settings, counts.clean_days, written.events_before, appended, PARTITION_KEYS
            )
    log.info("ingest batch %d: customer-day summaries %s", batch_id, summarised)
    books.append_audit(spark, settings, audit)
    return audit


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
