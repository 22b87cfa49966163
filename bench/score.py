"""Scoring through Spark against the model's own speed in one process, on the same rows, in one run.

- in-process: `model.predict(numpy, batch_size)` over the rows already in memory (the target);
- `predict.predictions`, the stage's path: an Arrow-batch UDF (`mapInArrow`, see score.py);
- stock: `predict_batch_udf` fed the four array columns, which it stacks row by row with `np.vstack`.
Both Spark paths produce propensity and the 64-dimension embedding and write nothing (`noop`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import array_features, drift, features, model_artifact, predict, reasons
from behavior_spark.contracts import EVENT_TYPE_IDS
from behavior_spark.model_artifact import ModelMetadata
from behavior_spark.session import local_session
from bench.common import bench_settings

BATCH = 8192
CORES = os.cpu_count() or 1


def main(sizes: list[int], workdir: Path) -> str:
    lines = [
        f"Rows/s scored (propensity + 64-d embedding), batch {BATCH:,}, {CORES} cores, same rows in one run.",
        "",
        "| rows | in-process model.predict | score stage (Arrow-batch UDF) | stock array-column UDF "
        "| stage / in-process | stock / in-process | stage with reasons | time with reasons / without |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        folder = workdir / f"score-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        settings = bench_settings(folder, size)
        spark = local_session(settings.spark)
        metadata = save_untrained_model(str(folder / "model"))
        rows = feature_rows(spark, size).cache()
        rows.count()
        in_process = in_process_rate(rows, metadata, str(folder / "model"))
        stage = _timed(predict.predictions(rows, metadata, str(folder / "model"), BATCH, keep=["customer_id"]), size)
        stock = _timed(stock_udf(rows, metadata, str(folder / "model")), size)
        reasoned = _timed(with_reasons(rows, metadata, str(folder / "model")), size)
        lines.append(
            f"| {size:,} | {in_process:,.0f} | {stage:,.0f} | {stock:,.0f} | {stage / in_process:.2f}x "
            f"| {stock / in_process:.2f}x | {reasoned:,.0f} | {stage / reasoned:.2f}x |"
        )
        print(lines[-1], flush=True)
        spark.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines)


def with_reasons(rows: DataFrame, metadata: ModelMetadata, model_dir: str) -> DataFrame:
    """The score stage's path with each row's top three reasons in words (the scoring snapshot's deciles, which
    the stage's drift check computes anyway, taken here before the clock starts)."""
    deciles = drift.profile(rows, metadata.feature_names)
    scored = predict.predictions(rows, metadata, model_dir, BATCH, keep=["customer_id"], reason_steps=1)
    return reasons.with_reasons(scored, metadata.feature_names, deciles)


def save_untrained_model(model_dir: str) -> ModelMetadata:
    """The real architecture with its initial weights: scoring speed does not depend on what it learned."""
    import tensorflow as tf

    from behavior_spark.model import build_model

    names = features.numeric_feature_names()
    model = build_model(len(names), 50, len(EVENT_TYPE_IDS) + 1, 64, array_features.GAP_BUCKETS)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    metadata = model_artifact.untrained_metadata("bench", names)
    model.save(str(Path(model_dir, metadata.model_file)))
    Path(model_dir, model_artifact.METADATA_FILE).write_bytes(metadata.model_dump_json().encode())
    tf.keras.backend.clear_session()
    return metadata


def feature_rows(spark: SparkSession, rows: int) -> DataFrame:
    """Rows shaped like the features table: every numeric feature and the three sequences."""

    def sequence(high: int):
        draws = F.sequence(F.lit(1), F.lit(50))
        return F.transform(draws, lambda i: F.pmod(F.xxhash64("id", i, F.lit(high)), F.lit(high)).cast("int"))

    return spark.range(rows).select(
        F.col("id").cast("string").alias("customer_id"),
        *(F.rand(i).alias(n) for i, n in enumerate(features.numeric_feature_names())),
        sequence(6).alias("seq_event_type"),
        sequence(64).alias("seq_category"),
        sequence(8).alias("seq_gap_bucket"),
    )


def in_process_rate(rows: DataFrame, metadata: ModelMetadata, model_dir: str) -> float:
    from behavior_spark.model import load_model, scoring_inputs

    frame = (
        rows.transform(features.model_inputs, metadata.normalisation).select(*features.MODEL_INPUT_COLUMNS).toPandas()
    )  # bench rows only
    columns = {name: np.stack(frame[name].to_numpy()) for name in features.MODEL_INPUT_COLUMNS}
    model = load_model(model_dir, metadata)
    inputs = scoring_inputs(columns)
    model.predict([x[:BATCH] for x in inputs], batch_size=BATCH, verbose=0)  # warm-up
    started = time.monotonic()
    model.predict(inputs, batch_size=BATCH, verbose=0)
    return len(frame) / (time.monotonic() - started)


def stock_udf(rows: DataFrame, metadata: ModelMetadata, model_dir: str) -> DataFrame:
    """predict_batch_udf as its documentation shows it: one argument per (array) input column."""

    def make_predict_fn():
        from behavior_spark.model import load_model

        model = load_model(model_dir, metadata)

        def predict(numeric, seq_event_type, seq_category, seq_gap_bucket):
            inputs = [
                numeric.astype(np.float32),
                *(s.astype(np.int32) for s in (seq_event_type, seq_category, seq_gap_bucket)),
            ]
            propensity, embedding, purchases, revenue = model(inputs, training=False)
            return {
                "propensity": propensity.numpy()[:, 0],
                "embedding": embedding.numpy(),
                "expected_purchases": purchases.numpy()[:, 0],
                "expected_revenue": revenue.numpy()[:, 0],
            }

        return predict

    udf = predict_batch_udf(
        make_predict_fn,
        return_type=predict.PREDICTION_TYPE,
        batch_size=BATCH,
        input_tensor_shapes=[[len(metadata.feature_names)], [50], [50], [50]],
    )
    return (
        rows.transform(features.model_inputs, metadata.normalisation)
        .withColumn("prediction", udf(*features.MODEL_INPUT_COLUMNS))
        .select("customer_id", "prediction.propensity", "prediction.embedding")
    )


def _timed(scored: DataFrame, rows: int) -> float:
    started = time.monotonic()
    scored.write.format("noop").mode("overwrite").save()
    return rows / (time.monotonic() - started)
