"""The model artifact: the folder `train` publishes and `score`, `evaluate` and `report` read.

A folder holds `metadata.json` (feature list, normalisation, vocabularies, data versions, metrics) and the weights
it names (`model-<version>.h5`). Publishing writes the weights under their own name first, then the metadata in one
whole-file write, so a reader gets the old model or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

from behavior_spark import artifacts

MODEL_FILE = "model.h5"
METADATA_FILE = "metadata.json"
_MODEL_NAME = re.compile(r"^model(-.+)?\.h5$")


def model_bytes(model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, MODEL_FILE)
        model.save(path)
        with open(path, "rb") as saved:
            return saved.read()


def model_files(weights: bytes, metadata: dict) -> dict[str, bytes]:
    """The artifact's files: the model and its metadata (feature list, normalisation, data version, metrics)."""
    text = json.dumps(metadata, indent=2, sort_keys=True, default=str)
    return {MODEL_FILE: weights, METADATA_FILE: text.encode()}


def save_model(model_dir: str, weights: bytes, metadata: dict) -> None:
    """Publish a model: its weights under a name of their own (`metadata["model_file"]`), then the metadata that
    names them, in one whole-file write. Readers go through the metadata, so they get the old model or the new one,
    never the new weights with the old statistics; a kill in between leaves the old model published."""
    files = model_files(weights, metadata)
    artifacts.write_bytes(artifacts.join(model_dir, metadata["model_file"]), files[MODEL_FILE])
    previous = artifacts.exists(artifacts.join(model_dir, METADATA_FILE)) and load_metadata(model_dir)
    artifacts.write_bytes(artifacts.join(model_dir, METADATA_FILE), files[METADATA_FILE])
    keep = {metadata["model_file"], previous and previous.get("model_file")}  # the one before: readers may hold it
    for name in artifacts.list_names(model_dir):
        if _MODEL_NAME.match(name) and name not in keep:
            artifacts.delete_file(artifacts.join(model_dir, name))


def load_metadata(model_dir: str) -> dict:
    path = artifacts.join(model_dir, METADATA_FILE)
    if not artifacts.exists(path):
        raise FileNotFoundError(f"no trained model at {model_dir} (missing {METADATA_FILE}): run the train stage first")
    return json.loads(artifacts.read_bytes(path))
