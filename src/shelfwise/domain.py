"""Plain types shared by every layer: events, catalog items, and their validation rules."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# ---- hostile input: what every stored string and JSON value must satisfy --------------------------------------
MAX_JSON_DEPTH = 16  # nesting of event properties and item attributes
INT64 = (-(2**63), 2**63 - 1)  # integers beyond this cannot be stored by every backend (JSON, SQLite, PostgreSQL)
TIME_PATTERN = r"^(19[7-9][0-9]|2[01][0-9][0-9])-"  # the years accepted (documents the range for clients)
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)
# catalog text: part of the API contract (the OpenAPI schema's maxLength), so constants rather than settings. A
# 20,000-character description is stored whole; the content tower reads the first content.max_chars of the text.
MAX_TITLE_CHARS = 1_000
MAX_DESCRIPTION_CHARS = 20_000
# a search event: properties.query, and optionally the result ids the shop showed (properties.results, best first)
MAX_SEARCH_RESULTS = 1_000


def split_field(message: str) -> tuple[str | None, str]:
    """A whole-object rule's message names its field first ("item_id: product_viewed needs item_id")."""
    field, sep, reason = message.partition(": ")
    if sep and field and all(part.isidentifier() for part in field.split(".")):
        return field, reason
    return None, message


def clean_text(value: str) -> str:
    """No NUL character (PostgreSQL cannot store it) and valid Unicode (no lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate such as \\ud800 is not)") from None
    return value


Text = Annotated[str, AfterValidator(clean_text), Field(json_schema_extra={"pattern": "^[^\\u0000]*$"})]


def check_json(value: Any, depth: int = 0, path: str = "") -> None:
    """A JSON value every backend can store: depth <= MAX_JSON_DEPTH, 64-bit integers, finite numbers, clean
    text. Raises ValueError naming the offending path."""
    where = f" at {path}" if path else ""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels{where}")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"integer{where} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"number{where} must be finite (no NaN or Infinity)")
    elif isinstance(value, str):
        try:
            clean_text(value)
        except ValueError as e:
            raise ValueError(f"text{where} {e}") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"keys must be strings{where}")
            try:
                clean_text(k)
            except ValueError as e:
                raise ValueError(f"key{where} {e}") from None
            check_json(v, depth + 1, f"{path}.{k[:64]}" if path else k[:64])
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_json(v, depth + 1, f"{path}[{i}]")
    else:
        raise ValueError(f"unsupported value of type {type(value).__name__}{where}")


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value)
    return value


JSONObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


def strict_time(value: Any) -> Any:
    """Timestamps are ISO 8601 text (or datetime objects from Python code), never bare numbers: a number carries
    no offset, and seconds vs milliseconds would be a guess."""
    if isinstance(value, (int, float)):  # bool is an int too
        raise ValueError("must be an ISO 8601 date-time string with a UTC offset, e.g. 2026-11-24T10:00:00Z "
                         "(not a number)")
    return value


def bounded_utc(value: datetime) -> datetime:
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is outside the supported range (1970-01-01 to 2200-01-01 UTC)") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("is outside the supported range (1970-01-01 to 2200-01-01 UTC)")
    return utc

ConsentValue = Literal["granted", "denied", "pending"]


class ConsentUpdate(BaseModel):
    """A shopper's consent by purpose; a purpose left out is not changed."""

    model_config = ConfigDict(extra="forbid")
    personalisation: ConsentValue | None = Field(None, description="events stored under the shopper's id, "
                                                                   "online state, training, personal rails")
    analytics: ConsentValue | None = Field(None, description="the shopper's id in the exposure log")
    experiments: ConsentValue | None = Field(None, description="experiment assignment and the shadow log of "
                                                               "draft rule sets")

    def decided(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

# ---- explicit preferences (the onboarding "style quiz") --------------------------------------------------------
MAX_PREFERENCE_VALUES = 50  # values per preference field (part of the OpenAPI schema, hence a constant)
PREFERENCE_FIELDS = ("categories", "brands", "sizes", "price", "style_tags")
PreferenceValue = Annotated[Text, Field(min_length=1, max_length=256)]


class PriceRange(BaseModel):
    """Inclusive price bounds; either may be omitted."""

    model_config = ConfigDict(extra="forbid")
    min: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)
    max: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds(self) -> "PriceRange":
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        return self


class Preferences(BaseModel):
    """A shopper's explicit preferences. A field left out (or empty) says nothing; values are matched to the
    catalog without regard to case; a value given twice is kept once."""

    model_config = ConfigDict(extra="forbid")
    categories: list[PreferenceValue] = Field(default_factory=list, max_length=MAX_PREFERENCE_VALUES,
                                              description="category path prefixes, e.g. 'Audio > Headphones'")
    brands: list[PreferenceValue] = Field(default_factory=list, max_length=MAX_PREFERENCE_VALUES)
    sizes: list[Annotated[Text, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=MAX_PREFERENCE_VALUES,
        description="sizes that fit, compared with the items' size attributes (preferences.size_attributes)")
    price: PriceRange | None = Field(None, description="the price range the shopper shops in")
    style_tags: list[PreferenceValue] = Field(default_factory=list, max_length=MAX_PREFERENCE_VALUES,
                                              description="compared with the items' tags")

    @field_validator("categories", "brands", "sizes", "style_tags")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        out: dict[str, str] = {}
        for i, v in enumerate(values):
            v = " > ".join(p.strip() for p in v.split(">")) if ">" in v else v.strip()
            if not v or any(not p for p in v.split(" > ")):
                raise ValueError(f"value {i} is blank (or has a blank category level)")
            out.setdefault(v.casefold(), v)
        return list(out.values())

    def is_empty(self) -> bool:
        return not (self.categories or self.brands or self.sizes or self.style_tags or self.price is not None)


EventTypeName = Literal[
    "product_viewed", "add_to_cart", "remove_from_cart", "purchase_completed", "search", "recommendation_clicked",
    "wishlist_added", "wishlist_removed"
]


class EventType(IntEnum):
    """Compact code of an event type, as stored in arrays and the event store."""

    product_viewed = 0
    add_to_cart = 1
    remove_from_cart = 2
    purchase_completed = 3
    search = 4
    recommendation_clicked = 5
    wishlist_added = 6  # codes are stored: new types only ever append (old rows stay valid)
    wishlist_removed = 7


ITEM_EVENTS = {EventType.product_viewed, EventType.add_to_cart, EventType.remove_from_cart,
               EventType.purchase_completed, EventType.recommendation_clicked, EventType.wishlist_added,
               EventType.wishlist_removed}


class EventContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: Text | None = Field(None, max_length=64)
    placement: Text | None = Field(None, max_length=64)
    position: int | None = Field(None, ge=0, le=100_000)
    request_id: Text | None = Field(None, max_length=128)
    segments: list[Annotated[Text, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=32, description="the shopper's segments the storefront knows (e.g. vip, student); they "
                                         "place new shoppers in cohorts")


class PurchasedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: Text = Field(min_length=1, max_length=256)
    quantity: int = Field(1, ge=1, le=1_000_000)
    price: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)


class Event(BaseModel):
    """One shopper action, as the storefront sends it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["user_id"]}, {"required": ["session_id"]}]})

    event_id: Text = Field(min_length=1, max_length=128, description="client idempotency key")
    type: EventTypeName
    user_id: Text | None = Field(None, min_length=1, max_length=256)
    session_id: Text | None = Field(None, min_length=1, max_length=256)
    item_id: Text | None = Field(None, min_length=1, max_length=256)
    items: list[PurchasedItem] | None = Field(None, max_length=500)
    order_id: Text | None = Field(None, max_length=128)
    timestamp: datetime = Field(description="ISO 8601 with a UTC offset, between 1970 and 2200",
                                json_schema_extra={"pattern": TIME_PATTERN})
    context: EventContext = EventContext()
    properties: JSONObject = Field(default_factory=dict, description=f"free-form JSON (at most {MAX_JSON_DEPTH} "
                                                                     "levels deep, 64-bit integers, finite numbers)")
    consent: ConsentUpdate | None = Field(None, description="the shopper's consent as the storefront knows it now "
                                                            "(applied before this event is stored)")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _no_number(cls, value: Any) -> Any:
        return strict_time(value)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a UTC offset, e.g. 2026-11-24T10:00:00Z")
        return bounded_utc(value)

    @model_validator(mode="after")
    def _shape(self) -> "Event":
        if self.user_id is None and self.session_id is None:
            raise ValueError("user_id: an event needs a user_id or a session_id")
        t = self.type
        if t == "purchase_completed":
            if not self.items and not self.item_id:
                raise ValueError("items: purchase_completed needs items (or item_id)")
        elif t == "search":
            query = self.properties.get("query")
            if not isinstance(query, str) or not query.strip():
                raise ValueError("properties.query: search needs properties.query (a non-empty string)")
            results = self.properties.get("results")
            if results is not None and (not isinstance(results, list) or len(results) > MAX_SEARCH_RESULTS or not all(
                    isinstance(x, str) and 0 < len(x) <= 256 for x in results)):
                raise ValueError(f"properties.results: the result item ids shown, best first (a list of at most "
                                 f"{MAX_SEARCH_RESULTS:,} ids of 1-256 characters)")
        elif not self.item_id:
            raise ValueError(f"item_id: {t} needs item_id")
        if self.items and t != "purchase_completed":
            raise ValueError("items: items is only allowed on purchase_completed")
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

    id: Text = Field(min_length=1, max_length=256)
    title: Text = Field("", max_length=MAX_TITLE_CHARS, description="any Unicode text (may be empty: an item "
                                                                     "without text is served from its other fields)")
    description: Text = Field("", max_length=MAX_DESCRIPTION_CHARS, description="any Unicode text, stored whole")
    category: list[Annotated[Text, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, description="category path, root first", max_length=16)
    brand: Text | None = Field(None, max_length=256)
    price: float | None = Field(None, gt=0, le=1e12, description="selling price; must be positive")
    cost: float | None = Field(None, ge=0, le=1e12, description="unit cost, for margin")
    stock: int | None = Field(None, ge=0, le=10**12, description="units in stock; None means not tracked")
    attributes: JSONObject = Field(default_factory=dict, description=f"free-form JSON: any value, nested objects "
                                                                     "and lists of objects included, stored as "
                                                                     f"given (at most {MAX_JSON_DEPTH} levels deep, "
                                                                     "64-bit integers, finite numbers)")
    tags: list[Annotated[Text, Field(max_length=256)]] = Field(default_factory=list, max_length=256)
    created_at: datetime | None = Field(None, description="ISO 8601 (UTC when no offset), between 1970 and 2200",
                                        json_schema_extra={"pattern": TIME_PATTERN})
    available: bool = True

    @field_validator("price", "cost")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _no_number(cls, value: Any) -> Any:
        return strict_time(value)

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return None if value is None else bounded_utc(value)

    @model_validator(mode="after")
    def _cost_vs_price(self) -> "Item":
        if self.cost is not None and self.price is None:
            raise ValueError("price: cost given without price")
        return self

    @classmethod
    def stored(cls, doc: dict[str, Any]) -> "Item":
        """An item read back from a store, which holds only what validation let in (``model_dump(mode="json")`` of
        a validated item): built without validating it again. A model load reads the whole catalog; validating
        12k items again took 0.8 s of the GIL, stalling the requests served meanwhile."""
        known = cls.__pydantic_fields__
        fields = {k: v for k, v in doc.items() if k in known}
        if isinstance(fields.get("created_at"), str):
            fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        for name in ("price", "cost"):  # a JSON number may come back as an integer (PostgreSQL's jsonb)
            if isinstance(fields.get(name), int):
                fields[name] = float(fields[name])
        return cls.model_construct(**fields)

    @property
    def margin(self) -> float | None:
        if self.price is None or self.cost is None:
            return None
        return (self.price - self.cost) / self.price

    @property
    def in_stock(self) -> bool:
        return self.available and (self.stock is None or self.stock > 0)
