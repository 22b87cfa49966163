"""Raw rows onto the canonical event columns: typed fields beside their raw text, so the checks can tell a missing
value from one that does not parse, and a reject reason can be given for every row (`ingest.checks`).

Ids are kept as the log writes them (trimmed of white space, null tokens as missing); times parse from epochs or a
pattern, never with an exception; a purchase line the mapping's `returns` rule marks becomes a `return` of the
quantity returned.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from behavior_spark.sources import CORRUPT, LINE_SPAN, MISSING_COLUMN, RAW_TEXT, SourceMapping

# Trimmed from both ends of every field: ASCII and Unicode white space, zero-width space and the byte-order mark, so
# " 5000 ", "\t5000" and "5000\u00a0" are one id. (A set of characters, trimmed without a regular expression.)
UNICODE_SPACE = "".join(
    [" \t\n\r\v\f\x1c\x1d\x1e\x1f\x85\xa0\u1680\u180e\u2028\u2029\u202f\u205f\u3000\u200b\ufeff"]
    + [chr(c) for c in range(0x2000, 0x200B)]
)


# Epoch timestamps beyond 9999-12-31 are out of range: Spark's conversion would overflow and fail the whole batch.
EPOCH_LIMITS = {"epoch_s": 253_402_300_799, "epoch_ms": 253_402_300_799_999}


def canonical(raw: DataFrame, m: SourceMapping) -> DataFrame:
    """Typed canonical columns beside the raw text, and the first reason (if any) the row cannot be trusted."""

    def field(name: str) -> Column:
        """The raw column's text trimmed of white space; null where it is empty or a null token. Several columns
        (`event_id`) are joined with "|", each trimmed; null where all are missing."""
        columns = m.columns_of(name)
        if not columns:
            return F.lit(None).cast("string")
        if len(columns) == 1:
            return missing_as_null(F.col(columns[0]), m.null_tokens)
        parts = [F.coalesce(missing_as_null(F.col(c), m.null_tokens), F.lit("")) for c in columns]
        return F.when(F.concat(*parts) != "", F.concat_ws("|", *parts))

    event_time = parse_timestamp(field("event_time"), m.timestamp_format)
    if m.event_type_constant:
        mapped_type = F.lit(m.event_type_constant)
    else:
        lookup = F.create_map(*[F.lit(x) for pair in m.event_types.items() for x in pair])
        mapped_type = F.element_at(lookup, field("event_type"))
    signed_quantity = parse_quantity(field("quantity"))
    returned = is_return(m, mapped_type, signed_quantity, field)
    event_type = F.when(returned, F.lit("return")).otherwise(mapped_type)
    quantity = F.when(returned, F.abs(signed_quantity)).otherwise(signed_quantity)
    if "amount" in m.fields:
        amount = field("amount").try_cast("double")
        price = F.when(returned, F.abs(amount)).otherwise(amount) / F.when(quantity > 0, quantity)
        price_text = field("amount")
    else:
        listed = field("price").try_cast("double")
        price = F.when(returned, F.abs(listed)).otherwise(listed)
        price_text = field("price")
    texts = [F.col(RAW_TEXT), *(F.col(c) for c in m.raw_columns)]
    undecodable = reduce(lambda a, b: a | b, (F.coalesce(F.contains(t, F.lit("\ufffd")), F.lit(False)) for t in texts))
    return raw.select(
        F.col(RAW_TEXT).alias("raw_line"),
        F.col(LINE_SPAN).alias("line_span"),
        F.struct(*(c for c in m.raw_columns if c != m.fields["user_id"])).alias("raw_fields"),  # for the quarantine
        F.col(MISSING_COLUMN).alias("missing_column"),
        F.col(CORRUPT).isNotNull().alias("malformed"),
        repeated_header(m).alias("repeated_header"),
        undecodable.alias("bad_encoding"),
        "source_file",
        *arrival_order(m),
        event_time.alias("event_time"),
        epoch_out_of_range(field("event_time"), m.timestamp_format).alias("time_out_of_range"),
        field("user_id").alias("user_id"),
        event_type.alias("event_type"),
        field("event_type").alias("raw_event_type"),
        field("product_id").alias("product_id"),  # as the log writes it: SKUs, codes with letters, UUIDs
        field("category_id").alias("category_id"),
        field("category_code").alias("category_code"),
        field("brand").alias("brand"),
        price.alias("price"),
        price_text.alias("raw_price"),
        quantity.alias("quantity"),
        field("quantity").alias("raw_quantity"),
        field("event_id").alias("source_event_id"),
        order_id(m).alias("source_order_id"),
    )


def order_id(m: SourceMapping) -> Column:
    """The order a line belongs to: the first column of `event_id` (an invoice, a basket), trimmed; null without."""
    columns = m.columns_of("event_id")
    return missing_as_null(F.col(columns[0]), m.null_tokens) if columns else F.lit(None).cast("string")


def is_return(m: SourceMapping, event_type: Column, quantity: Column, field: Callable[[str], Column]) -> Column:
    """Whether a line is a return: mapped as one, or a purchase line the mapping's `returns` rule marks (a negative
    quantity, an event id with the return prefix)."""
    returned = F.coalesce(event_type == "return", F.lit(False))
    rule = m.returns
    if rule is None:
        return returned
    marks = []
    if rule.negative_quantity:
        marks.append(F.coalesce(quantity < 0, F.lit(False)))
    if rule.event_id_prefix:
        prefix = F.lit(rule.event_id_prefix)
        marks.append(F.coalesce(F.startswith(field("event_id"), prefix), F.lit(False)))
    on_purchase = F.coalesce(event_type == "purchase", F.lit(False)) & reduce(lambda a, b: a | b, marks)
    return returned | on_purchase


def arrival_order(m: SourceMapping) -> list[Column]:
    """Where a later line must correct an earlier one (`same_key: keep_latest`), the order lines arrived in: the file's
    modification time, then its path, then the line's place in the file (the read order, which follows the lines of
    a file Spark does not split; quoted CSV files are never split)."""
    if m.same_key != "keep_latest":
        return []
    order = F.struct("source_modified", "source_file", F.monotonically_increasing_id().alias("read_order"))
    return [order.alias("arrival")]


def missing_as_null(text: Column, null_tokens: tuple[str, ...]) -> Column:
    """`text` trimmed of ASCII and Unicode white space; null where that leaves nothing or one of `null_tokens`."""
    trimmed = F.when(may_have_space_at_an_end(text), F.btrim(text, F.lit(UNICODE_SPACE))).otherwise(text)
    return F.when(~trimmed.isin("", *null_tokens), trimmed)


def may_have_space_at_an_end(text: Column) -> Column:
    """Whether `text` may begin or end with a character of UNICODE_SPACE (each is at most 32 or at least 133): a test
    of two code points that spares nearly every field the trim, which cost a 4M-row ingest 3 s."""
    first, last = F.ascii(text), F.ascii(F.substring(text, -1, 1))
    return (first <= 32) | (first >= 133) | (last <= 32) | (last >= 133)


def repeated_header(m: SourceMapping) -> Column:
    """A CSV line repeating the header (files joined with their headers): every mapped column holds its own name."""
    if m.format != "csv" or not m.header:
        return F.lit(False)
    checks = [F.coalesce(F.col(c) == F.lit(c), F.lit(False)) for c in m.raw_columns]
    return reduce(lambda a, b: a & b, checks)


def parse_quantity(text: Column) -> Column:
    """A whole number of items (1 when the column is absent or empty; "2.0" is 2); null when the text is not one."""
    number = text.try_cast("double")
    whole = F.when(number.between(-(2**31), 2**31 - 1), number == F.floor(number))  # range first: floor is a long
    return F.when(text.isNull(), F.lit(1)).when(whole, number.cast("int"))


def parse_timestamp(text: Column, timestamp_format: str) -> Column:
    """Epoch seconds, epoch milliseconds or a pattern; null (never an exception) when the text does not parse."""
    if timestamp_format in EPOCH_LIMITS:
        number = text.try_cast("long")
        to_time = F.timestamp_seconds if timestamp_format == "epoch_s" else F.timestamp_millis
        limit = EPOCH_LIMITS[timestamp_format]
        return F.when(number.between(-limit, limit), to_time(number))  # out of range: null, never an overflow
    return F.try_to_timestamp(text, F.lit(timestamp_format))


def epoch_out_of_range(text: Column, timestamp_format: str) -> Column:
    """True for an epoch number too large to be a time (micro- or nanoseconds in a seconds column, say)."""
    if timestamp_format not in EPOCH_LIMITS:
        return F.lit(False)
    number = text.try_cast("long")
    limit = EPOCH_LIMITS[timestamp_format]
    beyond_long = F.abs(text.try_cast("double")) > limit  # "1e20", or digits too many for a long
    return F.coalesce(~number.between(-limit, limit), beyond_long, F.lit(False))
