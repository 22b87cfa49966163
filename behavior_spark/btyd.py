"""BG/NBD: the classic "buy till you die" baseline (Fader, Hardie and Lee 2005), fitted at cluster scale.

Each customer is summarised by (x, t_x, T): repeat purchase days, the time from the first purchase to the last, and
from the first purchase to the cutoff, in weeks. The likelihood depends on nothing else, so Spark reduces any number
of customers to their distinct triples with a count each (a few thousand to a few hundred thousand rows, bounded by
the days of history, not by the customers), and the driver fits the four parameters over those weighted triples.
Predictions are made once per distinct triple and joined back to the customers.

Gamma-Gamma (Fader, Hardie and Lee 2005, "RFM and CLV") adds the spend: each customer's mean revenue per purchase day
`m` over `x` purchase days is Gamma-distributed around a customer-level mean, itself Gamma across customers. Its
likelihood depends on (x, m) per customer, which does not reduce to a few distinct values, so the three parameters are
fitted on a bounded random sample of customers; the expected spend is a closed form, computed in Spark.

The network gets BG/NBD's view of each customer as inputs (`network_view`, `model.BgNbdView`): the same fit over the
training split's triples, read from the purchase-rhythm features.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy import optimize, special

from behavior_spark import features

log = logging.getLogger(__name__)

TRIPLE = ["x", "t_x", "T"]
DAYS_PER_UNIT = 7.0  # weeks, the unit of the published parameters


@dataclasses.dataclass(frozen=True)
class BgNbd:
    """Purchase rate ~ Gamma(r, alpha); dropout probability after each purchase ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


@dataclasses.dataclass(frozen=True)
class GammaGamma:
    """Spend per transaction ~ Gamma(p, nu); nu ~ Gamma(q, gamma) across customers."""

    p: float
    q: float
    gamma: float


def purchase_triples(purchase_days: DataFrame, customers: DataFrame) -> DataFrame:
    """(customer_id, cutoff_date, x, t_x, T) for each row of `customers` (customer_id, cutoff_date) with at least one
    of its `purchase_days` (customer_id, event_date) before its cutoff. Purchase days, not purchases, count: several
    orders of one day are one transaction."""
    purchases = purchase_days.select("customer_id", "event_date").distinct()
    history = purchases.join(customers, on="customer_id", how="inner").filter(
        F.col("event_date") < F.col("cutoff_date")
    )
    return history.groupBy("customer_id", "cutoff_date").agg(
        (F.count(F.lit(1)) - 1).cast("double").alias("x"),
        (F.datediff(F.max("event_date"), F.min("event_date")) / DAYS_PER_UNIT).alias("t_x"),
        (F.datediff(F.col("cutoff_date"), F.min("event_date")) / DAYS_PER_UNIT).alias("T"),
    )


def feature_triples(features: DataFrame) -> DataFrame:
    """(x, t_x, T) of each row of a features table with a purchase before its cutoff, from its purchase rhythm
    (`features.purchase_rhythm`): the same triples `purchase_triples` counts from the purchase days."""
    days = F.col("purchase_days").cast("double")
    return features.filter(days > 0).select(
        (days - 1).alias("x"),
        (F.col("purchase_span_days") / DAYS_PER_UNIT).alias("t_x"),
        (F.col("days_per_purchase_day") * days / DAYS_PER_UNIT).alias("T"),
    )


def grouped(triples: DataFrame) -> pd.DataFrame:
    """The distinct (x, t_x, T) with their customer counts `n`: what the driver fits on."""
    return triples.groupBy(*TRIPLE).agg(F.count(F.lit(1)).cast("double").alias("n")).toPandas()


def log_likelihood(params: BgNbd, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Each triple's log-likelihood (Fader, Hardie and Lee 2005, equation 6)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.betaln(a, b + x) - special.betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.where(
        repeat,
        np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + t_x),
        -np.inf,
    )
    return a1 + a2 + np.logaddexp(a3, a4)


def fit(counts: pd.DataFrame) -> BgNbd:
    """Maximum likelihood over the weighted triples (`grouped`), on the log of the parameters."""
    x, t_x, T, n = (counts[c].to_numpy(dtype=float) for c in [*TRIPLE, "n"])
    if len(counts) == 0:
        raise ValueError("BG/NBD needs customers with at least one purchase")

    def loss(log_params: np.ndarray) -> float:
        return -float(np.sum(n * log_likelihood(BgNbd(*np.exp(log_params)), x, t_x, T))) / n.sum()

    best = optimize.minimize(loss, np.zeros(4), method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6})
    best = optimize.minimize(loss, best.x, method="L-BFGS-B")  # polish from the simplex's point
    return BgNbd(*np.exp(best.x))


def alive_odds(params: BgNbd, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """1 / P(alive) - 1: the odds that the customer has dropped out since the last purchase."""
    repeat = x > 0
    ratio = (params.alpha + T) / (params.alpha + t_x)
    return np.where(repeat, params.a / np.where(repeat, params.b + x - 1, 1.0) * ratio ** (params.r + x), 0.0)


def expected_purchases(params: BgNbd, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, t: float) -> np.ndarray:
    """E[purchases in the next t weeks | x, t_x, T] (equation 10)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    z = t / (alpha + T + t)
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    upper = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    return upper / (1 + alive_odds(params, x, t_x, T))


def predict(params: BgNbd, triples: DataFrame, weeks: float) -> DataFrame:
    """`expected_purchases` and `p_alive` for each row of `triples`, computed once per distinct triple."""
    counts = grouped(triples)
    x, t_x, T = (counts[c].to_numpy(dtype=float) for c in TRIPLE)
    counts["expected_purchases"] = expected_purchases(params, x, t_x, T, weeks)
    counts["p_alive"] = 1 / (1 + alive_odds(params, x, t_x, T))
    table = triples.sparkSession.createDataFrame(counts.drop(columns="n"))
    return triples.join(table, on=TRIPLE, how="left")


def spend(purchase_days: DataFrame, customers: DataFrame) -> DataFrame:
    """(customer_id, cutoff_date, x, m): purchase days before the cutoff and their mean revenue, for each row of
    `customers` that spent something before its cutoff (`purchase_days`: customer_id, event_date, revenue)."""
    history = purchase_days.join(customers, on="customer_id", how="inner").filter(
        F.col("event_date") < F.col("cutoff_date")
    )
    return (
        history.groupBy("customer_id", "cutoff_date")
        .agg(F.count(F.lit(1)).cast("double").alias("x"), F.avg("revenue").alias("m"))
        .filter(F.col("m") > 0)
    )


def gamma_gamma_log_likelihood(params: GammaGamma, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Each customer's log-likelihood of their mean spend `m` over `x` transactions."""
    p, q, g = params.p, params.q, params.gamma
    return (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(g)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(g + m * x)
    )


def fit_gamma_gamma(sample: pd.DataFrame) -> GammaGamma:
    """Maximum likelihood over a sample of (x, m) rows, on the log of the parameters."""
    if sample.empty:
        raise ValueError("Gamma-Gamma needs customers who spent something")
    x, m = sample["x"].to_numpy(dtype=float), sample["m"].to_numpy(dtype=float)

    def loss(log_params: np.ndarray) -> float:
        return -float(np.mean(gamma_gamma_log_likelihood(GammaGamma(*np.exp(log_params)), x, m)))

    start = np.log([1.0, 2.0, float(np.mean(m))])
    best = optimize.minimize(loss, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6})
    return GammaGamma(*np.exp(best.x))


def expected_spend(params: GammaGamma) -> Column:
    """E[spend per transaction | x, m] as a Spark column over `x` and `m`: a weighted mean of the customer's own
    mean and the population's (the latter needs q > 1; below that the population mean is infinite and m is kept)."""
    p, q, g = params.p, params.q, params.gamma
    if q <= 1:
        return F.col("m")
    return (F.lit(g) + F.col("m") * F.col("x")) * p / (F.col("x") * p + q - 1)


def network_view(table: DataFrame, stats: dict[str, tuple[float, float]], window_days: int) -> dict | None:
    """BG/NBD fitted on the training split's purchase rhythm (Spark reduces it to its distinct triples), as the
    configuration of the network's `model.BgNbdView`; None where no training customer has bought, or the fit
    found no finite positive parameters (the network then trains without it, and says so)."""
    counts = grouped(feature_triples(table.filter(F.col("split") == "train")))
    if counts.empty:
        log.info("no training customer has bought: the network trains without BG/NBD's view")
        return None
    params = fit(counts)
    if not all(math.isfinite(v) and v > 0 for v in dataclasses.astuple(params)):
        log.warning("BG/NBD's fit on the training split found %s: the network trains without its view", params)
        return None
    log.info("BG/NBD on the training split's %d buyers: %s", int(counts["n"].sum()), params)
    names = features.numeric_feature_names()
    columns = {n: [names.index(n), *stats[n]] for n in ("purchase_days", "purchase_span_days", "days_per_purchase_day")}
    return {"params": dataclasses.asdict(params), "columns": columns, "window_weeks": window_days / DAYS_PER_UNIT}
