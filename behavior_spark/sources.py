"""Raw sources: a declarative mapping (conf/sources/*.yaml) from a log layout onto the canonical event columns.

A user with a new layout writes a mapping, not code: which file format, header or column names, delimiter,
encoding, which raw column feeds each canonical field, how timestamps are written (epoch seconds, epoch
milliseconds or a Spark datetime pattern), how event-type values translate (or one constant type), and which raw
columns hold personal data and must never be kept.
"""

from __future__ import annotations

import dataclasses
import json
from functools import reduce
from pathlib import Path

import yaml
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark.config import ConfigError

EVENT_TYPES = ["view", "cart", "remove_from_cart", "purchase", "wishlist"]
REQUIRED_FIELDS = ["event_time", "user_id"]
OPTIONAL_FIELDS = ["event_type", "product_id", "category_id", "category_code", "brand", "price", "quantity", "amount"]
WHITESPACE = "whitespace"
CORRUPT = "_corrupt_record"
RAW_TEXT = "_line"


@dataclasses.dataclass(frozen=True)
class SourceMapping:
    name: str
    format: str  # csv | json | parquet
    fields: dict[str, str]  # canonical field -> raw column
    timestamp_format: str  # epoch_s | epoch_ms | a Spark datetime pattern
    header: bool = True
    delimiter: str = ","  # one character, or "whitespace" for runs of spaces and tabs
    columns: tuple[str, ...] = ()  # raw column names in file order, for files without a header
    encoding: str = "UTF-8"
    event_types: dict[str, str] = dataclasses.field(default_factory=dict)  # raw value -> canonical type
    event_type_constant: str | None = None
    personal: tuple[str, ...] = ()  # raw columns never kept, not even in the quarantine

    @property
    def raw_columns(self) -> list[str]:
        """The raw columns this mapping reads (personal ones excluded)."""
        wanted = list(dict.fromkeys(self.fields.values()))
        return [c for c in wanted if c not in self.personal]


def load_mapping(path: str | Path) -> SourceMapping:
    """Read and validate a source mapping; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"setting 'ingest.source': no source mapping at {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(SourceMapping)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"source mapping {path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    for key in ("name", "format", "fields", "timestamp_format"):
        if key not in raw:
            raise ConfigError(f"source mapping {path}: '{key}' is required")
    raw["columns"] = tuple(raw.get("columns") or ())
    raw["personal"] = tuple(raw.get("personal") or ())
    mapping = SourceMapping(**raw)
    _check_mapping(mapping, path)
    return mapping


def _check_mapping(m: SourceMapping, path: Path) -> None:
    def bad(message: str) -> ConfigError:
        return ConfigError(f"source mapping {path}: {message}")

    if m.format not in ("csv", "json", "parquet"):
        raise bad(f"'format' must be csv, json or parquet, got {m.format!r}")
    unknown = sorted(set(m.fields) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise bad(f"'fields.{unknown[0]}' is not a canonical field ({', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    for field in REQUIRED_FIELDS:
        if field not in m.fields:
            raise bad(f"'fields.{field}' is required")
    if ("event_type" in m.fields) == (m.event_type_constant is not None):
        raise bad("give exactly one of 'fields.event_type' (with 'event_types') and 'event_type_constant'")
    targets = set(m.event_types.values()) | ({m.event_type_constant} if m.event_type_constant else set())
    if targets - set(EVENT_TYPES):
        raise bad(f"event types must map onto {EVENT_TYPES}, got {sorted(targets - set(EVENT_TYPES))}")
    if "event_type" in m.fields and not m.event_types:
        raise bad("'event_types' must map the raw event values onto canonical ones")
    if m.format == "csv" and not m.header and not m.columns:
        raise bad("a CSV source without a header needs 'columns' (the raw column names in file order)")
    if m.delimiter != WHITESPACE and len(m.delimiter) != 1:
        raise bad(f"'delimiter' must be one character or 'whitespace', got {m.delimiter!r}")
    if m.columns:
        missing = sorted(set(m.fields.values()) - set(m.columns))
        if missing:
            raise bad(f"'fields' names column '{missing[0]}', which is not in 'columns'")
    personal_fields = sorted(k for k, v in m.fields.items() if v in m.personal)
    if personal_fields:
        raise bad(f"'fields.{personal_fields[0]}' reads a column listed as personal")


def raw_schema(spark: SparkSession, m: SourceMapping, location: str) -> T.StructType:
    """All-string schema of the raw columns, checked against the files' own header or schema."""
    if m.format == "csv" and m.header:
        names = (
            spark.read.option("header", True)
            .option("sep", m.delimiter)
            .option("encoding", m.encoding)
            .csv(location)
            .columns
        )
        _require_columns(m, names, location)
        return T.StructType([T.StructField(n, T.StringType()) for n in names])
    if m.format == "parquet":
        names = spark.read.parquet(location).columns
        _require_columns(m, names, location)
        return T.StructType([T.StructField(n, T.StringType()) for n in m.raw_columns])
    if m.format == "json":
        first = spark.read.text(location).limit(1).collect()  # one line, to check the mapping against real keys
        if first:
            try:
                keys = list(json.loads(first[0][0]))
            except (ValueError, TypeError):
                keys = None  # a garbage first line: the rows are quarantined as malformed instead
            if keys is not None:  # JSON writers leave out null keys: only the required fields must be there
                _require_columns(m, keys, location, fields=[*REQUIRED_FIELDS, "event_type"])
        return T.StructType([T.StructField(n, T.StringType()) for n in m.raw_columns])
    return T.StructType([T.StructField(n, T.StringType()) for n in m.columns])


def _require_columns(m: SourceMapping, present: list[str], location: str, fields: list[str] | None = None) -> None:
    wanted = [m.fields[f] for f in (fields or m.fields) if f in m.fields]
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    if missing:
        field = next(k for k, v in m.fields.items() if v == missing[0])
        raise ConfigError(
            f"source mapping '{m.name}': field '{field}' reads column '{missing[0]}', which {location} does not have "
            f"(it has: {', '.join(present)})"
        )


def read_stream(
    spark: SparkSession, m: SourceMapping, location: str, schema: T.StructType, max_files_per_trigger: int
) -> DataFrame:
    """A streaming read of the raw files as strings, with the source file and the corrupt-line text."""
    reader = spark.readStream.option("maxFilesPerTrigger", max_files_per_trigger)
    if m.format == "parquet":
        df = reader.schema(schema).parquet(location).withColumn(CORRUPT, F.lit(None).cast("string"))
        df = df.withColumn(RAW_TEXT, F.lit(None).cast("string"))
    elif m.format == "json":
        df = (
            reader.schema(schema.add(CORRUPT, T.StringType()))
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("encoding", m.encoding)
            .json(location)
        )
        df = df.withColumn(RAW_TEXT, F.col(CORRUPT))
    elif m.delimiter == WHITESPACE:
        df = reader.option("encoding", m.encoding).text(location).transform(_split_whitespace, m)
    else:
        df = (
            reader.schema(schema.add(CORRUPT, T.StringType()))
            .option("header", m.header)
            .option("sep", m.delimiter)
            .option("encoding", m.encoding)
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .csv(location)
        )
        df = df.withColumn(RAW_TEXT, F.col(CORRUPT))
    return df.withColumn("source_file", F.col("_metadata.file_path"))


def _split_whitespace(lines: DataFrame, m: SourceMapping) -> DataFrame:
    tokens = F.split(F.trim(F.col("value")), r"\s+")
    fits = F.size(tokens) == len(m.columns)
    return lines.select(
        *(F.when(fits, tokens[i]).alias(name) for i, name in enumerate(m.columns)),
        F.when(~fits, F.col("value")).alias(CORRUPT),
        F.col("value").alias(RAW_TEXT),
    )


def canonical(raw: DataFrame, m: SourceMapping) -> DataFrame:
    """Typed canonical columns beside the raw text, and the first reason (if any) the row cannot be trusted."""

    def field(name: str) -> Column:
        return F.trim(F.col(m.fields[name])) if name in m.fields else F.lit(None).cast("string")

    event_time = parse_timestamp(field("event_time"), m.timestamp_format)
    if m.event_type_constant:
        event_type = F.lit(m.event_type_constant)
    else:
        lookup = F.create_map(*[F.lit(x) for pair in m.event_types.items() for x in pair])
        event_type = F.element_at(lookup, field("event_type"))
    quantity = F.coalesce(field("quantity").try_cast("int"), F.lit(1)) if "quantity" in m.fields else F.lit(1)
    if "amount" in m.fields:
        price = field("amount").try_cast("double") / F.when(quantity > 0, quantity)
        price_text = field("amount")
    else:
        price = field("price").try_cast("double")
        price_text = field("price")
    user_id = field("user_id")
    texts = [F.col(RAW_TEXT), *(F.col(c) for c in m.raw_columns)]
    undecodable = reduce(lambda a, b: a | b, (F.coalesce(F.contains(t, F.lit("\ufffd")), F.lit(False)) for t in texts))
    return raw.select(
        F.col(RAW_TEXT).alias("raw_line"),
        F.struct(*m.raw_columns).alias("raw_fields"),  # serialised only for the rows that are quarantined
        F.col(CORRUPT).isNotNull().alias("malformed"),
        undecodable.alias("bad_encoding"),
        "source_file",
        event_time.alias("event_time"),
        F.nullif(user_id, F.lit("")).alias("user_id"),
        event_type.alias("event_type"),
        field("event_type").alias("raw_event_type"),
        field("product_id").try_cast("long").alias("product_id"),
        field("product_id").alias("raw_product_id"),
        field("category_id").try_cast("long").alias("category_id"),
        F.nullif(field("category_code"), F.lit("")).alias("category_code"),
        F.nullif(field("brand"), F.lit("")).alias("brand"),
        price.alias("price"),
        F.nullif(price_text, F.lit("")).alias("raw_price"),
        quantity.alias("quantity"),
    )


def parse_timestamp(text: Column, timestamp_format: str) -> Column:
    """Epoch seconds, epoch milliseconds or a pattern; null (never an exception) when the text does not parse."""
    if timestamp_format == "epoch_s":
        return F.timestamp_seconds(text.try_cast("long"))
    if timestamp_format == "epoch_ms":
        return F.timestamp_millis(text.try_cast("long"))
    return F.try_to_timestamp(text, F.lit(timestamp_format))
