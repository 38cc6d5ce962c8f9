"""Plain types shared by every layer: events, catalog items, and their validation rules."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EventTypeName = Literal[
    "product_viewed", "add_to_cart", "remove_from_cart", "purchase_completed", "search", "recommendation_clicked"
]


class EventType(IntEnum):
    """Compact code of an event type, as stored in arrays and the event store."""

    product_viewed = 0
    add_to_cart = 1
    remove_from_cart = 2
    purchase_completed = 3
    search = 4
    recommendation_clicked = 5


ITEM_EVENTS = {EventType.product_viewed, EventType.add_to_cart, EventType.remove_from_cart,
               EventType.purchase_completed, EventType.recommendation_clicked}


class EventContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str | None = Field(None, max_length=64)
    placement: str | None = Field(None, max_length=64)
    position: int | None = Field(None, ge=0)
    request_id: str | None = Field(None, max_length=128)


class PurchasedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=256)
    quantity: int = Field(1, ge=1)
    price: float | None = Field(None, ge=0)


class Event(BaseModel):
    """One shopper action, as the storefront sends it."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128, description="client idempotency key")
    type: EventTypeName
    user_id: str | None = Field(None, min_length=1, max_length=256)
    session_id: str | None = Field(None, min_length=1, max_length=256)
    item_id: str | None = Field(None, min_length=1, max_length=256)
    items: list[PurchasedItem] | None = Field(None, max_length=500)
    order_id: str | None = Field(None, max_length=128)
    timestamp: datetime
    context: EventContext = EventContext()
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a UTC offset, e.g. 2026-11-24T10:00:00Z")
        return value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _shape(self) -> "Event":
        if self.user_id is None and self.session_id is None:
            raise ValueError("an event needs a user_id or a session_id")
        t = self.type
        if t == "purchase_completed":
            if not self.items and not self.item_id:
                raise ValueError("purchase_completed needs items (or item_id)")
        elif t == "search":
            query = self.properties.get("query")
            if not isinstance(query, str) or not query.strip():
                raise ValueError("search needs properties.query (a non-empty string)")
        elif not self.item_id:
            raise ValueError(f"{t} needs item_id")
        if self.items and t != "purchase_completed":
            raise ValueError("items is only allowed on purchase_completed")
        return self

    @property
    def shopper(self) -> str:
        """The key of the shopper: the user id, or the session for anonymous shoppers."""
        return self.user_id if self.user_id is not None else f"session:{self.session_id}"

    def lines(self) -> list[tuple[str, int, float | None]]:
        """(item_id, quantity, price) of every product this event is about."""
        if self.items:
            return [(p.item_id, p.quantity, p.price) for p in self.items]
        if self.item_id:
            return [(self.item_id, 1, None)]
        return []


class Item(BaseModel):
    """A catalog entry."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    title: str = Field("", max_length=1000)
    description: str = Field("", max_length=20000)
    category: list[str] = Field(default_factory=list, description="category path, root first", max_length=16)
    brand: str | None = Field(None, max_length=256)
    price: float | None = Field(None, gt=0, description="selling price; must be positive")
    cost: float | None = Field(None, ge=0, description="unit cost, for margin")
    stock: int | None = Field(None, ge=0, description="units in stock; None means not tracked")
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    created_at: datetime | None = None
    available: bool = True

    @field_validator("price", "cost")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    @model_validator(mode="after")
    def _cost_vs_price(self) -> "Item":
        if self.cost is not None and self.price is None:
            raise ValueError("cost given without price")
        return self

    @property
    def margin(self) -> float | None:
        if self.price is None or self.cost is None:
            return None
        return (self.price - self.cost) / self.price

    @property
    def in_stock(self) -> bool:
        return self.available and (self.stock is None or self.stock > 0)
