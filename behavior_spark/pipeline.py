"""The stages in order, each timed, followed on the console and logged."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from pyspark.sql import SparkSession
from rich.console import Console

from behavior_spark import console, features, generate, ingest, report, score, segment, train, warehouse
from behavior_spark.config import Settings
from behavior_spark.results import StageResult

log = logging.getLogger(__name__)

Stage = Callable[[SparkSession, Settings], StageResult]
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


def run_stage(name: str, spark: SparkSession, settings: Settings, screen: Console | None = None) -> StageResult:
    """One stage, timed; a moving line on `screen` while it works (a terminal), its numbers in the log."""
    log.info("%s: started", name)
    started = time.monotonic()
    with console.live(screen, name, spark):
        result = STAGES[name](spark, settings).timed(time.monotonic() - started)
    log.info("%s: finished in %.1f s: %s", name, result.seconds, json.dumps(result.as_dict(), default=str))
    if screen is not None:
        screen.print(f"[green]✓[/green] {name:<9} {result.came_out()} [dim]({result.seconds:.0f} s)[/dim]")
    return result


PIPELINE = ["ingest", "featurize", "train", "score", "segment", "export", "report"]  # `generate` is its own step


def run_all(spark: SparkSession, settings: Settings, screen: Console | None = None) -> dict[str, StageResult]:
    """ingest -> featurize -> train -> score -> segment -> export -> report on the configured input; each result."""
    return {name: run_stage(name, spark, settings, screen) for name in PIPELINE}
