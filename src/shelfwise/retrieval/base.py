"""What every candidate source shares: the training data, the retriever interface and its per-batch scores.

A source is asked once per batch of queries for a ``SourceScores``: its ``top(k, exclusions)`` candidates (the
exact top-k of its own score function among the items a request may show; items without evidence are never
returned), its scores ``at`` any given items (to score the union of every source's candidates), and its
``peak`` per query (the best score over the whole catalog, which normalises the source to [0, 1]). The API
(batches of a few requests) and offline evaluation (batches of thousands) run the same code. How a source finds
its top-k is its own business: neighbour lists (co-visitation), a vector index (ALS, the sequence model; exact
below a catalog size, HNSW or pgvector above), a dense product for small catalogs — the cost of a request does
not have to grow with the catalog.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.domain import EventType, Item
from shelfwise.items import ItemTable
from shelfwise.request import Exclusions, Query, take_rows
from shelfwise.settings import EventWeights
from shelfwise.stores.protocols import EntryContext, EventLog


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
    catalog: dict[str, Item] = field(default_factory=dict)  # the catalog's items by id (content: titles, brands)
    contexts: dict[str, EntryContext] = field(default_factory=dict)  # shopper -> entry context (cohorts)

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
        keep = self.weight != 0  # negative weights (removals, when configured so) subtract from the sum
        m = sp.csr_matrix((self.weight[keep], (self.user[keep], self.item[keep])),
                          shape=(self.n_users, self.n_items), dtype=np.float32)
        m.sum_duplicates()
        if (m.data < 0).any() or (m.data == 0).any():
            m.data = np.maximum(m.data, 0)
            m.eliminate_zeros()
        return m

    @classmethod
    def from_log(cls, log: EventLog, catalog: dict[str, Item], weights: EventWeights,
                 session_gap_s: float = 1800.0, contexts: dict[str, EntryContext] | None = None) -> "TrainData":
        """Index an event log. The item vocabulary is every catalog item plus every item seen in events.
        ``contexts``: the shoppers' entry contexts (``EventStore.entry_contexts``), for cohorts."""
        seen = np.unique(log.item.astype(str)) if len(log) else np.array([], dtype=str)
        vocab = sorted(set(catalog) | set(seen.tolist()))
        table = ItemTable.build(vocab, catalog)
        shoppers, user = (np.unique(log.shopper.astype(str), return_inverse=True) if len(log)
                          else (np.array([], dtype=str), np.array([], np.int64)))
        item = np.array([table.index[str(x)] for x in log.item], dtype=np.int32)
        np.fmin.at(table.first_seen, item, log.ts)  # an item's first event (a model saves it with the table)
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
                   session, order, weight_of[kind], catalog=catalog, contexts=contexts or {})

    def sequences(self) -> list[np.ndarray]:
        """Item indices of each shopper, oldest first (row u = shopper u)."""
        bounds = np.searchsorted(self.user, np.arange(self.n_users + 1))
        return [self.item[bounds[u]:bounds[u + 1]] for u in range(self.n_users)]


class SourceScores(ABC):
    """One source's scores for one batch of queries (row r = query r)."""

    @abstractmethod
    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        """(B, k) item indices (-1 pads) and scores (0 on pads) of the best items with evidence (score > 0) that
        each request may show, best first, ties broken by lower index."""

    @abstractmethod
    def at(self, items: np.ndarray) -> np.ndarray:
        """(B, M) float32 scores of the given item indices (-1 pads score 0); 0 means no evidence."""

    @abstractmethod
    def peak(self) -> np.ndarray:
        """(B,) the best score of each query over the whole catalog (before exclusions), 0 without evidence."""

    @abstractmethod
    def dense(self) -> np.ndarray:
        """(B, n_items) float32: every item's score (small catalogs: a dense product is faster than a union)."""


class DenseScores(SourceScores):
    """Scores held as a dense (B, n_items) matrix: exact, for small catalogs and big offline batches."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.asarray(matrix, np.float32)
        self._peak = (self.matrix.max(axis=1, initial=0.0) if self.matrix.size
                      else np.zeros(len(self.matrix), np.float32))

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix.copy()
        m[exclusions.dense()] = -np.inf
        idx, val = top_k(m, k)
        return without_zeros(idx, val, k)

    def at(self, items: np.ndarray) -> np.ndarray:
        return gather(self.matrix, items)

    def peak(self) -> np.ndarray:
        return self._peak

    def dense(self) -> np.ndarray:
        return self.matrix


class SparseScores(SourceScores):
    """Scores with few non-zeros per query, held as sorted (query, item) keys: neighbour lists, ANN results."""

    def __init__(self, n_rows: int, n_items: int, row: np.ndarray, idx: np.ndarray, val: np.ndarray) -> None:
        self.n_rows, self.n_items = n_rows, n_items
        key = np.asarray(row, np.int64) * n_items + np.asarray(idx, np.int64)
        val = np.asarray(val, np.float32)
        if len(key) and (len(key) > 1 and not (np.diff(key) > 0).all()):
            order = np.argsort(key, kind="stable")
            key, val = key[order], val[order]
            first = np.r_[True, key[1:] != key[:-1]]
            if not first.all():  # sum the duplicates of a key (e.g. a neighbour of two anchors)
                starts = np.flatnonzero(first)
                val = np.add.reduceat(val, starts).astype(np.float32)
                key = key[starts]
        self.key, self.val = key, val
        self.row, self.idx = key // max(n_items, 1), key % max(n_items, 1)

    @classmethod
    def from_rows(cls, n_items: int, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> "SparseScores":
        """From per-query (item indices, scores), duplicates summed."""
        lens = [len(i) for i, _ in rows]
        row = np.repeat(np.arange(len(rows)), lens)
        idx = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, np.int64)
        val = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
        return cls(len(rows), n_items, row, idx, val)

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        keep = (self.val > 0) & exclusions.keep(self.idx, owner=self.row)
        return segment_top(self.n_rows, self.row[keep], self.idx[keep], self.val[keep], k)

    def at(self, items: np.ndarray) -> np.ndarray:
        q = np.arange(items.shape[0], dtype=np.int64)[:, None] * self.n_items + np.maximum(items, 0)
        pos = np.searchsorted(self.key, q)
        pos = np.minimum(pos, max(len(self.key) - 1, 0))
        found = (items >= 0) & (self.key[pos] == q) if len(self.key) else np.zeros(items.shape, bool)
        return np.where(found, self.val[pos] if len(self.val) else 0.0, 0.0).astype(np.float32)

    def peak(self) -> np.ndarray:
        out = np.zeros(self.n_rows, np.float32)
        np.maximum.at(out, self.row, self.val)
        return out

    def dense(self) -> np.ndarray:
        out = np.zeros((self.n_rows, self.n_items), np.float32)
        out[self.row, self.idx] = self.val
        return out


class RowStack(SourceScores):
    """Scores of a batch whose rows were scored in groups (e.g. shoppers and product pages)."""

    def __init__(self, n_rows: int, parts: Sequence[tuple[np.ndarray, SourceScores]]) -> None:
        self.n_rows, self.parts = n_rows, parts

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        out_i = np.full((self.n_rows, k), -1, np.int64)
        out_v = np.zeros((self.n_rows, k), np.float32)
        for rows, part in self.parts:
            out_i[rows], out_v[rows] = part.top(k, exclusions.subset(rows))
        return out_i, out_v

    def at(self, items: np.ndarray) -> np.ndarray:
        out = np.zeros(items.shape, np.float32)
        for rows, part in self.parts:
            out[rows] = part.at(items[rows])
        return out

    def peak(self) -> np.ndarray:
        out = np.zeros(self.n_rows, np.float32)
        for rows, part in self.parts:
            out[rows] = part.peak()
        return out

    def dense(self) -> np.ndarray:
        out: np.ndarray | None = None
        for rows, part in self.parts:
            d = part.dense()
            if out is None:
                out = np.zeros((self.n_rows, d.shape[1]), np.float32)
            out[rows] = d
        return out if out is not None else np.zeros((self.n_rows, 0), np.float32)


class ResizedScores(SourceScores):
    """A source's scores over its own ``n_source`` items, seen over a request's ``n`` items: the items added to
    the catalog after the source was fitted have no evidence from it; items a source knows that the request's
    catalog does not (added while the request ran) are never proposed."""

    def __init__(self, inner: SourceScores, n_source: int, n: int) -> None:
        self.inner, self.n_source, self.n = inner, n_source, n

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.top(k, exclusions.over(self.n_source))

    def at(self, items: np.ndarray) -> np.ndarray:
        return self.inner.at(np.where(items < self.n_source, items, -1))

    def peak(self) -> np.ndarray:
        return self.inner.peak()

    def dense(self) -> np.ndarray:
        d = self.inner.dense()
        if d.shape[1] >= self.n:
            return d[:, :self.n]
        return np.pad(d, ((0, 0), (0, self.n - d.shape[1])))


def scores_over(source: "Retriever", queries: Sequence[Query], n_items: int) -> SourceScores:
    """``source``'s scores for queries over a catalog of ``n_items`` items, which may have items the source was
    not fitted on (added since): they leave its queries and get no evidence from it (``ResizedScores``)."""
    m = source.n_items
    if m == n_items:
        return source.scores(queries)
    return ResizedScores(source.scores([q.within(m) for q in queries]), m, n_items)


def list_entries(lists: sp.csr_matrix, owner: np.ndarray, items: np.ndarray, weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neighbour lists (rows of ``lists``) of ``items``, each weighted, as flat (query row, item, score) entries:
    ``owner[j]`` is the query row ``items[j]`` belongs to. Duplicates are left to ``SparseScores`` to sum."""
    items = np.asarray(items, np.int64)
    start, count = lists.indptr[items], lists.indptr[items + 1] - lists.indptr[items]
    total = int(count.sum())
    at = np.arange(total) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
    return np.repeat(owner, count), lists.indices[at], lists.data[at] * np.repeat(weights, count)


def stack_rows(n_rows: int, parts: Sequence[tuple[np.ndarray, SourceScores]]) -> SourceScores:
    return RowStack(n_rows, [(r, p) for r, p in parts if len(r)])


def gather(matrix: np.ndarray, items: np.ndarray) -> np.ndarray:
    """matrix[r, items[r, j]] with 0 where items is -1."""
    ok = items >= 0
    return np.where(ok, take_rows(matrix, np.where(ok, items, 0)), 0.0).astype(np.float32)


def without_zeros(idx: np.ndarray, val: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to k columns, with -1 / 0 wherever the score is not positive (no evidence, or excluded)."""
    ok = val > 0
    idx = np.where(ok, idx, -1).astype(np.int64)
    val = np.where(ok, val, 0.0).astype(np.float32)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        val = np.pad(val, ((0, 0), (0, pad)))
    return idx, val


def segment_top(n_rows: int, row: np.ndarray, idx: np.ndarray, val: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (idx, val) of flat entries given in ascending (row, idx) order, best first, ties by lower
    index; (-1, 0) pads."""
    out_i = np.full((n_rows, k), -1, np.int64)
    out_v = np.zeros((n_rows, k), np.float32)
    if not len(row) or k <= 0:
        return out_i, out_v
    counts = np.bincount(row, minlength=n_rows)
    col = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = int(counts.max())
    vals = np.full((n_rows, width), -np.inf, np.float32)
    items = np.full((n_rows, width), -1, np.int64)
    vals[row, col] = val
    items[row, col] = idx
    pos, best = top_k(vals, min(k, width))  # columns are in index order: ties go to the lower index
    ok = np.isfinite(best)
    out_i[:, :pos.shape[1]] = np.where(ok, take_rows(items, pos), -1)
    out_v[:, :pos.shape[1]] = np.where(ok, best, 0.0)
    return out_i, out_v


class Retriever(ABC):
    """A candidate source: fit on training data, then score batches of queries (``scores``)."""

    name: ClassVar[str]
    # True when the source scores an item only from this request's own context (the shopper's history or model
    # row, the page's or cart's items): its score is evidence about this shopper or item. Popularity is not.
    evidence: ClassVar[bool] = True
    fallback_reason: ClassVar[str] = "popular"  # a source without evidence: the reason its slots give
    # True when the source scores only requests without history, product page or cart (a new shopper's first
    # request): it is no ranker feature (zero on every training request) and the ranker leaves its rows alone
    new_shoppers_only: ClassVar[bool] = False
    progress: Callable[[str], None] | None = None  # training reports long fits' steps here (one progress display)

    @abstractmethod
    def fit(self, data: TrainData) -> "Retriever": ...

    def warm_start(self, earlier: "Retriever", earlier_items: ItemTable) -> None:
        """Start the next ``fit`` from ``earlier``, a fit of this source on a prefix of the same log whose
        vocabulary is ``earlier_items``. By default nothing: sources that fit in seconds fit from scratch."""

    def link(self, fitted: dict[str, "Retriever"]) -> None:
        """Before ``fit``: the sources of the same training fitted before this one (whose item embedding this
        one may build on). By default nothing."""

    def resume(self, path: Path) -> None:
        """Before ``fit``: the directory of the model version serving now, from whose fit of this source the next
        ``fit`` may reuse what still holds (e.g. encoded item texts). By default nothing."""

    @abstractmethod
    def scores(self, queries: Sequence[Query]) -> SourceScores:
        """This source's scores for a batch of queries."""

    def score(self, queries: Sequence[Query]) -> np.ndarray:
        """Dense ``(len(queries), n_items)`` float32 scores of every item."""
        return self.scores(queries).dense()

    @property
    @abstractmethod
    def n_items(self) -> int: ...

    def similar(self, items: np.ndarray, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (indices, scores) of items like each given item (rows), the item itself excluded."""
        queries = [Query(anchors=np.array([i], np.int32)) for i in items]
        ex = Exclusions(np.zeros(self.n_items, bool), [np.array([i], np.int64) for i in items], [None] * len(items))
        return self.scores(queries).top(k, ex)

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> "Retriever": ...


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k indices (ties broken by lower index among the k chosen) and their scores, best first. Which of
    several items tied at the k-th place is chosen is argpartition's choice: the candidate stage's blend scores tie
    at 0 there, and the quality benchmarks were measured with the candidates this choice gives (``top_k_wide``
    chooses the lower index; with it here, and a changed product, Beauty's NDCG@10 moved 0.0686 → 0.0681 in quiet
    runs, through the ranker's training candidates: BENCHMARKS.md, stop 27)."""
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), scores.dtype)
    if k == 1:  # the best alone (a source's peak): argmax keeps the lowest index of a tie
        idx = scores.argmax(axis=1)[:, None]
        return idx.astype(np.int64), take_rows(scores, idx)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
    part_scores = take_rows(scores, part)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = take_rows(part, order)
    return idx, take_rows(scores, idx)


def top_k_wide(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k, best first, every tie (at the k-th place too) to the lower index: by a threshold on wide rows
    of floats (2-4x faster than a partition: ``benchmarks/top_k.py``), for exact vector searches (``ItemVectors``),
    whose continuous scores do not tie."""
    n = scores.shape[1]
    k = min(k, n)
    if k <= 1:
        return top_k(scores, k)
    if n >= ABOVE_MIN_ITEMS and 8 * k <= n and len(scores) and scores.dtype.kind == "f":
        return _top_k_above(scores, k)
    return _top_k_partition(scores, k)


ABOVE_MIN_ITEMS = 4096  # from here on ``top_k_wide`` selects by a threshold


def _top_k_partition(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``top_k_wide`` by each row's k-th best value (a partition): the scores above it, then those equal to it in
    column order until k (so ties at the k-th place go to the lower index, as everywhere else in the list)."""
    b, n = scores.shape
    kth = np.partition(scores, n - k, axis=1)[:, n - k]
    chosen = scores > kth[:, None]
    tied = scores == kth[:, None]
    need = k - np.count_nonzero(chosen, axis=1)
    more = np.flatnonzero(np.count_nonzero(tied, axis=1) > need)  # more ties than places: the first ones
    if len(more):
        tied[more] &= np.cumsum(tied[more], axis=1) <= need[more, None]
    cols = np.nonzero(chosen | tied)[1].reshape(b, k)  # each row's k columns, in column order
    vals = take_rows(scores, cols)
    order = np.argsort(-vals, axis=1, kind="stable")  # best first; equal scores keep the column order
    return take_rows(cols, order), take_rows(vals, order)


def _top_k_above(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``top_k_wide`` by a threshold: a row's (2k·m/n + 9)-th best of an evenly strided sample of m of its n columns lies
    below its k-th best but for rare rows, so its top k are among the scores at or above it — one comparison per
    score, then a partition of those few hundred — instead of a partition of the whole row. The same result
    exactly: rows where fewer than k scores pass (or far more: ties at the threshold, or no finite threshold) take
    the whole row's partition."""
    b, n = scores.shape
    sample = scores[:, ::max(1, n // max(1024, 8 * k))]
    m = sample.shape[1]
    r = min(m - 1, -(-2 * k * m // n) + 8)  # the (r+1)-th best of the sample
    thr = np.partition(sample, m - 1 - r, axis=1)[:, m - 1 - r]
    mask = scores >= thr[:, None]
    count = np.count_nonzero(mask, axis=1)
    good = (count >= k) & (count <= 4 * k + n // 64) & np.isfinite(thr)
    idx = np.empty((b, k), np.int64)
    val = np.empty((b, k), scores.dtype)
    rows_ok = np.flatnonzero(good)
    if len(rows_ok):  # each row's passing scores, left-aligned in column order (-inf after), then partitioned
        rows, cols = np.nonzero(mask if len(rows_ok) == b else mask[rows_ok])
        cnt = count[rows_ok]
        at = np.arange(len(rows)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        width = int(cnt.max())
        packed = np.full((len(rows_ok), width), -np.inf, scores.dtype)
        where = np.zeros((len(rows_ok), width), np.int64)
        packed[rows, at] = scores[rows_ok[rows], cols]
        where[rows, at] = cols
        pos, val[rows_ok] = _top_k_partition(packed, k)
        idx[rows_ok] = take_rows(where, pos)
    rest = np.flatnonzero(~good)
    if len(rest):
        idx[rest], val[rest] = _top_k_partition(scores[rest], k)
    return idx, val


def recency_weights(n: int, decay: float) -> np.ndarray:
    """Weights of the last n items, oldest first: decay**(n-1), ..., decay, 1."""
    return decay ** np.arange(n - 1, -1, -1, dtype=np.float32)
