"""Typed settings: one YAML file per environment, overridable with `--set section.key=value`.

Every setting is declared here as a pydantic field, with its type, default and bounds side by side. Loading validates
the whole tree before any Spark work starts: an unknown key, a wrong type or a bad value raises `ConfigError` naming
the key, which the CLI turns into exit code 2. Secrets are never settings: a setting may only name the environment
variable that holds one.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from behavior_spark.contracts import EventType


class ConfigError(ValueError):
    """A setting is unknown, mistyped or invalid; the message names it."""


Positive = Annotated[int, Field(gt=0)]
Date = Annotated[dt.date, Field(strict=False)]  # YAML reads 2026-03-01 as a date; a quoted one is parsed too
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    """A settings section: typed (no coercion from text), frozen, and no key it does not declare."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SparkSettings(Section):
    master: str = "local[*]"  # used only when no Spark session or spark-submit master is given
    shuffle_partitions: Positive = 8
    driver_memory: str = "4g"
    app_name: str = "behavior-spark"
    remote: Annotated[str, Field(pattern=r"^sc://")] | None = None  # a Spark Connect server; every stage but train


class LakeSettings(Section):
    root: str = "lakehouse"  # every table lives under this folder or URI

    def table(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"


class GenerateSettings(Section):
    rows: Positive = 200_000  # approximate number of raw rows
    seed: int = 7
    start_date: Date = dt.date(2026, 1, 1)
    days: Positive = 120
    format: Literal["csv", "json"] = "csv"
    files: Positive = 4
    output: str = "lakehouse/raw/events"


class IngestSettings(Section):
    input: str = "lakehouse/raw/events"  # a file, folder or glob; new files are picked up on the next run
    source: str = "conf/sources/rees46.yaml"  # the layout mapping of the raw files
    max_files_per_trigger: Positive = 1000  # files per batch when a backlog is ingested
    session_gap_minutes: Positive = 30
    bot_events_per_minute: Positive = 30  # the bot rate where a source mapping's `bots` rule names none
    warn_share: Annotated[float, Field(gt=0, le=1)] = 0.10  # warn when one rule removes more of a batch's rows
    fail_share: Annotated[float, Field(gt=0, le=1)] = 0.50  # fail the batch, before any write, above this share
    max_price: Annotated[float, Field(gt=0)] = 100_000.0
    earliest_event_date: Date = dt.date(2000, 1, 1)
    max_future_hours: Annotated[int, Field(ge=0)] = 24  # events stamped later than now + this are quarantined
    pseudonym_key_env: str = "BEHAVIOR_SPARK_PSEUDONYM_KEY"  # names the variable; the key is never a setting
    identity_map: str | None = None  # where to keep pseudonym -> raw id for warehouse export; None: nowhere


class FeatureSettings(Section):
    cutoff: Date | None = None  # the latest cutoff; None: the Monday before the last full label window
    cutoffs: Positive = 1  # snapshots stacked into the table, `cutoff_step_days` apart, ending at `cutoff`
    cutoff_step_days: Positive = 30
    events_version: Annotated[int, Field(ge=0)] | None = None  # the events version to read; None: the latest
    label_window_days: Positive = 30
    label_event: EventType = "purchase"
    sequence_length: Positive = 50
    category_buckets: Positive = 64
    totals_lag_days: Positive = 7  # the kept per-customer totals reach 1-2x this many days before the scoring date
    split_train: Annotated[float, Field(gt=0, lt=1)] = 0.7
    split_validation: Fraction = 0.15  # the rest is the test split

    @model_validator(mode="after")
    def _leaves_a_test_split(self) -> FeatureSettings:
        if self.split_train + self.split_validation >= 1:
            raise ValueError(
                "settings 'features.split_train' and 'features.split_validation' must be fractions that leave a "
                f"test split, got {self.split_train} and {self.split_validation}"
            )
        return self


class TrainSettings(Section):
    num_proc: Positive = 2
    epochs: Positive = 20  # at most: early stopping ends training when validation loss stops improving
    batch_size: Positive = 512  # per process; smaller where a small training split would give < 32 steps an epoch
    learning_rate: Annotated[float, Field(gt=0)] = 0.001  # per process; scaled by the processes, one epoch of warm-up
    # How numeric inputs enter the network: standardised as they are, or each embedded from its quantile bins
    numeric_encoding: Literal["raw", "piecewise_linear"] = "raw"
    # BG/NBD fitted on the training split gives the network three more inputs: P(alive), the rate, its forecast
    bg_nbd_inputs: bool = True
    seed: int = 7
    class_weight: Literal["balanced", "none"] = "balanced"  # how the rare positive label is weighted in the loss
    patience: Positive = 3  # early stopping: epochs without a better validation loss
    resume: bool = False  # a retry: continue this run's last checkpoint (the CLI's --resume); never a finished run
    run_id: str | None = None  # the scheduler's run id ({{job.run_id}}, an EMR step id); None: a new id per call
    reader_threads: Positive | None = None  # Petastorm threads per process; None: the cores Spark gives each GPU
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5  # the propensity above which a customer is a predicted buyer
    importance_rows: Positive = 20_000  # validation rows sampled for permutation feature importance
    model_dir: str = "lakehouse/models/propensity"
    mlflow_tracking_uri: str | None = None  # None: <lake.root>/mlruns; databricks; http(s)://...; disabled
    mlflow_experiment: str = "behavior-spark"  # on Databricks, a workspace path such as /Shared/behavior-spark


class ScoreSettings(Section):
    batch_size: Positive = 8192
    scoring_date: Date | None = None  # None: the day after the last event (featurize records it)
    drift_fail_psi: Annotated[float, Field(ge=0)] | None = None  # fail before scoring above this PSI; None: warn
    reason_steps: Annotated[int, Field(ge=0)] = 1  # integrated-gradient steps of each customer's reasons; 0: none


class SegmentSettings(Section):
    k: Annotated[int, Field(ge=2)] | None = None  # None: the best silhouette between k_min and k_max
    k_min: Annotated[int, Field(ge=2)] = 3
    k_max: Annotated[int, Field(ge=2)] = 8
    k_sample_rows: Positive = 100_000  # customers sampled to choose k (the final model is fitted on all)
    min_segment_size: Positive = 20  # k-anonymity: smaller segments are suppressed in profiles and reports
    seed: int = 7
    restarts: Positive = 3  # KMeans fits from seeds seed, seed+1, ...; the lowest-cost one is kept
    keep_tolerance: Fraction = 0.01  # keep the previous run's centroids unless a new fit costs this fraction less

    @model_validator(mode="after")
    def _k_range(self) -> SegmentSettings:
        if self.k_min > self.k_max:
            raise ValueError(f"setting 'segment.k_min' ({self.k_min}) must not exceed 'segment.k_max' ({self.k_max})")
        return self


class WarehouseSettings(Section):
    url: str | None = None  # JDBC URL (jdbc:postgresql://host:5432/db, jdbc:redshift://...); None: no export
    driver: str = "org.postgresql.Driver"  # the JDBC driver class (its JAR on spark.jars or the cluster)
    table: str = "customer_segments"  # replaced per scoring date
    user_env: str = "BEHAVIOR_SPARK_WAREHOUSE_USER"  # names the variable holding the user
    password_env: str = "BEHAVIOR_SPARK_WAREHOUSE_PASSWORD"  # names the variable holding the password
    reidentify: bool = False  # add raw user ids from ingest.identity_map (only there, only when on)
    batch_size: Positive = 10_000  # rows per JDBC insert batch


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    dir: str = "logs"  # a local folder: each command's full log, its path printed on the console


class Settings(Section):
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

    @model_validator(mode="after")
    def _identity_map_apart(self) -> Settings:
        identity_map, root = self.ingest.identity_map, self.lake.root
        if identity_map and _inside(identity_map, root):
            raise ValueError(
                f"setting 'ingest.identity_map' ({identity_map}) is inside 'lake.root' ({root}): the map of "
                "pseudonyms to raw ids must live apart from the lakehouse, where everyone who reads the tables "
                "could read it"
            )
        return self


def load_settings(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Settings:
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
    try:
        return Settings.model_validate(raw)
    except pydantic.ValidationError as error:
        raise ConfigError(explain(error.errors()[0], Settings, "setting")) from None


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain, JSON-friendly view of the settings, for logs and run records."""
    return settings.model_dump(mode="json")


def describe() -> list[tuple[str, str, str]]:
    """(key, type and bounds, default) for every setting: the configuration reference."""
    return [
        (f"{name}.{key}", _type_name(field.annotation) + _bounds(field), repr(field.default))
        for name, section in Settings.model_fields.items()
        for key, field in _section_model(section.annotation).model_fields.items()
    ]


def _section_model(annotation: Any) -> type[BaseModel]:
    """The pydantic model of a settings section (every field of Settings is one)."""
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), annotation
    return annotation


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


def explain(error: Mapping[str, Any], model: type[BaseModel], noun: str) -> str:
    """One pydantic error on `model` as a person reads it: the `noun` ("setting") and its dotted key, what it must
    be, what it got. A check across fields (a model validator) words its whole message; it is returned as it is."""
    loc, kind, got = error["loc"], error["type"], error.get("input")
    key = ".".join(str(part) for part in loc)
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "extra_forbidden":
        known = _model_at(model, loc[:-1]).model_fields
        prefix = "".join(f"{part}." for part in loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{prefix}{near[0]}'?" if near else f"known keys here: {', '.join(known)}"
        return f"unknown {noun} '{_first_leaf(key, got)}'; {hint}"
    if kind == "missing":
        return f"{noun} '{key}' is required"
    if kind == "model_type":
        return f"{noun} '{key}' must be a section (a mapping), got {got!r}"
    annotation = _model_at(model, loc[:-1]).model_fields[loc[-1]].annotation
    bounds = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than"}
    if kind in bounds:
        (limit,) = error["ctx"].values()
        must = "positive" if kind == "greater_than" and limit == 0 else f"{bounds[kind]} {limit}"
        return f"{noun} '{key}' must be {must}, got {got!r}"
    return f"{noun} '{key}' must be {_type_name(annotation)}, got {got!r}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    for part in loc:
        model = _section_model(model.model_fields[part].annotation)
    return model


def _first_leaf(key: str, value: Any) -> str:
    while isinstance(value, dict) and value:
        child = next(iter(value))
        key, value = f"{key}.{child}", value[child]
    return key


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or under it (local paths resolved; URIs compared as text)."""
    if "://" not in path and "://" not in folder:
        path, folder = os.path.abspath(path), os.path.abspath(folder)
    path, folder = path.rstrip("/") + "/", folder.rstrip("/") + "/"
    return path.startswith(folder)


def _bounds(field: pydantic.fields.FieldInfo) -> str:
    """A field's bounds in words ("> 0, < 1"), from its own constraints or those of its non-null type."""
    constraints = list(field.metadata)
    for member in typing.get_args(field.annotation):
        if typing.get_origin(member) is Annotated:
            constraints += [c for info in typing.get_args(member)[1:] for c in getattr(info, "metadata", [info])]
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    words = [f"{sign} {getattr(c, name)}" for c in constraints for name, sign in signs.items() if hasattr(c, name)]
    return f" ({', '.join(words)})" if words else ""


def _type_name(kind: Any) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dt.date: "a date (YYYY-MM-DD)",
        type(None): "null",
    }
    if typing.get_origin(kind) is Annotated:
        return _type_name(typing.get_args(kind)[0])
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(member) for member in typing.get_args(kind))
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    return names.get(kind, getattr(kind, "__name__", str(kind)))
