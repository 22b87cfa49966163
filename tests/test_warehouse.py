"""The warehouse swap on a real PostgreSQL, statement by statement through Spark's JDBC source (`warehouse.Link`): a
date is replaced whole or not at all, and no staging table outlives an export. The export of a whole run is checked in
`test_end_to_end.py`."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from behavior_spark import warehouse
from behavior_spark.config import WarehouseSettings

DAY = dt.date(2026, 6, 1)


def rows(spark, customers: range, day: dt.date = DAY):
    schema = "customer_id string, segment_id int, scoring_date date"
    return spark.createDataFrame([(f"c{i}", i % 3, day) for i in customers], schema)


def table(spark, postgres, name: str) -> list[tuple]:
    properties = {"user": postgres.user, "password": postgres.password, "driver": "org.postgresql.Driver"}
    found = spark.read.jdbc(postgres.url, name, properties=properties).collect()
    return sorted(tuple(r) for r in found)


def staging_tables(spark, postgres) -> list[tuple]:
    return [t for t in table(spark, postgres, "information_schema.tables") if warehouse.STAGING_SUFFIX in str(t)]


@pytest.fixture
def target(spark, postgres):
    """A settings section naming a fresh table, with the date already exported once and another date beside it."""
    cfg = WarehouseSettings(url=postgres.url, table=f"public.swap_{uuid.uuid4().hex[:8]}")
    warehouse.replace_date(spark, rows(spark, range(5)), cfg, postgres.user, postgres.password, DAY)
    other = DAY - dt.timedelta(days=1)
    warehouse.replace_date(spark, rows(spark, range(3), other), cfg, postgres.user, postgres.password, other)
    return cfg


def test_a_date_is_replaced_and_other_dates_are_kept(spark, postgres, target):
    exported = warehouse.replace_date(spark, rows(spark, range(10, 14)), target, postgres.user, postgres.password, DAY)
    assert exported == 4
    found = table(spark, postgres, target.table)
    assert [r[0] for r in found if r[2] == DAY] == ["c10", "c11", "c12", "c13"]
    assert len([r for r in found if r[2] != DAY]) == 3
    assert staging_tables(spark, postgres) == []


def test_a_statement_failing_inside_the_swap_leaves_the_target_as_it_was(spark, postgres, target, monkeypatch):
    before = table(spark, postgres, target.table)
    real_execute = warehouse.Link.execute

    def failing_before_commit(link, *statements):  # the DELETE has run when the transaction fails
        if "COMMIT" in statements:
            statements = (*statements[:-1], "SELECT 1/0", "COMMIT")
        return real_execute(link, *statements)

    monkeypatch.setattr(warehouse.Link, "execute", failing_before_commit)
    with pytest.raises(warehouse.WarehouseError, match="division by zero"):
        warehouse.replace_date(spark, rows(spark, range(20, 30)), target, postgres.user, postgres.password, DAY)
    assert table(spark, postgres, target.table) == before
    assert staging_tables(spark, postgres) == []


def test_a_staging_table_left_by_a_killed_export_is_dropped_by_the_next(spark, postgres, target):
    leftover = f"{target.table}{warehouse.STAGING_SUFFIX}0123456789ab"
    properties = {"user": postgres.user, "password": postgres.password, "driver": "org.postgresql.Driver"}
    rows(spark, range(2)).write.jdbc(postgres.url, leftover, mode="overwrite", properties=properties)
    assert len(staging_tables(spark, postgres)) == 1
    warehouse.replace_date(spark, rows(spark, range(5)), target, postgres.user, postgres.password, DAY)
    assert staging_tables(spark, postgres) == []
