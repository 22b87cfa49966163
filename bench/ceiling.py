"""Is the network ever the worse choice, on generated and real logs? `make bench ARGS="ceiling --sizes 4000000"`.

For each log and cutoff (`cases`: generated data of each size at the built-in 30-day window; CDNOW at two cutoffs;
The Complete Journey at two cutoffs), the pipeline ingests the log once, builds `SNAPSHOTS` labelled snapshots
`STEP_DAYS` apart ending at the cutoff (as a daily run does: `features.cutoffs`), and trains the network twice on
them (`VARIANTS`: as the product does, with BG/NBD's view of each customer among its inputs, `train.bg_nbd_inputs`;
and without it). Every learner trains on the same snapshots; then every learner scores the same test customers
at the case's cutoff (the latest snapshot):
- logistic regression and gradient-boosted trees (30 trees of depth 5), the evaluation's baselines;
- stronger boosted trees (200 trees of depth 4, step 0.05, each tree on 80% of the rows);
- BG/NBD's expected purchase days in the window, fitted on the training customers, for the test customers who
  bought before the cutoff (every customer of a purchase log; on generated data only those);
- the two networks.
The strongest learner is the one with the highest test ROC-AUC among those that score every test customer; each
network is compared with it, and the two networks with each other, by the ROC-AUC difference with its 95%
paired-bootstrap interval (`evaluate.auc_difference`). A second table: customer value on the test customers who
bought before (each network's expected purchase days and revenue against BG/NBD + Gamma-Gamma's, Spearman's rank
correlation and the error of the summed forecast, `evaluate.customer_value`, net of returns where the log has them).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from pyspark.ml.classification import GBTClassifier
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from behavior_spark import evaluate, features, lake, model_artifact, pipeline, summaries
from behavior_spark.config import Settings, load_settings
from behavior_spark.model_artifact import ModelMetadata
from behavior_spark.predict import predictions
from behavior_spark.session import local_session
from bench.common import bench_settings
from bench.models import SOURCES, cdnow_log

COMPLETE_JOURNEY = Path(__file__).resolve().parents[1] / ".cache" / "data" / "completejourney" / "transactions.parquet"
LOGS = ("generated", "cdnow", "completejourney")
# The networks compared, by name: the settings each is trained with.
VARIANTS = {"network": [], "without BG/NBD inputs": ["train.bg_nbd_inputs=false"]}
OTHER = "without BG/NBD inputs"
LEARNERS = ["logistic regression", "GBT 30x5", "GBT 200x4", "BG/NBD"]
SNAPSHOTS, STEP_DAYS = 4, 28  # training snapshots per case, four weeks apart: a small log's customers seen four times


@dataclasses.dataclass(frozen=True)
class Case:
    log: str  # the log's name in the table
    cutoff: str | None  # None: the latest with a full label window
    window: int  # label window, days


def cases(log: str, sizes: list[int]) -> list[Case]:
    if log == "generated":
        return [Case(f"generated {size:,}", None, 30) for size in sizes]
    if log == "cdnow":  # the classic 39-week calibration / holdout split, and a later cutoff to the log's end
        return [Case("CDNOW", "1997-10-01", 273), Case("CDNOW", "1998-01-01", 180)]
    return [Case("Complete Journey", "2017-09-04", 56), Case("Complete Journey", "2017-11-06", 56)]  # to 2018-01-01


def main(sizes: list[int], workdir: Path, logs: tuple[str, ...] = LOGS) -> str:
    ranking = [
        "| log | cutoff | window | train / test | "
        + " | ".join(LEARNERS)
        + f" | network | {OTHER} | network - strongest | {OTHER} - strongest | network - {OTHER} |",
        "|---|---|---:|---:|" + "---:|" * (len(LEARNERS) + 2) + "---|---|---|",
    ]
    value = [
        f"| log | cutoff | customers | purchases Spearman: network / {OTHER} / BG/NBD | revenue Spearman: network / "
        f"{OTHER} / BG/NBD + GG | revenue total error: network / {OTHER} / BG/NBD + GG |",
        "|---|---|---:|---|---|---|",
    ]
    for log in logs:
        folder = workdir / f"ceiling-{log}"
        shutil.rmtree(folder, ignore_errors=True)
        for size in sizes if log == "generated" else [0]:
            settings = log_settings(log, folder, size)
            spark = local_session(settings.spark)
            spark.sparkContext.setCheckpointDir(str(folder / "checkpoints"))  # GBT's 200 rounds cut their lineage
            for stage in ("generate", "ingest") if log == "generated" else ("ingest",):
                pipeline.run_stage(stage, spark, settings)
            for case in cases(log, [size]):
                row, value_row = measure(spark, log, size, case, folder)
                ranking.append(row)
                value.append(value_row)
            spark.stop()
    return "\n".join(
        [
            "Test ROC-AUC, every learner on the same test customers; differences with their 95% paired-bootstrap "
            "interval (BG/NBD: the customers who bought before the cutoff; strongest: of the learners scoring all).",
            "",
            *ranking,
            "",
            "Customer value in the label window, the test customers who bought before the cutoff.",
            "",
            *value,
        ]
    )


def log_settings(log: str, folder: Path, size: int, *extra: str) -> Settings:
    """The settings of a log's lakehouse in `folder` (the raw files put in place), with `extra` overrides."""
    common = ["train.num_proc=2", "spark.driver_memory=12g", *extra]
    if log == "generated":
        return bench_settings(folder / str(size), size, *common)
    raw = folder / "raw"
    if log == "cdnow":
        cdnow_log(folder)
    elif not (raw / "transactions.parquet").exists():
        raw.mkdir(parents=True, exist_ok=True)
        shutil.copy(COMPLETE_JOURNEY, raw / "transactions.parquet")
    return load_settings(
        None,
        [
            f"lake.root={folder / 'lake'}",
            f"ingest.input={raw}",
            f"ingest.source={SOURCES / f'{log}.yaml'}",
            f"ingest.earliest_event_date={'1997-01-01' if log == 'cdnow' else '2017-01-01'}",
            "spark.shuffle_partitions=8",
            *common,
        ],
    )


def measure(spark, log: str, size: int, case: Case, folder: Path) -> tuple[str, str]:
    """Featurize at the case's cutoff, train a network per encoding, score every learner: a row of each table."""
    snapshot = [
        f"features.label_window_days={case.window}",
        f"features.cutoffs={SNAPSHOTS}",
        f"features.cutoff_step_days={STEP_DAYS}",
    ]
    snapshot += [f"features.cutoff={case.cutoff}"] if case.cutoff else []
    settings = log_settings(log, folder, size, *snapshot)
    pipeline.run_stage("featurize", spark, settings)
    networks: dict[str, tuple[ModelMetadata, str]] = {}
    for index, (name, variant) in enumerate(VARIANTS.items()):
        model_dir = str(folder / "models" / f"{case.log}-{case.cutoff}-{index}".replace(" ", "_"))
        trained = log_settings(log, folder, size, *snapshot, f"train.model_dir={model_dir}", *variant)
        pipeline.run_stage("train", spark, trained)
        networks[name] = (model_artifact.load_metadata(model_dir), model_dir)
    first = next(iter(networks.values()))[0]
    table = lake.read(spark, settings.lake, lake.FEATURES, version=first.features_version)
    scored, forecasts, test_rows, train_rows = scored_test_rows(spark, settings, table, first, networks)
    auc = {name: evaluate.binary_metrics(df, 0.5, probabilities=False)[0]["roc_auc"] for name, df in scored.items()}
    full = [name for name in LEARNERS if name in scored and scored[name].count() == test_rows]
    strongest = max(full, key=auc.get)
    seed = settings.train.seed
    differences = [
        evaluate.auc_difference(scored["network"], scored[strongest], seed),
        evaluate.auc_difference(scored[OTHER], scored[strongest], seed),
        evaluate.auc_difference(scored["network"], scored[OTHER], seed),
    ]
    cells = [f"{auc[n]:.3f}" if n in auc else "-" for n in [*LEARNERS, *VARIANTS]]
    cells[LEARNERS.index(strongest)] = f"**{cells[LEARNERS.index(strongest)]}**"
    bg_rows = scored["BG/NBD"].count() if "BG/NBD" in scored else 0
    if "BG/NBD" in scored and bg_rows < test_rows:
        cells[LEARNERS.index("BG/NBD")] += f" ({bg_rows:,} rows)"
    cutoff_label = case.cutoff or str(first.features_run["cutoffs"][-1])
    ranking = (
        f"| {case.log} | {cutoff_label} | {case.window} | {train_rows:,} / {test_rows:,} | "
        + " | ".join(cells)
        + " | "
        + " | ".join(_difference(d) for d in differences)
        + " |"
    )
    value = value_row(case.log, cutoff_label, bg_rows, scored, forecasts)
    for df in [*scored.values(), forecasts]:
        if df is not None:
            df.unpersist()
    return ranking, value


def scored_test_rows(
    spark, settings: Settings, table: DataFrame, metadata: ModelMetadata, networks: dict[str, tuple[ModelMetadata, str]]
) -> tuple[dict[str, DataFrame], DataFrame | None, int, int]:
    """(learner -> (key, label, score, value labels and forecasts) on the test split at the latest cutoff, BG/NBD +
    Gamma-Gamma's forecasts there, test rows, train rows)."""
    seed = settings.train.seed
    inputs = table.transform(features.model_inputs, metadata.normalisation).withColumn(
        "label", F.col("label").cast("double")
    )
    latest = F.col("cutoff_date") == F.lit(max(metadata.features_run["cutoffs"])).cast("date")
    train, test = inputs.filter(F.col("split") == "train"), inputs.filter((F.col("split") == "test") & latest)
    keep = [*evaluate.KEY, "label", *features.VALUE_LABELS]
    baselines = evaluate.mllib_baselines(seed)
    fits = {
        "logistic regression": baselines["logistic_regression"],
        "GBT 30x5": baselines["gradient_boosted_trees"],
        "GBT 200x4": GBTClassifier(maxIter=200, maxDepth=4, stepSize=0.05, subsamplingRate=0.8, seed=seed),
    }
    scored = {name: evaluate.mllib_scores(fit, train, test) for name, fit in fits.items()}
    for name, (network, model_dir) in networks.items():
        predicted = predictions(test, network, model_dir, settings.score.batch_size, keep=keep)
        value = [F.col(c).cast("double").alias(c) for c in ("expected_purchases", "expected_revenue")]
        scored[name] = predicted.select(*keep, F.col("propensity").cast("double").alias("score"), *value)
    days = summaries.for_events(spark, settings, metadata.events_version)
    purchase_days = days.filter(F.col("n_purchase") > 0).select("customer_id", "event_date", "revenue")
    window = settings.features.label_window_days
    forecasts = evaluate.btyd_forecasts(purchase_days, train, test, window, seed)
    if forecasts is not None:
        forecasts = forecasts.cache()
        scored["BG/NBD"] = forecasts.select(*keep, F.col("expected_purchases").alias("score"))
    scored = {name: df.cache() for name, df in scored.items()}
    return scored, forecasts, scored["network"].count(), train.count()


def value_row(log: str, cutoff: str, customers: int, scored: dict[str, DataFrame], forecasts: DataFrame | None) -> str:
    """Each network's value heads against BG/NBD + Gamma-Gamma on the same test customers (`evaluate.customer_value`,
    the customers who bought before the cutoff)."""
    if forecasts is None:
        return f"| {log} | {cutoff} | 0 | - | - | - |"
    value = {name: evaluate.customer_value(scored[name], forecasts) for name in VARIANTS}
    rows = [*(v["model_purchasers"] for v in value.values()), value["network"]["bg_nbd_gamma_gamma_purchasers"]]

    def cells(metric: str, percent: bool = False) -> str:
        numbers = [r[metric] for r in rows]
        return " / ".join("-" if n is None else f"{n:+.1%}" if percent else f"{n:.3f}" for n in numbers)

    return (
        f"| {log} | {cutoff} | {customers:,} | {cells('purchases_spearman')} | "
        f"{cells('revenue_spearman')} | {cells('revenue_total_error', percent=True)} |"
    )


def _difference(d: dict) -> str:
    if d["roc_auc_difference"] is None:
        return d["verdict"]
    return f"{d['roc_auc_difference']:+.3f} [{d['low_95']:+.3f}, {d['high_95']:+.3f}] {d['verdict']}"
