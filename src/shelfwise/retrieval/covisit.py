"""Co-visitation (item→item from views within a session, time-decayed) and co-purchase (items bought together).

A shopper is scored from their last N items with recency weights; a product page or cart from its items: the
weighted sum of those items' neighbour lists (at most ``top_per_item`` each), so a request reads a few hundred
entries whatever the size of the catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.domain import EventType
from shelfwise.request import Query
from shelfwise.retrieval.base import Retriever, SparseScores, TrainData, list_entries, recency_weights
from shelfwise.settings import CovisitSettings

_BASKET = (EventType.add_to_cart, EventType.purchase_completed)


def prune_rows(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Keep the ``keep`` largest entries of each row."""
    m = m.tocsr()
    m.sum_duplicates()
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= keep:
        return m
    rows, cols, vals = [], [], []
    for r in np.flatnonzero(counts):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        v = m.data[lo:hi]
        sel = np.argpartition(-v, keep - 1)[:keep] if hi - lo > keep else np.arange(hi - lo)
        rows.append(np.full(len(sel), r))
        cols.append(m.indices[lo:hi][sel])
        vals.append(v[sel])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)


def _cosine(m: sp.csr_matrix, occurrences: np.ndarray) -> sp.csr_matrix:
    inv = 1.0 / np.sqrt(np.maximum(occurrences, 1e-9))
    return (sp.diags(inv) @ m @ sp.diags(inv)).tocsr()


class CovisitRetriever(Retriever):
    """``mode="view"``: session co-visitation ("covisit"); ``mode="purchase"``: co-purchase ("copurchase")."""

    name = "covisit"

    def __init__(self, settings: CovisitSettings | None = None, mode: Literal["view", "purchase"] = "view") -> None:
        self.settings = settings or CovisitSettings()
        self.mode = mode
        self.name = "covisit" if mode == "view" else "copurchase"  # type: ignore[misc]
        self.matrix = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: TrainData) -> "CovisitRetriever":
        s = self.settings
        n = data.n_items
        decay = np.power(0.5, (data.now - data.ts) / (s.half_life_days * 86400.0)).astype(np.float32)
        if self.mode == "view":
            mask = data.weight > 0
            sess, item, w = data.session[mask], data.item[mask], decay[mask]
            rows, cols, vals = [], [], []
            for d in range(1, s.window + 1):
                same = (sess[d:] == sess[:-d]) & (item[d:] != item[:-d])
                a, b, wt = item[:-d][same], item[d:][same], w[d:][same]
                rows += [a, b]
                cols += [b, a]
                vals += [wt * s.forward_weight, wt * s.backward_weight]
            occ = np.bincount(item, weights=w, minlength=n)
            m = sp.csr_matrix((np.concatenate(vals) if vals else [], (np.concatenate(rows) if rows else [],
                               np.concatenate(cols) if cols else [])), shape=(n, n), dtype=np.float32)
        else:
            mask = np.isin(data.kind, _BASKET)
            # a basket is the session's carted/bought items (orders live inside sessions)
            basket = sp.csr_matrix((decay[mask], (data.session[mask], data.item[mask])),
                                   shape=(int(data.session.max(initial=-1)) + 1, n), dtype=np.float32)
            basket.data[:] = np.minimum(basket.data, 1.0)
            m = (basket.T @ basket).tocsr()
            m.setdiag(0)
            m.eliminate_zeros()
            occ = np.asarray(basket.sum(axis=0)).ravel()
        m.sum_duplicates()
        if s.normalize == "cosine":
            m = _cosine(m, occ)
        self.matrix = prune_rows(m, s.top_per_item).astype(np.float32)
        return self

    def anchors(self, q: Query) -> tuple[np.ndarray, np.ndarray]:
        """The items a query is scored from, with their weights: page/cart items, else the last N viewed."""
        if len(q.anchors):
            return q.anchors, np.ones(len(q.anchors), np.float32)
        items = _last_distinct(q.history, self.settings.last_n)
        return items, recency_weights(len(items), self.settings.recency_decay)

    @property
    def n_items(self) -> int:
        return self.matrix.shape[0]

    def scores(self, queries: Sequence[Query]) -> SparseScores:
        m = self.matrix
        anchors = [self.anchors(q) for q in queries]
        lens = np.array([len(a) for a, _ in anchors], np.int64)
        items = np.concatenate([a for a, _ in anchors]).astype(np.int64) if lens.sum() else np.zeros(0, np.int64)
        weights = np.concatenate([w for _, w in anchors]) if lens.sum() else np.zeros(0, np.float32)
        owner = np.repeat(np.arange(len(queries)), lens)
        return SparseScores(len(queries), m.shape[0], *list_entries(m, owner, items, weights))

    def save(self, path: Path) -> None:
        sp.save_npz(path / f"{self.name}.npz", self.matrix)
        (path / f"{self.name}.json").write_text(self.settings.model_dump_json())

    @classmethod
    def load(cls, path: Path, mode: Literal["view", "purchase"] = "view") -> "CovisitRetriever":
        name = "covisit" if mode == "view" else "copurchase"
        obj = cls(CovisitSettings.model_validate_json((path / f"{name}.json").read_text()), mode=mode)
        obj.matrix = sp.load_npz(path / f"{name}.npz").tocsr()
        return obj


def _last_distinct(history: np.ndarray, n: int) -> np.ndarray:
    """The last n distinct items of a history, oldest first."""
    out: list[int] = []
    for it in history[::-1]:
        if it not in out:
            out.append(int(it))
            if len(out) == n:
                break
    return np.array(out[::-1], np.int32)
