"""What each stage returns: its numbers, typed, for callers and tests, and one line each of what went in and what
came out, for the run's summary table. A result knows nothing of the console; `pipeline.summary` lays them out."""

from __future__ import annotations

import dataclasses
from typing import Any, Self


def count(n: int, noun: str) -> str:
    """'1 file', '12,000 rows'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageResult:
    seconds: float = 0.0

    def went_in(self) -> str:
        raise NotImplementedError

    def came_out(self) -> str:
        raise NotImplementedError

    def notes(self) -> list[str]:
        """Lines a user should read under the table that the console has not shown while the stage ran."""
        return []

    def timed(self, seconds: float) -> Self:
        return dataclasses.replace(self, seconds=round(seconds, 1))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateResult(StageResult):
    output: str
    format: str
    raw_rows: int

    def went_in(self) -> str:
        return "the generator's settings"

    def came_out(self) -> str:
        return f"{count(self.raw_rows, 'raw row')} ({self.format}) in {self.output}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngestResult(StageResult):
    files: int
    batches: int
    rows_read: int
    clean: int
    replays: int
    duplicates: int
    superseded: int
    bot_rows: int
    quarantined: int
    same_key_variants: int
    corrections: int
    returns: int
    quarantined_by_reason: dict[str, int]
    warnings: list[str]
    events_version: int

    def went_in(self) -> str:
        return f"{count(self.rows_read, 'raw row')} in {count(self.files, 'new file')}"

    def came_out(self) -> str:
        dropped = [
            (self.quarantined, "quarantined"),
            (self.duplicates + self.superseded + self.replays, "copies"),
            (self.bot_rows, "bot rows"),
        ]
        shown = ", ".join(f"{n:,} {what}" for n, what in dropped if n)
        return f"{count(self.clean, 'event')}" + (f"; {shown}" if shown else "")

    def notes(self) -> list[str]:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(self.quarantined_by_reason.items()))
        return [f"quarantined by reason: {reasons}"] if reasons else []  # the warnings were on the console already


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeaturizeResult(StageResult):
    cutoffs: list[str]
    kept_cutoffs: list[str]
    scoring_date: str
    events_version: int
    rows: int
    rows_by_split: dict[str, int]
    customers_without_history: int
    features_version: int

    def went_in(self) -> str:
        built = len(self.cutoffs) - len(self.kept_cutoffs)
        return f"events v{self.events_version}: {built} training snapshots built, {len(self.kept_cutoffs)} kept"

    def came_out(self) -> str:
        order = ["train", "validation", "test", "score"]
        ordered = sorted(self.rows_by_split.items(), key=lambda item: order.index(item[0]) if item[0] in order else 9)
        splits = " / ".join(f"{n:,} {split}" for split, n in ordered)
        return f"{count(self.rows, 'feature row')} ({splits})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainResult(StageResult):
    model_dir: str
    model_version: str
    train_rows: int
    validation_rows: int
    processes: int
    epochs_run: int
    mlflow_run_id: str | None
    final_metrics: dict[str, float]
    test_metrics: dict[str, float]
    resumed_after_epoch: int = 0  # a retry of a killed run continued from this epoch's checkpoint
    published: bool = True
    gate: dict[str, Any] | None = None  # the champion gate's verdict (`champion`)

    def went_in(self) -> str:
        return f"{self.train_rows:,} + {self.validation_rows:,} validation rows, {self.processes} processes"

    def came_out(self) -> str:
        auc = self.test_metrics.get("roc_auc")
        quality = f"test ROC-AUC {auc:.3f}, " if auc is not None else ""
        trained = f"model {self.model_version}: {quality}{count(self.epochs_run, 'epoch')}"
        if self.published or not self.gate:
            return trained
        return f"{trained}; worse than the published {self.gate['champion']}, which stays"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreResult(StageResult):
    scoring_date: str
    model_version: str
    customers_scored: int
    drifted_features: dict[str, float]

    def went_in(self) -> str:
        return f"{count(self.customers_scored, 'customer')} as of {self.scoring_date}"

    def came_out(self) -> str:
        drift = f"{len(self.drifted_features)} drifted" if self.drifted_features else "no feature drifted"
        return f"{count(self.customers_scored, 'score')} ({drift})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentResult(StageResult):
    k: int
    segments: dict[str, int]
    customers_moved: int | None
    matched_previous_run: bool

    def went_in(self) -> str:
        return count(sum(self.segments.values()), "scored customer")

    def came_out(self) -> str:
        moved = f"; {self.customers_moved:,} moved" if self.customers_moved is not None else ""
        return f"{count(self.k, 'segment')}: " + ", ".join(self.segments) + moved


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportResult(StageResult):
    exported: int
    table: str | None = None
    scoring_date: str | None = None
    skipped: str | None = None

    def went_in(self) -> str:
        return f"segments of {self.scoring_date}" if self.scoring_date else "-"

    def came_out(self) -> str:
        return f"skipped: {self.skipped}" if self.skipped else f"{count(self.exported, 'row')} in {self.table}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportResult(StageResult):
    report: str

    def went_in(self) -> str:
        return "segments, scores, evaluation"

    def came_out(self) -> str:
        return self.report
