"""What the value heads cost: training and scoring speed of the model with its three heads against the propensity
head alone (issue 17): `make bench ARGS="heads --sizes 1024,4096"` (batch sizes).

The expected-purchases and revenue heads share the model's body; the propensity-only model is that body with the
propensity head, as the model was before the value heads. Both run side by side in one process on one batch held as
tensors and fed again and again, so the device is the only limit (the feed is measured by `make gpu-check`):
- training: samples/s of `fit` steps, the model as a Horovod worker compiles it (`train.compiled_model`, one process);
- scoring: samples/s of `predict_on_batch` of what the score stage applies (`model.scoring_model`: calibrated
  propensity, embedding, expected purchases and revenue) against the propensity head alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from behavior_spark import model as heads
from behavior_spark import train
from behavior_spark.session import local_session
from bench.common import bench_settings
from bench.feed import model_input_rows
from bench.gpu_check import STEPS, check_spec, fit_rate, one_batch, single_process_model

ROUNDS = 3  # interleaved; on a shared machine a round may get one core instead of two


def main(sizes: list[int], workdir: Path) -> str:
    """`sizes`: batch sizes."""
    lines = [
        f"Samples/s on this machine's CPU, one batch fed again and again: training {STEPS} steps after a warm-up, "
        f"scoring {STEPS} batches; the best of {ROUNDS} interleaved rounds.",
        "",
        "| batch | train, propensity only | train, three heads | three / one | score, propensity only "
        "| score, three heads | three / one |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        folder = workdir / f"heads-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        train_one, train_three, score_one, score_three = measure(folder, size)
        lines.append(
            f"| {size:,} | {train_one:,.0f} | {train_three:,.0f} | {train_three / train_one:.2f} | "
            f"{score_one:,.0f} | {score_three:,.0f} | {score_three / score_one:.2f} |"
        )
        print(lines[-1], flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines)


def measure(folder: Path, batch: int) -> tuple[float, float, float, float]:
    """(train one head, train three heads, score one head, score three heads), samples/s."""
    import tensorflow as tf

    spec = check_spec(folder)
    spark = local_session(bench_settings(folder, batch).spark)
    inputs, labels = one_batch(model_input_rows(spark, batch), spec, batch)
    spark.stop()
    repeated = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    three = single_process_model(spec, tf)
    one = propensity_only(three, spec, tf)
    one_target = repeated.map(lambda x, y: (x, tf.reshape(y["label"], [-1, 1])))  # the head's shape
    scoring = heads.scoring_model(three)
    rates = [
        (
            fit_rate(one, one_target, batch),
            fit_rate(three, train.weighted(repeated, spec, tf), batch),
            predict_rate(one, inputs),
            predict_rate(scoring, inputs),
        )
        for _ in range(ROUNDS)
    ]
    # the best round of each: the machine's noise only ever slows a round down
    return tuple(max(column) for column in zip(*rates, strict=True))


def propensity_only(model, spec: train.TrainingSpec, tf):
    """The model's body with its propensity head only, compiled as the worker compiles the full model."""
    import horovod.tensorflow.keras as hvd

    one = tf.keras.Model(inputs=model.inputs, outputs=model.get_layer(heads.PROPENSITY_LAYER).output)
    one.compile(
        optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.Adam(spec.learning_rate * hvd.size())),
        loss="binary_crossentropy",
        metrics=[tf.keras.metrics.AUC(name="auc")],
    )
    return one


def predict_rate(model, inputs: dict) -> float:
    model.predict_on_batch(inputs)  # warm-up: graph traced
    started = time.monotonic()
    for _ in range(STEPS):
        model.predict_on_batch(inputs)
    return STEPS * len(next(iter(inputs.values()))) / (time.monotonic() - started)
