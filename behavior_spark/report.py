"""Report: one self-contained HTML page per scoring date, for people who will never open a notebook.

Segment sizes and profiles, the propensity distribution, the model's lift and calibration on the test split beside
the baselines, and feature drift. Every number is an aggregate (small segments already suppressed by `segment`);
the charts are PNGs drawn with matplotlib and embedded in the page, so the file can be mailed or attached as is.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging

from matplotlib.figure import Figure
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from behavior_spark import artifacts, lake, model_artifact, run_record
from behavior_spark.config import Settings
from behavior_spark.drift import WARN_PSI
from behavior_spark.model_artifact import ModelMetadata

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20
# Marks the page once every image has decoded: the rendering test reads these attributes back.
_RENDER_CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.imagesRendered = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def run(spark: SparkSession, settings: Settings) -> dict:
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
    return {"report": location}


def propensity_histogram(scores) -> list[int]:
    """Customers per propensity bin of width 1/HISTOGRAM_BINS (HISTOGRAM_BINS numbers)."""
    binned = F.least(F.floor(F.col("propensity") * HISTOGRAM_BINS), F.lit(HISTOGRAM_BINS - 1))
    counts = {r["bin"]: r["count"] for r in scores.groupBy(binned.alias("bin")).count().collect()}
    return [counts.get(b, 0) for b in range(HISTOGRAM_BINS)]


def render(metadata: ModelMetadata, scoring_date, profiles: list[dict], histogram: list[int], drift: dict) -> str:
    """The page, from aggregates only."""
    sections = [
        f"<h1>behavior-spark report, scoring date {html.escape(str(scoring_date))}</h1>",
        f"<p>Model {html.escape(metadata.model_version)}, trained on features version "
        f"{metadata.features_version}; {sum(histogram):,} customers scored; generated "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.</p>",
        "<h2>Segments</h2>",
        _image(_segment_sizes(profiles)),
        _profile_table(profiles),
        "<p>Expected revenue: what the model expects the segment's customers to spend in the next label window. "
        "Revenue at risk: what they spent per window so far beyond that, summed over the segment.</p>",
        "<h2>Propensity</h2>",
        _image(_propensity_chart(histogram)),
        "<h2>Model quality on the test split</h2>",
        _metrics_table(metadata.test_metrics),
        _comparison(metadata.comparison),
        "<h2>Customer value on the test split</h2>",
        "<p>Expected purchase days and revenue in the label window against what the customers did: Spearman's rank "
        "correlation, mean absolute error per customer, and the relative error of the summed forecast. "
        "BG/NBD + Gamma-Gamma forecasts only the customers who bought before.</p>",
        _metrics_table(metadata.value_metrics) if metadata.value_metrics else "<p>Not evaluated.</p>",
        _image(_lift_chart(metadata.lift_by_decile)),
        _image(_calibration_chart(metadata.reliability)),
        "<h2>Feature drift since training</h2>",
        _image(_drift_chart(drift)),
    ]
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>behavior-spark report</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}{_RENDER_CHECK}</body></html>"
    )


def _figure(height: float = 3.2):
    """A figure and its axes, drawn off-screen (no pyplot, no display needed)."""
    fig = Figure(figsize=(8, height), dpi=100)
    return fig, fig.subplots()


def _image(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"<p><img alt='chart' src='data:image/png;base64,{encoded}'></p>"


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


def _profile_table(profiles: list[dict]) -> str:
    columns = [
        "customers",
        "mean_propensity",
        "mean_days_since_last_event",
        "mean_purchases",
        "mean_revenue",
        "mean_expected_revenue",
        "expected_revenue",
        "revenue_at_risk",
    ]
    head = "".join(f"<th>{html.escape(c.removeprefix('mean_').replace('_', ' '))}</th>" for c in columns)
    rows = []
    for p in profiles:
        cells = "".join(f"<td>{_number(p[c])}</td>" for c in columns)
        top = ", ".join(str(c) for c in p["top_category_labels"] or []) or "-"
        rows.append(f"<tr><td>{html.escape(p['segment_name'])}</td>{cells}<td>{html.escape(top)}</td></tr>")
    return f"<table><tr><th>segment</th>{head}<th>top categories</th></tr>{''.join(rows)}</table>"


def _metrics_table(metrics: dict[str, dict]) -> str:
    names = list(next(iter(metrics.values())))
    head = "".join(f"<th>{html.escape(n.replace('_', ' '))}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{html.escape(model.replace('_', ' '))}</td>"
        + "".join(f"<td>{_number(values[n])}</td>" for n in names)
        + "</tr>"
        for model, values in metrics.items()
    )
    return f"<table><tr><th>model</th>{head}</tr>{rows}</table>"


def _comparison(comparison: dict | None) -> str:
    """One sentence: the model against the best baseline, with the 95% bootstrap interval of the difference."""
    if not comparison:
        return ""
    baseline = html.escape(comparison["baseline"].replace("_", " "))
    if comparison["roc_auc_difference"] is None:
        return f"<p>The model against the best baseline ({baseline}): undefined, the test split holds one class.</p>"
    return (
        f"<p>ROC-AUC of the model minus the best baseline ({baseline}): {comparison['roc_auc_difference']:+.3f} "
        f"(95% bootstrap interval {comparison['low_95']:+.3f} to {comparison['high_95']:+.3f}): "
        f"<b>{html.escape(comparison['verdict'])}</b>.</p>"
    )


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.3f}"
