"""Raw sources: a declarative mapping (conf/sources/*.yaml) from a log layout onto the canonical event columns.

A user with a new layout writes a mapping, not code: which file format, header or column names, delimiter,
encoding, which raw column feeds each canonical field, how timestamps are written (epoch seconds, epoch
milliseconds or a Spark datetime pattern), how event-type values translate (or one constant type), and which raw
columns hold personal data and must never be kept.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
from functools import reduce
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from behavior_spark import artifacts
from behavior_spark.config import ConfigError, explain
from behavior_spark.contracts import EVENT_TYPES
from behavior_spark.lake import one_row

REQUIRED_FIELDS = ["event_time", "user_id"]
OPTIONAL_FIELDS = [
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "quantity",
    "amount",
    "event_id",  # the source's own id of the event or order line (one column, or a list: the order's first)
]
BROWSING_EVENTS = ("view", "cart", "remove_from_cart", "wishlist")  # what the default bot rule counts
WHITESPACE = "whitespace"
CORRUPT = "_corrupt_record"
RAW_TEXT = "_line"
MISSING_COLUMN = "_missing_column"
LINE_SPAN = "_line_span"  # the physical lines a record covers: 1, plus the line breaks inside its quoted fields
# What makes two lines one event (`SourceMapping.identity`), and what a second line with the same key but other content
# means (`SourceMapping.same_key`).
Identity = Literal["content", "line"]  # content: exact copies are one event; line: every line of a file is an event
SameKeyPolicy = Literal["keep_both", "keep_latest"]  # keep_latest: the later line corrects the earlier


def _no_null(value):
    return () if value is None else value


def _as_text(value):
    return () if value is None else tuple(str(token) for token in value)


Columns = Annotated[tuple[str, ...], Field(strict=False), BeforeValidator(_no_null)]  # a YAML list, or nothing


def _as_columns(value):
    return tuple(value) if isinstance(value, list) else value


class ReturnRule(BaseModel):
    """How the log writes a return (`returns:`): a purchase line with a negative quantity, or whose event id starts
    with a prefix (a cancelled invoice). A return keeps its customer, item, time and price, with the quantity
    returned (positive); a log with its own return events maps them in `event_types` instead."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    negative_quantity: bool = False
    event_id_prefix: str | None = None


class BotRule(BaseModel):
    """Which customers are bots (`bots:`): more than `events_per_minute` events of `event_types` in a calendar minute
    (the lines of one order, one event id, count once). `bots: none` for logs without bots (purchase logs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    events_per_minute: int | None = Field(default=None, gt=0)  # None: the setting ingest.bot_events_per_minute
    event_types: Annotated[tuple[str, ...], Field(strict=False), BeforeValidator(_no_null)] = BROWSING_EVENTS


class SourceMapping(BaseModel):
    """A log layout (conf/sources/*.yaml), checked when read: types, choices, and that its parts fit together."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    format: Literal["csv", "json", "parquet"]
    # canonical field -> raw column; `event_id` may name several (an invoice and its item: the lines of one order)
    fields: dict[str, Annotated[str | tuple[str, ...], BeforeValidator(_as_columns)]]
    timestamp_format: str  # epoch_s | epoch_ms | a Spark datetime pattern
    header: bool = True
    delimiter: str = ","  # one character, or "whitespace" for runs of spaces and tabs
    columns: Columns = ()  # raw column names in file order, for files without a header
    encoding: str = "UTF-8"
    event_types: dict[str, str] = {}  # raw value -> canonical type
    event_type_constant: str | None = None
    personal: Columns = ()  # raw columns never kept, not even in the quarantine
    null_tokens: Annotated[tuple[str, ...], Field(strict=False), BeforeValidator(_as_text)] = (
        *("null", "NULL", "None", "NaN", "nan", "-"),
    )  # values meaning "missing" (as empty)
    quoted: bool | None = None  # RFC 4180 quoting (delimiters, quotes, line breaks in fields); None: when header
    identity: Identity = "content"
    same_key: SameKeyPolicy = "keep_both"  # lines sharing customer, type, item, time and event id
    returns: ReturnRule | None = None  # how a return is written, where the log has returns on purchase lines
    bots: BotRule | Literal["none"] = BotRule()

    @model_validator(mode="after")
    def _parts_fit(self) -> SourceMapping:
        _check_mapping(self)
        return self

    @property
    def is_quoted(self) -> bool:
        return self.header if self.quoted is None else self.quoted

    @property
    def raw_columns(self) -> list[str]:
        """The raw columns this mapping reads (personal ones excluded)."""
        wanted = list(dict.fromkeys(c for field in self.fields for c in self.columns_of(field)))
        return [c for c in wanted if c not in self.personal]

    def columns_of(self, field: str) -> tuple[str, ...]:
        """The raw columns behind a canonical field (none where it is not mapped)."""
        value = self.fields.get(field, ())
        return (value,) if isinstance(value, str) else value


def load_mapping(path: str | Path) -> SourceMapping:
    """Read and validate a source mapping; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"setting 'ingest.source': no source mapping at {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return SourceMapping.model_validate(raw)
    except pydantic.ValidationError as error:
        raise ConfigError(f"source mapping {path}: {explain(error.errors()[0], SourceMapping, 'key')}") from None


def _check_mapping(m: SourceMapping) -> None:
    """The checks across keys (types and choices are the fields' own); a ValueError says what does not fit."""
    several = sorted(k for k, v in m.fields.items() if not isinstance(v, str) and k != "event_id")
    if several:
        raise ValueError(f"'fields.{several[0]}' must name one column (only 'event_id' may name several)")
    if m.fields.get("event_id") == ():
        raise ValueError("'fields.event_id' names no column")
    if m.bots != "none" and set(m.bots.event_types) - set(EVENT_TYPES):
        raise ValueError(f"'bots.event_types' must be among {EVENT_TYPES}, got {list(m.bots.event_types)}")
    if m.returns is not None and not (m.returns.negative_quantity or m.returns.event_id_prefix):
        raise ValueError("'returns' says how a return is written: 'negative_quantity: true' or 'event_id_prefix'")
    if m.returns is not None and m.returns.event_id_prefix and "event_id" not in m.fields:
        raise ValueError("'returns.event_id_prefix' needs 'fields.event_id'")
    unknown = sorted(set(m.fields) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ValueError(
            f"'fields.{unknown[0]}' is not a canonical field ({', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})"
        )
    for field in REQUIRED_FIELDS:
        if field not in m.fields:
            raise ValueError(f"'fields.{field}' is required")
    if ("event_type" in m.fields) == (m.event_type_constant is not None):
        raise ValueError("give exactly one of 'fields.event_type' (with 'event_types') and 'event_type_constant'")
    targets = set(m.event_types.values()) | ({m.event_type_constant} if m.event_type_constant else set())
    if targets - set(EVENT_TYPES):
        raise ValueError(f"event types must map onto {EVENT_TYPES}, got {sorted(targets - set(EVENT_TYPES))}")
    if "event_type" in m.fields and not m.event_types:
        raise ValueError("'event_types' must map the raw event values onto canonical ones")
    if m.format == "csv" and not m.header and not m.columns:
        raise ValueError("a CSV source without a header needs 'columns' (the raw column names in file order)")
    if m.identity == "line" and m.same_key != "keep_both":
        raise ValueError(
            "'identity: line' makes every line an event: no line corrects another, so 'same_key' is keep_both"
        )
    if m.delimiter != WHITESPACE and len(m.delimiter) != 1:
        raise ValueError(f"'delimiter' must be one character or 'whitespace', got {m.delimiter!r}")
    if m.columns:
        missing = sorted({c for field in m.fields for c in m.columns_of(field)} - set(m.columns))
        if missing:
            raise ValueError(f"'fields' names column '{missing[0]}', which is not in 'columns'")
    personal_fields = sorted(k for k in m.fields if set(m.columns_of(k)) & set(m.personal))
    if personal_fields:
        raise ValueError(f"'fields.{personal_fields[0]}' reads a column listed as personal")


def find_files(location: str) -> list[tuple[str, int, int]]:
    """(path, size, modification time in ns) of every raw file at `location`: a file, a folder (read recursively) or
    a glob. Names starting with `_` or `.` (markers, checksums, hidden folders) are skipped, as Spark skips them."""
    wildcard = next((i for i, char in enumerate(location) if char in "*?["), None)
    base = location if wildcard is None else location[: location.rfind("/", 0, wildcard) + 1].rstrip("/") or "."
    found = []
    for path, size, modified in artifacts.list_tree(base):
        relative = path[len(base.rstrip("/")) :].lstrip("/")
        if any(part.startswith(("_", ".")) for part in relative.split("/")):
            continue
        if wildcard is None or fnmatch.fnmatchcase(path, location):
            found.append((path, size, modified))
    return found


@dataclasses.dataclass(frozen=True)
class RawBatch:
    """The raw rows of a batch's files (`raw_output_columns`), and what the books need beside them."""

    rows: DataFrame
    paths: list[str]
    header_lines: int  # lines the CSV reader took as a file's header: one per file it read with a header


@dataclasses.dataclass(frozen=True)
class LineCount:
    """A batch's physical lines as the plain text reader sees them, without the parser."""

    lines: int
    blank: int  # empty or only spaces


def read_files(spark: SparkSession, m: SourceMapping, paths: list[str]) -> RawBatch:
    """The raw rows of `paths` as strings: the mapped columns, the corrupt-record text, the raw line, the column a
    whole file lacks (`MISSING_COLUMN`, else null), the lines each record covers and the source file.

    A CSV with a header is read in groups of files that share a header, each group with its own column order, so
    columns are matched by name in every file; every line of a file lacking a mapped column (its header included)
    is a row that names the column.
    """
    if m.format == "csv" and m.header and m.delimiter != WHITESPACE:
        by_header: dict[tuple[str, ...], list[str]] = {}
        for path in paths:
            by_header.setdefault(csv_header(path, m), []).append(path)
        parts = [_read_csv_with_header(spark, m, header, files) for header, files in by_header.items()]
        complete = sum(len(files) for header, files in by_header.items() if not _missing(m, header))
        return RawBatch(reduce(DataFrame.unionByName, parts), paths, header_lines=complete)
    if m.format == "parquet":
        df = _with_file(spark.read.parquet(*paths))
        _require_columns(m, df.columns, paths[0])
        df = df.select(*(F.col(c).cast("string").alias(c) for c in m.raw_columns), "source_file", "source_modified")
        df = df.withColumn(CORRUPT, F.lit(None).cast("string")).withColumn(RAW_TEXT, F.lit(None).cast("string"))
    elif m.format == "json":
        schema = T.StructType([T.StructField(n, T.StringType()) for n in [*m.raw_columns, CORRUPT]])
        reader = spark.read.schema(schema).option("columnNameOfCorruptRecord", CORRUPT).option("encoding", m.encoding)
        df = _with_file(reader.json(paths)).withColumn(RAW_TEXT, F.col(CORRUPT))
    elif m.delimiter == WHITESPACE:
        df = _with_file(spark.read.option("encoding", m.encoding).text(paths)).transform(_split_whitespace, m)
    else:
        df = _with_csv_lines(_with_file(_csv_reader(spark, m, list(m.columns)).csv(paths)), m, list(m.columns))
        df = df.withColumn(RAW_TEXT, F.col(CORRUPT))
    if LINE_SPAN not in df.columns:
        df = df.withColumn(LINE_SPAN, F.lit(1))
    rows = df.withColumn(MISSING_COLUMN, F.lit(None).cast("string")).select(*raw_output_columns(m))
    return RawBatch(rows, paths, header_lines=0)


def count_lines(spark: SparkSession, m: SourceMapping, paths: list[str]) -> LineCount | None:
    """The physical lines of `paths` counted by Spark's text reader, independently of the CSV or JSON parser (the
    books check the parser's records against it); None for Parquet, or an encoding whose line breaks are not bytes
    10 and 13."""
    if m.format == "parquet" or "\r\n".encode(m.encoding, errors="replace") != b"\r\n":
        return None
    counts = one_row(spark.read.text(paths).agg(F.count(F.lit(1)), F.count(F.when(F.trim("value") == "", 1))))
    return LineCount(lines=counts[0], blank=counts[1])


def line_breaks(text: Column) -> Column:
    """How many line breaks (CR LF, CR or LF, as the text reader splits lines) `text` holds; 0 for null."""
    cr_or_lf = F.length(text) - F.length(F.translate(text, "\r\n", ""))
    crlf = (F.length(text) - F.length(F.replace(text, F.lit("\r\n"), F.lit("")))) / 2
    return F.coalesce((cr_or_lf - crlf).cast("int"), F.lit(0))


def csv_header(path: str, m: SourceMapping) -> tuple[str, ...]:
    """The column names in a CSV file's first line (read on the driver: one small read per file)."""
    head = artifacts.read_head(path).decode(m.encoding, errors="replace").lstrip("\ufeff")
    first = next(csv.reader(io.StringIO(head), delimiter=m.delimiter), [])
    return tuple(name.strip() for name in first)


def _missing(m: SourceMapping, header: tuple[str, ...]) -> list[str]:
    return [c for c in m.raw_columns if c not in header]


def _read_csv_with_header(spark: SparkSession, m: SourceMapping, header: tuple[str, ...], paths: list[str]):
    missing = _missing(m, header)
    if not missing:
        df = _with_csv_lines(_with_file(_csv_reader(spark, m, list(header)).csv(paths)), m, list(header))
        return (
            df.withColumn(RAW_TEXT, F.col(CORRUPT))
            .withColumn(MISSING_COLUMN, F.lit(None).cast("string"))
            .select(*raw_output_columns(m))
        )
    lines = _with_file(spark.read.option("encoding", m.encoding).text(paths)).filter(F.trim("value") != "")
    return lines.select(
        *(F.lit(None).cast("string").alias(c) for c in m.raw_columns),
        F.lit(None).cast("string").alias(CORRUPT),
        F.col("value").alias(RAW_TEXT),
        F.lit(missing[0]).alias(MISSING_COLUMN),
        F.lit(1).alias(LINE_SPAN),
        "source_file",
        "source_modified",
    )


def _with_csv_lines(df: DataFrame, m: SourceMapping, columns: list[str]) -> DataFrame:
    """`LINE_SPAN` of each CSV record: a quoted field may hold line breaks (counted over every column the file has,
    mapped or not, or over the text of a malformed record)."""
    if not m.is_quoted:
        return df.withColumn(LINE_SPAN, F.lit(1))
    text = F.coalesce(F.col(CORRUPT), F.concat_ws("", *(F.col(c) for c in columns)))
    # Counting is costly (7 s of a 4M-row ingest, over every field); a byte search finds the few records that need it
    has_break = reduce(
        lambda a, b: a | b, (F.contains(F.col(c), F.lit(x)) for c in [CORRUPT, *columns] for x in "\r\n")
    )
    # In a file of LF lines, a line ending in CR LF leaves its CR in the last field: part of the break, not another
    spans = 1 + line_breaks(F.rtrim(text, F.lit("\r")))
    return df.withColumn(LINE_SPAN, F.when(has_break, spans).otherwise(F.lit(1)))


def _csv_reader(spark: SparkSession, m: SourceMapping, columns: list[str]):
    """A CSV reader for files whose columns are `columns`, in that order; RFC 4180 quoting when the mapping says so."""
    schema = T.StructType([T.StructField(n, T.StringType()) for n in [*columns, CORRUPT]])
    reader = (
        spark.read.schema(schema)
        .option("header", m.header)
        .option("sep", m.delimiter)
        .option("encoding", m.encoding)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
    )
    if m.is_quoted:  # a quoted field may hold the delimiter, a doubled quote and line breaks
        reader = reader.option("quote", '"').option("escape", '"').option("multiLine", True)
    return reader


def _with_file(scan: DataFrame) -> DataFrame:
    """A file scan with the path and modification time of each row's file (Spark's hidden `_metadata` column exists
    only on the scan)."""
    return scan.withColumn("source_file", F.col("_metadata.file_path")).withColumn(
        "source_modified", F.col("_metadata.file_modification_time")
    )


def raw_output_columns(m: SourceMapping) -> list[str]:
    """The columns `read_files` returns, in order."""
    return [*m.raw_columns, CORRUPT, RAW_TEXT, MISSING_COLUMN, LINE_SPAN, "source_file", "source_modified"]


def _require_columns(m: SourceMapping, present: list[str], location: str) -> None:
    missing = [c for c in m.raw_columns if c not in present]
    if missing:
        field = next(k for k in m.fields if missing[0] in m.columns_of(k))
        raise ConfigError(
            f"source mapping '{m.name}': field '{field}' reads column '{missing[0]}', which {location} does not have "
            f"(it has: {', '.join(present)})"
        )


def _split_whitespace(lines: DataFrame, m: SourceMapping) -> DataFrame:
    tokens = F.split(F.trim(F.col("value")), r"\s+")
    fits = F.size(tokens) == len(m.columns)
    return lines.select(
        *(F.when(fits, tokens[i]).alias(name) for i, name in enumerate(m.columns)),
        F.when(~fits, F.col("value")).alias(CORRUPT),
        F.col("value").alias(RAW_TEXT),
        F.lit(1).alias(LINE_SPAN),
        "source_file",
        "source_modified",
    )
