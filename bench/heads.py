"""What the value heads cost: training and scoring speed of the model with its three heads against the propensity
head alone (issue 17).

The expected-purchases and revenue heads share the model's body; the propensity-only model is that body with the
propensity head, as the model was before the value heads. Both run side by side in one process on the same rows in
memory, so the device is the only limit (the feed is measured by `make gpu-check`):
- training: samples/s of `fit` steps, the model as a Horovod worker compiles it (`train.compiled_model`, one process);
- scoring: samples/s of `predict` of what the score stage applies (`model.scoring_model`: calibrated propensity,
  embedding, expected purchases and revenue) against the propensity head alone.
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
from bench.gpu_check import BATCH, STEPS, check_spec, fit_rate, single_process_model


def main(sizes: list[int], workdir: Path) -> str:
    lines = [
        f"Samples/s on this machine's CPU, batch {BATCH:,}: training {STEPS} steps after a warm-up; scoring every row.",
        "",
        "| rows | train, propensity only | train, three heads | three / one | score, propensity only "
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


def measure(folder: Path, rows: int) -> tuple[float, float, float, float]:
    """(train one head, train three heads, score one head, score three heads), samples/s."""
    import numpy as np
    import tensorflow as tf

    spark = local_session(bench_settings(folder, rows).spark)
    arrays = model_input_rows(spark, rows).toPandas()  # the bench's own rows, to put them in memory
    spark.stop()
    spec = check_spec(folder)
    inputs = {name: np.stack(arrays[name].to_numpy()) for name in spec.widths}
    labels = {name: arrays[name].to_numpy() for name in train.TARGET_COLUMNS}
    rows_in_memory = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(BATCH).repeat()

    three = single_process_model(spec, tf)
    one = propensity_only(three, spec, tf)
    train_three = fit_rate(three, train.weighted(rows_in_memory, spec, tf).prefetch(tf.data.AUTOTUNE))
    train_one = fit_rate(one, rows_in_memory.map(lambda x, y: (x, y["label"])).prefetch(tf.data.AUTOTUNE))
    score_one = predict_rate(one, inputs)
    score_three = predict_rate(heads.scoring_model(three), inputs)
    return train_one, train_three, score_one, score_three


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
    model.predict({name: values[:BATCH] for name, values in inputs.items()}, batch_size=BATCH, verbose=0)  # warm-up
    started = time.monotonic()
    model.predict(inputs, batch_size=BATCH, verbose=0)
    return len(next(iter(inputs.values()))) / (time.monotonic() - started)
