"""Report: one self-contained HTML page per scoring date, for people who will never open a notebook.

Segment sizes and profiles, the propensity distribution, the model's lift and calibration on the test split beside
the baselines, and feature drift. Every number is an aggregate (small segments already suppressed by `segment`);
the charts are PNGs drawn with matplotlib and embedded in the page, so the file can be mailed or attached as is.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging

import jinja2
from matplotlib.figure import Figure
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from behavior_spark import artifacts, lake, model_artifact, run_record
from behavior_spark.config import Settings
from behavior_spark.drift import WARN_PSI
from behavior_spark.model_artifact import ModelMetadata
from behavior_spark.results import ReportResult

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20


def run(spark: SparkSession, settings: Settings) -> ReportResult:
    metadata = model_artifact.load_metadata(settings.train.model_dir)
    scores = lake.read(spark, settings.lake, lake.SCORES)
    scoring_date = run_record.scoring_date(spark, settings)  # the date the score stage scored
    on_date = F.col("scoring_date") == F.lit(scoring_date)
    profiles = lake.read(spark, settings.lake, lake.SEGMENT_PROFILES).filter(on_date).orderBy("segment_id")
    drift = lake.read(spark, settings.lake, lake.FEATURE_DRIFT).filter(on_date)
    profile_rows = [r.asDict() for r in profiles.collect()]  # one row per segment
    psi = {r["feature"]: r["psi"] for r in drift.collect()}  # one row per feature
    histogram = propensity_histogram(scores.filter(on_date))
    page = render(metadata, scoring_date, profile_rows, histogram, psi)
    location = artifacts.join(lake.path(settings.lake, "reports"), f"report-{scoring_date}.html")
    artifacts.write_bytes(location, page.encode())
    log.info("report written to %s", location)
    return ReportResult(report=location)


def propensity_histogram(scores) -> list[int]:
    """Customers per propensity bin of width 1/HISTOGRAM_BINS (HISTOGRAM_BINS numbers)."""
    binned = F.least(F.floor(F.col("propensity") * HISTOGRAM_BINS), F.lit(HISTOGRAM_BINS - 1))
    counts = {r["bin"]: r["count"] for r in scores.groupBy(binned.alias("bin")).count().collect()}
    return [counts.get(b, 0) for b in range(HISTOGRAM_BINS)]


PROFILE_COLUMNS = [  # (column, heading, decimals): money to cents, days and counts to one decimal
    ("customers", "customers", 0),
    ("mean_propensity", "mean propensity", 3),
    ("mean_days_since_last_event", "mean days since last event", 1),
    ("mean_purchases", "mean purchases", 1),
    ("mean_revenue", "mean revenue", 2),
    ("mean_expected_revenue", "mean expected revenue", 2),
    ("expected_revenue", "total expected revenue", 2),
    ("revenue_at_risk", "revenue at risk", 2),
]
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("behavior_spark", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _number(value, digits: int = 3) -> str:
    """A number for people: thousands separated, `digits` decimals (integers as they are), "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, int) or digits == 0:
        return f"{round(value):,}"
    return f"{value:,.{digits}f}"


_TEMPLATES.filters["number"] = _number


def render(metadata: ModelMetadata, scoring_date, profiles: list[dict], histogram: list[int], drift: dict) -> str:
    """The page, from aggregates only (`templates/report.html.j2`, every value escaped)."""
    charts = {
        "segments": _png(_segment_sizes(profiles)),
        "propensity": _png(_propensity_chart(histogram)),
        "lift": _png(_lift_chart(metadata.lift_by_decile)),
        "calibration": _png(_calibration_chart(metadata.reliability)),
        "drift": _png(_drift_chart(drift)),
    }
    return _TEMPLATES.get_template("report.html.j2").render(
        scoring_date=scoring_date,
        model_version=metadata.model_version,
        features_version=metadata.features_version,
        customers_scored=sum(histogram),
        generated=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        profiles=profiles,
        profile_columns=[{"name": n, "heading": h, "digits": d} for n, h, d in PROFILE_COLUMNS],
        test_metrics=metadata.test_metrics,
        comparison=metadata.comparison,
        value_metrics=metadata.value_metrics,
        charts=charts,
    )


def _figure(height: float = 3.2):
    """A figure and its axes, drawn off-screen (no pyplot, no display needed)."""
    fig = Figure(figsize=(8, height), dpi=100)
    return fig, fig.subplots()


def _png(fig) -> str:
    """The figure as a base64 PNG, for a data: URL."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _segment_sizes(profiles: list[dict]):
    fig, ax = _figure()
    ax.barh([p["segment_name"] for p in profiles], [p["customers"] for p in profiles], color="#4c72b0")
    ax.set_xlabel("customers")
    ax.set_title("Segment sizes")
    ax.invert_yaxis()
    return fig


def _propensity_chart(histogram: list[int]):
    fig, ax = _figure()
    width = 1 / HISTOGRAM_BINS
    ax.bar([i * width for i in range(HISTOGRAM_BINS)], histogram, width=width, align="edge", color="#55a868")
    ax.set_xlabel("purchase propensity")
    ax.set_ylabel("customers")
    ax.set_title("Propensity distribution")
    return fig


def _lift_chart(deciles: list[dict]):
    fig, ax = _figure()
    ax.bar([d["decile"] for d in deciles], [d["lift"] or 0 for d in deciles], color="#c44e52")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("score decile (1 = highest propensity)")
    ax.set_ylabel("lift over the base rate")
    ax.set_title("Lift by decile (test split)")
    return fig


def _calibration_chart(bins: list[dict]):
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.plot([b["mean_score"] for b in bins], [b["positive_rate"] for b in bins], marker="o", label="model")
    ax.set_xlabel("mean predicted propensity")
    ax.set_ylabel("observed positive rate")
    ax.set_title("Calibration (test split)")
    ax.legend()
    return fig


def _drift_chart(drift: dict[str, float]):
    fig, ax = _figure(height=max(3.2, 0.18 * len(drift)))
    names = sorted(drift, key=lambda name: drift[name])
    colors = ["#c44e52" if drift[n] > WARN_PSI else "#8c8c8c" for n in names]
    ax.barh(names, [drift[n] for n in names], color=colors)
    ax.axvline(WARN_PSI, color="#c44e52", linestyle="--", linewidth=1)
    ax.set_xlabel(f"population stability index (warning above {WARN_PSI})")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Feature drift: training data against the customers scored")
    return fig
