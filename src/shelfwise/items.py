"""The catalog as the models see it: item attributes aligned with a model's item vocabulary (a ground-floor module).

``ItemTable`` row ``i`` is item ``ids[i]``. Catalog changes (stock, availability, price) are applied in place and
bump ``version``, which keys every cache that depends on them (the servable mask, cached answers, ETags).

Items added after training get rows too: ``with_items`` returns a new table (copy on write: the serving table
is never resized under a request) with the new items appended after the trained vocabulary. Arrays fitted on
the trained vocabulary are then shorter than the table; ``pad_rows`` extends them (no evidence for the new rows).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from shelfwise.domain import Item


def category_path(name: str) -> list[str]:
    return [c.strip() for c in name.split(">")]


@dataclass
class ItemTable:
    """Catalog attributes aligned with the model's item vocabulary (row i = item ``ids[i]``)."""

    ids: np.ndarray  # object array of item ids
    category: np.ndarray  # int32 code of the full category path (-1 unknown)
    top_category: np.ndarray  # int32 code of the root category (-1 unknown)
    brand: np.ndarray  # int32 (-1 unknown)
    price: np.ndarray  # float64 (nan unknown)
    margin: np.ndarray  # float64 (nan unknown)
    stock: np.ndarray  # float64 (inf when not tracked)
    available: np.ndarray  # bool
    created_at: np.ndarray  # float64 unix seconds (nan unknown)
    category_names: list[str] = field(default_factory=list)  # "A > B" per category code
    index: dict[str, int] = field(default_factory=dict)
    brand_names: list[str] = field(default_factory=list)  # per brand code (empty for models saved without them)
    version: int = 0  # bumped by every catalog change applied to the table
    # float64 unix seconds Shelfwise first saw the item: its first event in the training data or its first catalog
    # upsert, the earlier (nan unknown; see ``seen``)
    first_seen: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {str(x): i for i, x in enumerate(self.ids)}
        if self.first_seen is None:
            self.first_seen = np.full(len(self.ids), np.nan)
        self._lock = threading.Lock()
        self._servable: tuple[int, np.ndarray, np.ndarray] | None = None
        self._prefix_codes: dict[str, np.ndarray] = {}
        self._prefix_masks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def servable(self) -> np.ndarray:
        """Items that may be shown: available and in stock (or stock not tracked). Cached per ``version``; do not
        modify the returned array."""
        return self._masks()[1]

    @property
    def unservable(self) -> np.ndarray:
        """``~servable``, cached per ``version`` (the same array object until the catalog changes)."""
        return self._masks()[2]

    def _masks(self) -> tuple[int, np.ndarray, np.ndarray]:
        got = self._servable
        if got is None or got[0] != self.version:
            ok = self.available & (self.stock > 0)
            got = (self.version, ok, ~ok)
            self._servable = got
        return got

    @classmethod
    def build(cls, item_ids: Sequence[str], catalog: dict[str, Item]) -> "ItemTable":
        n = len(item_ids)
        cat_codes: dict[str, int] = {}
        top_codes: dict[str, int] = {}
        brand_codes: dict[str, int] = {}
        category = np.full(n, -1, np.int32)
        top = np.full(n, -1, np.int32)
        brand = np.full(n, -1, np.int32)
        price = np.full(n, np.nan)
        margin = np.full(n, np.nan)
        stock = np.full(n, np.inf)
        available = np.ones(n, bool)
        created = np.full(n, np.nan)
        for i, iid in enumerate(item_ids):
            it = catalog.get(iid)
            if it is None:
                continue
            if it.category:
                category[i] = cat_codes.setdefault(" > ".join(it.category), len(cat_codes))
                top[i] = top_codes.setdefault(it.category[0], len(top_codes))
            if it.brand:
                brand[i] = brand_codes.setdefault(it.brand, len(brand_codes))
            if it.price is not None:
                price[i] = it.price
            if it.margin is not None:
                margin[i] = it.margin
            if it.stock is not None:
                stock[i] = it.stock
            available[i] = it.available
            if it.created_at is not None:
                created[i] = it.created_at.timestamp()
        return cls(np.array(item_ids, dtype=object), category, top, brand, price, margin, stock, available,
                   created, category_names=list(cat_codes), brand_names=list(brand_codes))

    def with_items(self, items: Sequence[Item], first_seen: dict[str, float] | None = None) -> "ItemTable":
        """A new table: this one's rows, then a row per item it does not know (in order; the last version of an
        id wins), with a higher ``version``. This table is left as it is, so a request running on it is
        unaffected; category and brand codes of this table keep their meaning. A new row's ``first_seen`` is the
        catalog's (``first_seen``: id -> unix time), else now."""
        latest = {it.id: it for it in items if it.id not in self.index}
        if not latest:
            return self
        now, first_seen = time.time(), first_seen or {}
        new = list(latest.values())
        categories = list(self.category_names)
        cat_codes = {n: i for i, n in enumerate(categories)}
        known = self.category >= 0
        top_of = dict(zip(self.category[known].tolist(), self.top_category[known].tolist()))
        tops = {category_path(categories[c])[0]: t for c, t in top_of.items()}
        n_tops = int(self.top_category.max(initial=-1)) + 1
        # brand names of a model saved without them are unknown: a new item's brand then gets a new code
        brands = list(self.brand_names) + [""] * (int(self.brand.max(initial=-1)) + 1 - len(self.brand_names))
        brand_codes = {n: i for i, n in enumerate(brands) if n}
        cat, top, brand = (np.full(len(new), -1, np.int32) for _ in range(3))
        for r, it in enumerate(new):
            if it.category:
                name = " > ".join(it.category)
                cat[r] = cat_codes.setdefault(name, len(cat_codes))
                if cat[r] == len(categories):
                    categories.append(name)
                if it.category[0] not in tops:
                    tops[it.category[0]] = n_tops
                    n_tops += 1
                top[r] = tops[it.category[0]]
            if it.brand:
                if it.brand not in brand_codes:
                    brand_codes[it.brand] = len(brands)
                    brands.append(it.brand)
                brand[r] = brand_codes[it.brand]
        ids = np.concatenate([self.ids, np.array([it.id for it in new], dtype=object)])
        with self._lock:  # the attributes of this table as they are now (stock, prices change in place)
            out = ItemTable(
                ids, np.concatenate([self.category, cat]), np.concatenate([self.top_category, top]),
                np.concatenate([self.brand, brand]),
                np.concatenate([self.price, [np.nan if it.price is None else it.price for it in new]]),
                np.concatenate([self.margin, [np.nan if it.margin is None else it.margin for it in new]]),
                np.concatenate([self.stock, [np.inf if it.stock is None else it.stock for it in new]]),
                np.concatenate([self.available, [it.available for it in new]]).astype(bool),
                np.concatenate([self.created_at, [np.nan if it.created_at is None else it.created_at.timestamp()
                                                  for it in new]]),
                category_names=categories, brand_names=brands, version=self.version + 1,
                first_seen=np.concatenate([self.first_seen, [first_seen.get(it.id, now) for it in new]]))
        return out

    def seen(self, times: dict[str, float]) -> None:
        """Fold in when the catalog first stored items (id -> unix time): ``first_seen`` keeps the earlier time."""
        rows = [(self.index[i], t) for i, t in times.items() if i in self.index]
        if rows:
            r, t = (np.array(x) for x in zip(*rows))
            with self._lock:
                self.first_seen[r] = np.fmin(self.first_seen[r], t)

    def born(self) -> np.ndarray:
        """(n,) unix time each item came to the shop: its catalog ``created_at``, else ``first_seen`` (nan: not
        known). A new array."""
        return np.where(np.isfinite(self.created_at), self.created_at, self.first_seen)

    def update(self, item: Item) -> bool:
        """Apply a catalog change (stock, availability, price) to an item the model knows; False when unknown."""
        i = self.index.get(item.id)
        if i is None:
            return False
        with self._lock:
            self.available[i] = item.available
            self.stock[i] = np.inf if item.stock is None else item.stock
            self.price[i] = np.nan if item.price is None else item.price
            self.margin[i] = np.nan if item.margin is None else item.margin
            self.version += 1
        return True

    def touch(self) -> None:
        """Something derived from the catalog changed (e.g. an item's content vector): bump ``version``, which
        keys cached answers."""
        with self._lock:
            self.version += 1

    def sync(self, catalog: Sequence[Item]) -> None:
        """Apply the catalog's current stock, availability and prices (a model loaded after catalog changes)."""
        for it in catalog:
            self.update(it)

    def remove(self, item_id: str) -> bool:
        i = self.index.get(item_id)
        if i is None:
            return False
        with self._lock:
            self.available[i] = False
            self.version += 1
        return True

    def category_codes(self, prefix: str) -> np.ndarray:
        """Category codes whose path starts with ``prefix`` ('A > B'); cached (codes never change)."""
        got = self._prefix_codes.get(prefix)
        if got is None:
            want = category_path(prefix)
            got = np.array([i for i, n in enumerate(self.category_names) if category_path(n)[:len(want)] == want],
                           np.int32)
            if len(self._prefix_codes) > 4096:
                self._prefix_codes.clear()
            self._prefix_codes[prefix] = got
        return got

    def category_mask(self, prefix: str) -> np.ndarray:
        """Items whose category path starts with ``prefix``; cached, do not modify."""
        got = self._prefix_masks.get(prefix)
        if got is None:
            got = np.isin(self.category, self.category_codes(prefix))
            if len(self._prefix_masks) > 256:
                self._prefix_masks.clear()
            self._prefix_masks[prefix] = got
        return got

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("ids", "category", "top_category", "brand", "price", "margin",
                                              "stock", "available", "created_at", "first_seen")}


def pad_rows(a: np.ndarray, n: int, fill: float = 0) -> np.ndarray:
    """``a`` (rows aligned with a table's first rows) extended to ``n`` rows of ``fill``: arrays fitted on the
    trained vocabulary, for a table with items added since. ``a`` itself when it is long enough."""
    if len(a) >= n:
        return a
    out = np.full((n,) + a.shape[1:], fill, a.dtype)
    out[:len(a)] = a
    return out


def category_prefix_mask(items: ItemTable, prefixes: Sequence[str]) -> np.ndarray:
    """Items whose category path starts with any of the prefixes ('A > B')."""
    codes = [items.category_codes(p) for p in prefixes]
    return np.isin(items.category, np.concatenate(codes)) if codes else np.zeros(len(items), bool)
