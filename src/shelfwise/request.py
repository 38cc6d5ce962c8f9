"""The types a recommendation request passes through (a ground-floor module: it imports nothing above it).

``RecRequest`` (the storefront's terms) → ``Query`` (model indices) and ``Exclusions`` (what may not be shown) →
``Candidates`` (the one list type between stages: item indices with per-source scores) → ``Answer``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from shelfwise.settings import PlacementSettings
from shelfwise.stores.protocols import ShopperPreferences, ShopperState



def take_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``a[r, idx[r, j]]`` for every row r (``np.take_along_axis`` on axis 1, without its overhead)."""
    return a[np.arange(a.shape[0])[:, None], idx]


def _new_id_source() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX, _ID_COUNTER = os.urandom(8).hex(), itertools.count()


_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)  # forked API workers draw their own prefix


def new_request_id() -> str:
    """A unique request id: a random prefix drawn once per process, then a counter. (``uuid4`` reads the OS
    random source on every call: 0.44 ms a request on the benchmark VM, a tenth of the whole pipeline.)"""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"  # 32 hex characters, like uuid4().hex


@dataclass(frozen=True)
class Filters:
    """Request-time filters on catalog fields (every one given must match; within a field, any value): category
    path prefixes, brands, a price range, attribute values (``{"color": ["Black", "Blue"]}``: the attribute holds
    one of them, or a list with one of them; compared without regard to case), at least ``min_stock`` units in
    stock (stock tracked: out-of-stock items are never shown anyway, this also leaves out items whose stock is not
    tracked), and items new within ``new_days`` days (catalog ``created_at``, else when first seen)."""

    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    min_stock: int | None = None
    new_days: float | None = None

    def __bool__(self) -> bool:
        return bool(self.categories or self.brands or self.price_min is not None or self.price_max is not None
                    or self.attributes or self.min_stock is not None or self.new_days is not None)


@dataclass
class RecRequest:
    """A request in the storefront's terms (ids as strings)."""

    placement: str = "homepage"
    shopper: str | None = None
    item_id: str | None = None
    cart: Sequence[str] = ()
    k: int = 12
    exclude: Sequence[str] = ()
    category: str | None = None
    state: ShopperState | None = None  # the shopper's recent events (from online state)
    now: float = 0.0
    device: str | None = None  # desktop / mobile / tablet / app (a ranker feature)
    segments: Sequence[str] = ()  # shopper segments the storefront knows (e.g. "vip"): rule conditions, cohorts
    preferences: ShopperPreferences | None = None  # the shopper's explicit preferences (boosts, hard filters)
    request_id: str | None = None  # exposure log and shadow sampling key
    explain: bool = False  # attach why each item is where it is (score parts, rules, diversity)
    # an experiment's variant: its placement settings (blend weights, score, diversity) instead of the configured
    # ones, the learned ranker on or off, and a label that keys cached answers
    conf: PlacementSettings | None = None
    ranker: bool = True
    variant: str = ""
    filters: Filters | None = None  # request-time filters on catalog fields (every placement)
    # a rerank placement (POST /v1/rerank): the shop's own list, best first by its own order, re-ranked for the
    # shopper; its search query (query features), and how far the personal order moves the shop's (0..1)
    given: Sequence[str] | None = None
    query: str | None = None
    impact: float = 1.0


@dataclass(frozen=True)
class Visit:
    """What a request says about the visit, in cohort terms (case-folded): device, placement, entry category (the
    root of its category filter) and the shopper's segments."""

    device: str = ""
    placement: str = ""
    category: str = ""
    segments: tuple[str, ...] = ()


@dataclass
class Query:
    """One recommendation request, resolved to model indices."""

    user: int = -1  # shopper index in the training vocabulary, -1 when unknown
    history: np.ndarray = field(default_factory=lambda: np.array([], np.int32))  # item idx, oldest first
    history_kind: np.ndarray = field(default_factory=lambda: np.array([], np.int8))
    history_ts: np.ndarray = field(default_factory=lambda: np.array([], np.float64))
    anchors: np.ndarray = field(default_factory=lambda: np.array([], np.int32))  # product page / cart items
    fresh: bool = False  # history has events the trained model has not seen
    now: float = 0.0
    visit: Visit = Visit()  # the cohort a new shopper is in

    def within(self, n_items: int) -> "Query":
        """This query as a source that knows only the first ``n_items`` items sees it: the history and anchors
        added to the catalog later left out (the same query when there are none)."""
        if (self.history < n_items).all() and (self.anchors < n_items).all():
            return self
        keep = self.history < n_items
        return Query(self.user, self.history[keep], self.history_kind[keep], self.history_ts[keep],
                     self.anchors[self.anchors < n_items], self.fresh, self.now, self.visit)


@dataclass
class Exclusions:
    """What may not be shown to each request of a batch: the catalog's unservable items (one shared mask), each
    request's own excluded items, its allow-list (a category filter) and what its merchandising rules drop."""

    banned: np.ndarray  # bool (n_items,): unavailable or out of stock — shared, never modified
    rows: list[np.ndarray]  # per request: int64 item indices never to show (anchors, cart, history, exclude)
    allowed: list[np.ndarray | None]  # per request: bool (n_items,) the only items allowed (filters), or None
    dropped: list[np.ndarray | None] = field(default_factory=list)  # per request: bool (n_items,) rule drops

    def __post_init__(self) -> None:
        if not self.dropped:
            self.dropped = [None] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def none(cls, n_items: int, batch: int) -> "Exclusions":
        return cls(np.zeros(n_items, bool), [np.zeros(0, np.int64)] * batch, [None] * batch)

    def over(self, n_items: int) -> "Exclusions":
        """The same exclusions over ``n_items`` items (a source's own item count): items past the request's
        catalog may not be shown; the request's items past a source's count are not its concern."""
        n = len(self.banned)
        if n_items == n:
            return self

        def fit(mask: np.ndarray | None, fill: bool) -> np.ndarray | None:
            if mask is None:
                return None
            if len(mask) >= n_items:
                return mask[:n_items]
            out = np.full(n_items, fill, bool)
            out[:len(mask)] = mask
            return out

        return Exclusions(fit(self.banned, True), [r[r < n_items] for r in self.rows],  # type: ignore[arg-type]
                          [fit(a, False) for a in self.allowed], [fit(d, True) for d in self.dropped])

    def subset(self, rows: np.ndarray) -> "Exclusions":
        return Exclusions(self.banned, [self.rows[r] for r in rows], [self.allowed[r] for r in rows],
                          [self.dropped[r] for r in rows])

    def dense(self) -> np.ndarray:
        """(B, n_items) bool: True where an item may not be shown (for dense scorers)."""
        out = np.broadcast_to(self.banned, (len(self.rows), len(self.banned))).copy()
        for r, (drop, allow, rule) in enumerate(zip(self.rows, self.allowed, self.dropped)):
            if len(drop):
                out[r, drop] = True
            if allow is not None:
                out[r] |= ~allow
            if rule is not None:
                out[r] |= rule
        return out

    def keep(self, items: np.ndarray, owner: np.ndarray | None = None, rules: bool = True) -> np.ndarray:
        """Bool mask over ``items`` (a (B, M) matrix with -1 pads, or flat with ``owner`` rows): may be shown.
        ``rules=False`` ignores the rules' drops (a pin of higher priority may still show such an item)."""
        flat = items.ravel() if owner is None else items
        rows = np.repeat(np.arange(items.shape[0]), items.shape[1]) if owner is None else owner
        ok = flat >= 0
        safe = np.where(ok, flat, 0)
        ok &= ~self.banned[safe]
        drop = [(r, d) for r, d in enumerate(self.rows) if len(d)]
        if drop:
            n = len(self.banned)
            keys = np.concatenate([r * n + d.astype(np.int64) for r, d in drop])
            ok &= ~np.isin(rows.astype(np.int64) * n + safe, keys)
        masks = [(r, a, None) for r, a in enumerate(self.allowed) if a is not None]
        if rules:
            masks += [(r, None, d) for r, d in enumerate(self.dropped) if d is not None]
        for r, allow, rule in masks:
            sel = rows == r
            ok[sel] &= allow[safe[sel]] if allow is not None else ~rule[safe[sel]]
        return ok.reshape(items.shape) if owner is None else ok


@dataclass
class Candidates:
    """The candidate items of a batch of requests (one placement), best first by ``score``.

    ``items`` holds catalog indices with -1 padding the rows that have fewer candidates. ``sources`` are each
    source's scores of the candidates, divided by that source's best score over the whole catalog (so in [0, 1]),
    unweighted; ``blend`` their weighted sum; ``score`` the current ordering score, which later stages replace
    (learned ranker, business score, rules). Pads carry 0 in ``sources``/``blend`` and ``-inf`` in ``score``.
    """

    items: np.ndarray  # (B, M) int64
    sources: dict[str, np.ndarray]  # name -> (B, M) float32
    blend: np.ndarray  # (B, M) float32
    score: np.ndarray  # (B, M) float32

    @property
    def valid(self) -> np.ndarray:
        return self.items >= 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.items.shape  # type: ignore[return-value]

    def take(self, order: np.ndarray) -> "Candidates":
        """Columns re-ordered (or cut) per row by ``order`` (B, M')."""
        rows = np.arange(order.shape[0])[:, None]
        return Candidates(self.items[rows, order], {n: s[rows, order] for n, s in self.sources.items()},
                          self.blend[rows, order], self.score[rows, order])

    def sorted(self, limit: int | None = None) -> "Candidates":
        """Best ``score`` first (ties: lower item index first), at most ``limit`` columns."""
        order = np.lexsort((self.items, -self.score), axis=1)
        if limit is not None:
            order = order[:, :limit]
        return self.take(order)


SLOT_REASONS = ("evidence", "preference", "cohort", "popular", "pinned", "reserved", "exploration")


@dataclass
class Recommendation:
    """One slot of an answer. ``reason`` says why the item is there: ``evidence`` (a source scored it from this
    shopper's history or model row, or from the page's / cart's items), ``preference`` (it matches what the shopper
    stated in their preferences, and no source had evidence for it), ``cohort`` (the best of the shopper's cohort:
    shoppers on the same device, with the same segments, entering the same way — a new shopper's first request),
    ``popular`` (popularity only: the global or the category's best sellers, or catalog order), ``pinned`` /
    ``reserved`` (placed by a merchandising rule), ``exploration`` (a new item drawn for an exploration slot,
    ``stages.explore``). ``fallback`` is true when nothing about this shopper or item went into it — no source's
    evidence, no stated preference (every ``cohort`` and ``popular`` slot, a rule's slot that nothing else
    supported, and an exploration slot drawn without a content match). ``propensity``: the probability the slot
    holds this item (below 1 only for exploration slots; logged with the exposure)."""

    item_id: str
    score: float
    sources: list[str]
    explanation: dict[str, Any] | None = None
    reason: str = "evidence"
    fallback: bool = False
    propensity: float = 1.0


@dataclass
class Answer:
    items: list[Recommendation]
    placement: str
    explanation: dict[str, Any] | None = None  # request-level part of explain (conflicts, weights, rule sets)
    model_version: str = ""  # the model version that computed this answer
    rulesets: str = ""  # the live rule set versions applied ("id@version,..."; empty when none)
    experiments: list[dict[str, str]] = field(default_factory=list)  # [{"experiment", "variant"}] it served
    degraded: list[str] = field(default_factory=list)  # what was left out of it (a source, the ranker, the
    # shopper's state, the model) and why; empty for a full answer (README "Graceful degradation")
    # what the API made of its slots, made once however often the answer cache serves it (api/render.py); a copy
    # made with dataclasses.replace starts without it
    rendered: object | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def fallback(self) -> bool:
        """Nothing about this shopper or item went into the rail: no slot had evidence (an empty rail too)."""
        return all(r.fallback for r in self.items)
