"""What every candidate source shares: the training data, the query, and the retriever interface.

Retrievers are batch-first: ``score`` takes a batch of queries and returns a dense ``(B, n_items)`` float32
matrix (0 = no evidence), so the API (B=1) and offline evaluation (B in the thousands) run the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.domain import EventType, Item
from shelfwise.settings import EventWeights
from shelfwise.stores.protocols import EventLog


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

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {str(x): i for i, x in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def servable(self) -> np.ndarray:
        """Items that may be shown: available and in stock (or stock not tracked)."""
        return self.available & (self.stock > 0)

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
                   created, category_names=list(cat_codes))

    def update(self, item: Item) -> None:
        """Apply a catalog change (stock, availability, price) to an item the model knows."""
        i = self.index.get(item.id)
        if i is None:
            return
        self.available[i] = item.available
        self.stock[i] = np.inf if item.stock is None else item.stock
        self.price[i] = np.nan if item.price is None else item.price
        self.margin[i] = np.nan if item.margin is None else item.margin

    def remove(self, item_id: str) -> None:
        i = self.index.get(item_id)
        if i is not None:
            self.available[i] = False

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("ids", "category", "top_category", "brand", "price", "margin",
                                              "stock", "available", "created_at")}


@dataclass
class TrainData:
    """Item interactions as integer arrays over a shopper and an item vocabulary, time-ordered per shopper."""

    items: ItemTable
    shoppers: np.ndarray  # object array of shopper keys
    user: np.ndarray  # int32 shopper index
    item: np.ndarray  # int32 item index
    kind: np.ndarray  # int8 EventType
    ts: np.ndarray  # float64
    session: np.ndarray  # int64 session index (global)
    order: np.ndarray  # int64 order index (-1 when not a purchase)
    weight: np.ndarray  # float32 implicit-feedback weight of the event type
    shopper_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.shopper_index:
            self.shopper_index = {str(s): i for i, s in enumerate(self.shoppers)}

    @property
    def n_users(self) -> int:
        return len(self.shoppers)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def now(self) -> float:
        return float(self.ts.max()) if len(self.ts) else 0.0

    def user_item_matrix(self) -> sp.csr_matrix:
        """Shopper × item matrix of summed event weights (events with weight 0 dropped)."""
        keep = self.weight > 0
        m = sp.csr_matrix((self.weight[keep], (self.user[keep], self.item[keep])),
                          shape=(self.n_users, self.n_items), dtype=np.float32)
        m.sum_duplicates()
        return m

    @classmethod
    def from_log(cls, log: EventLog, catalog: dict[str, Item], weights: EventWeights,
                 session_gap_s: float = 1800.0) -> "TrainData":
        """Index an event log. The item vocabulary is every catalog item plus every item seen in events."""
        seen = np.unique(log.item.astype(str)) if len(log) else np.array([], dtype=str)
        vocab = sorted(set(catalog) | set(seen.tolist()))
        table = ItemTable.build(vocab, catalog)
        shoppers, user = (np.unique(log.shopper.astype(str), return_inverse=True) if len(log)
                          else (np.array([], dtype=str), np.array([], np.int64)))
        item = np.array([table.index[str(x)] for x in log.item], dtype=np.int32)
        weight_of = np.array([getattr(weights, t.name) for t in EventType], dtype=np.float32)
        kind = log.kind.astype(np.int8)
        # sessions: a new one when the shopper or session id changes, or after a gap
        new = np.ones(len(log), bool)
        if len(log) > 1:
            new[1:] = ((user[1:] != user[:-1]) | (log.session[1:] != log.session[:-1])
                       | (np.diff(log.ts) > session_gap_s))
        session = np.cumsum(new) - 1
        order = np.full(len(log), -1, np.int64)
        is_buy = kind == EventType.purchase_completed
        if is_buy.any():
            keys = np.char.add(log.shopper[is_buy].astype(str), np.char.add("\x1f", log.order[is_buy].astype(str)))
            order[is_buy] = np.unique(keys, return_inverse=True)[1]
        return cls(table, shoppers.astype(object), user.astype(np.int32), item, kind, log.ts.astype(np.float64),
                   session, order, weight_of[kind])

    def sequences(self) -> list[np.ndarray]:
        """Item indices of each shopper, oldest first (row u = shopper u)."""
        bounds = np.searchsorted(self.user, np.arange(self.n_users + 1))
        return [self.item[bounds[u]:bounds[u + 1]] for u in range(self.n_users)]


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


class Retriever(ABC):
    """A candidate source: fit on training data, then score every item for a batch of queries."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, data: TrainData) -> "Retriever": ...

    def warm_start(self, earlier: "Retriever", earlier_items: ItemTable) -> None:
        """Start the next ``fit`` from ``earlier``, a fit of this source on a prefix of the same log whose
        vocabulary is ``earlier_items``. By default nothing: sources that fit in seconds fit from scratch."""

    @abstractmethod
    def score(self, queries: Sequence[Query]) -> np.ndarray:
        """Dense ``(len(queries), n_items)`` float32 scores; 0 means no evidence; higher is better."""

    def similar(self, items: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (indices, scores) of items like each given item (rows), the item itself excluded."""
        queries = [Query(anchors=np.array([i], np.int32)) for i in items]
        scores = self.score(queries)
        scores[np.arange(len(items)), items] = 0.0
        return top_k(scores, k)

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> "Retriever": ...


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k indices (ties broken by lower index) and their scores, best first."""
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), scores.dtype)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


def recency_weights(n: int, decay: float) -> np.ndarray:
    """Weights of the last n items, oldest first: decay**(n-1), ..., decay, 1."""
    return decay ** np.arange(n - 1, -1, -1, dtype=np.float32)
