"""The rule language: a rule set is a JSON document validated by these models (unknown keys are errors).

A rule = *when* (request conditions) + *match* (which items) + one *action*::

    {"id": "acc-slot", "priority": 10,
     "when": {"placements": ["homepage"], "devices": ["mobile"], "segments": ["vip"],
              "start": "2026-11-27T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
     "match": {"categories": ["Accessories", "Replacement Parts"], "margin": {"min": 0.4}},
     "action": {"type": "slot", "position": 4}}

Actions: ``pin`` (items at a slot), ``boost`` / ``bury`` (multiply or add to the score), ``block`` (never shown),
``filter`` (keep only matching items), ``margin_floor`` (drop or bury items below a margin), ``cap`` (at most n
per category / brand) and ``slot`` (reserve positions for the best matching items). ``parse_ruleset`` returns
errors as ``{"path": "rules[2].action.slot", "reason": ...}``.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Iterable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from shelfwise.domain import check_json

ACTIONS = ("pin", "boost", "bury", "block", "filter", "margin_floor", "cap", "slot")
MAX_POSITION = 200  # = the API's largest k

RuleId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                              description="letters, digits and _ . : - (starting with a letter or digit)")]
Name = Annotated[str, Field(min_length=1, max_length=512)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise ValueError(f"must be a string, number or boolean, not {type(value).__name__}")


class Range(_Doc):
    """Inclusive bounds; either may be omitted."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "Range":
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        for v in (self.min, self.max):
            if v is not None and not math.isfinite(v):
                raise ValueError("bounds must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class AttributeTest(_Doc):
    """A test of one catalog attribute. Shorthands: ``"Black"`` = equals, ``["Black", "White"]`` = in."""

    equals: Any = None
    in_: list[Any] | None = Field(None, alias="in", min_length=1)
    contains: Any = Field(None, description="the attribute is a list holding this value")
    min: float | None = None
    max: float | None = None
    exists: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"in": value}
        if not isinstance(value, dict):
            return {"equals": value}
        return value

    @model_validator(mode="after")
    def _one(self) -> "AttributeTest":
        if self.equals is not None:
            _scalar(self.equals)
        if self.contains is not None:
            _scalar(self.contains)
        for v in self.in_ or []:
            _scalar(v)
        kinds = {("range" if k in ("min", "max") else k.rstrip("_")) for k in
                 ("equals", "in_", "contains", "min", "max", "exists") if getattr(self, k) is not None}
        if not kinds:
            raise ValueError("give one of equals, in, contains, min/max, exists")
        if len(kinds) > 1:
            raise ValueError(f"give one kind of test, got {', '.join(sorted(kinds))}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ItemMatch(_Doc):
    """Which items a rule is about. Fields are combined with AND; the values of a list field with OR."""

    ids: list[Name] | None = Field(None, min_length=1, max_length=10_000)
    categories: list[Name] | None = Field(None, min_length=1, description="category path prefixes, 'A > B'")
    brands: list[Name] | None = Field(None, min_length=1)
    tags: list[Name] | None = Field(None, min_length=1, description="any of these tags")
    attributes: dict[Name, AttributeTest] | None = Field(None, min_length=1)
    price: Range | None = None
    margin: Range | None = Field(None, description="gross margin as a fraction, e.g. {'min': 0.4}")
    stock: Range | None = None
    new_within_days: float | None = Field(None, gt=0, description="created at most this many days ago")
    not_: ItemMatch | None = Field(None, alias="not", description="items matching this are excluded")

    @field_validator("margin")
    @classmethod
    def _fraction(cls, value: Range | None) -> Range | None:
        for v in (value.min, value.max) if value else ():
            if v is not None and not -1 <= v <= 1:
                raise ValueError(f"margin is a fraction of the price (0.4 = 40%), got {v}")
        return value

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in type(self).model_fields)

    def uses_catalog(self) -> bool:
        """True when the test needs catalog fields beyond the item table (tags, attributes)."""
        return bool(self.tags or self.attributes) or (self.not_ is not None and self.not_.uses_catalog())


class When(_Doc):
    """Request conditions (all must hold). A list field holds when the request has any of its values."""

    placements: list[Name] | None = Field(None, min_length=1)
    devices: list[Name] | None = Field(None, min_length=1, description="e.g. mobile, desktop, tablet")
    segments: list[Name] | None = Field(None, min_length=1, description="shopper segments (any of)")
    exclude_segments: list[Name] | None = Field(None, min_length=1)
    start: datetime | None = Field(None, description="campaign start (inclusive), ISO 8601 with offset")
    end: datetime | None = Field(None, description="campaign end (exclusive)")

    @field_validator("placements")
    @classmethod
    def _known_placement(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        known = (info.context or {}).get("placements")
        if value and known:
            bad = [p for p in value if p not in known]
            if bad:
                raise ValueError(f"unknown placement(s) {', '.join(map(repr, bad))}; known: {', '.join(sorted(known))}")
        return value

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-11-27T00:00:00Z")
        return value.astimezone(timezone.utc) if value is not None else None

    @model_validator(mode="after")
    def _window(self) -> "When":
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        return self


# ---- actions ------------------------------------------------------------------------------------------
class Pin(_Doc):
    """Show these items from position ``slot`` (1 = first) on, in this order; unservable ones are skipped."""

    type: Literal["pin"]
    items: list[Name] = Field(min_length=1, max_length=50)
    slot: int = Field(1, ge=1, le=MAX_POSITION)

    @field_validator("items")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("an item is listed twice")
        return value


class Boost(_Doc):
    """Raise the score of matching items: ``multiply`` (> 1) first, then ``add`` (> 0)."""

    type: Literal["boost"]
    multiply: float | None = Field(None, gt=1, le=1000)
    add: float | None = Field(None, gt=0, le=1000)

    @model_validator(mode="after")
    def _some(self) -> "Boost":
        if self.multiply is None and self.add is None:
            raise ValueError("a boost needs multiply (> 1) or add (> 0)")
        return self


class Bury(_Doc):
    """Lower the score of matching items: ``multiply`` (between 0 and 1) first, then ``subtract`` (> 0)."""

    type: Literal["bury"]
    multiply: float | None = Field(None, gt=0, lt=1)
    subtract: float | None = Field(None, gt=0, le=1000)

    @model_validator(mode="after")
    def _some(self) -> "Bury":
        if self.multiply is None and self.subtract is None:
            raise ValueError("a bury needs multiply (between 0 and 1) or subtract (> 0)")
        return self


class Block(_Doc):
    """Matching items are never shown (overrides every other rule, pins included)."""

    type: Literal["block"]


class Filter(_Doc):
    """Keep only matching items (a higher-priority pin may still show another item)."""

    type: Literal["filter"]


class MarginFloor(_Doc):
    """Matching items (all when no match) with a margin below ``min_margin``: dropped, or their score multiplied."""

    type: Literal["margin_floor"]
    min_margin: float = Field(ge=-1, lt=1, description="fraction of the price, e.g. 0.15")
    mode: Literal["drop", "bury"] = "drop"
    multiply: float = Field(0.5, gt=0, lt=1, description="mode=bury: the score factor")
    unknown: Literal["keep", "drop"] = Field("keep", description="items whose margin is unknown")


class Cap(_Doc):
    """At most ``max`` items per category / root category / brand (among matching items, or all)."""

    type: Literal["cap"]
    by: Literal["category", "top_category", "brand"]
    max: int = Field(ge=1, le=MAX_POSITION)
    strict: bool = Field(False, description="leave slots empty rather than exceed the cap when nothing else is "
                                            "left (default: the cap gives way so the rail is full)")


class Slot(_Doc):
    """Reserve ``count`` positions from ``position`` on for the best-scoring matching items."""

    type: Literal["slot"]
    position: int = Field(ge=1, le=MAX_POSITION)
    count: int = Field(1, ge=1, le=50)


Action = Annotated[Union[Pin, Boost, Bury, Block, Filter, MarginFloor, Cap, Slot], Field(discriminator="type")]
NEEDS_MATCH = {"boost", "bury", "block", "filter", "slot"}


class Rule(_Doc):
    id: RuleId
    description: str = Field("", max_length=2000)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="higher wins contested slots and pins")
    enabled: bool = True
    when: When = When()
    match: ItemMatch | None = None
    action: Action

    def problems(self) -> list[tuple[str, str]]:
        """(sub-path, reason) of combinations the field types cannot express (``parse_ruleset`` reports them)."""
        kind = self.action.type
        if kind == "pin" and self.match is not None:
            return [("match", "a pin names its items in action.items; to give a slot to the best item matching a "
                              "condition, use a slot action")]
        if kind in NEEDS_MATCH and (self.match is None or self.match.is_empty()):
            return [("match", f"a {kind} rule needs a non-empty match (ids, categories, brands, ...)")]
        return []


class RuleSet(_Doc):
    id: RuleId | None = Field(None, description="optional in the body; the URL names the rule set")
    description: str = Field("", max_length=2000)
    enabled: bool = True
    rules: list[Rule] = Field(default_factory=list, max_length=2000)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=False)


# ---- parsing with precise errors ----------------------------------------------------------------------
class RuleSetInvalid(ValueError):
    """A rule set document failed validation; ``errors`` holds ``{"path", "reason"}`` dicts."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(document)'}: {e['reason']}" for e in errors))


def json_path(loc: Iterable[Any]) -> str:
    """``('rules', 2, 'action', 'pin', 'slot')`` → ``rules[2].action.slot`` (the union tag is dropped)."""
    out = ""
    prev: Any = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif prev == "action" and part in ACTIONS:
            pass
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out


def _reason(err: dict[str, Any]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown field (not part of the rule language)"
    if err["type"] == "missing":
        return "required field is missing"
    return msg


def parse_ruleset(doc: Any, placements: Iterable[str] | None = None) -> RuleSet:
    """Validate a rule set document; raises ``RuleSetInvalid`` naming the JSON path and reason of each problem."""
    if not isinstance(doc, dict):
        raise RuleSetInvalid([{"path": "", "reason": "a rule set is a JSON object with a 'rules' list"}])
    try:  # storable at all: bounded depth, 64-bit integers, finite numbers, clean text
        check_json(doc)
    except ValueError as e:
        raise RuleSetInvalid([{"path": "", "reason": str(e)}]) from None
    ctx = {"placements": set(placements)} if placements is not None else None
    try:
        rs = RuleSet.model_validate(doc, context=ctx)
    except ValidationError as exc:
        raise RuleSetInvalid([{"path": json_path(e["loc"]), "reason": _reason(e)}
                              for e in exc.errors(include_url=False)]) from None
    errors = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(rs.rules):
        errors += [{"path": f"rules[{i}].{sub}", "reason": why} for sub, why in rule.problems()]
        if rule.id in seen:
            errors.append({"path": f"rules[{i}].id", "reason": f"duplicate rule id {rule.id!r} "
                                                                f"(first used by rules[{seen[rule.id]}])"})
        seen.setdefault(rule.id, i)
    if errors:
        raise RuleSetInvalid(errors)
    return rs


def lint(rs: RuleSet, known_items: set[str] | None = None, brands: Iterable[str] | None = None,
         categories: Iterable[str] | None = None) -> list[dict[str, str]]:
    """Warnings (the document is valid but probably not what was meant): unknown item ids, brands, categories."""
    out: list[dict[str, str]] = []
    brand_set = set(brands) if brands is not None else None
    cat_list = [c.split(" > ") for c in categories] if categories is not None else None

    def check(m: ItemMatch | None, path: str) -> None:
        if m is None:
            return
        if known_items is not None and m.ids:
            missing = [x for x in m.ids if x not in known_items]
            if missing:
                out.append({"path": f"{path}.ids", "reason": f"{len(missing)} unknown item id(s), e.g. {missing[0]!r}"})
        if brand_set is not None and m.brands:
            for b in m.brands:
                if b not in brand_set:
                    out.append({"path": f"{path}.brands", "reason": f"no catalog item has brand {b!r}"})
        if cat_list is not None and m.categories:
            for c in m.categories:
                want = [p.strip() for p in c.split(">")]
                if not any([p.strip() for p in have][:len(want)] == want for have in cat_list):
                    out.append({"path": f"{path}.categories", "reason": f"no catalog category starts with {c!r}"})
        check(m.not_, f"{path}.not")

    for i, rule in enumerate(rs.rules):
        check(rule.match, f"rules[{i}].match")
        if isinstance(rule.action, Pin) and known_items is not None:
            missing = [x for x in rule.action.items if x not in known_items]
            if missing:
                out.append({"path": f"rules[{i}].action.items",
                            "reason": f"unknown item id(s) {', '.join(map(repr, missing[:5]))} (skipped until they "
                                      "exist)"})
    return out
