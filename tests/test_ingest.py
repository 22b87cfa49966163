"""Ingest: source layouts, every quarantine reason, dedup, sessions, idempotent and incremental runs, bad input."""

import dataclasses
import datetime as dt
import gzip
import hashlib
import hmac
import shutil
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import ingest, lake
from behavior_spark.config import ConfigError, load_settings

SOURCES = Path(__file__).resolve().parents[1] / "conf" / "sources"
REES46_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"


def rees46(*rows: str) -> str:
    return REES46_HEADER + "".join(row + "\n" for row in rows)


def view(
    user: str = "1", time: str = "2026-01-05 10:00:00 UTC", product: str = "11", price: str = "9.99", kind: str = "view"
) -> str:
    return f"{time},{kind},{product},2053,electronics.audio,acme,{price},{user},sess-{user}"


def settings_for(tmp_path: Path, source: str = "rees46", **overrides: str):
    """Ingest settings for files in `tmp_path/raw`. The guard rails stop no batch unless a test sets
    `fail_share`: the tests' batches of a few lines are mostly defects on purpose (test_retail_logs checks them)."""
    root = tmp_path / "lake"
    pairs = [f"lake.root={root}", f"ingest.input={tmp_path / 'raw'}", f"ingest.source={SOURCES / source}.yaml"]
    pairs += [f"ingest.{k}={v}" for k, v in {"fail_share": "1.0", **overrides}.items()]
    return load_settings(None, pairs)


def write_files(tmp_path: Path, files: dict[str, str | bytes]) -> None:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (raw / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)


def ingest_files(spark, tmp_path, files, source="rees46", **overrides):
    write_files(tmp_path, files)
    settings = settings_for(tmp_path, source, **overrides)
    return ingest.run(spark, settings), settings


def events(spark, settings):
    return lake.read(spark, settings.lake, lake.EVENTS)


def reasons(spark, settings) -> dict[str, int]:
    rows = lake.read(spark, settings.lake, lake.QUARANTINE).groupBy("reason").count().collect()
    return {r["reason"]: r["count"] for r in rows}


# --- pseudonymisation -------------------------------------------------------------------------------------------


def test_raw_ids_and_personal_columns_do_not_reach_the_events_or_the_quarantine(spark, tmp_path, pseudonym_key):
    rejected = [view(user="510000043", time="yesterday"), view(user="510000044") + ",extra,fields"]
    _, settings = ingest_files(spark, tmp_path, {"a.csv": rees46(view(user="510000042"), *rejected)})
    table = events(spark, settings)
    assert "user_id" not in table.columns and "user_session" not in table.columns
    expected = hmac.new(pseudonym_key.encode(), b"510000042", hashlib.sha256).hexdigest()
    assert table.first()["customer_id"] == expected
    quarantined = [r["raw"] for r in lake.read(spark, settings.lake, lake.QUARANTINE).collect()]
    assert len(quarantined) == 2  # a split row and an unsplittable line: the check below has something to check
    assert not any(text in raw for raw in quarantined for text in ("sess-", "510000043", "510000044"))


def test_identity_map_is_written_only_where_configured(spark, tmp_path, pseudonym_key):
    identity = tmp_path / "restricted" / "identity"
    _, settings = ingest_files(
        spark, tmp_path, {"a.csv": rees46(view(user="7"), view(user="8"))}, identity_map=str(identity)
    )
    pairs = {r["user_id"]: r["customer_id"] for r in spark.read.format("delta").load(str(identity)).collect()}
    assert set(pairs) == {"7", "8"}
    assert not any(p.name == "identity" for p in (tmp_path / "lake").rglob("*"))


# --- source layouts -------------------------------------------------------------------------------------------


def test_taobao_headerless_epoch_seconds(spark, tmp_path, pseudonym_key):
    content = "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n2,1,1,fav,1511572885\n"
    result, settings = ingest_files(spark, tmp_path, {"UserBehavior.csv": content}, source="taobao")
    got = {r["event_type"]: r["event_time"] for r in events(spark, settings).collect()}
    assert got == {
        "view": dt.datetime(2017, 11, 24, 17, 21, 10),
        "purchase": dt.datetime(2017, 11, 24, 22, 15, 33),
        "wishlist": dt.datetime(2017, 11, 25, 1, 21, 25),
    }
    assert result.rows_read == 3


def test_taobao_with_runs_of_whitespace_and_gzip(spark, tmp_path, pseudonym_key):
    mapping = tmp_path / "taobao_ws.yaml"
    mapping.write_text((SOURCES / "taobao.yaml").read_text().replace('delimiter: ","', "delimiter: whitespace"))
    write_files(tmp_path, {"part.txt.gz": "1   2268318\t2520377  pv 1511544070\n2 3 4 cart 1511544071 extra\n"})
    settings = load_settings(
        None, [f"lake.root={tmp_path / 'lake'}", f"ingest.input={tmp_path / 'raw'}", f"ingest.source={mapping}"]
    )
    result = ingest.run(spark, settings)
    assert result.clean == 1 and result.quarantined_by_reason == {"malformed_line": 1}


def test_retailrocket_epoch_milliseconds(spark, tmp_path, pseudonym_key):
    content = (
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n"
    )
    _, settings = ingest_files(spark, tmp_path, {"events.csv": content}, source="retailrocket")
    got = {r["event_type"]: r["event_time"] for r in events(spark, settings).collect()}
    assert got["view"] == dt.datetime(2015, 6, 2, 5, 2, 12, 117000)
    assert set(got) == {"view", "cart", "purchase"}


def test_plain_purchase_log_with_personal_column(spark, tmp_path, pseudonym_key):
    content = "customer_id,date,quantity,amount,email\nC1,20260105,2,30.00,a@example.com\nC2,20260106,1,5.5,b@x.io\n"
    mapping = tmp_path / "purchases.yaml"
    mapping.write_text((SOURCES / "purchases.yaml").read_text().replace("yyyy-MM-dd", "yyyyMMdd"))
    write_files(tmp_path, {"orders.csv": content})
    settings = load_settings(
        None, [f"lake.root={tmp_path / 'lake'}", f"ingest.input={tmp_path / 'raw'}", f"ingest.source={mapping}"]
    )
    ingest.run(spark, settings)
    rows = sorted(events(spark, settings).collect(), key=lambda r: r["event_time"])
    assert [(r["event_type"], r["quantity"], r["price"]) for r in rows] == [("purchase", 2, 15.0), ("purchase", 1, 5.5)]
    assert rows[0]["event_date"] == dt.date(2026, 1, 5)


def test_json_lines_and_parquet(spark, tmp_path, pseudonym_key):
    line = (
        '{"event_time": "2026-01-05 10:00:00 UTC", "event_type": "cart", "product_id": 5, "category_id": 1, '
        '"price": 3.5, "user_id": 9, "user_session": "s"}\n'
    )
    _, settings = ingest_files(spark, tmp_path, {"a.json": line + "not json at all\n"}, source="rees46_jsonl")
    assert events(spark, settings).first()["price"] == 3.5
    assert reasons(spark, settings) == {"malformed_line": 1}

    parquet_dir = tmp_path / "pq"
    spark.createDataFrame(
        [("2026-01-05 10:00:00 UTC", "view", "5", "1", "", "", "3.5", "9", "s")], ingest_raw_schema()
    ).write.parquet(str(parquet_dir / "raw"))
    mapping = tmp_path / "rees46_parquet.yaml"
    mapping.write_text((SOURCES / "rees46.yaml").read_text().replace("format: csv", "format: parquet"))
    settings = load_settings(
        None, [f"lake.root={parquet_dir / 'lake'}", f"ingest.input={parquet_dir / 'raw'}", f"ingest.source={mapping}"]
    )
    assert ingest.run(spark, settings).clean == 1


def ingest_raw_schema():
    names = REES46_HEADER.strip().split(",")
    return T.StructType([T.StructField(n, T.StringType()) for n in names])


# --- quarantine, dedup, bots ------------------------------------------------------------------------------------


def test_every_quarantine_reason(spark, tmp_path, pseudonym_key):
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [
        view(user="1"),  # clean
        view(user="1") + ",one,too,many",  # malformed_line
        view(user=""),  # missing_user_id
        view(time="2026-02-30 25:61:00 UTC"),  # unparseable_timestamp
        view(time="1999-12-31 23:59:59 UTC"),  # timestamp_out_of_range (too early)
        view(time=future),  # timestamp_out_of_range (future)
        view(kind="click"),  # unknown_event_type
        view(product="85123A"),  # clean: a product code with letters is kept as written
        view(price="12,5"),  # unparseable_price (quoted below)
        view(price="-1.00"),  # invalid_price
        view(price="1000000.00"),  # invalid_price (absurd)
    ]
    rows[8] = rows[8].replace("12,5", '"12,5"')
    result, settings = ingest_files(
        spark, tmp_path, {"a.csv": rees46(*rows), "latin1.csv": rees46(view(user="ünï")).encode("latin-1")}
    )
    assert reasons(spark, settings) == {
        "malformed_line": 1,
        "missing_user_id": 1,
        "unparseable_timestamp": 1,
        "timestamp_out_of_range": 2,
        "unknown_event_type": 1,
        "unparseable_price": 1,
        "invalid_price": 2,
        "bad_encoding": 1,
    }
    assert result.clean == 2 and result.rows_read == 12
    quarantined = lake.read(spark, settings.lake, lake.QUARANTINE)
    assert quarantined.filter(F.col("raw").isNull() | F.col("source_file").isNull()).count() == 0


def test_exact_copies_are_duplicates_and_lines_that_differ_are_kept(spark, tmp_path, pseudonym_key):
    rows = [view(), view(), view(price="10.50")]  # an exact copy; and the same key (customer, type, item, time)
    result, settings = ingest_files(spark, tmp_path, {"a.csv": rees46(*rows)})  # with another price: another line
    assert (result.clean, result.duplicates, result.same_key_variants) == (2, 1, 1)
    assert sorted(r["price"] for r in events(spark, settings).collect()) == [9.99, 10.5]


def test_bots_are_dropped_and_counted(spark, tmp_path, pseudonym_key):
    burst = [view(user="bot", time=f"2026-01-05 10:00:{s:02d} UTC", product=str(s)) for s in range(40)]
    result, settings = ingest_files(spark, tmp_path, {"a.csv": rees46(view(user="human"), *burst)})
    assert (result.clean, result.bot_rows) == (1, 40)


# --- sessions -----------------------------------------------------------------------------------------------------


def sessionise(spark, rows, gap_minutes=30):
    schema = "customer_id string, event_id string, event_time string"
    df = spark.createDataFrame(rows, schema).withColumn("event_time", F.to_timestamp("event_time"))
    got = ingest.with_sessions(df, gap_minutes).collect()
    by_session: dict[str, list[str]] = {}
    for row in got:
        by_session.setdefault(row["session_id"], []).append(row["event_id"])
    return sorted(sorted(ids) for ids in by_session.values())


def test_session_splits_after_the_gap_not_at_it(spark):
    rows = [
        ("a", "a3", "2026-01-01 11:00:00"),  # exactly 30 min after a2: same session
        ("a", "a1", "2026-01-01 10:00:00"),  # out of order on purpose
        ("a", "a2", "2026-01-01 10:30:00"),
        ("a", "a4", "2026-01-01 11:30:01"),  # 30 min 1 s later: a new session
        ("b", "b1", "2026-01-01 10:00:00"),
    ]  # a customer with one event
    assert sessionise(spark, rows) == [["a1", "a2", "a3"], ["a4"], ["b1"]]


def test_sessions_end_at_midnight_utc(spark):
    rows = [
        ("a", "a1", "2026-01-01 23:50:00"),
        ("a", "a2", "2026-01-02 00:10:00"),  # 20 minutes later, but a new day: a new session
        ("a", "a3", "2026-01-02 00:20:00"),
        ("a", "a4", "2026-01-02 09:00:00"),
    ]
    assert sessionise(spark, rows) == [["a1"], ["a2", "a3"], ["a4"]]


def test_sessions_are_numbered_within_the_customers_day(spark):
    schema = "customer_id string, event_id string, event_time string"
    rows = [("a", "a1", "2026-01-01 08:00:00"), ("a", "a2", "2026-01-01 08:10:00"), ("a", "a3", "2026-01-01 12:00:00")]
    df = spark.createDataFrame(rows, schema).withColumn("event_time", F.to_timestamp("event_time"))
    got = {r["event_id"]: r["session_index"] for r in ingest.with_sessions(df, 30).collect()}
    assert got == {"a1": 1, "a2": 1, "a3": 2}


# --- re-runs and incremental batches -----------------------------------------------------------------------------


def snapshot(spark, settings):
    return sorted(tuple(r) for r in events(spark, settings).collect())


def test_rerun_changes_nothing_even_without_the_record_of_ingested_files(spark, tmp_path, pseudonym_key):
    files = {"a.csv": rees46(view(), view(user="2"), view(user=""))}
    _, settings = ingest_files(spark, tmp_path, files)
    before, quarantined = snapshot(spark, settings), reasons(spark, settings)
    again = ingest.run(spark, settings)  # the ingested-files table knows the file: nothing to do
    assert again.batches == 0 and snapshot(spark, settings) == before
    shutil.rmtree(lake.path(settings.lake, lake.INGESTED_FILES))
    replayed = ingest.run(spark, settings)  # the file is read again: every clean row is a replay
    assert (replayed.clean, replayed.replays) == (0, 2)
    assert snapshot(spark, settings) == before and reasons(spark, settings) == quarantined


def test_a_later_file_is_ingested_once_and_joins_open_sessions(spark, tmp_path, pseudonym_key):
    first = rees46(view(time="2026-01-05 10:00:00 UTC"), view(time="2026-01-05 10:50:00 UTC", product="12"))
    _, settings = ingest_files(spark, tmp_path, {"day1.csv": first})
    assert events(spark, settings).select("session_id").distinct().count() == 2
    late = rees46(view(time="2026-01-05 10:25:00 UTC", product="13"))  # bridges the two sessions
    result, _ = ingest_files(spark, tmp_path, {"day1-late.csv": late})
    assert (result.batches, result.rows_read, result.clean) == (1, 1, 1)
    table = events(spark, settings)
    assert table.count() == 3 and table.select("session_id").distinct().count() == 1
    assert lake.read(spark, settings.lake, lake.INGEST_AUDIT).count() == 2


def test_events_table_enforces_its_constraints(spark, tmp_path, pseudonym_key):
    _, settings = ingest_files(spark, tmp_path, {"a.csv": rees46(view())})
    bad = events(spark, settings).withColumn("price", F.lit(-5.0))
    with pytest.raises(Exception, match="non_negative_price"):
        bad.write.format("delta").mode("append").save(lake.path(settings.lake, lake.EVENTS))


def table_properties(spark, path: str) -> dict:
    return DeltaTable.forPath(spark, path).detail().first()["properties"]


EXPECTED_PROPERTIES = {
    "delta.dataSkippingStatsColumns": "event_time,event_type,product_id,category_id",
    ingest.EVENT_ID_PROPERTY: ingest.EVENT_ID_SCHEME,
    **{f"delta.constraints.{name}": check for name, check in ingest.CHECK_CONSTRAINTS.items()},
}


def test_a_new_events_table_gets_its_constraints_and_statistics_columns_in_one_commit(spark, tmp_path):
    path = str(tmp_path / "events")
    ingest.ensure_events_table(spark, path)
    assert table_properties(spark, path) == EXPECTED_PROPERTIES
    assert DeltaTable.forPath(spark, path).history().count() == 1
    ingest.ensure_events_table(spark, path)  # a second run changes nothing
    assert DeltaTable.forPath(spark, path).history().count() == 1


def test_an_events_table_made_before_the_constraints_gets_them(spark, tmp_path):
    path = str(tmp_path / "events")
    DeltaTable.create(spark).location(path).addColumns(ingest.EVENTS_SCHEMA).partitionedBy("event_date").execute()
    ingest.ensure_events_table(spark, path)
    assert table_properties(spark, path).keys() == EXPECTED_PROPERTIES.keys()  # ALTER spaces the SQL text out


def test_an_events_table_with_ids_of_an_earlier_scheme_is_refused_with_the_way_out(spark, tmp_path):
    path = str(tmp_path / "events")
    DeltaTable.create(spark).location(path).addColumns(ingest.EVENTS_SCHEMA).partitionedBy("event_date").execute()
    row = ("a" * 32, dt.datetime(2026, 1, 5), dt.date(2026, 1, 5), "view", "1", "1", None, None, None, 1.0, 1, "c" * 64)
    row += ("s", 1)
    spark.createDataFrame([row], ingest.EVENTS_SCHEMA).write.format("delta").mode("append").save(path)
    with pytest.raises(ingest.IngestError, match="earlier behavior-spark.*rebuild it from the raw files"):
        ingest.ensure_events_table(spark, path)


def test_an_events_table_with_numeric_product_ids_is_refused_with_the_way_out(spark, tmp_path):
    path = str(tmp_path / "events")
    numeric = {"product_id", "category_id"}
    columns = [
        T.StructField(f.name, T.LongType() if f.name in numeric else f.dataType, f.nullable)
        for f in ingest.EVENTS_SCHEMA
        if f.name != "order_id"
    ]  # the schema before ids were kept as text
    DeltaTable.create(spark).location(path).addColumns(T.StructType(columns)).partitionedBy("event_date").execute()
    with pytest.raises(ingest.IngestError, match="keeps product_id as bigint.*rebuild it from the raw files"):
        ingest.ensure_events_table(spark, path)


# --- reconciliation -----------------------------------------------------------------------------------------------


def audit(**changes):
    tally = ingest.FileTally(10, ["a.csv"], {"missing_user_id": 1}, valid_rows=9, days=1, lines=None)
    counts = ingest.StatusCounts({"clean": 7, "duplicate": 2, "missing_user_id": 1}, 0, [dt.date(2026, 1, 5)])
    written = dataclasses.replace(ingest.books.NOTHING_WRITTEN, inserted=7, quarantined=1, events_added=7)
    row = ingest.audit_row(0, "rees46", "x", tally, counts, written, events_version=1)
    return {**row, **changes}


def test_reconciliation_passes_when_every_row_is_accounted_for():
    ingest.check_reconciliation(audit())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rows_read": 11}, "11 rows read but 10 accounted for"),
        ({"events_added": 6}, "7 clean rows inserted but the events table grew by 6"),
        ({"quarantined_written": 0}, "1 rejected rows but 0 quarantined"),
    ],
)
def test_reconciliation_fails_loudly(changes, message):
    with pytest.raises(ingest.ReconciliationError, match=message):
        ingest.check_reconciliation(audit(**changes))


# --- bad input ----------------------------------------------------------------------------------------------------


def test_missing_input_path_names_the_setting(spark, tmp_path, pseudonym_key):
    with pytest.raises(ConfigError, match="ingest.input.*no such path"):
        ingest.run(spark, settings_for(tmp_path))


def test_empty_input_is_an_error(spark, tmp_path, pseudonym_key):
    with pytest.raises(ingest.IngestError, match="the input is empty"):
        ingest_files(spark, tmp_path, {"empty.csv": REES46_HEADER})


def test_a_file_lacking_a_mapped_column_is_rejected_whole_and_counted(spark, tmp_path, pseudonym_key):
    result, settings = ingest_files(spark, tmp_path, {"a.csv": rees46(view()), "b.csv": "when,what\n1,2\n\n3,4\n"})
    assert reasons(spark, settings) == {"missing_column": 3}  # every line, its header too; the blank line is not a row
    assert (result.rows_read, result.clean) == (4, 1)
    rejected = lake.read(spark, settings.lake, lake.QUARANTINE).filter(F.col("reason") == "missing_column")
    assert {r["source_file"].rsplit("/", 1)[-1] for r in rejected.collect()} == {"b.csv"}


def test_garbage_file_is_quarantined_not_lost(spark, tmp_path, pseudonym_key):
    garbage = bytes(range(256)) * 4 + b"\n\x00\x01garbage,,\n"
    result, settings = ingest_files(
        spark, tmp_path, {"a.csv": rees46(view()), "b.csv": REES46_HEADER.encode() + garbage}
    )
    assert result.clean == 1
    assert result.rows_read == 1 + sum(reasons(spark, settings).values())
    assert sum(reasons(spark, settings).values()) >= 1
