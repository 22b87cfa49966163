"""Privacy: the pseudonym key, the keyed hash that turns raw ids into pseudonyms, and what is redacted.

- The key comes from the environment only (`ingest.pseudonym_key_env`), never from a file.
- The keyed hash runs in the JVM (`behavior_spark/jvm/KeyedHash.java`, a Spark SQL function in the JAR set-up
  builds), with the key sent as a broadcast variable: no Python in ingest's hot path. A hash built from Spark
  built-ins would need the key (or its HMAC pads) as a literal of the query plan, and plans are shown by
  `explain()`, the Spark UI and the event logs clusters ship to object storage; the function's plan shows its name.
  Where the JAR is not on the classpath, the same hash runs on Arrow batches in the Python workers.
- Over Spark Connect there are no broadcast variables, and a function's closure travels inside the plan the client
  sends (which the server's listeners see): the key never leaves the server there. The executors read it from
  their own environment (a cluster environment variable filled from a secret scope), and the fingerprint is
  computed there too, so the client needs no key at all.
- Ids are NFKC-normalised before hashing, so a fullwidth "５０００" is the customer "5000".
- The key's fingerprint (an HMAC of a fixed text) is recorded with the events, so a run with another key fails
  before reading any data instead of giving every customer a second pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import unicodedata
from collections.abc import Callable

import pandas as pd
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from behavior_spark.config import ConfigError, IngestSettings
from behavior_spark.lake import one_row

log = logging.getLogger(__name__)

FINGERPRINT_TEXT = b"behavior-spark pseudonym key fingerprint v1"
# Belt and braces for plans, UI pages and event logs: Spark redacts conf values whose name matches the first, and
# any text of a plan matching the second (credentials in JDBC URLs, options and paths; over Spark Connect the plan's
# text is the client's protobuf, where an option reads `key: "password" value: "..."`).
REDACTED_CONF_NAMES = r"(?i)secret|password|passwd|pwd|token|access[.]?key|credential|pseudonym"
_SECRET_NAMES = r"password|passwd|pwd|secret|token|access[._]?key"  # parameters that carry a credential
REDACTED_PLAN_TEXT = (
    rf"(?i)({_SECRET_NAMES})\s*[=:]\s*[^\s;&,)\]'\"]+"  # key=value, key: value
    r"|//[^/:@\s]+:[^@/\s]+@"  # user:password@host
    rf'|key:\s*"({_SECRET_NAMES})"\s*value:\s*"[^"]*"'  # an option in a Spark Connect plan's text
)


def pseudonym_key(cfg: IngestSettings) -> bytes:
    """The HMAC key, from the environment only; there is deliberately no default."""
    value = os.environ.get(cfg.pseudonym_key_env, "")
    if len(value) < 16:
        raise ConfigError(
            f"environment variable {cfg.pseudonym_key_env} (setting 'ingest.pseudonym_key_env') must hold the "
            "pseudonymisation key, at least 16 characters; it is " + ("too short" if value else "not set")
        )
    return value.encode()


def fingerprint(key: bytes) -> str:
    """Tells keys apart without revealing them: 16 hex characters of an HMAC of a fixed text."""
    return hmac.new(key, FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:16]


def normalise_id(text: str) -> str:
    """The id as it is hashed: NFKC (fullwidth and other compatibility forms folded), outer white space removed."""
    return unicodedata.normalize("NFKC", text).strip()


def hmac_hex(key: bytes, text: str) -> str:
    """HMAC-SHA256 of the normalised id as 64 hex characters: the pseudonym, as Python computes it."""
    return hmac.new(key, normalise_id(text).encode(), hashlib.sha256).hexdigest()


JVM_HASH = "behaviorspark.KeyedHash"  # the JAR's class (behavior_spark/jvm), built by set-up into .cache/jars
JVM_FUNCTION = "behavior_spark_pseudonym"  # its name in a session's functions, and so in plans


def keyed_hash(spark: SparkSession, key: bytes) -> Callable[[Column], Column]:
    """A column function: the pseudonym of a string column (null stays null), computed in the JVM.

    The key reaches the executors in a JVM broadcast variable; the plan shows only the function's name. Without
    the JAR: `keyed_hash_in_python`, with a warning.
    """
    if not jvm_hash_available(spark):
        log.warning("the JVM keyed hash (%s) is not on the classpath: hashing in Python workers", JVM_HASH)
        return keyed_hash_in_python(spark, key)
    jvm = _jvm(spark)
    function = jvm.behaviorspark.KeyedHash(spark.sparkContext._jsc.broadcast(key))
    spark._jsparkSession.udf().register(JVM_FUNCTION, function, jvm.org.apache.spark.sql.types.DataTypes.StringType)
    return lambda ids: F.call_function(JVM_FUNCTION, ids)


def jvm_hash_available(spark: SparkSession) -> bool:
    """Whether the driver's JVM can load the keyed hash's class (the JAR is in `spark.jars`)."""
    from py4j.java_gateway import JavaClass

    return isinstance(_jvm(spark).behaviorspark.KeyedHash, JavaClass)


def _jvm(spark: SparkSession):
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "a classic session has a JVM gateway"
    return jvm


def keyed_hash_in_python(spark: SparkSession, key: bytes) -> Callable[[Column], Column]:
    """`keyed_hash` on Arrow batches in the Python workers, the key in a broadcast variable: each batch hashes its
    distinct ids once (a customer's events arrive together)."""
    shared = spark.sparkContext.broadcast(key)

    @F.pandas_udf("string")  # type: ignore[call-overload]  # pyspark's stubs lack the decorator form
    def pseudonym(ids: pd.Series) -> pd.Series:
        return hash_ids(shared.value, ids)

    return pseudonym


def keyed_hash_on_workers(spark: SparkSession, cfg: IngestSettings) -> Callable[[Column], Column]:
    """`keyed_hash` for Spark Connect: the executors take the key from their environment (`ingest.pseudonym_key_env`)
    in the JVM (`KeyedHash.FromEnvironment`, registered by class name); the plan carries only the variable's name.
    Where the server cannot load the class, the Python workers do the same."""
    name = cfg.pseudonym_key_env
    try:
        spark.udf.registerJavaFunction(JVM_FUNCTION, JVM_HASH + "$FromEnvironment", "string")
        return lambda ids: F.call_function(JVM_FUNCTION, ids, F.lit(name))
    except Exception as error:  # the server's own message: no such class
        first_line = str(error).splitlines()[0]
        log.warning("the JVM keyed hash is not on the server's classpath (%s): hashing in Python workers", first_line)

    @F.pandas_udf("string")  # type: ignore[call-overload]  # pyspark's stubs lack the decorator form
    def pseudonym(ids: pd.Series) -> pd.Series:
        return hash_ids(pseudonym_key(IngestSettings(pseudonym_key_env=name)), ids)

    return pseudonym


def fingerprint_on_workers(spark: SparkSession, cfg: IngestSettings) -> str:
    """The fingerprint of the key the Python workers hold (Spark Connect), computed where the key is."""
    name = cfg.pseudonym_key_env

    @F.pandas_udf("string")  # type: ignore[call-overload]  # pyspark's stubs lack the decorator form
    def of_key(ignored: pd.Series) -> pd.Series:
        return pd.Series([fingerprint(pseudonym_key(IngestSettings(pseudonym_key_env=name)))] * len(ignored))

    return one_row(spark.range(1).select(of_key(F.col("id")).alias("fingerprint")))["fingerprint"]


def hash_ids(key: bytes, ids: pd.Series) -> pd.Series:
    """The pseudonyms of a batch of ids (null stays null), each distinct id hashed once."""
    start = hmac.new(key, digestmod=hashlib.sha256)  # the key's pads, computed once a batch

    def one(text: str) -> str:
        h = start.copy()
        h.update(normalise_id(text).encode())
        return h.hexdigest()

    codes, distinct = pd.factorize(ids)
    hashed = [one(text) for text in distinct]
    return pd.Series([hashed[c] if c >= 0 else None for c in codes], index=ids.index, dtype=object)


def redact_url(url: str | None) -> str:
    """A JDBC (or any) URL without credentials: password=, pwd=, secret and token parameters, user:pass@."""
    if url is None:
        return "(no URL set)"
    without_params = re.sub(rf"(?i)\b({_SECRET_NAMES})=[^&;]*", r"\1=***", url)
    return re.sub(r"//([^/:@\s]+):[^@/\s]+@", r"//\1:***@", without_params)
