"""What a features-table version recorded about the run that built it, and the scoring date every later stage of
that run (score, segment, export, report) works on."""

from __future__ import annotations

import datetime as dt
import json

from pyspark.sql import SparkSession

from behavior_spark import lake
from behavior_spark.config import Settings


def recorded_run(spark: SparkSession, settings: Settings, version: int | None = None) -> dict:
    """What a features-table version (by default the latest) was built from (events version, cutoffs, feature
    list): to rebuild it exactly. Empty where there is no table."""
    commits = lake.commits(spark, lake.path(settings.lake, lake.FEATURES), None if version is not None else 1)
    row = next((c for c in commits if version is None or c["version"] == version), None)
    return json.loads(row["userMetadata"] or "{}") if row else {}


def scoring_date(spark: SparkSession, settings: Settings) -> dt.date:
    """The date score, segment, export and report work on: `score.scoring_date`, or the one the latest features
    version was built for (recorded in its commit), so every stage of a run agrees on it."""
    if settings.score.scoring_date:
        return settings.score.scoring_date
    recorded = recorded_run(spark, settings).get("scoring_date")
    if recorded is None:
        raise ValueError("the features table has no scoring snapshot (built by an earlier version): run featurize")
    return dt.date.fromisoformat(recorded)
