"""The HTTP contract: request and response bodies as pydantic models (they make the OpenAPI document, from which
clients are generated and which the schemathesis run checks every answer against), and the shared error shape.

Every error answer is ``ErrorBody``: ``detail`` (one sentence) and, when fields are at fault, ``errors`` naming
each ``field`` (or, for rule sets, the JSON ``path``), the batch ``index`` when it is about one element, and the
``reason``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from shelfwise.domain import ConsentValue, Item, Preferences, PriceRange, Text
from shelfwise.request import SLOT_REASONS, Filters


class FieldError(BaseModel):
    index: int | None = Field(None, description="position in the batch, when the error is about one element")
    field: str | None = Field(None, description="the field (dotted path) at fault")
    path: str | None = Field(None, description="rule sets: the JSON path at fault, e.g. rules[2].action.slot")
    reason: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[FieldError] | None = None


class BadBody(ValueError):
    """The request body is not usable JSON: answered 422 naming the body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


_LONG_NUMBER = re.compile(rb"\d{19}")  # orjson turns integers beyond 64 bits into floats: those go to json


async def read_json(request: Request) -> Any:
    """The body as JSON, exactly (integers are not rounded; NaN/Infinity are refused). Parsed by orjson (several
    times faster: a re-rank's 200 ids), unless a run of 19 digits could be an integer it would round; whatever it
    refuses (NaN, ``1e400``, a lone surrogate, UTF-16...) the standard parser decides, as before."""
    raw = await request.body()
    if not raw.strip():
        raise BadBody("a JSON body is required")
    if not _LONG_NUMBER.search(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadBody("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise BadBody("the body must be UTF-8 encoded JSON") from None
    except ValueError as e:
        raise BadBody(f"invalid JSON: {e}") from None


def short(value: str, n: int = 80) -> str:
    """An id as shown in messages and logs: never more than ``n`` characters of it."""
    return value if len(value) <= n else value[:n] + f"… ({len(value)} characters)"


def schema_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body (for routes that parse their body themselves, to keep
    partial-batch semantics and exact error paths)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


# ---- health -----------------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class LiveModel(BaseModel):
    version: str
    sources: list[str] = Field(description="the candidate sources the model was trained with")
    ranker: bool = Field(description="a learned ranker re-orders the homepage")
    full: bool = Field(description="every default source (false: the quick first model of `shelfwise run`)")
    trained_until: float = Field(description="unix time of the newest event it was trained on")


class LiveContent(BaseModel):
    encoded: int = Field(description="items encoded for the content source since the model was loaded (added or "
                                     "changed after its training)")
    pending: bool = Field(description="catalog upserts still waiting for the encoder")
    errors: int = Field(description="encoder batches that failed (their items are not retrievable by content)")
    last_error: str | None = None


class TrainingRun(BaseModel):
    state: Literal["running", "done", "failed"]
    what: str | None = None
    started_at: float | None = None
    expected_s: float | None = Field(None, description="forecast wall time of the run")
    finished_at: float | None = None
    version: str | None = Field(None, description="the version it published")
    error: str | None = None


class Ready(BaseModel):
    status: Literal["ready", "starting"]
    model_version: str | None = None
    trained: bool | None = None
    model: LiveModel | None = None
    content: LiveContent | None = Field(None, description="the content source's background encoder (none when "
                                                          "the model has no content source)")
    training: TrainingRun | None = Field(None, description="the last training run started on this model store")
    degraded: dict[str, dict[str, Any]] = Field(default_factory=dict, description="circuit breakers that are open "
                                                "or probing (a backend or a part of the request path being left "
                                                "out), with their last error; empty when everything answers")


# ---- events -----------------------------------------------------------------------------------------------------
class EventsResult(BaseModel):
    stored: int = Field(description="events stored (or queued on the stream) now")
    duplicates: int = Field(description="events already stored earlier (same event_id)")
    duplicate_ids: list[str]
    unknown_items: list[str] = Field(description="item ids not in the catalog (the events are stored)")
    invalid: int = Field(description="events rejected (see errors); the others of the batch were stored")
    withheld: int = Field(0, description="events not stored under any id: the shopper has no personalisation "
                                         "consent (at most anonymous per-item counts are kept)")
    detail: str | None = None
    errors: list[FieldError] | None = None


# ---- catalog ----------------------------------------------------------------------------------------------------
class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Item] = Field(max_length=10_000)


class ItemsUpserted(BaseModel):
    upserted: int


# an item as read back: its fields plus the computed margin (Item's ``margin`` is a property, hence a new model)
ItemView = create_model("ItemView", **{name: (f.annotation, f) for name, f in Item.model_fields.items()},
                        margin=(float | None, Field(None, description="(price - cost) / price")))


# ---- recommendations --------------------------------------------------------------------------------------------
class RecommendedItem(BaseModel):
    item_id: str
    score: float
    sources: list[str] = Field(description="candidate sources that proposed the item, strongest first, then "
                                           "'preferences' when it matches the shopper's stated preferences "
                                           "('fallback' when nothing did)")
    reason: Literal[SLOT_REASONS] = Field(  # type: ignore[valid-type]
        description="why the item is in this slot: evidence (a source scored it from this shopper's history or "
                    "this page's / cart's items), preference (it matches the shopper's stated preferences), "
                    "cohort (the best of the shopper's cohort: device, segments, entry; a new shopper), popular "
                    "(popularity only: best sellers overall or of the category), pinned or reserved (a "
                    "merchandising rule), exploration (a new item shown so it gathers feedback: models.explore)")
    fallback: bool = Field(description="nothing about this shopper or item went into this slot: no source's evidence, "
                                       "no stated preference (cohort and popular slots, and an exploration slot "
                                       "drawn without a content match)")
    explanation: dict[str, Any] | None = None


class RecommendationAnswer(BaseModel):
    request_id: str
    placement: str
    model_version: str = Field(description="the model version that computed this answer")
    rulesets: str = Field("", description="the live rule set versions applied (\"id@version,...\")")
    experiments: list[dict[str, str]] = Field(default_factory=list, description="the experiment variants that "
                                                                                "served it: [{experiment, variant}]")
    fallback: bool = Field(description="nothing about this shopper or item went into the rail: every slot is a "
                                       "fallback (an empty rail too)")
    degraded: list[str] = Field(default_factory=list, description="what this answer was computed without (a "
                                "candidate source, the learned ranker, the shopper's recent events, the current "
                                "model) and why, while a backend or model part is down or slow; empty when whole")
    items: list[RecommendedItem]
    explanation: dict[str, Any] | None = None
    detail: str | None = Field(None, description="a note on the answer: 'no servable item matches the filters' when "
                                                 "filters left nothing to show")


# ---- request-time filters and re-ranking -------------------------------------------------------------------------
MAX_RERANK_ITEMS = 1_000
MAX_FILTER_VALUES = 50
FilterValue = Annotated[Text, Field(min_length=1, max_length=256)]
AttributeName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\u0000:]+$")]


class CatalogFilters(BaseModel):
    """Request-time filters on catalog fields: every field given must match, any value within a field. Items
    without a value for a filtered field (no brand, no price, no such attribute) do not match."""

    model_config = ConfigDict(extra="forbid")
    categories: list[FilterValue] = Field(default_factory=list, max_length=MAX_FILTER_VALUES,
                                          description="category path prefixes, e.g. 'Audio > Headphones'")
    brands: list[FilterValue] = Field(default_factory=list, max_length=MAX_FILTER_VALUES,
                                      description="brand names (without regard to case)")
    price: PriceRange | None = Field(None, description="inclusive price range (items without a price do not match)")
    attributes: dict[AttributeName, list[FilterValue]] = Field(
        default_factory=dict, max_length=16,
        description="attribute name -> values, e.g. {\"color\": [\"Black\", \"Blue\"], \"size\": [\"M\"]}: the "
                    "item's attribute holds one of the values (or is a list holding one), without regard to case")
    in_stock: bool = Field(False, description="only items whose stock is tracked and above 0 (out-of-stock items are "
                                              "never shown; this also leaves out items whose stock is not tracked)")
    min_stock: int | None = Field(None, ge=1, le=10**12, description="only items with at least this many units in "
                                                                     "stock (tracked)")
    new_days: float | None = Field(None, gt=0, le=36_500, allow_inf_nan=False,
                                   description="only items that came to the shop within this many days (catalog "
                                               "created_at, else when Shelfwise first saw them)")

    @field_validator("attributes")
    @classmethod
    def _values(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in value.items():
            if not values:
                raise ValueError(f"attribute {name[:64]!r} needs at least one value")
            if len(values) > MAX_FILTER_VALUES:
                raise ValueError(f"attribute {name[:64]!r} has more than {MAX_FILTER_VALUES} values")
        return value

    def filters(self) -> Filters:
        stock = max(self.min_stock or 0, 1 if self.in_stock else 0) or None
        return Filters(categories=tuple(self.categories), brands=tuple(self.brands),
                       price_min=self.price.min if self.price else None, price_max=self.price.max if self.price else None,
                       attributes=tuple((k, tuple(v)) for k, v in sorted(self.attributes.items())),
                       min_stock=stock, new_days=self.new_days)


class RailQuery(BaseModel):
    """The query of ``GET /v1/recommendations/{placement}``, validated in one pass (``from_query``): a rail is the
    hottest route, and one model validation costs a fraction of a per-parameter dependency resolution. Repeated
    parameters (``cart``, ``exclude``, ``segment``, the list filters) are lists; an unknown parameter is ignored
    (a storefront may send its own tracking parameters)."""

    model_config = ConfigDict(extra="ignore")
    user_id: Annotated[Text, Field(min_length=1, max_length=256)] | None = None
    session_id: Annotated[Text, Field(min_length=1, max_length=256)] | None = None
    item_id: Annotated[Text, Field(min_length=1, max_length=256)] | None = None
    cart: list[Annotated[Text, Field(max_length=4096)]] = Field(default_factory=list, max_length=200, description=(
        "the cart's item ids (repeat, or comma-separated)"))
    k: int | None = Field(None, ge=1, le=1000, description="how many items (default: the placement's k)")
    exclude: list[Annotated[Text, Field(max_length=4096)]] = Field(default_factory=list, max_length=200,
                                                                   description="item ids never to show (repeat, or "
                                                                               "comma-separated)")
    category: Annotated[Text, Field(max_length=1024)] | None = None
    device: Annotated[Text, Field(max_length=64)] | None = None
    segment: list[Annotated[Text, Field(max_length=4096)]] = Field(default_factory=list, max_length=200,
                                                                   description="the shopper's segments (repeat, or "
                                                                               "comma-separated)")
    categories: list[FilterValue] = Field(default_factory=list, max_length=MAX_FILTER_VALUES,
                                          description="filter: category path prefixes (repeat; any)")
    brand: list[FilterValue] = Field(default_factory=list, max_length=MAX_FILTER_VALUES,
                                     description="filter: brands (repeat; any)")
    price_min: float | None = Field(None, ge=0, le=1e12, description="filter: lowest price")
    price_max: float | None = Field(None, ge=0, le=1e12, description="filter: highest price")
    attr: list[Annotated[Text, Field(min_length=3, max_length=330)]] = Field(
        default_factory=list, max_length=MAX_FILTER_VALUES,
        description="filter: name:value (repeat; values of one name: any, names: all), e.g. "
                    "attr=color:Black&attr=color:Blue")
    in_stock: bool = Field(False, description="filter: stock tracked and above 0")
    min_stock: int | None = Field(None, ge=1, le=10**12, description="filter: at least this stock")
    new_days: float | None = Field(None, gt=0, le=36_500, description="filter: new within N days")
    explain: bool = Field(False, description="add each slot's explanation (features, scores, rules)")

    @classmethod
    def from_query(cls, params: Any, max_k: int) -> "RailQuery":
        """Validated from a request's query parameters; a bad one raises ``RequestValidationError`` naming it
        (``query.<name>``), as FastAPI's own parameters do."""
        raw: dict[str, Any] = {}
        for key, value in params.multi_items():
            if key in _RAIL_LISTS:
                raw.setdefault(key, []).append(value)
            else:
                raw[key] = value  # the last of a repeated single parameter, as FastAPI reads it
        try:
            got = cls.model_validate(raw)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None
        if got.k is not None and got.k > max_k:
            raise RequestValidationError([{"loc": ("query", "k"), "msg": f"Input should be less than or equal to "
                                                                        f"{max_k} (api.max_k)", "type": "less_than_equal",
                                           "input": got.k}])
        return got

    @classmethod
    def openapi_parameters(cls, max_k: int) -> list[dict[str, Any]]:
        """The OpenAPI description of the query parameters (the route reads them itself, so FastAPI cannot)."""
        schema = cls.model_json_schema()
        out = []
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            if name == "k":
                prop["anyOf"] = [{**prop["anyOf"][0], "maximum": max_k}, prop["anyOf"][1]]
            param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": prop}
            if description:
                param["description"] = description
            out.append(param)
        return out


_RAIL_LISTS = frozenset(name for name, f in RailQuery.model_fields.items() if getattr(f.annotation, "__origin__", None)
                        is list)


class RerankRequest(BaseModel):
    """The shop's own list (its search engine's results, a category page), best first, to re-rank for a shopper."""

    model_config = ConfigDict(extra="forbid")
    items: list[Annotated[Text, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_RERANK_ITEMS, description="the item ids in the shop's order, best first "
                                                               f"(1 to {MAX_RERANK_ITEMS:,}, each once)")
    placement: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        "search", description="a placement of kind rerank (models.placements): search or category by default")
    user_id: Text | None = Field(None, min_length=1, max_length=256)
    session_id: Text | None = Field(None, min_length=1, max_length=256)
    query: Text | None = Field(None, max_length=1024, description="the shopper's search query (query-item text "
                                                                  "match; the placement's query_weight)")
    personalization_impact: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False,
        description="how far the personal order moves the shop's: 0 keeps the shop's order (after stock, filters and "
                    "rules), 1 is the personal order alone; in between, a blend of the two ranks (default: the "
                    "placement's impact setting: 1 for search, whose ranker weighs the shop's position itself; 0.75 "
                    "for category)")
    k: int | None = Field(None, ge=1, le=MAX_RERANK_ITEMS, description="answer the best k (default: the placement's k, "
                                                                      "else every item kept)")
    filters: CatalogFilters | None = None
    exclude: list[Annotated[Text, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=200)
    device: Text | None = Field(None, max_length=64)
    segments: list[Annotated[Text, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=32)
    explain: bool = False

    @field_validator("items")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for i, x in enumerate(value):
            if x in seen:
                raise ValueError(f"item {x[:80]!r} is given twice (positions {seen[x]} and {i}); send each id once")
            seen[x] = i
        return value

    @model_validator(mode="after")
    def _one_shopper(self) -> "RerankRequest":
        if self.user_id is not None and self.session_id is not None:
            raise ValueError("user_id: give user_id or session_id, not both")
        return self


    @classmethod
    def from_payload(cls, payload: Any) -> "RerankRequest":
        """Validated in one pass over the list: the ids (up to 1,000, the bulk of the body) are checked by plain
        Python — each a string of 1 to 256 characters, no NUL, valid Unicode, each once, as the model's field
        says — and the rest of the body by the model (120 µs → 25 µs for 200 ids). A list those checks refuse,
        or a body that is not an object with such a list, goes through the whole model, whose errors name the
        field and position (``ValidationError``, as ``model_validate`` raises)."""
        ids = payload.get("items") if type(payload) is dict else None
        if type(ids) is not list or not _plain_ids(ids):
            return cls.model_validate(payload)
        got = cls.model_validate({**payload, "items": ["-"]})  # every other field, and the whole-body rules
        got.items = ids
        return got


def _plain_ids(ids: list[Any]) -> bool:
    """Whether a rerank list passes ``RerankRequest.items`` as it is: 1 to MAX_RERANK_ITEMS distinct strings of 1
    to 256 characters without NUL or lone surrogates (``domain.clean_text``)."""
    if not 1 <= len(ids) <= MAX_RERANK_ITEMS or not all(type(x) is str for x in ids) or len(set(ids)) != len(ids):
        return False
    lengths = list(map(len, ids))
    if min(lengths) < 1 or max(lengths) > 256:
        return False
    joined = "\n".join(ids)
    if "\x00" in joined:
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RerankAnswer(RecommendationAnswer):
    unknown_items: list[str] = Field(default_factory=list, description="ids of the list unknown to the catalog and "
                                                                       "the model: left out of the answer")
    removed: list[str] = Field(default_factory=list, description="ids of the list left out although known: not "
                                                                 "servable (unavailable, out of stock), excluded, "
                                                                 "filtered out or dropped by a rule")


# ---- privacy ----------------------------------------------------------------------------------------------------
class ErasurePlace(BaseModel):
    place: str
    backend: str
    removed: int = Field(description="rows, keys or entries removed there")
    detail: str = ""


class ErasureReceipt(BaseModel):
    receipt_id: str = Field(description="fetch it again with GET /v1/erasures/{receipt_id}")
    subject: Literal["user", "session"]
    reason: str
    pseudonymized: bool
    requested_at: str
    completed_at: str
    removed_total: int
    places: list[ErasurePlace]


class ConsentPurposes(BaseModel):
    personalisation: ConsentValue
    analytics: ConsentValue
    experiments: ConsentValue


class ConsentView(BaseModel):
    purposes: ConsentPurposes = Field(description="effective consent (a purpose never decided takes "
                                                  "privacy.default_consent)")
    decided: list[str] = Field(description="purposes the shopper decided")
    updated_at: float | None = None
    source: Literal["api", "event", "default"]


class PreferencesView(BaseModel):
    preferences: Preferences = Field(description="as stored: values trimmed, each kept once")
    updated_at: float = Field(description="unix time they were stored")


class AnonymousCount(BaseModel):
    day: str
    item_id: str
    type: str
    count: int


class AnonymousCounts(BaseModel):
    days: int
    counts: list[AnonymousCount]


# ---- rule sets --------------------------------------------------------------------------------------------------
class RuleSetVersionView(BaseModel):
    id: str
    version: int
    status: Literal["draft", "published", "retired"]
    shadow: bool
    author: str
    comment: str
    created_at: float
    published_at: float | None = None
    based_on: int | None = None
    document: dict[str, Any] | None = None
    rules: int | None = None
    live_version: int | None = None
    shadow_version: int | None = None
    latest_version: int | None = None
    warnings: list[FieldError] | None = Field(None, description="saved or published: what is probably wrong — ids, "
                                                                "brands, categories the catalog lacks, pins that "
                                                                "cannot apply now (unknown to the serving model, "
                                                                "unavailable, out of stock)")


class RuleSetStateView(BaseModel):
    id: str
    live_version: int | None = None
    shadow_version: int | None = None
    shadow_share: float | None = None
    latest_version: int
    created_at: float
    updated_at: float


class RuleSetList(BaseModel):
    rulesets: list[RuleSetStateView]


class DryRun(BaseModel):
    valid: bool
    rules: int
    warnings: list[FieldError]


class AuditView(BaseModel):
    ruleset_id: str
    version: int | None = None
    action: str
    author: str
    comment: str
    ts: float


class RuleSetVersions(BaseModel):
    id: str
    versions: list[RuleSetVersionView]
    audit: list[AuditView]


class ShadowReport(BaseModel):
    model_config = ConfigDict(extra="allow")
    ruleset: str
    shadow_version: int | None = None
    requests: int
    shadow_active: bool | None = None
    live_version: int | None = None
    warnings: list[FieldError] | None = Field(None, description="pins of the version that cannot apply now: items "
                                                                "the serving model does not know, unavailable or "
                                                                "out of stock")


class ZeroImpressionItem(BaseModel):
    item_id: str
    title: str
    category: str
    brand: str | None = None
    price: float | None = None
    stock: int | None = None
    available: bool


class ZeroImpressions(BaseModel):
    window_hours: float
    since: float
    now: float
    log_started_at: float | None = None
    catalog_items: int
    servable_items: int
    shown_items: int
    zero_impression_items: int
    share: float
    servable_only: bool
    items: list[ZeroImpressionItem]
    warning: str | None = None
