"""How an event is known: its id from its key and content, and the scheme a table records."""

from __future__ import annotations

import logging

from pyspark.sql import Column
from pyspark.sql import functions as F

from behavior_spark.sources import SourceMapping

log = logging.getLogger(__name__)


# How event ids are made (`event_id`): a table of another scheme cannot take re-read rows without duplicating them.
EVENT_ID_PROPERTY = "behavior_spark.eventIdScheme"


EVENT_ID_SCHEME = "key-sha256+content-sha256"


def event_id() -> Column:
    """An event's identity: 16 hex characters of its key (customer, type, item, time, and the source's own event id
    where the mapping names one), then 16 of its whole content.

    Exact copies share an id (a duplicate in a batch, a replay across batches); lines that differ in any mapped
    field are different events, both kept; and the variants of one key sort next to each other, so one ordered
    pass finds copies and variants alike.
    """

    def text(name: str) -> Column:  # null as empty, in place: concat_ws would drop it and shift the fields
        return F.coalesce(F.col(name).cast("string"), F.lit(""))

    millis = F.unix_millis(F.col("event_time")).cast("string")
    key = F.concat_ws("|", text("customer_id"), text("event_type"), text("product_id"), millis, text("source_event_id"))
    content = F.concat_ws("|", key, *(text(c) for c in ("category_id", "category_code", "brand", "price", "quantity")))
    return F.concat(F.substring(F.sha2(key, 256), 1, 16), F.substring(F.sha2(content, 256), 1, 16))


def event_key(event_id: Column) -> Column:
    """The key half of an event id (customer, type, item, time and source id)."""
    return F.substring(event_id, 1, 16)


def same_key(first: Column, second: Column) -> Column:
    """Whether two event ids share their key half (the same customer, type, item, time and source id)."""
    return event_key(first) == event_key(second)


def event_id_scheme(mapping: SourceMapping) -> str:
    """How the events table's ids are made and kept (`ingest.EVENT_ID_PROPERTY`): a table cannot change it."""
    scheme = EVENT_ID_SCHEME + ("+line-in-file" if mapping.identity == "line" else "")
    return scheme + ("; later line of a key corrects" if mapping.same_key == "keep_latest" else "")
