"""The training data feed against in-memory slicing, and Horovod training with 1 and 2 processes.

The same rows (the model's inputs: 37 standardised numbers and three 50-long sequences, plus a label) are delivered
to a training loop three ways, in one run:
- stock Petastorm: `make_spark_converter(df).make_tf_dataset(batch_size)` over the array columns;
- this project's feed (`behavior_spark.feed`): the wide layout, `make_batch_reader`, stack, `rebatch`;
- `tf.data.Dataset.from_tensor_slices` over the same arrays already in memory (the target).
Then the same data trains the real model with `horovod.spark.run` at 1 and 2 processes (samples/s inside fit).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import features, feed, train
from behavior_spark.session import local_session
from bench.common import bench_settings

BATCH = 4096
CORES = os.cpu_count() or 1


def main(sizes: list[int], workdir: Path) -> str:
    lines = [
        f"Samples/s delivered to a training loop, batch {BATCH:,}, on {CORES} cores (per core in brackets).",
        "",
        "| rows | stock Petastorm | this feed | in-memory from_tensor_slices | feed / in-memory |",
        "|---:|---:|---:|---:|---:|",
    ]
    training = ["", "| rows | Horovod processes | train samples/s (inside fit) |", "|---:|---:|---:|"]
    for size in sizes:
        folder = workdir / f"feed-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        settings = bench_settings(folder, size)
        spark = local_session(settings.spark)
        spark.conf.set("petastorm.spark.converter.parentCacheDirUrl", f"file://{(folder / 'cache').resolve()}")
        data = model_input_rows(spark, size).cache()
        data.count()
        rates = measure_feeds(data, size)
        stock, ours, memory = rates
        lines.append(f"| {size:,} | {_rate(stock)} | {_rate(ours)} | {_rate(memory)} | {ours / memory:.2f}x |")
        for processes in (1, 2):
            training.append(f"| {size:,} | {processes} | {train_rate(spark, settings, data, size, processes):,.0f} |")
        print(lines[-1], *training[-2:], sep="\n", flush=True)
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines + training)


def model_input_rows(spark: SparkSession, rows: int) -> DataFrame:
    """Rows shaped like `features.model_inputs` output, drawn in Spark."""
    width = len(features.numeric_feature_names())
    length = 50

    def draws(count: int, salt: str):
        return F.transform(F.sequence(F.lit(1), F.lit(count)), lambda i: F.pmod(F.xxhash64("id", i, F.lit(salt)), 1000))

    def ints(name: str, high: int):
        return F.transform(draws(length, name), lambda d: (d % high).cast("int")).alias(name)

    return spark.range(rows).select(
        F.transform(draws(width, "numeric"), lambda d: (d / 500.0 - 1).cast("float")).alias("numeric"),
        ints("seq_event_type", 6),
        ints("seq_category", 64),
        ints("seq_gap_bucket", 8),
        (F.rand(1) < 0.1).cast("float").alias("label"),
        F.floor(F.rand(2) * 1.3).cast("float").alias("label_purchases"),
        (F.rand(3) * 100).cast("float").alias("label_revenue"),
    )


def measure_feeds(data: DataFrame, rows: int) -> tuple[float, float, float]:
    import numpy as np
    import tensorflow as tf
    from petastorm.spark import make_spark_converter

    widths = {"numeric": len(features.numeric_feature_names()), **{c: 50 for c in features.SEQUENCE_COLUMNS}}
    steps = max(20, rows // BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock_converter = make_spark_converter(data.repartition(4))
        wide_converter = make_spark_converter(feed.to_wide(data, widths).repartition(4))
    with stock_converter.make_tf_dataset(batch_size=BATCH, workers_count=CORES) as stock:
        stock_rate = _drain(iter(stock), steps)
    reader = feed.open_reader(wide_converter.file_urls, 0, 1, CORES, seed=1)
    try:
        ours_rate = _drain(iter(feed.batches(reader, widths, ["label"], BATCH)), steps)
    finally:
        feed.close(reader)
    arrays = data.toPandas()  # the benchmark's own rows, to put them in memory
    in_memory = {name: np.stack(arrays[name].to_numpy()) for name in widths}
    sliced = tf.data.Dataset.from_tensor_slices((in_memory, arrays["label"].to_numpy())).batch(BATCH).repeat()
    memory_rate = _drain(iter(sliced.prefetch(tf.data.AUTOTUNE)), steps)
    stock_converter.delete()
    wide_converter.delete()
    return stock_rate, ours_rate, memory_rate


def train_rate(spark: SparkSession, settings, data: DataFrame, rows: int, processes: int) -> float:
    """Samples/s inside `model.fit`, summed over the processes, for one epoch of the real model."""
    spec = train.TrainingSpec(
        numeric_dim=len(features.numeric_feature_names()),
        sequence_length=50,
        category_buckets=64,
        epochs=1,
        batch_size=1024,
        learning_rate=0.001,
        seed=7,
        train_rows=rows,
        validation_rows=max(1024 * processes, rows // 10),
        class_weight=None,
        patience=1,
        reader_threads=max(1, CORES // processes),
        checkpoint_dir=str(Path(settings.train.model_dir).resolve() / "checkpoints"),
    )
    partitions = max(2, processes * 2)
    validation = data.limit(rows // 10).repartition(partitions)
    results = train.fit(spark, settings, spec, data.repartition(partitions), validation)
    steps = results[0]["steps"]
    return steps * spec.batch_size * processes / max(r["fit_seconds"] for r in results)


def _drain(batches, steps: int) -> float:
    next(batches)  # warm-up: readers started, first row groups decoded
    started = time.monotonic()
    for _ in range(steps):
        next(batches)
    return steps * BATCH / (time.monotonic() - started)


def _rate(samples_per_second: float) -> str:
    return f"{samples_per_second:,.0f} ({samples_per_second / CORES:,.0f})"
