"""The stages in order, each timed and logged, and the summary a user reads at the end of a run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from pyspark.sql import SparkSession

from behavior_spark import features, generate, ingest, lake, report, score, segment, train, warehouse
from behavior_spark.config import Settings

log = logging.getLogger(__name__)

Stage = Callable[[SparkSession, Settings], dict]
STAGES: dict[str, Stage] = {
    "generate": generate.run,
    "ingest": ingest.run,
    "featurize": features.run,
    "train": train.run,
    "score": score.run,
    "segment": segment.run,
    "export": warehouse.run,
    "report": report.run,
}


def run_stage(name: str, spark: SparkSession, settings: Settings) -> dict:
    log.info("%s: started", name)
    started = time.monotonic()
    result = STAGES[name](spark, settings)
    seconds = time.monotonic() - started
    log.info("%s: finished in %.1f s: %s", name, seconds, json.dumps(result, default=str))
    return {**result, "seconds": round(seconds, 1)}


PIPELINE = ["ingest", "featurize", "train", "score", "segment", "export", "report"]  # `generate` is its own step


def run_all(spark: SparkSession, settings: Settings) -> dict:
    """ingest -> featurize -> train -> score -> segment -> export -> report on the configured input; each result."""
    return {name: run_stage(name, spark, settings) for name in PIPELINE}


def summary(results: dict[str, dict], settings: Settings) -> str:
    """What the run wrote and where, in words and numbers."""
    lines = [f"behavior-spark run: lakehouse at {lake.path(settings.lake, '')}"]
    for stage, result in results.items():
        shown = {k: v for k, v in result.items() if k not in ("quarantined_by_reason", "run_id", "ingested_at")}
        lines.append(f"  {stage:<9} {json.dumps(shown, default=str)}")
        if stage == "ingest":
            lines.append(f"            quarantined by reason: {json.dumps(result['quarantined_by_reason'])}")
    tables = [
        lake.EVENTS,
        lake.QUARANTINE,
        lake.INGEST_AUDIT,
        lake.CUSTOMER_DAYS,
        lake.CUSTOMER_TOTALS,
        lake.FEATURES,
        lake.SCORES,
        lake.SEGMENTS,
        lake.SEGMENT_PROFILES,
        lake.SEGMENT_CENTROIDS,
        lake.MODEL_EVALUATION,
        lake.FEATURE_DRIFT,
    ]
    lines.append(f"  Delta tables: {', '.join(tables)}; model: {settings.train.model_dir}")
    return "\n".join(lines)
