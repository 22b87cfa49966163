"""`behavior-spark inspect`: what ingest would do with a log, before it writes anything.

Reads the raw files at `ingest.input` (all of them, or a sample of their rows) with the source mapping, runs the
same parsing, checks, ordering and classification as ingest, and writes nothing: rows by outcome and quarantine
reason with examples, customers and events per customer, the date range, event types, and what the guard rails would
warn about or stop. Ids are pseudonymised with the ingest key where it is set, else with a key drawn for this look
only, and personal columns are never read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import lake, privacy, sources
from behavior_spark.config import ConfigError, Settings
from behavior_spark.ingest import guards
from behavior_spark.ingest.batches import classify_batch
from behavior_spark.session import in_utc, is_connect

SAMPLE_SEED = 7


def run(spark: SparkSession, settings: Settings, sample: float | None = None) -> dict:
    """The look at `ingest.input`: a dict of counts, shares, examples and verdicts (`render` prints it)."""
    cfg = settings.ingest
    in_utc(spark)
    mapping = sources.load_mapping(cfg.source)
    paths = [path for path, _, _ in sources.find_files(cfg.input)]
    if not paths:
        raise ConfigError(f"setting 'ingest.input': no files at {cfg.input}")
    batch = sources.read_files(spark, mapping, paths)
    if sample is not None:
        batch = dataclasses.replace(batch, rows=batch.rows.sample(fraction=sample, seed=SAMPLE_SEED))
    if is_connect(spark):  # the key stays on the server's workers, as in ingest
        pseudonym = privacy.keyed_hash_on_workers(spark, cfg)
    else:  # nothing is kept: where no key is set, any key will do
        key = os.environ.get(cfg.pseudonym_key_env) or secrets.token_hex(32)
        pseudonym = privacy.keyed_hash(spark, key.encode())
    with contextlib.ExitStack() as kept:
        done = classify_batch(batch, mapping, pseudonym, cfg, kept)
        outcomes = {**done.counts.by_status}
        examples = {rule: guards.examples(rule, done.rejected, done.classified) for rule in sorted(outcomes)}
        profile = customer_profile(done.classified.filter(F.col("status") == "clean"))
    return {
        "mapping": mapping.name,
        "files": len(paths),
        "sample": sample,
        "rows_read": done.tally.rows_read,
        "outcomes": outcomes,
        "examples": {rule: text for rule, text in examples.items() if text},
        "raw_lines": done.tally.lines.raw_lines if done.tally.lines else None,
        "books": "add up" if not (done.tally.lines and done.tally.lines.problems()) else done.tally.lines.problems(),
        **profile,
        "warnings": done.verdict.warnings,
        "would_stop": done.verdict.failures,
    }


def customer_profile(clean: DataFrame) -> dict:
    """Customers, events per customer (quartiles and the most), the date range and the event types of the clean
    rows: two aggregations."""
    per_customer = clean.groupBy("customer_id").agg(F.count(F.lit(1)).alias("events"))
    quantiles = F.percentile_approx("events", [0.25, 0.5, 0.75], 1000)
    row = lake.one_row(per_customer.agg(F.count(F.lit(1)), quantiles, F.max("events")))
    times = lake.one_row(clean.agg(F.min("event_time"), F.max("event_time")))
    types = {r["event_type"]: r["count"] for r in clean.groupBy("event_type").count().collect()}  # a few types
    return {
        "customers": row[0],
        "events_per_customer": {"quartiles": row[1], "most": row[2]},
        "first_event": times[0],
        "last_event": times[1],
        "event_types": types,
    }


def render(look: dict) -> str:
    """One screen: what ingest would do with the log."""
    read = look["rows_read"] or 1
    sampled = f", a {look['sample']:.0%} sample of the rows" if look["sample"] else ""
    raw_lines = f"{look['raw_lines']:,}" if look["raw_lines"] is not None else "not counted (Parquet)"
    lines = [
        f"inspect: {look['files']} files read with the mapping '{look['mapping']}'{sampled}; nothing written",
        f"  {'rows read':<24}{look['rows_read']:>12,}   raw lines: {raw_lines}; books: {look['books']}",
    ]
    for outcome, rows in sorted(look["outcomes"].items(), key=lambda item: -item[1]):
        lines.append(f"  {outcome:<24}{rows:>12,}  {rows / read:6.1%}")
        if outcome in look["examples"]:
            lines.append(f"      e.g. {look['examples'][outcome][:110]}")
    spread = look["events_per_customer"]
    lines += [
        f"  {'customers':<24}{look['customers']:>12,}   events each: quartiles {spread['quartiles']}, "
        f"most {spread['most']}",
        f"  {'dates':<24}{look['first_event']} .. {look['last_event']}",
        f"  {'event types':<24}{look['event_types']}",
    ]
    lines += [f"  warning: {w}" for w in look["warnings"]]
    lines += [f"  WOULD STOP: {f}" for f in look["would_stop"]] or ["  guard rails: ingest would go ahead"]
    return "\n".join(lines)
