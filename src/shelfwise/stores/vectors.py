"""Vector indexes behind the ``VectorIndex`` protocol: in-process HNSW (hnswlib) and exact brute force.

Both rank by inner product and answer ``search(queries, k) -> (keys, scores)`` with keys -1 / scores -inf
padding short answers. ``ExactIndex`` is the reference the ANN is measured against (benchmarks/ann_recall.py).
hnswlib is imported lazily, so nothing pays for it unless an index is built or loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def _pad(keys: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if keys.shape[1] >= k:
        return keys, scores
    n = len(keys)
    out_k = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_k[:, : keys.shape[1]] = keys
    out_s[:, : keys.shape[1]] = scores
    return out_k, out_s


def _as_queries(queries: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return q[None, :] if q.ndim == 1 else q


EXACT_CELLS = 1 << 26  # query × item scores an exact search holds at once (256 MB of float32)


def by_row_chunks(search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
                  n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries)`` (an exact search of (keys, scores) rows) in chunks of queries whose dense scores hold at
    most ``EXACT_CELLS`` values: the same rows, while 512 queries over 1M items would hold 2 GB of scores and
    their 4 GB argpartition at once (the held-out metrics of a 1M-item training peaked at 18 GB)."""
    step = max(1, EXACT_CELLS // max(n_items, 1))
    if len(queries) <= step:
        return search(queries)
    parts = [search(queries[i:i + step]) for i in range(0, len(queries), step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class ExactIndex:
    """Brute-force inner-product search (numpy matmul + partial sort): exact, O(n·dim) per query."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, 0), np.float32)

    def build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.keys = np.asarray(keys, np.int64).copy()
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries)
        n = len(self.keys)
        if min(k, n) == 0:
            return _pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        return by_row_chunks(lambda part: self._search(part, k), q, n)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.keys)
        kk = min(k, n)
        scores = q @ self.vectors.T
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(q), 1))
        ps = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        return _pad(self.keys[idx], np.take_along_axis(scores, idx, axis=1).astype(np.float32), k)

    def __len__(self) -> int:
        return len(self.keys)

    def save(self, path: Path) -> None:
        np.savez(path, keys=self.keys, vectors=self.vectors)

    @classmethod
    def load(cls, path: Path) -> "ExactIndex":
        z = np.load(path)
        obj = cls()
        obj.keys, obj.vectors = z["keys"], z["vectors"]
        return obj


class HNSWIndex:
    """hnswlib HNSW graph for maximum inner product search, in process.

    Inner product is not a metric, and an HNSW graph built on it directly navigates badly when vector norms
    differ (as trained item embeddings' do: popular items have long vectors): on trained sequence-model
    embeddings recall@10 was 0.46. So every item vector gets one extra coordinate ``sqrt(max_norm² - |x|²)``
    (all items then have the same norm) and queries a 0 there: the inner product is unchanged, and on vectors
    of equal norm it ranks exactly like (metric) Euclidean distance, which HNSW handles well (recall@10 0.99 on
    the same data; Bachrach et al., RecSys 2014).

    ``m`` (graph degree) and ``ef_construction`` set build quality; ``ef_search`` the breadth of a query
    (raised to ``k`` when a query asks for more). Scores are inner products (hnswlib's ``1 - distance``).
    """

    def __init__(self, m: int = 16, ef_construction: int = 200, ef_search: int = 200, threads: int = 1,
                 seed: int = 0) -> None:
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.threads = threads  # query threads; builds use every core
        self.seed = seed
        self._index = None
        self._n = 0
        self._dim = 0
        self._ef = 0

    def build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        import hnswlib

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = np.asarray(keys, np.int64)
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise ValueError("vectors must be (n, dim) with one key per row")
        if len(keys) and keys.min() < 0:
            raise ValueError("keys must be non-negative")
        self._dim = vectors.shape[1]
        index = hnswlib.Index(space="ip", dim=self._dim + 1)
        index.init_index(max_elements=max(len(keys), 1), M=self.m, ef_construction=self.ef_construction,
                         random_seed=self.seed)
        if len(keys):
            norm2 = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
            extra = np.sqrt(np.maximum(norm2.max() - norm2, 0.0)).astype(np.float32)
            index.add_items(np.hstack([vectors, extra[:, None]]), keys, num_threads=-1)
        self._index = index
        self._n = len(keys)
        self._set_ef(self.ef_search)

    def _set_ef(self, ef: int) -> None:
        if self._index is not None and ef != self._ef:
            self._index.set_ef(ef)
            self._ef = ef

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries)
        kk = min(k, self._n)
        if kk == 0 or self._index is None:
            return _pad(np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32), k)
        self._set_ef(max(self.ef_search, kk))
        q = np.hstack([q, np.zeros((len(q), 1), np.float32)])
        try:
            labels, dist = self._index.knn_query(q, k=kk, num_threads=self.threads)
        except RuntimeError:  # some query reached fewer than kk items (a poorly connected part of the graph)
            return self._search_each(q, kk, k)
        return _pad(labels.astype(np.int64), (1.0 - dist).astype(np.float32), k)

    def _search_each(self, q: np.ndarray, kk: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Query by query: a wider search (4x ef), then as many neighbours as the graph yields (halving k),
        padded with key -1 / score -inf — never an error for the request that asked."""
        out_k = np.full((len(q), k), -1, np.int64)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        ef = self._ef
        try:
            self._set_ef(max(self.ef_search, kk) * 4)
            for i in range(len(q)):
                want = kk
                while want > 0:
                    try:
                        labels, dist = self._index.knn_query(q[i:i + 1], k=want, num_threads=1)
                        break
                    except RuntimeError:
                        want //= 2
                if want:
                    out_k[i, :want], out_s[i, :want] = labels[0], 1.0 - dist[0]
        finally:
            self._set_ef(ef)
        return out_k, out_s

    def __len__(self) -> int:
        return self._n

    def save(self, path: Path) -> None:
        if self._index is None:
            raise ValueError("nothing to save: the index was never built")
        self._index.save_index(str(path))

    @classmethod
    def load(cls, path: Path, dim: int, m: int = 16, ef_construction: int = 200, ef_search: int = 200,
             threads: int = 1) -> "HNSWIndex":
        import hnswlib

        obj = cls(m=m, ef_construction=ef_construction, ef_search=ef_search, threads=threads)
        index = hnswlib.Index(space="ip", dim=dim + 1)  # + the equal-norm coordinate
        index.load_index(str(path))
        obj._index = index
        obj._n = index.get_current_count()
        obj._dim = dim
        obj._set_ef(ef_search)
        return obj
