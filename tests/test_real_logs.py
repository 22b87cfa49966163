"""Ingest against logs as users have them, not as the generator makes them (issue 14).

One scenario test per kind of real-world dirt, named after it, and a property-based test that throws random mixes
of good lines and named defects, over several files and batches, at ingest and checks the books on every draw.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import hmac
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import TEST_KEY
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from test_ingest import REES46_HEADER, SOURCES, events, ingest_files, reasons, rees46, settings_for, view, write_files

from behavior_spark import canonical, generate, ingest, lake, pipeline, session, sources
from behavior_spark.config import ConfigError, load_settings


def customer(raw_id: str) -> str:
    return hmac.new(TEST_KEY.encode(), raw_id.encode(), hashlib.sha256).hexdigest()


def test_a_clean_day_after_a_dirty_one_reconciles(spark, tmp_path, pseudonym_key):
    first, settings = ingest_files(spark, tmp_path, {"day1.csv": rees46(view(user="1"), view(user=""))})
    assert first.quarantined == 1
    clean_day = rees46(view(user="2", time="2026-01-06 10:00:00 UTC"))
    second, _ = ingest_files(spark, tmp_path, {"day2.csv": clean_day})  # raised ReconciliationError before
    assert (second.clean, second.quarantined) == (1, 0)
    assert reasons(spark, settings) == {"missing_user_id": 1}
    again = ingest.run(spark, settings)  # and the next run has nothing to do, rather than failing again
    assert again.batches == 0


def test_a_backfill_with_old_modification_times_is_read(spark, tmp_path, pseudonym_key):
    _, settings = ingest_files(spark, tmp_path, {"today.csv": rees46(view(user="1"))})
    write_files(tmp_path, {"backfill-2025.csv": rees46(view(user="2", time="2025-06-01 10:00:00 UTC"))})
    a_year_ago = (dt.datetime.now() - dt.timedelta(days=365)).timestamp()
    os.utime(tmp_path / "raw" / "backfill-2025.csv", (a_year_ago, a_year_ago))  # copied with its times preserved
    result = ingest.run(spark, settings)
    assert (result.rows_read, result.clean) == (1, 1)
    assert events(spark, settings).count() == 2


def test_order_lines_that_differ_are_kept_and_only_exact_copies_are_duplicates(spark, tmp_path, pseudonym_key):
    header = "customer_id,date,quantity,amount,email\n"
    lines = ["7,2026-01-05,1,10.0,a@x", "7,2026-01-05,1,25.0,a@x", "7,2026-01-05,2,10.0,a@x", "7,2026-01-05,1,10.0,a@x"]
    result, settings = ingest_files(
        spark, tmp_path, {"orders.csv": header + "\n".join(lines) + "\n"}, source="purchases"
    )
    assert (result.clean, result.duplicates, result.same_key_variants) == (3, 1, 2)
    revenue = events(spark, settings).agg(F.sum(F.col("price") * F.col("quantity"))).first()[0]
    assert revenue == pytest.approx(10.0 + 25.0 + 10.0)  # every order's revenue; the exact copy once


def test_a_declared_source_id_tells_order_lines_apart(spark, tmp_path, pseudonym_key):
    header = "timestamp,visitorid,event,itemid,transactionid\n"
    lines = ["1433221332117,257597,transaction,355908,4000", "1433221332117,257597,transaction,355908,4001"]
    lines += ["1433221332117,257597,transaction,355908,4001"]  # an exact copy of the second
    result, settings = ingest_files(
        spark, tmp_path, {"events.csv": header + "\n".join(lines) + "\n"}, source="retailrocket"
    )
    assert (result.clean, result.duplicates) == (2, 1)


def test_a_batch_whose_books_do_not_add_up_keeps_nothing_and_says_so(spark, tmp_path, pseudonym_key, monkeypatch):
    _, settings = ingest_files(spark, tmp_path, {"day1.csv": rees46(view(user="1"), view(user=""))})
    events_before, quarantine_before = sorted(events(spark, settings).collect()), reasons(spark, settings)

    def loses_a_row(classified, tally):  # a status count that misses a row: found before anything is written
        counts = real_status_counts(classified, tally)
        return dataclasses.replace(counts, by_status={**counts.by_status, "clean": counts.by_status["clean"] - 1})

    real_status_counts = ingest.status_counts
    monkeypatch.setattr(ingest.books, "status_counts", loses_a_row)
    write_files(tmp_path, {"day2.csv": rees46(view(user="2", time="2026-01-06 10:00:00 UTC"), view(user=""))})
    with pytest.raises(ingest.ReconciliationError, match="2 rows read but 1 given a status"):
        ingest.run(spark, settings)
    monkeypatch.setattr(ingest.books, "status_counts", real_status_counts)
    real_write_quarantine = ingest.write_quarantine
    monkeypatch.setattr(ingest.tables, "write_quarantine", lambda *args: 0)  # Delta "wrote" other than counted: undone
    with pytest.raises(ingest.ReconciliationError, match="1 rejected rows but 0 quarantined"):
        ingest.run(spark, settings)
    assert sorted(events(spark, settings).collect()) == events_before and reasons(spark, settings) == quarantine_before
    audits = lake.read(spark, settings.lake, lake.INGEST_AUDIT).orderBy("batch_id").collect()
    assert [a["status"] for a in audits] == ["ok", "failed", "failed"]
    monkeypatch.setattr(ingest.tables, "write_quarantine", real_write_quarantine)
    assert ingest.run(spark, settings).clean == 1  # the files were not recorded as ingested: read again


def test_blank_lines_and_line_breaks_in_quoted_fields_are_counted_from_the_raw_text(spark, tmp_path, pseudonym_key):
    quoted = view(user="2").replace(",electronics.audio,", ',"electronics\n\n  audio",')  # a blank line inside
    text = rees46(view(user="1")) + "\n   \n" + quoted + "\r\n\n" + view(user="3") + "\n"
    result, settings = ingest_files(spark, tmp_path, {"a.csv": text})
    assert (result.rows_read, result.clean, result.quarantined) == (4, 3, 1)  # the CSV reader keeps "   "
    audit = lake.read(spark, settings.lake, lake.INGEST_AUDIT).first()
    assert (audit["raw_lines"], audit["header_lines"], audit["blank_lines"]) == (9, 1, 2)  # 1 + 1 + 3 + 1 in records


def test_a_record_the_parser_loses_is_found_against_the_raw_line_count(spark, tmp_path, pseudonym_key, monkeypatch):
    real_read_files = sources.read_files

    def loses_user_2(spark, mapping, paths):  # a parser that drops a line silently, as a misread quote would
        batch = real_read_files(spark, mapping, paths)
        return dataclasses.replace(batch, rows=batch.rows.filter(F.col("user_id") != "2"))

    monkeypatch.setattr(sources, "read_files", loses_user_2)
    write_files(tmp_path, {"a.csv": rees46(view(user="1"), view(user="2"))})
    with pytest.raises(ingest.ReconciliationError, match="the files hold 3 lines"):
        ingest.run(spark, settings_for(tmp_path))
    assert events(spark, settings_for(tmp_path)).count() == 0


def test_a_repeated_header_line_has_its_own_reason(spark, tmp_path, pseudonym_key):
    concatenated = rees46(view(user="1")) + REES46_HEADER + view(user="2") + "\n"  # two exports joined with `cat`
    result, settings = ingest_files(spark, tmp_path, {"joined.csv": concatenated})
    assert reasons(spark, settings) == {"repeated_header": 1}
    assert (result.rows_read, result.clean) == (3, 2)


def test_ids_are_trimmed_of_unicode_white_space_and_null_tokens_are_missing(spark, tmp_path, pseudonym_key):
    same_customer = ["5000", " 5000 ", "\t5000", "5000\u00a0", "\ufeff5000", "\u20035000\u200b"]
    rows = [view(user=u, product=str(i)) for i, u in enumerate(same_customer)]
    rows += [view(user=token, product="99") for token in ("null", "NULL", "None", "NaN", "-")]
    result, settings = ingest_files(spark, tmp_path, {"ids.csv": rees46(*rows)})
    assert {r["customer_id"] for r in events(spark, settings).collect()} == {customer("5000")}
    assert result.clean == len(same_customer)
    assert reasons(spark, settings) == {"missing_user_id": 5}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(st.sampled_from(canonical.UNICODE_SPACE) | st.characters(codec="utf-8")), max_size=30))
def test_fields_are_trimmed_as_python_strips_the_same_characters(spark, texts):
    """The trim skips fields whose end characters cannot be white space (`may_have_space_at_an_end`): never one
    that can."""
    assert all(ord(c) <= 32 or ord(c) >= 133 for c in canonical.UNICODE_SPACE)
    df = spark.createDataFrame([(t,) for t in texts], "t string")
    got = [r[0] for r in df.select(canonical.missing_as_null(F.col("t"), ("null",))).collect()]
    assert got == [
        None if t.strip(canonical.UNICODE_SPACE) in ("", "null") else t.strip(canonical.UNICODE_SPACE) for t in texts
    ]


def test_out_of_range_epochs_are_quarantined_and_category_ids_kept_as_written(spark, tmp_path, pseudonym_key):
    micros = "1511544070000000"  # microseconds in a seconds column
    nanos = "1511544070000000000"
    content = "".join(
        f"{line}\n"
        for line in [
            "1,2268318,2520377,pv,1511544070",  # clean
            f"2,2268318,2520377,pv,{micros}",
            f"3,2268318,2520377,pv,{nanos}",
            "4,2268318,2520377,pv,99999999999999999999999",  # more digits than a long holds
            "5,2268318,abc,pv,1511544070",  # a category id that is not a number: kept as the log writes it
        ]
    )
    result, settings = ingest_files(spark, tmp_path, {"UserBehavior.csv": content}, source="taobao")
    assert reasons(spark, settings) == {"timestamp_out_of_range": 3}
    assert result.clean == 2
    assert {r["category_id"] for r in events(spark, settings).collect()} == {"2520377", "abc"}


def test_quantities_must_be_whole_numbers(spark, tmp_path, pseudonym_key):
    header = "customer_id,date,quantity,amount,email\n"
    lines = ["1,2026-01-05,2,10.0,a@x", "2,2026-01-05,2.0,10.0,b@x", "3,2026-01-05,abc,10.0,c@x"]
    lines += ["4,2026-01-05,2.5,10.0,d@x", "5,2026-01-05,,10.0,e@x"]
    result, settings = ingest_files(
        spark, tmp_path, {"orders.csv": header + "\n".join(lines) + "\n"}, source="purchases"
    )
    assert reasons(spark, settings) == {"unparseable_quantity": 2}
    quantities = {r["quantity"] for r in events(spark, settings).collect()}
    assert quantities == {2, 1} and result.clean == 3


def test_a_session_made_in_another_time_zone_ingests_in_utc(spark, tmp_path, pseudonym_key):
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")  # a cluster left in its own zone
    try:
        given = session.get_spark(load_settings(None, ["spark.shuffle_partitions=2"]).spark)  # a job's session
        assert given.conf.get("spark.sql.session.timeZone") == "UTC"
        _, settings = ingest_files(spark, tmp_path, {"a.csv": rees46(view(time="2026-01-05 23:30:00 UTC"))})
        row = events(spark, settings).first()
        assert row["event_date"] == dt.date(2026, 1, 5)
        assert row["event_time"] == dt.datetime(2026, 1, 5, 23, 30)  # read back in UTC
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")


def test_run_reads_the_configured_input_and_generate_never_overwrites_raw_data(spark, tmp_path):
    assert "generate" not in pipeline.PIPELINE
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "orders-2026-01.csv").write_text("someone's real data\n")
    settings = load_settings(None, [f"generate.output={raw}", "generate.rows=2000", "generate.files=1"])
    with pytest.raises(ConfigError, match="generate.output.*orders-2026-01.csv"):
        generate.run(spark, settings)
    assert (raw / "orders-2026-01.csv").read_text() == "someone's real data\n"
    fresh = load_settings(None, [f"generate.output={tmp_path / 'demo'}", "generate.rows=2000", "generate.files=1"])
    first = generate.run(spark, fresh)
    assert generate.run(spark, fresh) == first  # its own output it may replace


# --- many hostile worlds --------------------------------------------------------------------------------------------

COLUMNS = REES46_HEADER.strip().split(",")
USERS = ["u1001", "u1002", "u1003", " u1003 ", "\tu1004", "u1005\u00a0"]  # " u1003 " is customer u1003
TIMES = [f"2026-01-0{d} {h:02d}:{m:02d}:00 UTC" for d in (5, 6) for h in (9, 23) for m in (0, 40)]
HEADER = "<the file's header line>"  # a record that repeats the header, in the file's own column order
BRANDS = ["acme", 'acme, "the best"', "two\nlines", ""]  # another tool's quoting: delimiters, quotes, line breaks


def csv_line(values: list[str]) -> str:
    """One RFC 4180 record: fields with a delimiter, a quote or a line break are quoted, quotes doubled."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().removesuffix("\n")


@st.composite
def good_event(draw) -> dict[str, str]:
    return {
        "event_time": draw(st.sampled_from(TIMES)),
        "event_type": draw(st.sampled_from(["view", "cart", "purchase"])),
        "product_id": draw(st.sampled_from(["1", "2", "85123A", "sku-9", "ÉTÉ"])),  # ids as text
        "category_id": "2053",
        "category_code": "electronics.audio",
        "brand": draw(st.sampled_from(BRANDS)),
        "price": "9.99",
        "user_id": draw(st.sampled_from(USERS)),
        "user_session": "sess",
    }


def identity(event: dict[str, str]) -> tuple:
    """What tells one good line's event from another's: every mapped field, the user id trimmed."""
    return (event["user_id"].strip(), *(event[c] for c in COLUMNS if c not in ("user_id", "user_session")))


DEFECTS = {  # reason -> how a good event is spoiled
    "missing_user_id": lambda e: {**e, "user_id": "null"},
    "unparseable_timestamp": lambda e: {**e, "event_time": "yesterday"},
    "unknown_event_type": lambda e: {**e, "event_type": "click"},
    "invalid_price": lambda e: {**e, "price": "-5.00"},
}


@st.composite
def raw_record(draw) -> tuple[dict | str, str | None]:
    """(an event's fields, or a literal line; the reason it is rejected, or None for a good line)."""
    event = draw(good_event())
    kind = draw(st.sampled_from([None, None, None, "malformed_line", "repeated_header", *sorted(DEFECTS)]))
    if kind is None:
        return event, None
    if kind == "malformed_line":
        return csv_line(list(event.values())) + ",extra,fields", kind
    if kind == "repeated_header":
        return HEADER, kind
    return DEFECTS[kind](event), kind


raw_file = st.tuples(st.permutations(COLUMNS), st.lists(raw_record(), min_size=1, max_size=6), st.integers(0, 2))
batches_of_files = st.lists(st.lists(raw_file, min_size=1, max_size=2), min_size=1, max_size=2)


def render(columns: list[str], records: list[tuple[dict | str, str | None]]) -> str:
    """A CSV file with its columns in `columns` order; literal lines as they are."""
    header = ",".join(columns)
    lines = [header]
    lines += [
        header if r is HEADER else r if isinstance(r, str) else csv_line([r[c] for c in columns]) for r, _ in records
    ]
    return "\n".join(lines) + "\n"


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches_of_files)
def test_the_books_add_up_and_the_table_holds_exactly_the_good_lines(spark, pseudonym_key, batches):
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        expected_events: set[tuple] = set()
        expected_reasons: dict[str, int] = {}
        records_written = lines_written = 0
        for number, files in enumerate(batches):
            for index, (columns, records, copies) in enumerate(files):
                records = records + records[:copies]  # exact copies of the file's first records
                text = render(list(columns), records)
                write_files(tmp, {f"batch{number}-file{index}.csv": text})
                records_written += len(records)
                lines_written += text.count("\n")  # physical lines, those inside quoted fields too
                for record, reason in records:
                    if reason is None:
                        expected_events.add(identity(record))
                    else:
                        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
            result = ingest.run(spark, settings_for(tmp))
            assert sum(getattr(result, k) for k in ingest.ACCOUNTED) == result.rows_read
        current = settings_for(tmp)
        audits = lake.read(spark, current.lake, lake.INGEST_AUDIT).agg(F.sum("rows_read"), F.sum("raw_lines")).first()
        assert audits[0] == records_written  # against the records written, not against what the parser saw
        assert audits[1] == lines_written
        quarantine = lake.read(spark, current.lake, lake.QUARANTINE).select(F.to_json(F.struct("*"))).collect()
        assert not any("u100" in row[0] for row in quarantine)  # no raw id in the quarantine, whatever the defect
        assert events(spark, current).count() == len(expected_events)
        assert reasons(spark, current) == expected_reasons
        before = sorted(tuple(r) for r in events(spark, current).collect())
        shutil.rmtree(lake.path(current.lake, lake.INGESTED_FILES))  # every file read again: nothing changes
        ingest.run(spark, current)
        assert sorted(tuple(r) for r in events(spark, current).collect()) == before
        assert reasons(spark, current) == expected_reasons


# --- declared identity: every line an event, or the later line of a key a correction ---------------------------------

KEYED_LINE = st.tuples(st.sampled_from(["1", "2"]), st.sampled_from(TIMES[:2]), st.sampled_from(["1.00", "2.00"]))
keyed_batches = st.lists(
    st.lists(st.lists(KEYED_LINE, min_size=1, max_size=4), min_size=1, max_size=2), min_size=1, max_size=2
)


def mapping_with(tmp: Path, **keys: str) -> Path:
    """The rees46 mapping with `keys` added (identity, same_key)."""
    path = tmp / "mapping.yaml"
    extra = "".join(f"{k}: {v}\n" for k, v in keys.items())
    path.write_text((SOURCES / "rees46.yaml").read_text() + extra)
    return path


@pytest.mark.parametrize("keys", [{"identity": "line"}, {"same_key": "keep_latest"}], ids=["line", "keep_latest"])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=keyed_batches)
@example(batches=[[[("1", TIMES[0], "1.00")] * 3]])  # found: a batch of copies only (the guard rails are off here)
def test_declared_identity_keeps_every_line_or_the_latest_of_each_key(spark, pseudonym_key, keys, batches):
    """`identity: line`: every line is an event, identical ones too. `same_key: keep_latest`: of the lines sharing
    customer, type, item and time, the one that arrived last (later batch, later file, later line) is the event, the
    others are counted as superseded or corrections. Either way a full re-read changes nothing."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        mapping = mapping_with(tmp, **keys)
        paths = [f"lake.root={tmp / 'lake'}", f"ingest.input={tmp / 'raw'}", f"ingest.source={mapping}"]
        current = load_settings(None, [*paths, "ingest.fail_share=1.0"])  # a batch may be all copies, on purpose
        lines_written, latest, stamp = 0, {}, 1_700_000_000
        for number, files in enumerate(batches):
            for index, lines in enumerate(files):
                name = f"batch{number}-file{index}.csv"
                write_files(tmp, {name: rees46(*(view(user=u, time=t, price=p) for u, t, p in lines))})
                stamp += 60
                os.utime(tmp / "raw" / name, (stamp, stamp))  # files arrive in the order written
                lines_written += len(lines)
                latest.update({(customer(u), t): float(p) for u, t, p in lines})
            result = ingest.run(spark, current)
            assert sum(getattr(result, k) for k in ingest.ACCOUNTED) == result.rows_read
        rows = events(spark, current).select("customer_id", "event_time", "price").collect()
        if keys.get("identity") == "line":
            assert len(rows) == lines_written
        else:
            as_text = {(r["customer_id"], f"{r['event_time']:%Y-%m-%d %H:%M:%S} UTC"): r["price"] for r in rows}
            assert len(rows) == len(latest) and as_text == latest
            audits = lake.read(spark, current.lake, lake.INGEST_AUDIT).agg(F.sum("clean"), F.sum("corrections"))
            assert audits.first()[0] - audits.first()[1] == len(latest)  # clean rows less those that replaced one
        before = sorted(tuple(r) for r in events(spark, current).collect())
        shutil.rmtree(lake.path(current.lake, lake.INGESTED_FILES))
        again = ingest.run(spark, current)
        assert (again.clean, again.corrections) == (0, 0)
        assert sorted(tuple(r) for r in events(spark, current).collect()) == before


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"identity": "row"}, "'identity' must be one of content, line"),
        ({"same_key": "newest"}, "'same_key' must be one of keep_both, keep_latest"),
        ({"identity": "line", "same_key": "keep_latest"}, "no line corrects another"),
    ],
)
def test_a_mapping_states_its_identity_and_same_key_policy_or_is_refused(tmp_path, keys, message):
    with pytest.raises(ConfigError, match=message):
        sources.load_mapping(mapping_with(tmp_path, **keys))
