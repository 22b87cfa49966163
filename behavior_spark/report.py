"""Report: one self-contained HTML page per scoring date, for people who will never open a notebook.

Segments (what sets each apart, the top reason of two of its customers, profiles), the propensity distribution, the
model's quality beside the baselines and the champion gate, and what changed since the snapshot before. Every
number is an aggregate (small segments already suppressed by `segment`, and shown with no reasons); the sample
reasons are words about behaviour, never an id. The charts are PNGs drawn with matplotlib and embedded in the page,
so the file can be mailed or attached as is.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import logging

import jinja2
from matplotlib.figure import Figure
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from behavior_spark import artifacts, drift, lake, model_artifact, run_record
from behavior_spark.config import Settings
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
    drift_rows = lake.read(spark, settings.lake, lake.FEATURE_DRIFT).filter(on_date)
    profile_rows = [r.asDict() for r in profiles.collect()]  # one row per segment
    features = [r.asDict() for r in drift_rows.select("feature", "psi", "judged", "compared_with").collect()]
    histogram = propensity_histogram(scores.filter(on_date))
    why = sample_reasons(lake.read(spark, settings.lake, lake.SEGMENTS).filter(on_date))
    profile_rows = [
        {**p, "sample_reasons": [] if p["suppressed"] else why.get(p["segment_id"], [])} for p in profile_rows
    ]
    before = lake.one_row(scores.filter(F.col("scoring_date") < F.lit(scoring_date)).agg(F.max("scoring_date")))[0]
    shift = None
    if before is not None:  # the score's own distribution against the previous scoring date's
        earlier = propensity_histogram(scores.filter(F.col("scoring_date") == F.lit(before)))
        shift = {"date": before, "psi": drift.psi(_shares(earlier), _shares(histogram))}
    page = render(metadata, scoring_date, profile_rows, histogram, drift_summary(features, shift))
    location = artifacts.join(lake.path(settings.lake, "reports"), f"report-{scoring_date}.html")
    artifacts.write_bytes(location, page.encode())
    log.info("report written to %s", location)
    return ReportResult(report=location)


SAMPLE_CUSTOMERS = 2  # per segment, whose reasons the report shows (never their ids)


def sample_reasons(segments) -> dict[int, list[str]]:
    """segment_id -> the top reason of each of a few customers drawn by hash (k x SAMPLE_CUSTOMERS rows)."""
    if "reasons" not in segments.columns:
        return {}
    drawn = Window.partitionBy("segment_id").orderBy(F.xxhash64("customer_id"))
    rows = (
        segments.filter(F.size("reasons") > 0)
        .withColumn("n", F.row_number().over(drawn))
        .filter(F.col("n") <= SAMPLE_CUSTOMERS)
        .select("segment_id", F.col("reasons")[0]["text"].alias("text"))
        .collect()
    )
    found: dict[int, list[str]] = {}
    for r in rows:
        found.setdefault(r["segment_id"], []).append(r["text"])
    return found


def drift_summary(features: list[dict], score_shift: dict | None) -> dict:
    """What changed since the snapshot before and whether it matters, from the drift table's rows of one date."""
    judged = {f["feature"]: f["psi"] for f in features if f["judged"] and f["psi"] is not None}
    largest = max(judged, key=lambda name: judged[name]) if judged else None
    return {
        "compared_with": next((f["compared_with"] for f in features), None),
        "judged": judged,
        "drifted": {name: psi for name, psi in judged.items() if psi > drift.WARN_PSI},
        "largest": (largest, judged[largest]) if largest else None,
        "not_judged": sum(1 for f in features if not f["judged"]),
        "warn_psi": drift.WARN_PSI,
        "score_shift": score_shift,
    }


def _shares(histogram: list[int]) -> list[float]:
    total = sum(histogram) or 1
    return [n / total for n in histogram]


def propensity_histogram(scores) -> list[int]:
    """Customers per propensity bin of width 1/HISTOGRAM_BINS (HISTOGRAM_BINS numbers)."""
    binned = F.least(F.floor(F.col("propensity") * HISTOGRAM_BINS), F.lit(HISTOGRAM_BINS - 1))
    counts = {r["bin"]: r["count"] for r in scores.groupBy(binned.alias("bin")).count().collect()}
    return [counts.get(b, 0) for b in range(HISTOGRAM_BINS)]


PROFILE_COLUMNS = [  # (column, heading with its unit and whether a mean or a total, format): rounded for people
    ("customers", "customers", "0"),
    ("mean_propensity", "chance to buy (mean)", "%"),
    ("mean_days_since_last_event", "days since last visit (mean)", "0"),
    ("mean_purchases", "purchase days so far (mean)", "1"),
    ("mean_revenue", "revenue so far (mean)", "0"),
    ("mean_expected_revenue", "expected revenue, next window (mean)", "2"),
    ("expected_revenue", "expected revenue, next window (total)", "0"),
    ("revenue_at_risk", "revenue at risk (total)", "0"),
]
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("behavior_spark", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _number(value, digits: int | str = 3) -> str:
    """A number for people: thousands separated, `digits` decimals ("%": a share as a percentage), "-" for none."""
    if value is None:
        return "-"
    if digits == "%":
        return f"{value:.0%}"
    if isinstance(value, int) or int(digits) == 0:
        return f"{round(value):,}"
    return f"{value:,.{int(digits)}f}"


_TEMPLATES.filters["number"] = _number


def render(metadata: ModelMetadata, scoring_date, profiles: list[dict], histogram: list[int], changes: dict) -> str:
    """The page, from aggregates only (`templates/report.html.j2`, every value escaped)."""
    charts = {
        "segments": _png(_segment_sizes(profiles)),
        "propensity": _png(_propensity_chart(histogram)),
        "lift": _png(_lift_chart(metadata.lift_by_decile)),
        "calibration": _png(_calibration_chart(metadata.reliability)),
        "drift": _png(_drift_chart(changes["judged"], changes["compared_with"])),
    }
    return _TEMPLATES.get_template("report.html.j2").render(
        scoring_date=scoring_date,
        model_version=metadata.model_version,
        features_version=metadata.features_version,
        customers_scored=sum(histogram),
        generated=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        profiles=[{"sample_reasons": [], **p} for p in profiles],  # a lakehouse scored without reasons has none
        profile_columns=[{"name": n, "heading": h, "digits": d} for n, h, d in PROFILE_COLUMNS],
        test_metrics=metadata.test_metrics,
        comparison=metadata.comparison,
        gate=metadata.gate,
        value_metrics=metadata.value_metrics,
        charts=charts,
        changes=changes,
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


def _drift_chart(judged: dict[str, float], compared_with: str | None):
    fig, ax = _figure(height=max(3.2, 0.18 * len(judged)))
    names = sorted(judged, key=lambda name: judged[name])
    colors = ["#c44e52" if judged[n] > drift.WARN_PSI else "#8c8c8c" for n in names]
    ax.barh(names, [judged[n] for n in names], color=colors)
    ax.axvline(drift.WARN_PSI, color="#c44e52", linestyle="--", linewidth=1)
    ax.set_xlabel(f"population stability index (warning above {drift.WARN_PSI})")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"Feature drift against the {compared_with or 'snapshot before'}")
    return fig
