"""The champion gate: a model trained today replaces the published one only if it is not worse on the same latest
labelled customers.

Both models score the test split of the features version the new model was trained on: the latest labelled
customers, whom neither was trained on (a customer's split is drawn from its id, the same in every version). The
ROC-AUC of the new model minus the published one's comes with a 95% paired-bootstrap interval
(`evaluate.auc_difference`); "worse" (the whole interval below 0) keeps the published model, "level" or "better"
publishes the new one. The first model, or one whose inputs differ from the published one's, is published as it is.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from behavior_spark import evaluate, model_artifact, predict
from behavior_spark.model_artifact import ModelMetadata

log = logging.getLogger(__name__)
WORSE = "worse"


def comparable(new: ModelMetadata, published: ModelMetadata) -> bool:
    """Whether both models read the same inputs the same way (else the published one cannot score today's rows)."""
    return (new.feature_names, new.sequence_length, new.category_buckets) == (
        published.feature_names,
        published.sequence_length,
        published.category_buckets,
    )


def verdict(
    table: DataFrame,
    new: ModelMetadata,
    new_dir: str,
    published: ModelMetadata | None,
    published_dir: str,
    batch_size: int,
    seed: int,
) -> dict[str, Any] | None:
    """The gate's verdict on `new` against `published` over the test split of `table` (a features table), or None
    where there is nothing to compare with."""
    if published is None:
        return None
    if not comparable(new, published):
        return {"champion": published.model_version, "challenger": new.model_version, "verdict": "not comparable"}
    test = table.filter(F.col("split") == "test").withColumn("label", F.col("label").cast("double"))
    keep = [*evaluate.KEY, "label"]

    def scores(metadata: ModelMetadata, model_dir: str) -> DataFrame:
        predicted = predict.predictions(test, metadata, model_dir, batch_size, keep=keep)
        return predicted.select(*keep, F.col("propensity").cast("double").alias("score"))

    difference = evaluate.auc_difference(scores(new, new_dir), scores(published, published_dir), seed)
    return {
        "champion": published.model_version,
        "challenger": new.model_version,
        "customers": test.count(),
        **difference,
    }


def keeps_champion(gate: dict[str, Any] | None) -> bool:
    return gate is not None and gate.get("verdict") == WORSE


def publish_or_keep(model_dir: str, weights: bytes, metadata: ModelMetadata, published: ModelMetadata | None) -> bool:
    """Publish the new model unless the gate kept the published one; then the published model's metadata records
    the gate's verdict, so the report shows both. True when the new model was published."""
    gate = metadata.gate
    if published is None or not keeps_champion(gate):
        model_artifact.save_model(model_dir, weights, metadata)
        return True
    assert gate is not None
    log.warning(
        "the model trained now (%s) is worse than the published %s on the same %d latest labelled customers "
        "(ROC-AUC %+.3f, 95%% interval %+.3f to %+.3f): the published model stays",
        gate["challenger"],
        gate["champion"],
        gate["customers"],
        gate["roc_auc_difference"],
        gate["low_95"],
        gate["high_95"],
    )
    model_artifact.save_metadata(model_dir, published.model_copy(update={"gate": gate}))
    return False
