"""Typed settings: one YAML file per environment, overridable with `--set section.key=value`.

Every setting is declared here, with its type and default. Loading validates the whole tree before any Spark work
starts: an unknown key, a wrong type or a bad value raises `ConfigError` naming the key, which the CLI turns into
exit code 2. Secrets are never settings: a setting may only name the environment variable that holds one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting is unknown, mistyped or invalid; the message names it."""


@dataclasses.dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"  # used only when no Spark session or spark-submit master is given
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    app_name: str = "behavior-spark"


@dataclasses.dataclass(frozen=True)
class LakeSettings:
    root: str = "lakehouse"  # every table lives under this folder or URI

    def table(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    rows: int = 200_000  # approximate number of raw rows
    seed: int = 7
    start_date: dt.date = dt.date(2026, 1, 1)
    days: int = 120
    format: str = "csv"  # csv | json
    files: int = 4
    output: str = "lakehouse/raw/events"


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    input: str = "lakehouse/raw/events"  # a file, folder or glob; new files are picked up on the next run
    source: str = "conf/sources/rees46.yaml"  # the layout mapping of the raw files
    max_files_per_trigger: int = 1000  # files per batch when a backlog is ingested
    session_gap_minutes: int = 30
    bot_events_per_minute: int = 30  # a user above this rate in any minute is treated as a bot
    max_price: float = 100_000.0
    earliest_event_date: dt.date = dt.date(2000, 1, 1)
    max_future_hours: int = 24  # events stamped later than now + this are quarantined
    pseudonym_key_env: str = "BEHAVIOR_SPARK_PSEUDONYM_KEY"  # names the variable; the key is never a setting
    identity_map: str | None = None  # where to keep pseudonym -> raw id for warehouse export; None: nowhere


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    cutoff: dt.date | None = None  # the latest cutoff; None: the last event date minus the label window
    cutoffs: int = 1  # snapshots stacked into the table, `cutoff_step_days` apart, ending at `cutoff`
    cutoff_step_days: int = 30
    events_version: int | None = None  # the events-table version to read; None: the latest (rebuilds pin it)
    label_window_days: int = 30
    label_event: str = "purchase"
    sequence_length: int = 50
    category_buckets: int = 64
    split_train: float = 0.7
    split_validation: float = 0.15  # the rest is the test split


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    num_proc: int = 2
    epochs: int = 20  # at most: early stopping ends training when validation loss stops improving
    batch_size: int = 512
    learning_rate: float = 0.001  # per process; scaled by the number of processes, with one epoch of warm-up
    seed: int = 7
    class_weight: str = "balanced"  # balanced | none: how the rare positive label is weighted in the loss
    patience: int = 3  # early stopping: epochs without a better validation loss
    resume: bool = False  # a retry: continue this run's last checkpoint (the CLI's --resume); never a finished run
    run_id: str | None = None  # the scheduler's run id ({{job.run_id}}, an EMR step id); None: a new id per call
    reader_threads: int | None = None  # Petastorm threads per process; None: the cores Spark gives each GPU
    threshold: float = 0.5  # the propensity above which a customer counts as a predicted buyer (accuracy)
    importance_rows: int = 20_000  # validation rows sampled for permutation feature importance
    model_dir: str = "lakehouse/models/propensity"
    mlflow_tracking_uri: str | None = None  # None: <lake.root>/mlruns; databricks; http(s)://...; disabled
    mlflow_experiment: str = "behavior-spark"  # on Databricks, a workspace path such as /Shared/behavior-spark


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    batch_size: int = 8192
    scoring_date: dt.date | None = None  # None: the day after the last event (featurize records it)
    drift_fail_psi: float | None = None  # fail before scoring when a feature's PSI exceeds this; None: warn only


@dataclasses.dataclass(frozen=True)
class SegmentSettings:
    k: int | None = None  # None: the best silhouette between k_min and k_max
    k_min: int = 3
    k_max: int = 8
    k_sample_rows: int = 100_000  # customers sampled to choose k (the final model is fitted on all)
    min_segment_size: int = 20  # k-anonymity: smaller segments are suppressed in profiles and reports
    seed: int = 7
    restarts: int = 3  # KMeans fits from seeds seed, seed+1, ...; the lowest-cost one is kept
    keep_tolerance: float = 0.01  # keep the previous run's centroids unless a new fit costs this fraction less


@dataclasses.dataclass(frozen=True)
class WarehouseSettings:
    url: str | None = None  # JDBC URL (jdbc:postgresql://host:5432/db, jdbc:redshift://...); None: no export
    driver: str = "org.postgresql.Driver"  # the JDBC driver class (its JAR on spark.jars or the cluster)
    table: str = "customer_segments"  # replaced per scoring date
    user_env: str = "BEHAVIOR_SPARK_WAREHOUSE_USER"  # names the variable holding the user
    password_env: str = "BEHAVIOR_SPARK_WAREHOUSE_PASSWORD"  # names the variable holding the password
    reidentify: bool = False  # add raw user ids from ingest.identity_map (only there, only when on)
    batch_size: int = 10_000  # rows per JDBC insert batch


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"


@dataclasses.dataclass(frozen=True)
class Settings:
    spark: SparkSettings = SparkSettings()
    lake: LakeSettings = LakeSettings()
    generate: GenerateSettings = GenerateSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureSettings = FeatureSettings()
    train: TrainSettings = TrainSettings()
    score: ScoreSettings = ScoreSettings()
    segment: SegmentSettings = SegmentSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    log: LogSettings = LogSettings()


_CHOICES = {
    "generate.format": {"csv", "json"},
    "features.label_event": {"view", "cart", "remove_from_cart", "purchase", "wishlist"},
    "train.class_weight": {"balanced", "none"},
    "log.level": {"DEBUG", "INFO", "WARNING", "ERROR"},
}
_POSITIVE = {
    "spark.shuffle_partitions",
    "generate.rows",
    "generate.days",
    "generate.files",
    "ingest.session_gap_minutes",
    "ingest.bot_events_per_minute",
    "features.label_window_days",
    "features.sequence_length",
    "features.category_buckets",
    "features.cutoffs",
    "features.cutoff_step_days",
    "train.num_proc",
    "train.epochs",
    "train.batch_size",
    "train.learning_rate",
    "train.patience",
    "train.importance_rows",
    "score.batch_size",
    "warehouse.batch_size",
    "segment.k",
    "segment.k_min",
    "segment.k_sample_rows",
    "segment.restarts",
    "ingest.max_price",
    "ingest.max_files_per_trigger",
}


def load_settings(path: str | os.PathLike | None, overrides: list[str] = ()) -> Settings:
    """Read a YAML settings file (or the defaults when `path` is None), apply `key=value` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"settings file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"settings file {path} must hold a mapping of sections, not {type(raw).__name__}")
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(raw, key, value)
    settings = _build(Settings, raw, prefix="")
    _check_values(settings)
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain, JSON-friendly view of the settings, for logs and run records."""
    return _jsonable(dataclasses.asdict(settings))


def describe() -> list[tuple[str, str, str]]:
    """(key, type, default) for every setting: the configuration reference."""
    rows = []
    for name, section in typing.get_type_hints(Settings).items():
        hints = typing.get_type_hints(section)
        for field in dataclasses.fields(section):
            rows.append((f"{name}.{field.name}", _type_name(hints[field.name]), repr(field.default)))
    return rows


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {override!r}")
    value = yaml.safe_load(text) if text.strip() else None
    return key.strip(), value


def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"unknown setting {dotted_key!r}: {'.'.join(parents[: i + 1])!r} is not a section")
        node = child
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"setting '{prefix.rstrip('.')}' must be a section (a mapping), got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{prefix}{near[0]}'?" if near else f"known keys here: {', '.join(fields)}"
            raise ConfigError(f"unknown setting '{_first_leaf(f'{prefix}{key}', value)}'; {hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}")
    return cls(**values)


def _first_leaf(key: str, value: Any) -> str:
    while isinstance(value, dict) and value:
        child = next(iter(value))
        key, value = f"{key}.{child}", value[child]
    return key


def _coerce(value: Any, kind: Any, key: str) -> Any:
    optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if kind is dt.date:
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
    raise ConfigError(f"setting {key!r} must be {_type_name(kind)}{' or null' if optional else ''}, got {value!r}")


def _check_values(settings: Settings) -> None:
    for section in dataclasses.fields(settings):
        values = getattr(settings, section.name)
        for field in dataclasses.fields(values):
            key = f"{section.name}.{field.name}"
            value = getattr(values, field.name)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise ConfigError(f"setting {key!r} must be one of {sorted(_CHOICES[key])}, got {value!r}")
            if key in _POSITIVE and value is not None and value <= 0:
                raise ConfigError(f"setting {key!r} must be positive, got {value!r}")
    if settings.segment.k_min > settings.segment.k_max:
        raise ConfigError(
            f"setting 'segment.k_min' ({settings.segment.k_min}) must not exceed 'segment.k_max' "
            f"({settings.segment.k_max})"
        )
    identity_map, root = settings.ingest.identity_map, settings.lake.root
    if identity_map and _inside(identity_map, root):
        raise ConfigError(
            f"setting 'ingest.identity_map' ({identity_map}) is inside 'lake.root' ({root}): the map of pseudonyms to "
            "raw ids must live apart from the lakehouse, where everyone who reads the tables could read it"
        )
    features = settings.features
    if not (
        0 < features.split_train
        and 0 <= features.split_validation
        and features.split_train + features.split_validation < 1
    ):
        raise ConfigError(
            "settings 'features.split_train' and 'features.split_validation' must be fractions that leave a test "
            f"split, got {features.split_train} and {features.split_validation}"
        )


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or under it (local paths resolved; URIs compared as text)."""
    if "://" not in path and "://" not in folder:
        path, folder = os.path.abspath(path), os.path.abspath(folder)
    path, folder = path.rstrip("/") + "/", folder.rstrip("/") + "/"
    return path.startswith(folder)


def _type_name(kind: Any) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dt.date: "a date (YYYY-MM-DD)",
    }
    if isinstance(kind, types.UnionType):
        return " or ".join(names.get(k, "null") for k in typing.get_args(kind))
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
