"""What every stage agrees on about events, in one place: the event types and their ids in the model's sequences."""

from __future__ import annotations

from typing import Literal, get_args

EventType = Literal["view", "cart", "remove_from_cart", "purchase", "wishlist", "return"]
EVENT_TYPES: list[str] = list(get_args(EventType))
# Ids of the event types in the recent-event sequences the model reads; 0 pads a sequence. New types get new ids.
EVENT_TYPE_IDS: dict[str, int] = {event: number for number, event in enumerate(EVENT_TYPES, start=1)}
FUNNEL_EVENTS = ["view", "cart", "remove_from_cart", "purchase"]  # counted per window as features
