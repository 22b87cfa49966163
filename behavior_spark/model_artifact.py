"""The model artifact: the folder `train` publishes and `score`, `evaluate` and `report` read.

A folder holds `metadata.json` (feature list, normalisation, vocabularies, data versions, metrics) and the weights
it names (`model-<version>.h5`). Publishing writes the weights under their own name first, then the metadata in one
whole-file write, so a reader gets the old model or the new one, never a mix.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from pydantic import BaseModel, ConfigDict

from behavior_spark import artifacts

MODEL_FILE = "model.h5"
METADATA_FILE = "metadata.json"
_MODEL_NAME = re.compile(r"^model(-.+)?\.h5$")


class ModelMetadata(BaseModel):
    """What scoring, evaluation, the report and a person need to know of a trained model (`metadata.json`)."""

    model_config = ConfigDict(frozen=True)

    model_version: str
    model_file: str = MODEL_FILE  # the weights' file in the folder (`model-<version>.h5`)
    trained_at: str
    feature_names: list[str]  # the numeric inputs, in the model's order
    normalisation: dict[str, tuple[float, float]]  # feature -> (mean, standard deviation) of the training split
    sequence_length: int
    category_buckets: int
    event_type_ids: dict[str, int]
    gap_bucket_seconds: list[int]
    features_version: int  # the features-table version trained on
    features_run: dict[str, Any]  # what that version was built from (`run_record.recorded_run`)
    num_proc: int
    steps_per_rank: list[int]  # counted on each rank
    weights_sha256_per_rank: list[str]
    epochs_run: int
    fit_seconds: float
    resumed_after_epoch: int
    history: dict[str, list[float | None]]  # per-epoch metrics (loss, val_loss, ...); None where not a number
    training: dict[str, Any]  # the worker's settings (`train.TrainingSpec`), class weights included
    revenue_scale: float = 1.0  # the revenue head learns amounts in this unit (the training split's mean positive)
    # Added by evaluation (`evaluate.run`) before the model is published a second time; MLflow's id after that.
    test_metrics: dict[str, dict[str, float | None]] = {}  # model or baseline -> metric -> value
    value_metrics: dict[str, dict[str, float | None]] = {}  # expected purchases and revenue against the test split
    comparison: dict[str, Any] | None = None  # the model's ROC-AUC against the best baseline's, with its interval
    reliability: list[dict[str, Any]] = []
    lift_by_decile: list[dict[str, Any]] = []
    permutation_importance: dict[str, float | None] = {}
    gate: dict[str, Any] | None = None  # the champion gate's verdict of the last training run (`champion`)
    mlflow_run_id: str | None = None

    @property
    def events_version(self) -> int:
        return self.features_run["events_version"]


def untrained_metadata(model_version: str, feature_names: list[str]) -> ModelMetadata:
    """The metadata of a model nobody trained (identity normalisation, no history): for benchmarks and tests."""
    return ModelMetadata(
        model_version=model_version,
        model_file=f"model-{model_version}.h5",
        trained_at="",
        feature_names=feature_names,
        normalisation={name: (0.0, 1.0) for name in feature_names},
        sequence_length=50,
        category_buckets=64,
        event_type_ids={},
        gap_bucket_seconds=[],
        features_version=0,
        features_run={"events_version": 0},
        num_proc=1,
        steps_per_rank=[],
        weights_sha256_per_rank=[],
        epochs_run=0,
        fit_seconds=0.0,
        resumed_after_epoch=0,
        history={},
        training={"class_weight": None},
    )


def model_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, MODEL_FILE)
        model.save(path)
        with open(path, "rb") as saved:
            return saved.read()


def model_files(weights: bytes, metadata: ModelMetadata) -> dict[str, bytes]:
    """The artifact's files: the model and its metadata (feature list, normalisation, data version, metrics)."""
    return {MODEL_FILE: weights, METADATA_FILE: metadata.model_dump_json(indent=2).encode()}


def save_model(model_dir: str, weights: bytes, metadata: ModelMetadata) -> None:
    """Publish a model: its weights under a name of their own (`metadata.model_file`), then the metadata that
    names them, in one whole-file write. Readers go through the metadata, so they get the old model or the new one,
    never the new weights with the old statistics; a kill in between leaves the old model published."""
    files = model_files(weights, metadata)
    artifacts.write_bytes(artifacts.join(model_dir, metadata.model_file), files[MODEL_FILE])
    previous = artifacts.exists(artifacts.join(model_dir, METADATA_FILE)) and load_metadata(model_dir)
    artifacts.write_bytes(artifacts.join(model_dir, METADATA_FILE), files[METADATA_FILE])
    keep = {metadata.model_file, previous and previous.model_file}  # the one before: readers may still hold it
    for name in artifacts.list_names(model_dir):
        if _MODEL_NAME.match(name) and name not in keep:
            artifacts.delete_file(artifacts.join(model_dir, name))


def save_metadata(model_dir: str, metadata: ModelMetadata) -> None:
    """Rewrite the published model's metadata (its weights unchanged), in one whole-file write."""
    artifacts.write_bytes(artifacts.join(model_dir, METADATA_FILE), metadata.model_dump_json(indent=2).encode())


def published_metadata(model_dir: str) -> ModelMetadata | None:
    """The published model's metadata, or None where nothing is published yet."""
    return load_metadata(model_dir) if artifacts.exists(artifacts.join(model_dir, METADATA_FILE)) else None


def load_metadata(model_dir: str) -> ModelMetadata:
    path = artifacts.join(model_dir, METADATA_FILE)
    if not artifacts.exists(path):
        raise FileNotFoundError(f"no trained model at {model_dir} (missing {METADATA_FILE}): run the train stage first")
    return ModelMetadata.model_validate_json(artifacts.read_bytes(path))
