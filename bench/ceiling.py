"""How much ranking the data holds beyond the baselines: `make bench ARGS="ceiling --sizes 200000,1000000"`.

Issue 17 asks the deep model to beat the best baseline's test ROC-AUC by 0.01. Whether any model can is a property
of the data, so this bench measures it. On generated data of each size (the built-in settings: one labelled snapshot,
a 30-day label window), after the pipeline's own training and evaluation, it fits on the same standardised inputs
and scores on the same test rows:
- the evaluation's baselines (logistic regression; gradient-boosted trees, 30 trees of depth 5);
- stronger boosted trees (200 trees of depth 4, step 0.05, each tree on 80% of the rows);
- the trained deep model's calibrated propensity;
- an ensemble: the mean of the four probabilities.
Then each of the model, the stronger trees and the ensemble against the best baseline: the ROC-AUC difference and
its 95% paired-bootstrap interval (`evaluate.auc_difference`). Where the stronger learners and the ensemble land
within a few thousandths of the baselines, the baselines already take what the inputs hold; where the interval is
wider than 0.01, a lead of 0.01 cannot be told from noise on a test split of that size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pyspark.ml.classification import GBTClassifier
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from behavior_spark import evaluate, features, lake, model_artifact, pipeline
from behavior_spark.config import Settings
from behavior_spark.model_artifact import ModelMetadata
from behavior_spark.predict import predictions
from behavior_spark.session import local_session
from bench.common import bench_settings

BASELINES = ["logistic_regression", "gradient_boosted_trees"]
CHALLENGERS = ["model", "boosted_trees_200", "ensemble"]


def main(sizes: list[int], workdir: Path) -> str:
    lines = [
        "Test ROC-AUC on generated data (built-in settings: one labelled snapshot, 30-day label window), every model "
        "on the same test rows; the last three columns: minus the best baseline, with the 95% paired-bootstrap "
        "interval.",
        "",
        "| raw rows | train rows | test rows | logistic | GBT 30x5 | GBT 200x4 | deep model | ensemble "
        "| model - best | GBT 200x4 - best | ensemble - best |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for size in sizes:
        folder = workdir / f"ceiling-{size}"
        shutil.rmtree(folder, ignore_errors=True)
        settings = bench_settings(folder, size, f"train.model_dir={folder / 'model'}")
        spark = local_session(settings.spark)
        # GBT's 200 rounds cut their lineage at a checkpoint every 10 (checkpointInterval), only where there is a
        # checkpoint folder; without one the 200th round's plan overflowed the task's stack (tiny-size run, make check)
        spark.sparkContext.setCheckpointDir(str(folder / "checkpoints"))
        for stage in ("generate", "ingest", "featurize", "train"):
            pipeline.run_stage(stage, spark, settings)
        metadata = model_artifact.load_metadata(settings.train.model_dir)
        table = lake.read(spark, settings.lake, lake.FEATURES, version=metadata.features_version)
        scored = scored_test_rows(table, metadata, settings)
        auc = {name: evaluate.binary_metrics(df, threshold=0.5)[0]["roc_auc"] for name, df in scored.items()}
        best = max(BASELINES, key=auc.get)
        differences = [evaluate.auc_difference(scored[name], scored[best], settings.train.seed) for name in CHALLENGERS]
        rows = table.filter(F.col("split").isin("train", "test")).groupBy("split").count().collect()
        counts = {r["split"]: r["count"] for r in rows}  # two rows
        aucs = " | ".join(f"{auc[name]:.3f}" for name in [*BASELINES, "boosted_trees_200", "model", "ensemble"])
        lines.append(
            f"| {size:,} | {counts['train']:,} | {counts['test']:,} | {aucs} | "
            + " | ".join(_difference(d) for d in differences)
            + " |"
        )
        for df in scored.values():
            df.unpersist()
        spark.stop()
    return "\n".join(lines)


def scored_test_rows(table: DataFrame, metadata: ModelMetadata, settings: Settings) -> dict[str, DataFrame]:
    """name -> (key, label, score) of every model on the test split."""
    seed = settings.train.seed
    inputs = table.transform(features.model_inputs, metadata.normalisation).withColumn(
        "label", F.col("label").cast("double")
    )
    train, test = (inputs.filter(F.col("split") == name) for name in ("train", "test"))
    keep = [*evaluate.KEY, "label"]
    stronger_trees = GBTClassifier(maxIter=200, maxDepth=4, stepSize=0.05, subsamplingRate=0.8, seed=seed)
    fits = {**evaluate.mllib_baselines(seed), "boosted_trees_200": stronger_trees}
    scored = {
        **{name: evaluate.mllib_scores(fit, train, test) for name, fit in fits.items()},
        "model": predictions(test, metadata, settings.train.model_dir, settings.score.batch_size, keep=keep).select(
            *keep, F.col("propensity").cast("double").alias("score")
        ),
    }
    scored = {name: df.cache() for name, df in scored.items()}
    joined = scored["model"]
    for name in ("logistic_regression", "gradient_boosted_trees", "boosted_trees_200"):
        joined = joined.join(scored[name].select(*evaluate.KEY, F.col("score").alias(name)), on=evaluate.KEY)
    members = ["score", "logistic_regression", "gradient_boosted_trees", "boosted_trees_200"]
    mean = sum(F.col(name) for name in members) / len(members)
    scored["ensemble"] = joined.select(*keep, mean.alias("score")).cache()
    return scored


def _difference(d: dict) -> str:
    if d["roc_auc_difference"] is None:
        return d["verdict"]
    return f"{d['roc_auc_difference']:+.3f} [{d['low_95']:+.3f}, {d['high_95']:+.3f}] {d['verdict']}"
