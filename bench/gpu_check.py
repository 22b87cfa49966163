"""Does the feed keep the GPU busy? `make gpu-check` (issue 19).

Trains the real model (`train.compiled_model`: the architecture, the loss and Horovod's optimizer, one process) for a
fixed number of steps and prints samples/s three ways, in one run:
- the feed alone: this project's Petastorm reader (`behavior_spark.feed`) drained as fast as it delivers;
- the model alone: one batch of the same rows held as tensors and fed again and again, so the device is the only
  limit (no rows sliced out of arrays per step);
- the two together: the model trained through the feed, as `train` does.
If "together" is close to "model alone", the feed keeps up; if it is close to "feed alone", the feed is the limit and
needs more reader threads (cores) per GPU. Where there is no GPU it measures on the CPU and says so in its first line.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

from behavior_spark import features, feed, train
from behavior_spark.session import local_session
from bench.common import bench_settings
from bench.feed import model_input_rows

BATCH = 4096
STEPS = 40
CORES = os.cpu_count() or 1
REFERENCE = 2_200_000  # samples/s of a reference model of this size on one H200 (issue 19)


def main(sizes: list[int], workdir: Path) -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    lines = [
        f"Measured on {gpus[0].name}, {CORES} CPU cores for the feed."
        if gpus
        else f"No GPU here: measured on the CPU ({CORES} cores), where the model, not the feed, is the slow part.",
        "",
        f"Samples/s, batch {BATCH:,}, {STEPS} steps after a warm-up; the feed reads with {CORES} threads.",
        "",
        "| rows | feed alone | model alone (in memory) | model through the feed | together / model alone |",
        "|---:|---:|---:|---:|---:|",
    ]
    per_core = []
    for size in sizes:
        folder = workdir / f"gpu-check-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        feed_rate, model_rate, together = measure(folder, size)
        per_core.append(feed_rate / CORES)
        lines.append(
            f"| {size:,} | {feed_rate:,.0f} | {model_rate:,.0f} | {together:,.0f} | {together / model_rate:.2f} |"
        )
        print(lines[-1], flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    rate = min(per_core)
    lines += [
        "",
        f"The feed delivers {rate:,.0f} samples/s per core here; at that rate a GPU training at {REFERENCE:,} "
        f"samples/s (a reference model of this size on one H200) needs {REFERENCE / rate:,.0f} reader cores.",
    ]
    return "\n".join(lines)


def measure(folder: Path, rows: int) -> tuple[float, float, float]:
    """(feed alone, model on in-memory rows, model through the feed), samples/s."""
    import tensorflow as tf
    from petastorm.spark import make_spark_converter

    settings = bench_settings(folder, rows)
    spark = local_session(settings.spark)
    spark.conf.set("petastorm.spark.converter.parentCacheDirUrl", f"file://{(folder / 'cache').resolve()}")
    spec = check_spec(folder)
    data = model_input_rows(spark, rows).cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converter = make_spark_converter(feed.to_wide(data, spec.widths).repartition(4))
    inputs, labels = one_batch(data, spec, BATCH)
    spark.stop()

    model = single_process_model(spec, tf)
    reader = feed.open_reader(converter.file_urls, 0, 1, CORES, seed=1)
    try:
        fed = train.weighted(feed.batches(reader, spec.widths, train.TARGET_COLUMNS, BATCH), spec, tf)
        feed_rate = drain(iter(fed))
        model_rate = fit_rate(model, train.weighted(tf.data.Dataset.from_tensors((inputs, labels)).repeat(), spec, tf))
        together = fit_rate(model, fed)
    finally:
        feed.close(reader)
        converter.delete()
    return feed_rate, model_rate, together


def one_batch(data, spec: train.TrainingSpec, rows: int) -> tuple[dict, dict]:
    """The first `rows` rows of `data` as (inputs, labels) tensors: one batch the model can be fed again and again
    at no input cost, so the device alone sets the pace."""
    import numpy as np
    import tensorflow as tf

    arrays = data.limit(rows).toPandas()
    inputs = {name: tf.constant(np.stack(arrays[name].to_numpy())) for name in spec.widths}
    labels = {name: tf.constant(arrays[name].to_numpy()) for name in train.TARGET_COLUMNS}
    return inputs, labels


def check_spec(folder: Path) -> train.TrainingSpec:
    return train.TrainingSpec(
        numeric_dim=len(features.numeric_feature_names()),
        sequence_length=50,
        category_buckets=64,
        epochs=1,
        batch_size=BATCH,
        learning_rate=0.001,
        seed=7,
        train_rows=BATCH * STEPS,
        validation_rows=0,
        class_weight=None,
        patience=1,
        reader_threads=CORES,
        checkpoint_dir=str(folder / "checkpoints"),
    )


def single_process_model(spec: train.TrainingSpec, tf):
    """The model exactly as a Horovod worker compiles it, in a job of one process (no other rank to wait for)."""
    import horovod.tensorflow.keras as hvd

    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.experimental.set_memory_growth(gpus[0], True)
    return train.compiled_model(spec, hvd, tf)


def drain(batches) -> float:
    next(batches)  # warm-up: readers started, first row groups decoded
    started = time.monotonic()
    for _ in range(STEPS):
        next(batches)
    return STEPS * BATCH / (time.monotonic() - started)


def fit_rate(model, dataset, batch: int = BATCH) -> float:
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up: graph traced, device memory taken
    started = time.monotonic()
    model.fit(dataset, steps_per_epoch=STEPS, epochs=1, verbose=0)
    return STEPS * batch / (time.monotonic() - started)
