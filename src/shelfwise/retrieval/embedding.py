"""Embedding sources' item vectors and how they are searched: ANN as a wrapper around any embedding model.

``ItemVectors`` holds one source's item vectors in one space (inner product) and answers top-k searches: by an
exact product for catalogs up to ``exact_max_items`` and for big offline batches (``ann_max_batch``), otherwise
through the ``VectorIndex`` attached to it (``stores.vectors``: in-process HNSW, exact, or pgvector shared by
every replica). ``VectorScores`` turns query vectors into a source's ``SourceScores`` either way, so the
cost of a request does not grow with the catalog once it is searched through an index.

An item matrix that is wide and mostly zeros in most of its columns (the content source's raw vectors: 384 dense
text floats beside ~900 hashed catalog columns of which an item uses ~30) is scored as a dense block plus a
sparse one (``SplitProduct``): the same inner products, a third of the memory read per request.

Queries that are weighted sums of a few items' vectors (a product page, a cart) can be answered from neighbour
lists instead of a product with every item (``build_lists``, ``combined``): each item's top neighbours by inner
product, computed once per model version. A one-item query's top of the list is exact; a sum of several items'
vectors is scored exactly on the union of their lists (on a 12k-item shop the union holds 99.5 % of the exact top
50 of two-item carts, 98.8 % of three-item ones).

Vectors change without retraining through ``updated`` (the content source: items added or changed after
training): a new ``ItemVectors`` sharing the index and the lists, whose rows appended since the index was built
are searched exactly beside it, until the next model version builds a new index; rows added or changed since the
lists were built are scored exactly beside the lists, never from them, and have no list of their own.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from shelfwise.request import Exclusions, take_rows
from shelfwise.retrieval.base import (SourceScores, SparseScores, list_entries, segment_top, top_k, top_k_wide,
                                      without_zeros)
from shelfwise.settings import CandidateSettings
from shelfwise.stores.protocols import VectorIndex
from shelfwise.stores.vectors import by_row_chunks

# (name, vectors) -> a built index over keys 0..n-1; provided by the assembler from settings.stores.vectors
IndexFactory = Callable[[str, np.ndarray], VectorIndex]


def products(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``queries @ vectors.T`` as a C-ordered (B, n) array. A few queries: computed as ``(vectors @ queries.T).T``,
    since OpenBLAS's sgemm with a few query rows on the left is slow here (2-8 queries against 12k items: 0.43-0.51
    ms at 64 dimensions against 0.15-0.28 ms the other way round, 1.6 ms against 0.55 ms at 128; one query: the
    same). From ``PRODUCT_ROWS`` queries of at most 256 dimensions on, over ``DIRECT_MIN_ITEMS`` items or more,
    directly: the transposed copy then costs more than the product (64 queries × 1M items: 182 against 747 ms, one
    thread). Smaller catalogs keep the product as the quality benchmarks measured it: a Beauty run with this
    direct product at 12k items and ``top_k_wide`` in the candidate stage together gave NDCG@10 0.0681 against
    0.0686 (quiet runs; BENCHMARKS.md, stop 27), through the ranker's training candidates; which of the two moved
    it is not settled."""
    if len(queries) >= PRODUCT_ROWS and vectors.shape[1] <= 256 and len(vectors) >= DIRECT_MIN_ITEMS:
        return queries @ vectors.T
    return np.ascontiguousarray((vectors @ queries.T).T)


PRODUCT_ROWS = 32
DIRECT_MIN_ITEMS = 30_000
SPLIT_MIN_DIM = 256  # narrower item matrices are always multiplied as they are
SPLIT_DENSITY = 0.1  # a column is sparse when at most this share of the items have a non-zero in it
SPLIT_MIN_SHARE = 0.5  # split only when the sparse columns are at least this share of the width


class SplitProduct:
    """``queries @ vectors.T`` as a dense block of the dense columns plus a CSR matrix of the sparse ones."""

    def __init__(self, vectors: np.ndarray, sparse: np.ndarray) -> None:
        self.dense_cols, self.sparse_cols = np.flatnonzero(~sparse), np.flatnonzero(sparse)
        self.head = np.ascontiguousarray(vectors[:, self.dense_cols])
        self.tail = sp.csr_matrix(vectors[:, self.sparse_cols])

    @classmethod
    def of(cls, vectors: np.ndarray) -> "SplitProduct | None":
        """The split of ``vectors`` when it pays (wide, mostly sparse columns), else None."""
        n, d = vectors.shape
        if d < SPLIT_MIN_DIM or n == 0:
            return None
        sparse = np.count_nonzero(vectors, axis=0) <= SPLIT_DENSITY * n
        return cls(vectors, sparse) if sparse.sum() >= SPLIT_MIN_SHARE * d else None

    def __call__(self, queries: np.ndarray) -> np.ndarray:
        out = products(queries[:, self.dense_cols], self.head)
        out += (self.tail @ np.ascontiguousarray(queries[:, self.sparse_cols]).T).T
        return out


class ItemVectors:
    """Item vectors of one source in one space (scores are inner products), searchable."""

    def __init__(self, name: str, vectors: np.ndarray, search: CandidateSettings | None = None) -> None:
        self.name = name
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.search_settings = search or CandidateSettings()
        self.index: VectorIndex | None = None
        self.indexed = 0  # rows the index holds (the first ones); later rows are searched exactly
        self._split = SplitProduct.of(self.vectors)  # built here: off the request path (load, live-item thread)
        self.lists: sp.csr_matrix | None = None  # row i: item i's top neighbours by inner product (itself included)
        self.listed = np.zeros(0, bool)  # rows whose list (and entries in others' lists) hold for their vector now
        self._unlisted = np.zeros(0, np.int64)  # the rows that do not: scored exactly beside the lists

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def needs_index(self) -> bool:
        return len(self.vectors) > self.search_settings.exact_max_items

    def attach(self, factory: IndexFactory | None, settings: CandidateSettings | None = None) -> None:
        """Search through an index from ``factory`` when the catalog is above the exact size."""
        if settings is not None:
            self.search_settings = settings
        self.index = factory(self.name, self.vectors) if factory is not None and self.needs_index else None
        self.indexed = len(self.vectors) if self.index is not None else 0

    def updated(self, vectors: np.ndarray, changed: np.ndarray) -> "ItemVectors":
        """New vectors for these items (rows ``changed`` replaced or appended), sharing this index and these lists:
        readers of this object are unaffected. Appended rows are searched exactly beside the index; a replaced row
        is found by the index at its old position until the next index build (its scores are always the new
        vector's). Changed and appended rows leave the lists: they are scored exactly beside them."""
        out = ItemVectors(self.name, vectors, self.search_settings)
        out.index, out.indexed = self.index, self.indexed
        if self.lists is not None:
            listed = np.zeros(len(out), bool)
            listed[:len(self.listed)] = self.listed[:len(out)]
            listed[np.asarray(changed, np.int64)] = False
            out._set_lists(self.lists, listed)
        return out

    def build_lists(self, k: int, chunk_scores: int = 1 << 22) -> None:
        """Each item's ``k`` best neighbours by inner product (itself included; only positive scores; at least one
        item), by products of ``chunk_scores`` scores at a time. 12k items × 1,360 dimensions, k = 300: about 5 s on 2 cores."""
        n = len(self.vectors)
        k = min(k, n)
        rows, cols, vals = [], [], []
        step = max(1, chunk_scores // max(n, 1))
        for r0 in range(0, n, step):
            s = self.product(self.vectors[r0:r0 + step])
            idx = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(s), 1))
            val = take_rows(s, idx)
            r, c = np.nonzero(val > 0)
            rows.append(r + r0)
            cols.append(idx[r, c])
            vals.append(val[r, c])
        lists = sp.csr_matrix((np.concatenate(vals).astype(np.float32),
                               (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        lists.sort_indices()
        self._set_lists(lists, np.ones(n, bool))

    def _set_lists(self, lists: sp.csr_matrix, listed: np.ndarray) -> None:
        self.lists, self.listed = lists, listed
        self._unlisted = np.flatnonzero(~listed).astype(np.int64)

    @property
    def unlisted_share(self) -> float:
        """The share of rows scored beside the lists (added or changed since they were built); 1 without lists."""
        return len(self._unlisted) / max(len(self), 1) if self.lists is not None else 1.0

    def can_combine(self, items: np.ndarray) -> bool:
        """Whether a query made of these items' vectors can be answered from the lists (every item listed)."""
        return self.lists is not None and len(items) > 0 and bool(self.listed[items].all())

    def combined(self, queries: np.ndarray, owner: np.ndarray, items: np.ndarray, weights: np.ndarray
                 ) -> SparseScores:
        """Scores ``max(0, q · v)`` of query rows ``q = Σ weights[j] · vectors[items[j]]`` over ``owner[j] = row``
        (every item listed: ``can_combine``) on the items of their lists and the rows not listed; items in none
        of the lists have no score. A one-item query takes its list's scores; a query of several items is scored
        exactly on the union of their lists (the best matches of a sum of unlike items may be in none of them)."""
        assert self.lists is not None
        row, idx, val = list_entries(self.lists, owner, items, weights)
        keep = self.listed[idx]
        row, idx, val = row[keep], idx[keep], val[keep]
        several = np.flatnonzero(np.bincount(owner, minlength=len(queries)) > 1)
        if len(several):
            alone = ~np.isin(row, several)
            rows, cols, vals = [row[alone]], [idx[alone]], [val[alone]]
            for r in several:
                union = np.unique(idx[row == r])
                got = self.rows_dot(queries[r], union)
                ok = got > 0
                rows.append(np.full(int(ok.sum()), r, np.int64))
                cols.append(union[ok])
                vals.append(got[ok])
            row, idx, val = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        if len(self._unlisted):
            exact = products(queries, self.vectors[self._unlisted])
            r, c = np.nonzero(exact > 0)
            row = np.concatenate([row, r])
            idx = np.concatenate([idx, self._unlisted[c]])
            val = np.concatenate([val, exact[r, c]])
        return SparseScores(len(queries), len(self), row, idx, val)

    def rows_dot(self, query: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``query · v`` of one query with the given items (as ``product`` computes it)."""
        if self._split is None:
            return (self.vectors[items] @ query).astype(np.float32)
        s = self._split
        return (s.head[items] @ query[s.dense_cols] + s.tail[items] @ query[s.sparse_cols]).astype(np.float32)

    def product(self, queries: np.ndarray) -> np.ndarray:
        """(B, n) inner products of each query with every item."""
        return products(queries, self.vectors) if self._split is None else self._split(queries)

    def exact_for(self, batch: int) -> bool:
        s = self.search_settings
        return self.index is None or not self.needs_index or batch > s.ann_max_batch

    def search(self, queries: np.ndarray, k: int, ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (item indices, inner products) per query row; -1 / -inf pad. ``ordered=False``: the same k items,
        in no particular order (cheaper for an exact search)."""
        k = max(1, min(k, len(self.vectors)))
        if self.exact_for(len(queries)):
            return by_row_chunks(lambda part: self._exact(part, k, ordered), queries, len(self.vectors))
        assert self.index is not None
        keys, scores = self.index.search(queries, k)
        if len(self.vectors) <= self.indexed:
            return keys, scores
        more, more_scores = top_k(products(queries, self.vectors[self.indexed:]), k)
        keys = np.concatenate([keys, more + self.indexed], axis=1)
        scores = np.concatenate([scores, more_scores], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return take_rows(keys, best), take_rows(scores, best)

    def _exact(self, queries: np.ndarray, k: int, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
        scores = self.product(queries)
        n = scores.shape[1]
        if not ordered and n / 8 < k < n:  # many of few items, in any order: one partition is the cheapest
            idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            return idx.astype(np.int64), take_rows(scores, idx)
        return top_k_wide(scores, k)

    def dot(self, queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(B, M) inner products of each query with its items (-1 pads give 0)."""
        ok = items >= 0
        vec = self.vectors[np.where(ok, items, 0)]
        return np.where(ok, np.einsum("bd,bmd->bm", queries, vec), 0.0).astype(np.float32)


def vector_scores(space: ItemVectors, queries: np.ndarray, present: np.ndarray, clip: bool = True) -> SourceScores:
    """A source's scores ``max(0, q · v)`` (``clip``) for query vectors; rows not ``present`` have no evidence."""
    return VectorScores(space, queries, present, clip)


class VectorScores(SourceScores):
    """Scores searched through ``ItemVectors`` (exact or an index): top-k by over-fetching past each request's
    exclusions, any item's score by a dot product."""

    def __init__(self, space: ItemVectors, queries: np.ndarray, present: np.ndarray, clip: bool) -> None:
        self.space, self.q, self.present, self.clip = space, queries, present, clip
        self._peak: np.ndarray | None = None
        self._dense: np.ndarray | None = None

    def _score(self, s: np.ndarray) -> np.ndarray:
        return np.maximum(s, 0.0) if self.clip else s

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        b = len(self.q)
        rows = np.flatnonzero(self.present)
        out_i = np.full((b, k), -1, np.int64)
        out_v = np.zeros((b, k), np.float32)
        if not len(rows) or k <= 0:
            self._peak = np.zeros(b, np.float32)
            return out_i, out_v
        n = len(self.space)
        fetch = min(n, k + max(len(exclusions.rows[r]) for r in rows) + 16)
        peak = np.zeros(b, np.float32)
        todo = rows
        while len(todo):
            keys, sc = self.space.search(self.q[todo], fetch)
            peak[todo] = np.maximum(self._score(np.where(keys[:, 0] >= 0, sc[:, 0], 0.0)), 0.0)
            sub = exclusions.subset(todo)
            val = np.where(keys >= 0, self._score(sc), 0.0)
            keep = sub.keep(keys) & (val > 0)
            rr, cc = np.nonzero(keep)
            ki = keys[rr, cc]
            order = np.lexsort((ki, rr))
            ti, tv = segment_top(len(todo), rr[order], ki[order], val[rr, cc][order], k)
            out_i[todo], out_v[todo] = ti, tv
            short = ((ti >= 0).sum(axis=1) < k) & ((keys >= 0).sum(axis=1) >= fetch) & (val[:, -1] > 0)
            if fetch >= n or not short.any():
                break
            todo, fetch = todo[short], min(n, fetch * 4)  # many excluded near the top: search deeper
        self._peak = peak
        return without_zeros(out_i, out_v, k)

    def at(self, items: np.ndarray) -> np.ndarray:
        out = self._score(self.space.dot(self.q, items))
        out[~self.present] = 0.0
        return out

    def dense(self) -> np.ndarray:
        if self._dense is None:  # kept: the exact path asks for it and for the peak, one product serves both
            rows = np.flatnonzero(self.present)
            if len(rows) == len(self.q):
                out = self.space.product(self.q)
            else:  # queries without evidence score nothing: not multiplied
                out = np.zeros((len(self.q), len(self.space)), np.float32)
                if len(rows):
                    out[rows] = self.space.product(self.q[rows])
            if self.clip:
                np.maximum(out, 0.0, out=out)
            out[~self.present] = 0.0
            self._dense = out
        return self._dense

    def peak(self) -> np.ndarray:
        if self._peak is None and self._dense is not None and self._dense.shape[1]:
            self._peak = np.where(self.present, self._dense.max(axis=1), 0.0).astype(np.float32)
        if self._peak is None:
            p = np.zeros(len(self.q), np.float32)
            rows = np.flatnonzero(self.present)
            if len(rows):
                keys, sc = self.space.search(self.q[rows], 1)
                p[rows] = np.where(keys[:, 0] >= 0, self._score(sc[:, 0]), 0.0)
            self._peak = p
        return self._peak
