"""The HTML report's page from aggregates: every value escaped, columns a reader can tell apart, numbers rounded
for people. The page rendered in a browser is checked on the shared lakehouse (test_end_to_end)."""

import re

from behavior_spark import model_artifact, report

PROFILE = {
    "segment_id": 0,
    "segment_name": "<script>alert(1)</script> buyers",
    "segment_description": "chance to buy 41% (all: 12%)",
    "customers": 1234,
    "mean_propensity": 0.41234,
    "mean_days_since_last_event": 12.3456,
    "mean_purchases": 2.5,
    "mean_revenue": 101.23456,
    "mean_expected_revenue": 55.5555,
    "expected_revenue": 68555.5555,
    "revenue_at_risk": 1000.0,
    "top_category_labels": ["electronics.audio", "<b>toys</b>"],
}


def page() -> str:
    metadata = model_artifact.untrained_metadata("v1", ["events"]).model_copy(
        update={
            "test_metrics": {
                "model": {"roc_auc": 0.71234, "log_loss": None},
                "logistic": {"roc_auc": 0.7, "log_loss": 0.5},
            },
            "lift_by_decile": [{"decile": d, "lift": 2.0 / d} for d in range(1, 11)],
            "reliability": [{"mean_score": b / 10, "positive_rate": b / 10} for b in range(10)],
            "comparison": {"baseline": "logistic", "roc_auc_difference": 0.012, "low_95": -0.01, "high_95": 0.03,
                           "verdict": "level"},
            "gate": {"champion": "v0", "challenger": "v2", "customers": 1500, "roc_auc_difference": -0.05,
                     "low_95": -0.08, "high_95": -0.02, "verdict": "worse"},
        }
    )  # fmt: skip
    drift = [
        {"feature": "events", "psi": 1.5, "judged": False, "compared_with": "training snapshot of 2026-05-01"},
        {"feature": "purchase_30d", "psi": 0.05, "judged": True, "compared_with": "training snapshot of 2026-05-01"},
    ]
    changes = report.drift_summary(drift, {"date": "2026-05-25", "psi": 0.012})
    return report.render(metadata, "2026-06-01", [PROFILE], [10] * report.HISTOGRAM_BINS, changes)


def test_every_value_is_escaped():
    html = page()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; buyers" in html
    assert "<b>toys</b>" not in html and "&lt;b&gt;toys&lt;/b&gt;" in html


def test_column_headings_are_distinct_and_numbers_are_rounded_for_people():
    html = page()
    for table in html.split("<h2>Propensity</h2>")[0].split("<table>")[1:]:
        headings = re.findall(r"<th>([^<]*)</th>", table)
        assert len(headings) == len(set(headings)), headings
    headings = re.findall(r"<th>([^<]*)</th>", html)
    assert "expected revenue, next window (mean)" in headings and "expected revenue, next window (total)" in headings
    assert ">1,234<" in html and ">41%<" in html and ">12<" in html and ">68,556<" in html and ">55.56<" in html
    assert "+0.012" in html and "level" in html and html.count("data:image/png;base64,") == 5


def test_the_report_says_what_changed_and_whether_it_matters():
    html = page()
    assert "against the training snapshot of 2026-05-01" in html
    assert "no feature moved beyond PSI 0.2 (the largest: purchase 30d," in html  # events is a lifetime total
    assert "1 lifetime totals" in html and "PSI\n0.01 (stable)" in html
    assert "chance to buy 41% (all: 12%)" in html


def test_the_report_shows_the_champion_gate_and_which_model_stays():
    html = page()
    assert "model trained last (v2) against the one published before it\n(v0)" in html
    assert "<b>worse</b>" in html and "model v0 stays published" in html
