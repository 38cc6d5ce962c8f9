"""Compile rule sets over an item table once, so a request only picks its active rules and applies cached vectors.

Compilation turns every rule's match into a boolean item mask (with catalog facts such as brand names, tags
and attributes) and its *when* into cheap request tests. A request's set of active rules is its *signature*;
the combined effect of a signature (a score multiplier and offset vector, the indices to drop, pins, reserved
slots and caps) is computed once and cached, so applying 50 rules to a request costs a handful of vector ops.

Deterministic conflict resolution (also in the README):

* rules are ordered by priority (high first), then rule set id, then position in the document;
* ``block`` wins over everything: a blocked item is never shown, not even when pinned;
* ``filter`` and ``margin_floor`` (drop) remove items; a pin of *strictly higher* priority may still show one;
* score effects compose: multipliers (boost/bury/margin floor bury) multiply, then offsets add up;
* pins and reserved slots claim positions by priority; a claim on a taken position moves to the next free one;
* caps all apply (pins count toward them but are never removed by them).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Container, Sequence

import numpy as np

from shelfwise.domain import Item
from shelfwise.items import ItemTable, category_prefix_mask
from shelfwise.rerank.slots import CapSpec, Constraints, PinSpec, SlotSpec
from shelfwise.rules.schema import AttributeTest, ItemMatch, Rule, RuleSet

NEG = np.iinfo(np.int32).min


@dataclass
class ItemFacts:
    """Catalog fields rules test that the item table does not hold, aligned with it (row i = item ids[i])."""

    brand: np.ndarray  # object: brand name or None
    tags: list[frozenset[str]]
    attributes: list[dict[str, Any]]
    ids: np.ndarray | None = None  # the item ids of the table they were built for
    titles: list[str] = field(default_factory=list)  # (search query features: ranking/query.py)

    @classmethod
    def build(cls, items: ItemTable, catalog: dict[str, Item]) -> "ItemFacts":
        brand, tags, attrs, titles = [], [], [], []
        for iid in items.ids:
            it = catalog.get(str(iid))
            brand.append(it.brand if it else None)
            tags.append(frozenset(it.tags) if it else frozenset())
            attrs.append(it.attributes if it else {})
            titles.append(it.title if it else "")
        return cls(np.array(brand, dtype=object), tags, attrs, items.ids, titles)

    def grown(self, items: ItemTable, added: Sequence[Item]) -> "ItemFacts | None":
        """New facts for ``items`` when it is this table with rows appended (``ItemTable.with_items``), the
        appended rows filled from ``added`` (the items just upserted) — instead of reading the whole catalog again
        (25 s at 1M items); None when ``items`` is another table."""
        n = len(self.attributes)
        if self.ids is None or len(items) <= n or not np.array_equal(items.ids[:n], self.ids):
            return None
        extra = len(items) - n
        out = ItemFacts(np.concatenate([self.brand, np.full(extra, None, dtype=object)]),
                        self.tags + [frozenset()] * extra, self.attributes + [{} for _ in range(extra)], items.ids,
                        self.titles + [""] * extra)
        out.update(items, [it for it in added if items.index.get(it.id, -1) >= n])
        return out

    def update(self, items: ItemTable, changed: Sequence[Item]) -> None:
        for it in changed:
            i = items.index.get(it.id)
            if i is not None:
                self.brand[i], self.tags[i], self.attributes[i] = it.brand, frozenset(it.tags), it.attributes
                if i < len(self.titles):
                    self.titles[i] = it.title


def _attribute_mask(facts: ItemFacts, key: str, test: AttributeTest) -> np.ndarray:
    def ok(v: Any) -> bool:
        if test.exists is not None:
            return (v is not None) == test.exists
        if v is None:
            return False
        if test.equals is not None:
            return v == test.equals
        if test.in_ is not None:
            return v in test.in_ if not isinstance(v, list) else any(x in test.in_ for x in v)
        if test.contains is not None:
            return isinstance(v, list) and test.contains in v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return (test.min is None or v >= test.min) and (test.max is None or v <= test.max)

    return np.fromiter((ok(a.get(key)) for a in facts.attributes), bool, len(facts.attributes))


def _range(values: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        out = np.isfinite(values) | np.isinf(values)
        if lo is not None:
            out &= values >= lo
        if hi is not None:
            out &= values <= hi
    return out


def match_mask(m: ItemMatch | None, items: ItemTable, facts: ItemFacts | None, now: float | None = None) -> np.ndarray:
    """Items a match selects (all when there is no match). ``new_within_days`` counts from ``now`` (ignored
    when None: the caller applies it per request hour)."""
    n = len(items)
    mask = np.ones(n, bool)
    if m is None:
        return mask
    if m.ids is not None:
        sel = np.zeros(n, bool)
        idx = [items.index[x] for x in m.ids if x in items.index]
        sel[idx] = True
        mask &= sel
    if m.categories is not None:
        mask &= category_prefix_mask(items, m.categories)
    if m.brands is not None:
        mask &= np.isin(facts.brand, list(m.brands)) if facts is not None else False
    if m.tags is not None:
        want = set(m.tags)
        mask &= (np.fromiter((bool(t & want) for t in facts.tags), bool, n) if facts is not None else False)
    for key, test in (m.attributes or {}).items():
        mask &= _attribute_mask(facts, key, test) if facts is not None else False
    if m.price is not None:
        mask &= _range(items.price, m.price.min, m.price.max) & np.isfinite(items.price)
    if m.margin is not None:
        mask &= _range(items.margin, m.margin.min, m.margin.max) & np.isfinite(items.margin)
    if m.stock is not None:
        mask &= _range(items.stock, m.stock.min, m.stock.max)
    if m.new_within_days is not None and now is not None:
        with np.errstate(invalid="ignore"):
            mask &= items.created_at >= now - m.new_within_days * 86400.0
    if m.not_ is not None:
        mask &= ~match_mask(m.not_, items, facts, now)
    return mask


def _uses_now(m: ItemMatch | None) -> bool:
    return m is not None and (m.new_within_days is not None or _uses_now(m.not_))


@dataclass
class CompiledRule:
    key: str  # "ruleset/rule"
    rule: Rule
    order: int
    mask: np.ndarray  # bool over items (match without new_within_days)
    placements: frozenset[str] | None
    devices: frozenset[str] | None
    segments: frozenset[str] | None
    exclude_segments: frozenset[str] | None
    start: float
    end: float
    timed: bool  # the match depends on the request time (new_within_days)
    facts: ItemFacts | None = None
    pin_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pin_unknown: tuple[str, ...] = ()  # pinned ids the item table does not know (never shown; explained)
    group: np.ndarray | None = None  # cap: group code per item

    @property
    def kind(self) -> str:
        return self.rule.action.type

    @property
    def conditional(self) -> bool:
        return bool(self.devices or self.segments or self.exclude_segments or math.isfinite(self.start)
                    or math.isfinite(self.end))

    def active(self, req: Any) -> bool:
        if not self.start <= req.now < self.end:
            return False
        if self.devices is not None and req.device not in self.devices:
            return False
        segs = req.segments
        if self.segments is not None and not self.segments.intersection(segs):
            return False
        if self.exclude_segments is not None and self.exclude_segments.intersection(segs):
            return False
        return True

    def mask_at(self, items: ItemTable, now: float) -> np.ndarray:
        if not self.timed:
            return self.mask
        hour = int(now // 3600)
        memo = getattr(self, "_memo", None)  # (hour, mask), swapped atomically
        if memo is None or memo[0] != hour:
            memo = (hour, match_mask(self.rule.match, items, self.facts, hour * 3600.0))
            self._memo = memo
        return memo[1]


@dataclass
class Effects:
    """The combined effect of one signature (a set of active rules) over the item table."""

    rules: tuple[int, ...]
    mult: np.ndarray | None = None
    add: np.ndarray | None = None
    drop: np.ndarray | None = None  # item indices set to -inf (blocked or removed)
    constraints: Constraints = field(default_factory=Constraints)
    unknown_pins: list[tuple[str, str]] = field(default_factory=list)  # (rule, item id) the item table lacks

    @property
    def noop(self) -> bool:
        return self.mult is None and self.add is None and self.drop is None and self.constraints.empty


@dataclass
class LocalEffects:
    """A request's rule effects over its candidates (column j = candidate item ``items[j]``)."""

    mult: np.ndarray | None
    add: np.ndarray | None
    drop: np.ndarray | None  # bool
    constraints: Constraints
    notes: list[str]


UNKNOWN_TO_MODEL = "unknown to the model (not in the catalog, or added after the model was trained)"
EXCLUDED = "excluded for this request (the page's or cart's own item, already bought, an exclude or category filter)"


def pin_problem(table: ItemTable, item_id: str) -> str | None:
    """Why a pinned item cannot be shown to anyone now (unknown to the model, unavailable, out of stock), or None."""
    j = table.index.get(item_id)
    if j is None:
        return UNKNOWN_TO_MODEL
    if not table.available[j]:
        return "unavailable"
    if not table.stock[j] > 0:
        return "out of stock"
    return None


def pin_warnings(rs: RuleSet, table: ItemTable, catalog: Container[str] | None = None) -> list[dict[str, str]]:
    """Rule-set warnings for pins that cannot apply now: items unknown to the model, unavailable or out of stock
    (ids not in ``catalog`` are left to ``lint``, which reports them as unknown)."""
    out = []
    for i, rule in enumerate(rs.rules):
        if rule.enabled and rule.action.type == "pin":
            for x in rule.action.items:
                why = None if catalog is not None and x not in catalog else pin_problem(table, x)
                if why is not None:
                    out.append({"path": f"rules[{i}].action.items", "reason": f"{x!r} cannot be pinned now: {why}"})
    return out


def localize(eff: Effects, items: np.ndarray, table: ItemTable) -> LocalEffects:
    """Gather a signature's effects (over the item ``table``) at one request's candidates (-1 pads); ``notes`` say
    which pinned items are not shown and why."""
    ok = items >= 0
    safe = np.where(ok, items, 0)
    c = eff.constraints
    notes = [f"pin {rule}: item {x!r} not shown: {UNKNOWN_TO_MODEL}" for rule, x in eff.unknown_pins]
    where = {int(j): col for col, j in enumerate(items.tolist()) if j >= 0}
    pins = []
    for p in c.pins:
        local = []
        for j in p.items.tolist():
            if j in where:
                local.append(where[j])
            else:
                x = str(table.ids[j])
                notes.append(f"pin {p.rule}: item {x!r} not shown: {pin_problem(table, x) or EXCLUDED}")
        pins.append(PinSpec(p.rule, np.array(local, np.int64), p.slot, p.priority, p.order))
    local_c = Constraints(
        pins=pins,
        slots=[SlotSpec(s.rule, s.mask[safe] & ok, s.position, s.count, s.priority, s.order) for s in c.slots],
        caps=[CapSpec(cp.rule, np.where(ok, cp.group[safe], -1).astype(np.int32), cp.max,
                      None if cp.scope is None else cp.scope[safe] & ok, cp.strict) for cp in c.caps],
        blocked=None if c.blocked is None else c.blocked[safe] & ok,
        removed=None if c.removed is None else c.removed[safe] & ok,
        removed_priority=None if c.removed_priority is None else c.removed_priority[safe])
    drop = None
    if eff.drop is not None and len(eff.drop):
        hard = np.zeros(len(c.blocked) if c.blocked is not None else len(c.removed), bool)
        hard[eff.drop] = True
        drop = hard[safe] & ok
    return LocalEffects(None if eff.mult is None else eff.mult[safe], None if eff.add is None else eff.add[safe],
                        drop, local_c, notes)


def apply_local(row: np.ndarray, local: LocalEffects) -> np.ndarray | None:
    """Score effects and drops on one candidate row, in place; the pre-drop row when pins need it."""
    if local.mult is not None:
        row *= local.mult
    if local.add is not None:
        row += local.add
    pre = row.copy() if (local.drop is not None and local.constraints.pins) else None
    if local.drop is not None:
        row[local.drop] = -np.inf
    return pre


def _describe(r: CompiledRule) -> str:
    a = r.rule.action
    if a.type == "boost":
        return " ".join(p for p in (f"×{a.multiply:g}" if a.multiply else "", f"+{a.add:g}" if a.add else "") if p)
    if a.type == "bury":
        return " ".join(p for p in (f"×{a.multiply:g}" if a.multiply else "",
                                    f"−{a.subtract:g}" if a.subtract else "") if p)
    if a.type == "margin_floor":
        return f"margin below {a.min_margin:g}: " + ("dropped" if a.mode == "drop" else f"×{a.multiply:g}")
    if a.type == "cap":
        return f"at most {a.max} per {a.by}"
    if a.type == "slot":
        return f"eligible for reserved position {a.position}" + (f" (+{a.count - 1})" if a.count > 1 else "")
    if a.type == "pin":
        return f"pinned from slot {a.slot}"
    return a.type


class CompiledRules:
    """Rule sets compiled over one item table. Thread-safe for reads; the effect cache is an LRU."""

    def __init__(self, rulesets: Sequence[tuple[str, RuleSet]], items: ItemTable, facts: ItemFacts | None = None,
                 cache_size: int = 512):
        self.items = items
        rows: list[tuple[int, str, int, Rule]] = []
        for rs_id, rs in rulesets:
            if not rs.enabled:
                continue
            for pos, rule in enumerate(rs.rules):
                if rule.enabled:
                    rows.append((-rule.priority, rs_id, pos, rule))
        rows.sort(key=lambda t: (t[0], t[1], t[2]))
        self.rules = [self._compile(f"{rs_id}/{rule.id}", rule, order, facts)
                      for order, (_, rs_id, _, rule) in enumerate(rows)]
        self._by_placement: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._cache: OrderedDict[tuple, Effects] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.rules)

    def _compile(self, key: str, rule: Rule, order: int, facts: ItemFacts | None) -> CompiledRule:
        w = rule.when
        fs = lambda v: frozenset(v) if v is not None else None  # noqa: E731
        cr = CompiledRule(
            key=key, rule=rule, order=order, mask=match_mask(rule.match, self.items, facts),
            placements=fs(w.placements), devices=fs(w.devices), segments=fs(w.segments),
            exclude_segments=fs(w.exclude_segments),
            start=w.start.timestamp() if w.start else -math.inf, end=w.end.timestamp() if w.end else math.inf,
            timed=_uses_now(rule.match), facts=facts if _uses_now(rule.match) else None)
        a = rule.action
        if a.type == "pin":
            cr.pin_items = np.array([self.items.index[x] for x in a.items if x in self.items.index], np.int64)
            cr.pin_unknown = tuple(x for x in a.items if x not in self.items.index)
        elif a.type == "cap":
            cr.group = {"category": self.items.category, "top_category": self.items.top_category,
                        "brand": self.items.brand}[a.by]
        return cr

    # ---- per request -----------------------------------------------------------------------------------
    def signature(self, req: Any, placement: str) -> tuple:
        """The active rules of a request (indices, in rule order), plus the hour when a rule depends on it."""
        always, conditional = self._for_placement(placement)
        if not conditional:
            active = always
        else:
            on = [i for i in conditional if self.rules[i].active(req)]
            active = tuple(sorted(always + tuple(on))) if on else always
        if any(self.rules[i].timed for i in active):
            return active, int(req.now // 3600)
        return active, None

    def _for_placement(self, placement: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        got = self._by_placement.get(placement)
        if got is None:
            mine = [i for i, r in enumerate(self.rules) if r.placements is None or placement in r.placements]
            got = (tuple(i for i in mine if not self.rules[i].conditional),
                   tuple(i for i in mine if self.rules[i].conditional))
            self._by_placement[placement] = got
        return got

    def effects(self, sig: tuple) -> Effects:
        with self._cache_lock:
            got = self._cache.get(sig)
            if got is not None:
                self._cache.move_to_end(sig)
                return got
        got = self._combine(sig)
        with self._cache_lock:
            self._cache[sig] = got
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return got

    def _combine(self, sig: tuple) -> Effects:
        active, hour = sig
        now = (hour or 0) * 3600.0
        n = len(self.items)
        eff = Effects(rules=active)
        c = eff.constraints
        mult = add = blocked = removed = prio = None
        margin = self.items.margin
        for i in active:
            r = self.rules[i]
            a = r.rule.action
            m = r.mask_at(self.items, now)
            if a.type in ("boost", "bury"):
                f = a.multiply
                off = a.add if a.type == "boost" else (-a.subtract if a.subtract else None)
                if f is not None:
                    mult = np.ones(n, np.float32) if mult is None else mult
                    mult[m] *= f
                if off is not None:
                    add = np.zeros(n, np.float32) if add is None else add
                    add[m] += off
            elif a.type == "block":
                blocked = m.copy() if blocked is None else blocked | m
            elif a.type in ("filter", "margin_floor"):
                if a.type == "filter":
                    out = ~m
                else:
                    with np.errstate(invalid="ignore"):
                        out = m & (margin < a.min_margin)
                    if a.unknown == "drop":
                        out |= m & ~np.isfinite(margin)
                    if a.mode == "bury":
                        mult = np.ones(n, np.float32) if mult is None else mult
                        mult[out] *= a.multiply
                        continue
                removed = out.copy() if removed is None else removed | out
                prio = np.full(n, NEG, np.int64) if prio is None else prio
                prio[out] = np.maximum(prio[out], r.rule.priority)
            elif a.type == "pin":
                c.pins.append(PinSpec(r.key, r.pin_items, a.slot - 1, r.rule.priority, r.order))
                eff.unknown_pins += [(r.key, x) for x in r.pin_unknown]
            elif a.type == "slot":
                c.slots.append(SlotSpec(r.key, m, a.position - 1, a.count, r.rule.priority, r.order))
            elif a.type == "cap":
                c.caps.append(CapSpec(r.key, r.group, a.max, None if m.all() else m, a.strict))
        eff.mult, eff.add = mult, add
        c.blocked, c.removed, c.removed_priority = blocked, removed, prio
        if blocked is not None or removed is not None:
            hard = blocked if removed is None else (removed if blocked is None else blocked | removed)
            eff.drop = np.flatnonzero(hard)
        return eff

    # ---- explanations ----------------------------------------------------------------------------------
    def explain(self, sig: tuple, j: int) -> list[dict[str, Any]]:
        """The active rules that touch item j, in rule order, with what they did."""
        active, hour = sig
        now = (hour or 0) * 3600.0
        out = []
        for i in active:
            r = self.rules[i]
            a = r.rule.action
            if a.type == "pin":
                if j in r.pin_items:
                    out.append({"rule": r.key, "action": "pin", "priority": r.rule.priority, "effect": _describe(r)})
                continue
            if not r.mask_at(self.items, now)[j]:
                continue
            if a.type == "margin_floor":
                mg = self.items.margin[j]
                if not (np.isfinite(mg) and mg < a.min_margin):
                    continue
            out.append({"rule": r.key, "action": a.type, "priority": r.rule.priority, "effect": _describe(r)})
        return out

    def blocked_items(self, sig: tuple) -> np.ndarray:
        c = self.effects(sig).constraints
        return np.flatnonzero(c.blocked) if c.blocked is not None else np.zeros(0, np.int64)
