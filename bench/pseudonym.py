"""The keyed hash of user ids: the JVM function ingest uses, the Arrow-batch Python function it replaced (still the
fallback without the JAR), and the Spark built-in version before that.

The built-in version (SHA-256 over the key's HMAC pads and the id, all Spark expressions) is kept here only as the
reference: it puts the pads, and so the key, into every query plan. All hash the same generated ids (about 12
events per customer, as the generator makes them) and write nothing (`noop`); runs alternate, three each, and the
table gives the medians and their ratios to the built-in per size.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import privacy
from behavior_spark.config import SparkSettings
from behavior_spark.session import local_session

KEY = b"benchmark-only-key-not-a-secret"
EVENTS_PER_CUSTOMER = 12
ROUNDS = 3


def builtin_hmac(message: Column, key: bytes) -> Column:
    """HMAC-SHA256 (RFC 2104) with Spark built-ins: what ingest did before; its pads are literals of the plan."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner_pad, outer_pad = bytearray(b ^ 0x36 for b in key), bytearray(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), message.cast("binary")), 256))
    return F.sha2(F.concat(F.lit(outer_pad), inner), 256)


def ids(spark: SparkSession, rows: int) -> DataFrame:
    """`rows` user ids as strings, a customer's events next to each other (as a file of one day has them)."""
    customer = (F.col("id") / EVENTS_PER_CUSTOMER).cast("long") + 510_000_000
    return spark.range(rows, numPartitions=16).select(customer.cast("string").alias("user_id"))


def timed(df: DataFrame) -> float:
    started = time.monotonic()
    df.write.mode("overwrite").format("noop").save()
    return time.monotonic() - started


def main(sizes: list[int], workdir: Path) -> str:
    spark = local_session(SparkSettings(master="local[2]", shuffle_partitions=16, driver_memory="4g"))
    hashes = {
        "builtin": lambda ids: builtin_hmac(ids, KEY),
        "jvm": privacy.keyed_hash(spark, KEY),
        "arrow": privacy.keyed_hash_in_python(spark, KEY),
    }
    for hashed in hashes.values():  # warm-up: Python workers, Arrow, code generation
        timed(ids(spark, 100_000).select(hashed(F.col("user_id"))))
    lines = [
        "| ids | built-in s (median of 3) | JVM s | Arrow-batch (Python) s | JVM / built-in | Arrow / built-in |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        runs: dict[str, list[float]] = {name: [] for name in hashes}
        for _ in range(ROUNDS):
            for name, hashed in hashes.items():
                runs[name].append(timed(ids(spark, size).select(hashed(F.col("user_id")))))
        builtin, jvm, arrow = (statistics.median(runs[name]) for name in ("builtin", "jvm", "arrow"))
        print(f"size {size}: {runs}", flush=True)
        lines.append(
            f"| {size:,} | {builtin:.1f} | {jvm:.1f} | {arrow:.1f} | {jvm / builtin:.2f}x | {arrow / builtin:.2f}x |"
        )
    spark.stop()
    return "\n".join(lines)
