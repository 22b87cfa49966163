"""Privacy under inspection (issue 16): no key material in plans, event logs or logs; no raw id or personal value in
the quarantine; one key per events table; credentials redacted; the identity map kept out of the lakehouse."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TEST_KEY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from test_ingest import SOURCES, events, ingest_files, settings_for, view, write_files

from behavior_spark import ingest, lake, privacy
from behavior_spark.config import ConfigError, IngestSettings, as_dict, load_settings

ROOT = Path(__file__).resolve().parents[1]


def pads(key: bytes) -> list[str]:
    """The HMAC pads of `key` in hex, both cases: what a plan built from Spark built-ins would show."""
    block = key.ljust(64, b"\0")
    found = [bytes(b ^ pad for b in block).hex() for pad in (0x36, 0x5C)]
    return found + [p.upper() for p in found]


# --- the keyed hash ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"k" * 20, b"x" * 100], ids=["short key", "key longer than a block"])
def test_the_pseudonym_is_hmac_sha256_of_the_nfkc_id(spark, key):
    ids = ["510000001", "ünïcode", "", None, "５０００"]
    df = spark.createDataFrame([(i,) for i in ids], "user_id string")
    got = df.select("user_id", privacy.keyed_hash(spark, key)(F.col("user_id")).alias("h")).collect()
    for row in got:
        if row["user_id"] is None:
            assert row["h"] is None
        else:
            expected = hmac.new(key, privacy.normalise_id(row["user_id"]).encode(), hashlib.sha256).hexdigest()
            assert row["h"] == expected == privacy.hmac_hex(key, row["user_id"])
    assert privacy.hmac_hex(key, "５０００") == privacy.hmac_hex(key, "5000")  # fullwidth digits: one customer


SPACES = "\t\n\x0b\x0c\r\x1c\x1f \x85\xa0\u1680\u2000\u2007\u200a\u2028\u202f\u205f\u3000\u200b\ufeff"
HOSTILE_IDS = st.text(alphabet=st.sampled_from(SPACES) | st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(HOSTILE_IDS, min_size=1, max_size=40), key=st.binary(min_size=16, max_size=80))
def test_the_jvm_hash_gives_python_s_pseudonym_for_any_id_and_key(spark, ids, key):
    """The JVM's NFKC, outer white space and HMAC agree with Python's on every id, compatibility forms, Python's
    white space (which is not Java's) and astral characters included: a lake's customers keep their pseudonyms.
    Characters newer than the JVM's Unicode (13 in Java 17, 15 in Python 3.12) are left out: NFKC cannot know them
    (docs/privacy.md)."""
    assert privacy.jvm_hash_available(spark)
    known = spark.sparkContext._jvm.java.lang.Character.isDefined
    ids = [i for i in ids if all(known(ord(c)) for c in i)]
    df = spark.createDataFrame([(i,) for i in ids], "user_id string")
    got = [r["h"] for r in df.select(privacy.keyed_hash(spark, key)(F.col("user_id")).alias("h")).collect()]
    assert got == [privacy.hmac_hex(key, i) for i in ids]


def test_no_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="BEHAVIOR_SPARK_PSEUDONYM_KEY.*not set"):
        privacy.pseudonym_key(IngestSettings())


def test_the_key_is_not_in_the_plan(spark):
    key = b"plan-sentinel-key-0123456789"
    df = spark.createDataFrame([("42",)], "user_id string").select(privacy.keyed_hash(spark, key)(F.col("user_id")))
    plan = df._jdf.queryExecution().toString()  # what explain(True) prints
    assert "pseudonym" in plan
    for secret in [key.decode(), key.hex(), key.hex().upper(), *pads(key)]:
        assert secret not in plan


# --- ingest with Spark's event log, as a cluster that ships its logs ---------------------------------------------

SENTINEL_KEY = "sentinel-key-Q7x9-never-in-a-log"
SENTINEL_USERS = ["8800555", "8800556", "8800557"]  # low-entropy ids: the ones a leaked key would re-identify


def test_no_key_raw_id_or_session_token_in_the_event_log_plans_log_file_or_console(tmp_path):
    rows = [view(user=u, product=str(i)) for i, u in enumerate(SENTINEL_USERS)]
    rows += [view(user="8800558", time="yesterday"), view(user="8800559") + ",extra,fields"]  # rejected rows too
    write_files(tmp_path, {"a.csv": "".join(line + "\n" for line in [ingest_header(), *rows])})
    settings = settings_for(tmp_path)
    conf = tmp_path / "ingest.yaml"
    conf.write_text(yaml.safe_dump(as_dict(settings)))
    event_logs = tmp_path / "event-logs"
    event_logs.mkdir()
    spark_submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.eventLog.enabled=true",
            "--conf",
            f"spark.eventLog.dir={event_logs.as_uri()}",
            "--conf",
            "spark.eventLog.compress=false",  # the text a reader of the shipped logs would see
            "--conf",
            "spark.sql.ui.explainMode=extended",
            str(ROOT / "jobs" / "ingest.py"),
            "--conf",
            str(conf),
            "--set",
            "log.level=DEBUG",
            "--set",
            f"log.dir={tmp_path / 'logs'}",
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "BEHAVIOR_SPARK_PSEUDONYM_KEY": SENTINEL_KEY,
            "PATH": f"{spark_submit.parent}:{os.environ['PATH']}",
        },  # noqa: E501
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    event_log = "".join(f.read_text() for f in sorted(event_logs.rglob("*")) if f.is_file())  # Spark 4: a folder
    assert "SparkListenerSQLExecutionStart" in event_log and "pseudonym" in event_log  # the plans are in it
    key = SENTINEL_KEY.encode()
    secrets = [SENTINEL_KEY, key.hex(), key.hex().upper(), *pads(key)]
    raw_values = [*SENTINEL_USERS, "8800558", "8800559", "sess-88005"]
    log_file = "".join(f.read_text() for f in (tmp_path / "logs").glob("ingest-*.log"))  # the run's full log
    assert "ingest: finished" in log_file
    console = result.stderr + result.stdout
    for where, text in {"event log": event_log, "log file": log_file, "console": console}.items():
        for secret in secrets:
            assert secret not in text, f"key material in the {where}"
        for raw in raw_values:
            assert raw not in text, f"raw value {raw} in the {where}"


def ingest_header() -> str:
    from test_ingest import REES46_HEADER

    return REES46_HEADER.rstrip("\n")


# --- the quarantine keeps no raw id and no personal value --------------------------------------------------------

USER = "SENTINELUSER"
PERSONAL = "SENTINELPERSONAL"


def layouts(tmp_path: Path) -> dict[str, dict[str, str | bytes]]:
    """mapping -> its files: good and bad lines of every reject reason the layout can have, sentinels in the user id
    and every personal column."""
    whitespace = tmp_path / "taobao_ws.yaml"
    whitespace.write_text((SOURCES / "taobao.yaml").read_text().replace('delimiter: ","', "delimiter: whitespace"))
    rees46_rows = [
        f"2026-01-05 10:00:00 UTC,view,1,2053,electronics,acme,9.99,{USER}1,{PERSONAL}",
        f"yesterday,view,1,2053,electronics,acme,9.99,{USER}2,{PERSONAL}",  # unparseable_timestamp
        f"2026-01-05 10:00:00 UTC,click,1,2053,electronics,acme,9.99,{USER}3,{PERSONAL}",  # unknown_event_type
        f"2026-01-05 10:00:00 UTC,view,p-1,2053,electronics,acme,9.99,{USER}4,{PERSONAL}",  # clean: a product code
        f"2026-01-05 10:00:00 UTC,view,1,2053,electronics,acme,-5,{USER}5,{PERSONAL}",  # invalid_price
        f"2026-01-05 10:00:00 UTC,view,1,2053,electronics,acme,9.99,{USER}6,{PERSONAL},extra",  # malformed_line
        f"2026-01-05 10:00:00 UTC,view,1,x,electronics,acme,9.99,{USER}7,{PERSONAL}",  # clean: a category code
        f"2026-01-05 10:00:00 UTC,view,1,2053,electronics,acme,abc,{USER}8,{PERSONAL}",  # unparseable_price
        f"1999-01-05 10:00:00 UTC,view,1,2053,electronics,acme,9.99,{USER}9,{PERSONAL}",  # timestamp_out_of_range
        "2026-01-05 10:00:00 UTC,view,1,2053,electronics,acme,9.99,null,{PERSONAL}",  # missing_user_id
        ingest_header(),  # repeated_header
    ]
    latin1 = f"{ingest_header()}\n2026-01-05 10:00:00 UTC,view,1,2053,é,acme,9.99,{USER}10,{PERSONAL}\n"
    lacking = (
        ingest_header().replace(",price", "") + f"\n2026-01-05 10:00:00 UTC,view,1,2053,e,acme,{USER}11,{PERSONAL}\n"
    )
    jsonl = [
        f'{{"event_time": "2026-01-05 10:00:00 UTC", "event_type": "view", "product_id": "1", "user_id": "{USER}1",'
        f' "user_session": "{PERSONAL}"}}',
        f'{{"event_time": "yesterday", "event_type": "view", "product_id": "1", "user_id": "{USER}2", '
        f'"user_session": "{PERSONAL}"}}',
        f'{{"event_time": "2026-01-05 10:00:00 UTC", "user_id": "{USER}3", "user_session": "{PERSONAL}"',  # corrupt
    ]
    taobao = [f"{USER}1,2,3,pv,1767607200", f"{USER}2,2,3,click,1767607200", f"{USER}3,2,3,pv,99999999999999999"]
    spaces = [f"{USER}1 2 3 pv 1767607200", f"{USER}2 2 3 pv 1767607200 extra", f"{USER}3 2 3 pv 99999999999999999"]
    purchases = [f"{USER}1,2026-01-05,1,10.0,{PERSONAL}@x.io", f"{USER}2,someday,1,10.0,{PERSONAL}@x.io"]
    purchases += [f"{USER}3,2026-01-05,abc,10.0,{PERSONAL}@x.io", f"{USER}4,2026-01-05,1,10.0,{PERSONAL}@x.io,extra"]
    purchases += [f"{USER}5,2026-01-05,0,10.0,{PERSONAL}@x.io"]  # zero_quantity
    rees46 = ingest_header() + "\n" + "\n".join(rees46_rows).replace("{PERSONAL}", PERSONAL) + "\n"
    return {
        "rees46": {"a.csv": rees46, "latin1.csv": latin1.encode("latin-1"), "lacking.csv": lacking},
        "rees46_jsonl": {"a.json": "\n".join(jsonl) + "\n"},
        "taobao": {"a.csv": "\n".join(taobao) + "\n"},
        str(whitespace.with_suffix("")): {"a.txt": "\n".join(spaces) + "\n"},
        "purchases": {"a.csv": "customer_id,date,quantity,amount,email\n" + "\n".join(purchases) + "\n"},
    }


def test_the_quarantine_keeps_no_raw_id_or_personal_value_for_any_reason_or_layout(spark, tmp_path, pseudonym_key):
    for number, (source, files) in enumerate(layouts(tmp_path).items()):
        folder = tmp_path / f"layout{number}"
        folder.mkdir()
        result, settings = ingest_files(spark, folder, files, source=source)
        assert result.quarantined >= 2, source
        quarantine = lake.read(spark, settings.lake, lake.QUARANTINE)
        kept = quarantine.select(F.to_json(F.struct("*")).alias("row")).collect()
        assert all(USER not in r["row"] and PERSONAL not in r["row"] for r in kept), source
        assert all(r["raw"] for r in quarantine.collect()), f"{source}: every rejected row says something of itself"
        kept_text = " ".join(r["raw"] for r in quarantine.collect())
        pseudonyms = [privacy.hmac_hex(TEST_KEY.encode(), f"{USER}{n}") for n in range(1, 10)]
        assert any(p in kept_text for p in pseudonyms), f"{source}: rejected rows name their customer by pseudonym"


# --- one key per events table -----------------------------------------------------------------------------------


def test_a_run_with_another_key_fails_before_reading_naming_the_setting(spark, tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", TEST_KEY)
    _, settings = ingest_files(spark, tmp_path, {"a.csv": ingest_header() + "\n" + view(user="1") + "\n"})
    before = events(spark, settings).count()
    monkeypatch.setenv("BEHAVIOR_SPARK_PSEUDONYM_KEY", "another-key-of-enough-length")
    write_files(tmp_path, {"b.csv": ingest_header() + "\n" + view(user="2") + "\n"})
    with pytest.raises(ConfigError, match="ingest.pseudonym_key_env.*not the key the events"):
        ingest.run(spark, settings)
    assert events(spark, settings).count() == before
    assert not lake.exists(spark, settings.lake, lake.INGEST_AUDIT) or (
        lake.read(spark, settings.lake, lake.INGEST_AUDIT).count() == 1
    )
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{lake.path(settings.lake, lake.EVENTS)}`").first()
    assert detail["properties"][ingest.KEY_FINGERPRINT_PROPERTY] == privacy.fingerprint(TEST_KEY.encode())


# --- configuration ----------------------------------------------------------------------------------------------


def test_an_identity_map_inside_the_lakehouse_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="ingest.identity_map.*inside 'lake.root'"):
        load_settings(None, [f"lake.root={tmp_path}/lake", f"ingest.identity_map={tmp_path}/lake/identity"])
    with pytest.raises(ConfigError, match="inside"):
        load_settings(None, ["lake.root=s3://bucket/lake", "ingest.identity_map=s3://bucket/lake/ids"])
    load_settings(None, ["lake.root=s3://bucket/lake", "ingest.identity_map=s3://bucket/lake-restricted/ids"])


@pytest.mark.parametrize(
    "url",
    [
        "jdbc:postgresql://db:5432/a?user=u&password=hunter2secret",
        "jdbc:sqlserver://db:1433;databaseName=a;user=u;password=hunter2secret;encrypt=true",
        "jdbc:redshift://db:5439/a?UID=u&PWD=hunter2secret",
        "jdbc:postgresql://u:hunter2secret@db:5432/a",
        "jdbc:snowflake://acct.snowflakecomputing.com/?token=hunter2secret",
        "jdbc:mysql://db/a?Password=hunter2secret&x=1",
    ],
)
def test_every_password_form_is_redacted(url):
    redacted = privacy.redact_url(url)
    assert "hunter2secret" not in redacted and "***" in redacted
