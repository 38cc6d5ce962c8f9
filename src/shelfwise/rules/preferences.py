"""A shopper's explicit preferences as item masks over the serving item table: what they may be shown (the hard
fields) and how well each item matches what they asked for (the soft fields).

Per field an item *matches* when: its category path starts with one of the shopper's categories; its brand is one
of theirs; one of its size attributes (``preferences.size_attributes``) holds one of their sizes; its price is
within their range; one of its tags is one of their style tags (text compared without regard to case).

* hard fields (``preferences.hard``, default sizes and price): an item that has a value for the field and does not
  match is excluded; an item without one (no size attribute, no price) is kept;
* soft fields (the others): each item's share of the soft fields given that it matches, in [0, 1].

Categories, brands and prices come from the item table; tags and size attributes from the rules' item facts
(``ItemFacts``, read from the catalog once per item table); masks of single values are cached per catalog version.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from shelfwise.domain import Preferences
from shelfwise.items import ItemTable, category_prefix_mask
from shelfwise.request import Filters
from shelfwise.rules.compile import ItemFacts
from shelfwise.settings import PreferenceSettings


def _folded(value: Any) -> set[str]:
    """An attribute value (a value, or a list of values) as case-folded texts."""
    values = value if isinstance(value, list) else [value]
    return {str(v).strip().casefold() for v in values if v is not None and not isinstance(v, (dict, list))}


class PreferenceMasks:
    def __init__(self, items: ItemTable, facts: Callable[[ItemTable], ItemFacts | None],
                 settings: PreferenceSettings) -> None:
        self.items, self.facts, self.settings = items, facts, settings
        self._key: tuple = ()
        self._sets: dict[str, list[set[str]]] = {}  # field -> each item's case-folded values
        self._masks: dict[tuple[str, str], np.ndarray] = {}  # (field, value or "") -> items with it (any value)

    def _values(self, field: str, facts: ItemFacts) -> list[set[str]]:
        """Each item's case-folded values of ``field``: ``style_tags`` (its tags), ``sizes`` (its size attributes)
        or ``attr:<name>`` (one attribute, a request-time filter's)."""
        key = (id(facts), self.items.version)
        if key != self._key or len(self._masks) > 4096:
            self._key, self._sets, self._masks = key, {}, {}
        got = self._sets.get(field)
        if got is None:
            if field == "style_tags":
                got = [{t.casefold() for t in tags} for tags in facts.tags]
            else:
                keys = self.settings.size_attributes if field == "sizes" else [field.removeprefix("attr:")]
                got = [set().union(*(_folded(a[k]) for k in keys if k in a)) for a in facts.attributes]
            if len(self._sets) > 64:
                self._sets.clear()
            self._sets[field] = got
        return got

    def _mask(self, field: str, value: str, facts: ItemFacts) -> np.ndarray:
        """Items whose ``field`` holds ``value`` (any value at all for ``""``); cached per catalog version."""
        values = self._values(field, facts)
        got = self._masks.get((field, value))
        if got is None:
            has = (lambda v: bool(v)) if not value else (lambda v: value in v)
            got = self._masks[(field, value)] = np.fromiter((has(v) for v in values), bool, len(values))
        return got

    def _text_field(self, field: str, wanted: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """(match, has a value) for sizes or style tags, from the catalog facts (None without them)."""
        facts = self.facts(self.items)
        if facts is None or len(facts.attributes) != len(self.items):
            return None
        match = np.zeros(len(self.items), bool)
        for w in wanted:
            match |= self._mask(field, w.strip().casefold(), facts)
        return match, self._mask(field, "", facts)

    def _brands(self, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
        want = {w.casefold() for w in wanted}
        codes = [c for c, name in enumerate(self.items.brand_names) if name.casefold() in want]
        return np.isin(self.items.brand, codes), self.items.brand >= 0

    def field(self, prefs: Preferences, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(match, has a value) of one field the shopper gave; None when they gave none (or it cannot be told)."""
        items = self.items
        if name == "categories" and prefs.categories:
            return category_prefix_mask(items, prefs.categories), items.category >= 0
        if name == "price" and prefs.price is not None:
            lo = -np.inf if prefs.price.min is None else prefs.price.min
            hi = np.inf if prefs.price.max is None else prefs.price.max
            known = np.isfinite(items.price)
            with np.errstate(invalid="ignore"):
                return known & (items.price >= lo) & (items.price <= hi), known
        if name == "brands" and prefs.brands:
            return self._brands(prefs.brands)
        values = {"sizes": prefs.sizes, "style_tags": prefs.style_tags}.get(name)
        return self._text_field(name, values) if values else None

    def filtered(self, f: Filters, now: float) -> np.ndarray:
        """Items a request's filters allow (bool, n_items): every field given matches (``request.Filters``).
        Attribute values are read through the catalog facts; without them (no rules stage) an attribute filter
        matches nothing rather than everything."""
        items = self.items
        keep = np.ones(len(items), bool)
        if f.categories:
            keep &= category_prefix_mask(items, list(f.categories))
        if f.brands:
            keep &= self._brands(list(f.brands))[0]
        if f.price_min is not None or f.price_max is not None:
            lo = -np.inf if f.price_min is None else f.price_min
            hi = np.inf if f.price_max is None else f.price_max
            with np.errstate(invalid="ignore"):
                keep &= np.isfinite(items.price) & (items.price >= lo) & (items.price <= hi)
        if f.min_stock is not None:
            keep &= np.isfinite(items.stock) & (items.stock >= f.min_stock)  # untracked (inf) stock fails
        if f.new_days is not None:
            with np.errstate(invalid="ignore"):
                keep &= items.born() >= now - f.new_days * 86400.0
        for name, values in f.attributes:
            got = self._text_field(f"attr:{name}", list(values))
            keep &= got[0] if got is not None else False
        return keep

    def hard(self, prefs: Preferences) -> np.ndarray | None:
        """Items the shopper may be shown (bool, n_items), or None when no hard field constrains them."""
        out = None
        for name in self.settings.hard:
            got = self.field(prefs, name)
            if got is not None:
                keep = got[0] | ~got[1]
                out = keep if out is None else out & keep
        return out

    def soft(self, prefs: Preferences) -> np.ndarray | None:
        """Each item's share of the shopper's soft fields it matches (float32, n_items), or None without any."""
        parts = [self.field(prefs, name) for name in ("categories", "brands", "sizes", "price", "style_tags")
                 if name not in self.settings.hard]
        parts = [p[0] for p in parts if p is not None]
        if not parts:
            return None
        return (np.sum(parts, axis=0, dtype=np.float32) / len(parts)).astype(np.float32)
