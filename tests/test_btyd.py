"""BG/NBD and Gamma-Gamma, the classic baselines: purchase triples and spend built in Spark, the fits checked against
the published CDNOW ones."""

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from behavior_spark import btyd

# The CDNOW sample of Fader, Hardie and Lee (2005): 2,357 customers, 39 weeks (the copy shipped with the MIT-licensed
# `lifetimes` package, whose column names it keeps: frequency = x, recency = t_x, T).
CDNOW = Path(__file__).parent / "data" / "cdnow_customers_summary.csv"
CDNOW_SPEND = Path(__file__).parent / "data" / "cdnow_customers_summary_with_transactions.csv"


def test_the_fit_over_spark_grouped_triples_finds_the_published_cdnow_parameters(spark):
    summary = pd.read_csv(CDNOW).rename(columns={"frequency": "x", "recency": "t_x"})[btyd.TRIPLE]
    counts = btyd.grouped(spark.createDataFrame(summary))
    assert counts["n"].sum() == 2357 and len(counts) < 1100  # the driver sees distinct triples, not customers
    params = btyd.fit(counts)
    published = btyd.BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)  # the paper's table
    for name in ("r", "alpha", "a", "b"):
        assert getattr(params, name) == pytest.approx(getattr(published, name), rel=0.005), name
    # The paper's worked example: x = 2, t_x = 30.43, T = 38.86 expects 1.226 purchases in the next 39 weeks.
    expected = btyd.expected_purchases(params, np.array([2.0]), np.array([30.43]), np.array([38.86]), 39.0)
    assert expected[0] == pytest.approx(1.226, abs=0.002)


def test_purchase_triples_count_purchase_days_before_the_cutoff(spark):
    day = dt.date(2026, 1, 1)
    events = spark.createDataFrame(
        [
            ("c1", "purchase", day),
            ("c1", "purchase", day),  # a second order the same day: one transaction
            ("c1", "purchase", day + dt.timedelta(days=14)),
            ("c1", "view", day + dt.timedelta(days=20)),
            ("c1", "purchase", day + dt.timedelta(days=28)),
            ("c1", "purchase", day + dt.timedelta(days=35)),  # on the cutoff: after it
            ("c2", "view", day),  # never bought: no triple
        ],
        "customer_id string, event_type string, event_date date",
    )
    customers = spark.createDataFrame([("c1", day + dt.timedelta(days=35)), ("c2", day + dt.timedelta(days=35))])
    purchase_days = events.filter(F.col("event_type") == "purchase")
    triples = btyd.purchase_triples(purchase_days, customers.toDF("customer_id", "cutoff_date")).collect()
    assert [(r["customer_id"], r["x"], r["t_x"], r["T"]) for r in triples] == [("c1", 2.0, 4.0, 5.0)]


def test_predictions_are_made_per_distinct_triple_and_joined_back(spark):
    params = btyd.BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)
    triples = spark.createDataFrame(
        [("c1", 2.0, 30.43, 38.86), ("c2", 2.0, 30.43, 38.86), ("c3", 0.0, 0.0, 38.86)], ["customer_id", *btyd.TRIPLE]
    )
    rows = {r["customer_id"]: r for r in btyd.predict(params, triples, 39.0).collect()}
    assert rows["c1"]["expected_purchases"] == rows["c2"]["expected_purchases"] == pytest.approx(1.226, abs=0.002)
    assert rows["c3"]["p_alive"] == 1.0  # no repeat purchase: BG/NBD cannot have seen a dropout
    assert 0 < rows["c1"]["p_alive"] < 1


def test_the_gamma_gamma_fit_finds_the_published_cdnow_parameters_and_the_expected_spend_is_spark(spark):
    repeat = pd.read_csv(CDNOW_SPEND).query("x > 0").rename(columns={"zbar": "m"})
    params = btyd.fit_gamma_gamma(repeat)
    published = btyd.GammaGamma(p=6.25, q=3.74, gamma=15.44)  # Fader and Hardie (2013)
    for name in ("p", "q", "gamma"):
        assert getattr(params, name) == pytest.approx(getattr(published, name), rel=0.005), name
    # Customer 1 (x = 2, mean $22.35): shrunk towards the population mean, (gamma + m x) p / (p x + q - 1).
    customer = spark.createDataFrame([(2.0, 22.35)], "x double, m double")
    expected = customer.select(btyd.expected_spend(params).alias("spend")).first()["spend"]
    assert expected == pytest.approx((15.44 + 22.35 * 2) * 6.25 / (6.25 * 2 + 3.74 - 1), rel=0.005)


def test_spend_is_the_mean_revenue_of_the_purchase_days_before_the_cutoff(spark):
    day = dt.date(2026, 1, 1)
    purchase_days = spark.createDataFrame(
        [("c1", day, 10.0), ("c1", day + dt.timedelta(days=3), 30.0), ("c1", day + dt.timedelta(days=9), 99.0)],
        "customer_id string, event_date date, revenue double",
    )
    customers = spark.createDataFrame([("c1", day + dt.timedelta(days=9))], "customer_id string, cutoff_date date")
    (row,) = btyd.spend(purchase_days, customers).collect()
    assert (row["x"], row["m"]) == (2.0, 20.0)


def test_the_networks_bg_nbd_inputs_are_the_fits_p_alive_and_rate_read_back_from_the_features(spark):
    """`model.BgNbdView` on the 2,357 CDNOW customers: the triples read back from their purchase rhythm features
    (`btyd.feature_triples`, then standardised log1p inputs as the network gets them) give BG/NBD's P(alive) and
    posterior rate; the layer's configuration (what a saved model keeps) rebuilds it."""
    import tensorflow as tf

    from behavior_spark.model import BgNbdView

    summary = pd.read_csv(CDNOW).rename(columns={"frequency": "x", "recency": "t_x"})
    x, t_x, T = (summary[c].to_numpy(dtype=float) for c in btyd.TRIPLE)
    rhythm = pd.DataFrame(
        {"purchase_days": x + 1, "purchase_span_days": t_x * 7, "days_per_purchase_day": T * 7 / (x + 1)}
    )
    triples = btyd.feature_triples(spark.createDataFrame(rhythm)).toPandas()
    np.testing.assert_allclose(triples[btyd.TRIPLE].to_numpy(), summary[btyd.TRIPLE].to_numpy(), atol=1e-9)
    params = btyd.fit(btyd.grouped(btyd.feature_triples(spark.createDataFrame(rhythm))))
    stats = {"purchase_days": (1.1, 0.7), "purchase_span_days": (2.0, 1.9), "days_per_purchase_day": (3.0, 1.5)}
    columns = {name: [i + 1, *stats[name]] for i, name in enumerate(stats)}  # after an unrelated input at 0
    standardised = [(np.log1p(rhythm[name]) - m) / s for name, (m, s) in stats.items()]
    numeric = np.stack([np.zeros(len(x)), *standardised], axis=1).astype(np.float32)
    layer = BgNbdView(params=dataclasses.asdict(params), columns=columns, window_weeks=39.0)
    p_alive, log_rate, expected = layer(tf.constant(numeric)).numpy().T
    np.testing.assert_allclose(p_alive, 1 / (1 + btyd.alive_odds(params, x, t_x, T)), atol=2e-3)
    np.testing.assert_allclose(log_rate, np.log((params.r + x) / (params.alpha + T)), atol=2e-3)
    np.testing.assert_allclose(expected, np.log1p(p_alive * np.exp(log_rate) * 39.0), rtol=1e-5)
    none = layer(tf.constant([[0.0, -1.1 / 0.7, -2.0 / 1.9, -3.0 / 1.5]])).numpy()  # no purchase: zeros
    np.testing.assert_allclose(none, [[0.0, 0.0, 0.0]], atol=1e-6)
    rebuilt = BgNbdView.from_config(layer.get_config())
    np.testing.assert_allclose(rebuilt(tf.constant(numeric)).numpy(), layer(tf.constant(numeric)).numpy())
    nobody_bought = spark.createDataFrame(
        [("train", 0.0, 0.0, 0.0)],
        "split string, purchase_days double, purchase_span_days double, days_per_purchase_day double",
    )
    assert btyd.network_view(nobody_bought, {}, 56) is None  # the network trains without the view
