"""Train: the features table -> Petastorm -> `horovod.spark.run` -> one tf.keras model, saved by the driver.

The driver reads every setting into plain values and hands the worker function only those values and two
picklable Petastorm converters. Each Horovod process reads its own shard, runs the same number of steps per epoch
(the dataset repeats, so an uneven shard cannot end early and hang the others), and rank 0 returns the trained
model's bytes; the driver writes the artifact.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import features, lake
from behavior_spark.config import Settings

log = logging.getLogger(__name__)

MODEL_FILE = "model.h5"
METADATA_FILE = "metadata.json"
INPUT_COLUMNS = ["numeric", *features.SEQUENCE_COLUMNS]


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    """Everything a Horovod worker needs, as plain picklable values."""

    numeric_dim: int
    sequence_length: int
    category_buckets: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    train_rows: int
    validation_rows: int


def run(spark: SparkSession, settings: Settings) -> dict:
    """Train with `train.num_proc` Horovod processes and write the model artifact to `train.model_dir`."""
    cfg = settings.train
    stats = features.read_stats(spark, settings)
    features_version = lake.version(spark, settings.lake, lake.FEATURES)
    table = lake.read(spark, settings.lake, lake.FEATURES, version=features_version)
    inputs = table.transform(features.model_inputs, stats).select(
        *INPUT_COLUMNS, F.col("label").cast("float").alias("label"), "split"
    )
    rows_by_split = {r["split"]: r["count"] for r in table.groupBy("split").count().collect()}  # three rows
    train_rows, validation_rows = rows_by_split.get("train", 0), rows_by_split.get("validation", 0)
    if train_rows == 0 or validation_rows == 0:
        raise ValueError(
            f"the features table has {train_rows} training and {validation_rows} validation rows; "
            "both must be non-empty (generate or ingest more data, or change features.split_*)"
        )
    spec = TrainingSpec(
        numeric_dim=len(features.numeric_feature_names()),
        sequence_length=settings.features.sequence_length,
        category_buckets=settings.features.category_buckets,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        train_rows=train_rows,
        validation_rows=validation_rows,
    )
    with (
        _converter(spark, settings, _split(inputs, "train", cfg.num_proc)) as train_data,
        _converter(spark, settings, _split(inputs, "validation", cfg.num_proc)) as validation_data,
    ):
        results = _horovod_run(make_train_fn(spec, train_data, validation_data), cfg.num_proc)
    chief = next(r for r in results if r["rank"] == 0)
    metadata = {
        "feature_names": features.numeric_feature_names(),
        "normalisation": stats,
        "sequence_length": spec.sequence_length,
        "category_buckets": spec.category_buckets,
        "features_version": features_version,
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "num_proc": cfg.num_proc,
        "steps_per_rank": [r["steps"] for r in sorted(results, key=lambda r: r["rank"])],
        "history": chief["history"],
        "training": dataclasses.asdict(spec),
    }
    save_model(cfg.model_dir, chief["model_bytes"], metadata)
    final = {k: v[-1] for k, v in chief["history"].items()}
    return {
        "model_dir": cfg.model_dir,
        "train_rows": train_rows,
        "validation_rows": validation_rows,
        "processes": len(results),
        "final_metrics": final,
    }


def make_train_fn(spec: TrainingSpec, train_data, validation_data):
    """The function each Horovod process runs; TensorFlow is imported inside it, on the worker."""

    def train_fn() -> dict:
        import horovod.tensorflow.keras as hvd
        import tensorflow as tf

        from behavior_spark.features import EVENT_TYPE_IDS, GAP_BUCKETS
        from behavior_spark.model import build_model

        warnings.filterwarnings("ignore", category=FutureWarning)
        hvd.init()
        tf.keras.utils.set_random_seed(spec.seed)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        model = build_model(
            spec.numeric_dim, spec.sequence_length, len(EVENT_TYPE_IDS) + 1, spec.category_buckets, GAP_BUCKETS
        )
        scaled_lr = spec.learning_rate * hvd.size()
        model.compile(
            optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.Adam(scaled_lr)),
            loss="binary_crossentropy",
            metrics=[tf.keras.metrics.AUC(name="auc")],
        )
        steps = max(1, spec.train_rows // (spec.batch_size * hvd.size()))
        validation_steps = max(1, spec.validation_rows // (spec.batch_size * hvd.size()))
        callbacks = [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
            hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=1, steps_per_epoch=steps),
        ]

        @tf.autograph.experimental.do_not_convert
        def to_inputs(batch):
            x = {name: getattr(batch, name) for name in INPUT_COLUMNS}
            return x, batch.label

        shard = {"cur_shard": hvd.rank(), "shard_count": hvd.size(), "num_epochs": None, "workers_count": 1}
        with (
            train_data.make_tf_dataset(batch_size=spec.batch_size, **shard) as train_ds,
            validation_data.make_tf_dataset(batch_size=spec.batch_size, **shard) as validation_ds,
        ):
            history = model.fit(
                train_ds.map(to_inputs),
                steps_per_epoch=steps,
                epochs=spec.epochs,
                validation_data=validation_ds.map(to_inputs),
                validation_steps=validation_steps,
                callbacks=callbacks,
                verbose=0,
            )
        model_bytes = None
        if hvd.rank() == 0:
            with tempfile.TemporaryDirectory() as tmp:
                model.save(os.path.join(tmp, MODEL_FILE))
                model_bytes = Path(tmp, MODEL_FILE).read_bytes()
        history_values = {k: [float(v) for v in values] for k, values in history.history.items()}
        return {"rank": hvd.rank(), "steps": steps * spec.epochs, "history": history_values, "model_bytes": model_bytes}

    return train_fn


def save_model(model_dir: str, model_bytes: bytes, metadata: dict) -> None:
    """Write the model and its metadata (feature list, normalisation, data version, metrics) side by side."""
    folder = Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(model_bytes)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))


def load_metadata(model_dir: str) -> dict:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {model_dir} (missing {METADATA_FILE}): run the train stage first")
    return json.loads(path.read_text())


def _split(inputs: DataFrame, split: str, num_proc: int) -> DataFrame:
    # At least one Parquet file per process, so every shard has rows.
    return inputs.filter(F.col("split") == split).drop("split").repartition(max(2, num_proc * 2))


class _converter:
    """A Petastorm converter over a DataFrame, materialised to the lake's cache folder and deleted on exit."""

    def __init__(self, spark: SparkSession, settings: Settings, df: DataFrame):
        from petastorm.spark import SparkDatasetConverter, make_spark_converter

        cache = settings.lake.table("_petastorm_cache")
        url = cache if "://" in cache else Path(cache).resolve().as_uri()
        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.converter = make_spark_converter(df)

    def __enter__(self):
        return self.converter

    def __exit__(self, *exc) -> None:
        self.converter.delete()


def _horovod_run(train_fn, num_proc: int) -> list[dict]:
    import horovod.spark

    return horovod.spark.run(train_fn, num_proc=num_proc, use_gloo=True, verbose=0)
