"""MLflow tracking of each training run: its configuration, data versions, metrics and the model artifact.

Where runs go (`train.mlflow_tracking_uri`): by default a local store in `<lake.root>/mlruns` (MLflow's file
backend: no server, no database; read it with `mlflow.search_runs` or an `mlflow ui` pointed at it); `databricks`
on a Databricks job (the workspace's tracking server, `conf/databricks.yaml`); any `http(s)://` tracking server;
`disabled` to skip tracking. Only the driver talks to MLflow, once per training run, after Horovod has finished.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from behavior_spark import artifacts
from behavior_spark.config import ConfigError, Settings
from behavior_spark.model_artifact import ModelMetadata

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """MLflow could not record the run (an unreachable server, a refused experiment)."""


def tracking_uri(settings: Settings) -> str | None:
    """The MLflow tracking URI for these settings; None when tracking is off."""
    configured = settings.train.mlflow_tracking_uri
    if configured == "disabled":
        return None
    if configured:
        return configured
    root = settings.lake.root
    if not artifacts.is_local(root):
        raise ConfigError(
            f"train.mlflow_tracking_uri is not set and lake.root {root!r} is not a local path, so there is no local "
            "MLflow store to default to: set it to a tracking server ('databricks', 'http://...') or 'disabled'"
        )
    return "file:" + os.path.abspath(os.path.join(root, "mlruns"))


def log_training(settings: Settings, metadata: ModelMetadata, files: dict[str, bytes]) -> str | None:
    """Record one training run in MLflow, with the model artifact's `files`; its run id, or None when off."""
    uri = tracking_uri(settings)
    if uri is None:
        return None
    import mlflow

    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store, in maintenance
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(settings.train.mlflow_experiment)
        with mlflow.start_run(run_name=f"propensity-{metadata.model_version}") as run:
            mlflow.set_tags(run_tags(metadata))
            mlflow.log_params(run_params(metadata))
            first_epoch = metadata.resumed_after_epoch
            for epoch, values in enumerate(zip(*metadata.history.values(), strict=True), start=first_epoch):
                mlflow.log_metrics(dict(zip(metadata.history, values, strict=True)), step=epoch)
            mlflow.log_metrics(evaluation_metrics(metadata))
            with tempfile.TemporaryDirectory() as folder:
                for name, data in files.items():
                    with open(os.path.join(folder, name), "wb") as out:
                        out.write(data)
                mlflow.log_artifacts(folder, artifact_path="model")
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow at {uri} did not record the training run: {error.message}") from error
    log.info("MLflow run %s in experiment %r at %s", run.info.run_id, settings.train.mlflow_experiment, uri)
    return run.info.run_id


def run_tags(metadata: ModelMetadata) -> dict[str, str]:
    return {
        "model_version": metadata.model_version,
        "features_version": str(metadata.features_version),
        "events_version": str(metadata.events_version),
    }


def run_params(metadata: ModelMetadata) -> dict[str, str | int | float]:
    """What a run can be reproduced from: the training spec and the features it read (label, cutoffs, versions)."""
    left_out = ("checkpoint_dir", "class_weight", "numeric_edges", "bg_nbd")  # in the model's layers, too long
    training = {k: v for k, v in metadata.training.items() if k not in left_out}
    data = metadata.features_run
    return {
        **{f"train.{k}": v for k, v in training.items()},
        "train.class_weight": json.dumps(metadata.training["class_weight"]),
        "train.numeric_encoding": "piecewise_linear" if metadata.training.get("numeric_edges") else "raw",
        "train.bg_nbd_inputs": json.dumps((metadata.training.get("bg_nbd") or {}).get("params")),
        "train.num_proc": metadata.num_proc,
        "features.cutoffs": ",".join(data["cutoffs"]),
        "features.label_event": data["label_event"],
        "features.label_window_days": data["label_window_days"],
        "features.numeric": len(data["features"]),
        "features.sequence_length": data["sequence_length"],
        "features_version": metadata.features_version,
        "events_version": data["events_version"],
    }


def evaluation_metrics(metadata: ModelMetadata) -> dict[str, float]:
    """`test.<model>.<metric>` for the model and every baseline, propensity and customer value (metrics a ranking
    cannot have are left out)."""
    return {
        f"test.{model}.{name}": float(value)
        for by_model in (metadata.test_metrics, metadata.value_metrics)
        for model, values in by_model.items()
        for name, value in values.items()
        if value is not None
    }
