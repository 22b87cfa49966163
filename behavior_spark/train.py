"""Train: a pinned features-table version -> Petastorm -> `horovod.spark.run` -> one tf.keras model.

The driver reads every setting into plain values (`TrainingSpec`) and hands the worker function only those and the
Parquet files Petastorm materialised. Each Horovod process reads its own shard through `feed`, runs the same number
of steps per epoch (the feed is endless, so an uneven shard cannot end early and hang the others), averages its
metrics with the other ranks, and stops early on the averaged validation loss, so all ranks stop together. Rank 0
writes a checkpoint each epoch and returns the trained model's bytes; the driver writes the artifact and evaluates
it (`evaluate`). A rank that raises records its error where the driver can read it, so the job fails with that
rank's message rather than Horovod's "a process exited".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import sys
import tempfile
import time
import warnings

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from behavior_spark import (
    array_features,
    artifacts,
    btyd,
    champion,
    evaluate,
    features,
    feed,
    lake,
    model_artifact,
    ranks,
    run_record,
    tracking,
)
from behavior_spark.config import ConfigError, Settings
from behavior_spark.contracts import EVENT_TYPE_IDS
from behavior_spark.results import TrainResult
from behavior_spark.session import is_connect

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CANDIDATES = "candidates"  # a trained model's folder while it is evaluated and gated
TARGET_COLUMNS = ["label", *features.VALUE_LABELS]  # the label columns the feed delivers beside the inputs
MIN_STEPS_PER_EPOCH = 32  # a small log's epoch still takes this many optimiser steps per process: its batch shrinks
MIN_BATCH = 32
PIECEWISE_BINS = 16  # quantile bins per numeric input where train.numeric_encoding is piecewise_linear
EARLY_STOPPING = "val_propensity_loss"  # the propensity decides when training stops; the value heads follow it
_CHECKPOINT_NAME = re.compile(r"^epoch-(\d+)\.h5$")


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
    class_weight: dict[int, float] | None
    patience: int
    reader_threads: int
    checkpoint_dir: str
    numeric_edges: list[list[float]] | None = None  # the piecewise-linear encoding's bins; None: raw inputs
    bg_nbd: dict | None = None  # BG/NBD fitted on the training split, the network's `model.BgNbdView`; None: off
    initial_epoch: int = 0
    initial_model: bytes | None = dataclasses.field(default=None, repr=False)

    @property
    def widths(self) -> dict[str, int]:
        return {"numeric": self.numeric_dim, **{name: self.sequence_length for name in features.SEQUENCE_COLUMNS}}


def run(spark: SparkSession, settings: Settings) -> TrainResult:
    """Train with `train.num_proc` Horovod processes; write the model artifact to `train.model_dir`; evaluate it."""
    if is_connect(spark):
        raise ConfigError(
            "train needs a classic Spark session: horovod.spark runs its processes through a SparkContext, which a "
            "Spark Connect session (setting 'spark.remote') does not have; run train without spark.remote, on a "
            "cluster with a classic session (a Databricks dedicated cluster, EMR, spark-submit)"
        )
    cfg = settings.train
    tracking.tracking_uri(settings)  # a setting with nowhere to record the run fails now, not after training
    published = model_artifact.published_metadata(cfg.model_dir)  # the champion a new model must not fall below
    artifacts.delete_folder(artifacts.join(cfg.model_dir, CANDIDATES))  # what a killed run left unjudged
    features_version = lake.version(spark, settings.lake, lake.FEATURES)
    stats = features.read_stats(spark, settings, features_version)
    table = lake.read(spark, settings.lake, lake.FEATURES, version=features_version)
    revenue_scale = mean_positive_revenue(table.filter(F.col("split") == "train"))
    inputs = training_inputs(table, stats, revenue_scale)
    counts = {(r["split"], r["label"]): r["count"] for r in table.groupBy("split", "label").count().collect()}  # 6
    edges = numeric_edges(table, stats, cfg.numeric_encoding)
    bg_nbd = btyd.network_view(table, stats, settings.features.label_window_days) if cfg.bg_nbd_inputs else None
    spec = training_spec(settings, counts, reader_threads(spark, cfg.reader_threads), edges, bg_nbd)
    log.info(
        "training on %d rows (validation %d), %d processes, class weights %s%s",
        spec.train_rows,
        spec.validation_rows,
        cfg.num_proc,
        spec.class_weight,
        f", resuming after epoch {spec.initial_epoch}" if spec.initial_epoch else "",
    )
    train, validation = (_split(inputs, name, cfg.num_proc) for name in ("train", "validation"))
    results = fit(spark, settings, spec, train, validation)
    chief = results[0]
    metadata = model_metadata(spark, settings, spec, results, stats, features_version, revenue_scale)
    candidate = artifacts.join(cfg.model_dir, CANDIDATES, metadata.model_version)  # until the gate has spoken
    model_artifact.save_model(candidate, chief["model_bytes"], metadata)
    evaluation = evaluate.run(spark, settings, table, metadata, candidate)
    gate = champion.verdict(table, metadata, candidate, published, cfg.model_dir, settings.score.batch_size, cfg.seed)
    metadata = metadata.model_copy(update={**evaluation, "gate": gate})
    run_id = None
    try:
        run_id = tracking.log_training(settings, metadata, model_artifact.model_files(chief["model_bytes"], metadata))
    finally:  # published (or kept out) complete even if MLflow refused
        metadata = metadata.model_copy(update={"mlflow_run_id": run_id})
        published_now = champion.publish_or_keep(cfg.model_dir, chief["model_bytes"], metadata, published)
    artifacts.delete_folder(candidate)
    artifacts.delete_folder(spec.checkpoint_dir)  # the run is finished: a later --resume starts afresh
    return TrainResult(
        model_dir=cfg.model_dir,
        model_version=metadata.model_version,
        train_rows=spec.train_rows,
        validation_rows=spec.validation_rows,
        processes=len(results),
        epochs_run=chief["epochs_run"],
        mlflow_run_id=metadata.mlflow_run_id,
        final_metrics={k: round(v[-1], 4) for k, v in chief["history"].items()},
        test_metrics={k: round(v, 4) for k, v in evaluation["test_metrics"]["model"].items() if isinstance(v, float)},
        resumed_after_epoch=spec.initial_epoch,
        published=published_now,
        gate=gate,
    )


def mean_positive_revenue(train: DataFrame) -> float:
    """The training split's mean revenue over the customers who spent: the unit the revenue head learns in (1 when
    nobody spent), so that its log amounts start near 0 whatever the currency."""
    mean = lake.one_row(train.filter(F.col("label_revenue") > 0).agg(F.avg("label_revenue")))[0]
    return float(mean) if mean else 1.0


def model_metadata(
    spark: SparkSession,
    settings: Settings,
    spec: TrainingSpec,
    results: list[dict],
    stats: dict[str, tuple[float, float]],
    features_version: int,
    revenue_scale: float,
) -> model_artifact.ModelMetadata:
    """What scoring and a person need to know of a trained model (`metadata.json`), before its evaluation."""
    chief = results[0]
    model_version = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return model_artifact.ModelMetadata(
        model_version=model_version,
        model_file=f"model-{model_version}.h5",
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        feature_names=features.numeric_feature_names(),
        normalisation=stats,
        sequence_length=spec.sequence_length,
        category_buckets=spec.category_buckets,
        event_type_ids=EVENT_TYPE_IDS,
        gap_bucket_seconds=array_features.GAP_BUCKET_SECONDS,
        features_version=features_version,
        features_run=run_record.recorded_run(spark, settings, features_version),
        num_proc=settings.train.num_proc,
        steps_per_rank=[r["steps"] for r in results],
        weights_sha256_per_rank=[r["weights_sha256"] for r in results],
        epochs_run=chief["epochs_run"],
        fit_seconds=chief["fit_seconds"],
        resumed_after_epoch=spec.initial_epoch,
        history=chief["history"],
        training={k: v for k, v in dataclasses.asdict(spec).items() if k != "initial_model"},
        revenue_scale=revenue_scale,
    )


def training_inputs(table: DataFrame, stats: dict[str, tuple[float, float]], revenue_scale: float) -> DataFrame:
    """What the feed reads: the inputs, the targets as floats (revenue in units of `revenue_scale`), the split."""
    return table.transform(features.model_inputs, stats).select(
        *features.MODEL_INPUT_COLUMNS,
        F.col("label").cast("float").alias("label"),
        F.col("label_purchases").cast("float").alias("label_purchases"),
        (F.col("label_revenue") / revenue_scale).cast("float").alias("label_revenue"),
        "split",
    )


def numeric_edges(table: DataFrame, stats: dict[str, tuple[float, float]], encoding: str) -> list[list[float]] | None:
    """The piecewise-linear encoding's bins from the training split, or None for raw inputs."""
    train = table.filter(F.col("split") == "train")
    return features.bin_edges(train, stats, PIECEWISE_BINS) if encoding == "piecewise_linear" else None


def training_spec(
    settings: Settings,
    counts: dict[tuple[str, int], int],
    threads: int,
    edges: list[list[float]] | None = None,
    bg_nbd: dict | None = None,
) -> TrainingSpec:
    """The worker's settings, with class weights from the training split's label counts and the resume point."""
    cfg = settings.train
    train_rows = counts.get(("train", 0), 0) + counts.get(("train", 1), 0)
    validation_rows = counts.get(("validation", 0), 0) + counts.get(("validation", 1), 0)
    if train_rows == 0 or validation_rows == 0:
        raise ValueError(
            f"the features table has {train_rows} training and {validation_rows} validation rows; "
            "both must be non-empty (generate or ingest more data, or change features.split_*)"
        )
    checkpoint_dir = run_checkpoints(cfg.model_dir, cfg.run_id)
    initial_epoch, initial_model = latest_checkpoint(checkpoint_dir) if cfg.resume and cfg.run_id else (0, None)
    if cfg.resume and initial_model is None:
        log.warning(
            "--resume: no unfinished run %s (its checkpoints go when it finishes), training from the start",
            cfg.run_id or "(train.run_id not set)",
        )
    elif not cfg.resume:
        artifacts.delete_folder(checkpoint_dir)
    return TrainingSpec(
        numeric_dim=len(features.numeric_feature_names()),
        sequence_length=settings.features.sequence_length,
        category_buckets=settings.features.category_buckets,
        epochs=cfg.epochs,
        batch_size=batch_size(cfg.batch_size, train_rows, cfg.num_proc),
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        train_rows=train_rows,
        validation_rows=validation_rows,
        class_weight=class_weights(counts.get(("train", 0), 0), counts.get(("train", 1), 0), cfg.class_weight),
        patience=cfg.patience,
        reader_threads=threads,
        checkpoint_dir=checkpoint_dir,
        numeric_edges=edges,
        bg_nbd=bg_nbd,
        initial_epoch=initial_epoch,
        initial_model=initial_model,
    )


def batch_size(configured: int, train_rows: int, num_proc: int) -> int:
    """`train.batch_size`, or smaller where a process would get fewer than MIN_STEPS_PER_EPOCH steps an epoch (a
    year of grocery, 1,700 customers, was one step an epoch at 512: its value heads stayed untrained, docs/train.md)."""
    return min(configured, max(MIN_BATCH, train_rows // (num_proc * MIN_STEPS_PER_EPOCH)))


def reader_threads(spark: SparkSession, configured: int | None) -> int:
    """Petastorm reader threads per process: as set, or the cores Spark gives each GPU (each core on a CPU node)."""
    if configured:
        return configured
    conf = spark.conf
    cores = int(conf.get("spark.executor.cores", None) or os.cpu_count() or 1)
    gpus = float(conf.get("spark.executor.resource.gpu.amount", None) or 0)
    return max(1, int(cores // gpus) if gpus >= 1 else cores)


def class_weights(negatives: int, positives: int, mode: str) -> dict[int, float] | None:
    """'balanced': each class weighs as much as the other in the loss (n / (2 * class count)); 'none': None."""
    if mode == "none" or negatives == 0 or positives == 0:
        return None
    total = negatives + positives
    return {0: total / (2.0 * negatives), 1: total / (2.0 * positives)}


def run_checkpoints(model_dir: str, run_id: str | None) -> str:
    """The checkpoint folder of one training run: a scheduled run starts afresh, only its own retry resumes it."""
    run_id = run_id or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    return artifacts.join(model_dir, CHECKPOINTS, re.sub(r"[^A-Za-z0-9_.-]", "_", run_id))


def latest_checkpoint(checkpoint_dir: str) -> tuple[int, bytes | None]:
    """(epoch, model bytes) of the newest checkpoint, or (0, None)."""
    epochs = [int(m.group(1)) for name in artifacts.list_names(checkpoint_dir) if (m := _CHECKPOINT_NAME.match(name))]
    if not epochs:
        return 0, None
    epoch = max(epochs)
    return epoch, artifacts.read_bytes(artifacts.join(checkpoint_dir, checkpoint_name(epoch)))


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.h5"


def fit(
    spark: SparkSession, settings: Settings, spec: TrainingSpec, train: DataFrame, validation: DataFrame
) -> list[dict]:
    """Materialise both splits for Petastorm (wide, see `feed`), run the Horovod processes; results by rank."""
    cache = feed.petastorm_cache_url(lake.path(settings.lake, "_petastorm_cache"))
    with (
        feed.converter(spark, cache, feed.to_wide(train, spec.widths)) as train_data,
        feed.converter(spark, cache, feed.to_wide(validation, spec.widths)) as validation_data,
    ):
        train_fn = make_train_fn(spec, train_data.file_urls, validation_data.file_urls)
        errors = artifacts.join(settings.lake.table("_train_errors"), dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"))
        return ranks.run_workers(train_fn, settings.train.num_proc, errors)


def make_train_fn(spec: TrainingSpec, train_urls: list[str], validation_urls: list[str]):
    """The function each Horovod process runs; TensorFlow is imported inside it, on the worker."""

    def train_fn() -> dict:
        import hashlib

        hvd = _import_horovod_keras()
        import tensorflow as tf

        warnings.filterwarnings("ignore")
        hvd.init()
        _pin_gpu(tf, hvd.local_rank())
        _seed_everything(tf, spec.seed)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        model = compiled_model(spec, hvd, tf)
        steps = max(1, spec.train_rows // (spec.batch_size * hvd.size()))
        validation_steps = max(1, spec.validation_rows // (spec.batch_size * hvd.size()))
        counter, callbacks = worker_callbacks(spec, hvd, tf, steps)
        train_reader = feed.open_reader(train_urls, hvd.rank(), hvd.size(), spec.reader_threads, spec.seed)
        validation_reader = feed.open_reader(validation_urls, hvd.rank(), hvd.size(), 1, spec.seed)
        started = time.monotonic()
        try:
            history = model.fit(
                weighted(feed.batches(train_reader, spec.widths, TARGET_COLUMNS, spec.batch_size), spec, tf),
                steps_per_epoch=steps,
                initial_epoch=spec.initial_epoch,
                epochs=spec.epochs,
                validation_data=weighted(
                    feed.batches(validation_reader, spec.widths, TARGET_COLUMNS, spec.batch_size), spec, tf
                ),
                validation_steps=validation_steps,
                callbacks=callbacks,
                verbose=0,
            )
        finally:
            feed.close(train_reader)
            feed.close(validation_reader)
        fit_seconds = time.monotonic() - started
        weights = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
        epochs_run = len(history.epoch)
        return {
            "rank": hvd.rank(),
            "steps": counter.count,
            "epochs_run": epochs_run,
            "fit_seconds": fit_seconds,
            "weights_sha256": weights,
            "history": {k: [float(v) for v in values] for k, values in history.history.items()},
            "model_bytes": model_artifact.model_bytes(model) if hvd.rank() == 0 else None,
        }

    return train_fn


def weighted(batches, spec: TrainingSpec, tf):
    """(inputs, labels) batches as (inputs, a target per head, a sample weight per head): the propensity's rows
    weighted by their class (`spec.class_weight`), the value heads' rows equally."""
    from behavior_spark.model import PROPENSITY_LAYER, TARGETS

    weights = spec.class_weight or {0: 1.0, 1: 1.0}
    by_class = tf.constant([weights[0], weights[1]], dtype=tf.float32)

    def split(inputs, labels):
        targets = {head: labels[column] for head, column in TARGETS.items()}
        ones = tf.ones_like(labels["label"])
        sample_weights = {head: ones for head in TARGETS}
        sample_weights[PROPENSITY_LAYER] = tf.gather(by_class, tf.cast(labels["label"], tf.int32))
        return inputs, targets, sample_weights

    return batches.map(split, num_parallel_calls=tf.data.AUTOTUNE)


def compiled_model(spec: TrainingSpec, hvd, tf):
    """The model on a worker, from the run's checkpoint when it resumes, with Horovod's optimizer: one loss per head
    (`model.LOSS_WEIGHTS` say how much each counts), the propensity's ROC-AUC as its metric."""
    from behavior_spark import model as heads
    from behavior_spark.array_features import GAP_BUCKETS

    model = heads.build_model(
        spec.numeric_dim,
        spec.sequence_length,
        len(EVENT_TYPE_IDS) + 1,
        spec.category_buckets,
        GAP_BUCKETS,
        spec.numeric_edges,
        spec.bg_nbd,
    )
    if spec.initial_model is not None:
        with tempfile.NamedTemporaryFile(suffix=".h5") as saved:
            saved.write(spec.initial_model)
            saved.flush()
            model.load_weights(saved.name)
    model.compile(
        optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.Adam(spec.learning_rate * hvd.size())),
        loss={
            heads.PROPENSITY_LAYER: "binary_crossentropy",
            heads.PURCHASES_LAYER: "poisson",
            heads.REVENUE_LAYER: heads.ziln_loss,
        },
        loss_weights=heads.LOSS_WEIGHTS,
        metrics={heads.PROPENSITY_LAYER: [tf.keras.metrics.AUC(name="auc")]},
        # The rows' weights are the propensity's class weights, one per class, which leave a ROC-AUC unchanged.
        weighted_metrics=[],
    )
    return model


def worker_callbacks(spec: TrainingSpec, hvd, tf, steps: int) -> tuple:
    """(a counter of the steps this rank ran, every callback of the fit): Horovod's broadcast, metric averaging and
    warm-up, early stopping, the step counter, and on rank 0 a checkpoint and an epoch line after each epoch."""

    class CountSteps(tf.keras.callbacks.Callback):  # the steps this rank ran, not the ones it was told to
        count = 0

        def on_train_batch_end(self, batch, logs=None):
            self.count += 1

    class CheckpointEachEpoch(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            location = artifacts.join(spec.checkpoint_dir, checkpoint_name(epoch + 1))
            artifacts.write_bytes(location, model_artifact.model_bytes(self.model))
            print(ranks.epoch_line(epoch + 1, spec.epochs, logs or {}), flush=True)  # the driver's progress line

    counter = CountSteps()
    scaled_lr = spec.learning_rate * hvd.size()
    callbacks = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),  # before early stopping: every rank sees the same val_loss
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=1, steps_per_epoch=steps),
        tf.keras.callbacks.EarlyStopping(monitor=EARLY_STOPPING, patience=spec.patience, restore_best_weights=True),
        counter,
    ]
    if hvd.rank() == 0:
        callbacks.append(CheckpointEachEpoch())
    return counter, callbacks


def _import_horovod_keras():
    """`horovod.tensorflow.keras`, with the Keras 2 API it was written for.

    Horovod 0.28.1's Keras callbacks do `from keras import backend` on TensorFlow >= 2.6; on TensorFlow 2.18 the
    `keras` package is Keras 3, which has no `backend.get_value`. In this worker process the model is tf-keras
    (TF_USE_LEGACY_KERAS=1), so `keras` is made to name tf-keras before Horovod is imported.
    """

    import tf_keras

    sys.modules["keras"] = tf_keras
    import horovod.tensorflow.keras as hvd

    return hvd


def _seed_everything(tf, seed: int) -> None:
    """Seed Python, NumPy and TensorFlow; `tf.keras.utils.set_random_seed` cannot be used on Python 3.12, where
    tf-keras 2.18's initialisers then call `random.randint(1, 1e9)` (a TypeError for a float bound)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def _pin_gpu(tf, local_rank: int) -> None:
    """On a GPU node: this process sees only its own GPU, and allocates its memory as it needs it."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        gpu = gpus[local_rank % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")


def _split(inputs: DataFrame, split: str, num_proc: int) -> DataFrame:
    # At least two Parquet files per process, so every shard has rows.
    return inputs.filter(F.col("split") == split).drop("split").repartition(max(2, num_proc * 2))
