"""VectorIndex contract: written once, run against exact search, in-process HNSW (hnswlib) and pgvector."""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import numpy as np
import pytest

from shelfwise.stores import open_vector_index


@pytest.fixture(params=["exact", "hnsw", "pgvector"])
def open_index(request: pytest.FixtureRequest) -> Iterator[Callable[[], object]]:
    """Opens the index under test; for pgvector every call opens the same table (restart tests)."""
    dsn = {"exact": "exact://", "hnsw": "hnsw://?m=16&ef_construction=128&ef_search=200"}.get(request.param)
    if dsn is None:
        dsn = request.getfixturevalue("pgvector_dsn")
    opened = []

    def factory():
        ix = open_vector_index(dsn)
        opened.append(ix)
        return ix

    factory.backend = request.param  # type: ignore[attr-defined]
    yield factory
    for ix in opened:
        if hasattr(ix, "close"):
            ix.close()


def brute_force(keys: np.ndarray, vectors: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = q @ vectors.T
    return keys[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def test_empty_index_pads(open_index):
    ix = open_index()
    keys, scores = ix.search(np.ones((2, 4), np.float32), 3)
    assert len(ix) == 0 and keys.shape == (2, 3) and (keys == -1).all() and np.isneginf(scores).all()


def test_exact_on_a_small_set_with_padding(open_index):
    ix = open_index()
    vectors = np.array([[1, 0], [0, 1], [0.9, 0.1], [-1, 0]], np.float32)
    keys = np.array([10, 20, 30, 40], np.int64)
    ix.build(keys, vectors)
    assert len(ix) == 4
    got, scores = ix.search(np.array([[1, 0], [0, 2]], np.float32), 6)
    assert got.dtype == np.int64 and got.shape == (2, 6)
    assert list(got[0, :4]) == [10, 30, 20, 40] and list(got[0, 4:]) == [-1, -1]
    assert list(got[1, :2]) == [20, 30]
    np.testing.assert_allclose(scores[0, :4], [1.0, 0.9, 0.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(scores[1, :2], [2.0, 0.2], atol=1e-5)
    assert np.isneginf(scores[:, 4:]).all()
    one_d, _ = ix.search(np.array([0, 1], np.float32), 1)  # a single query as a 1-D vector
    assert one_d.shape == (1, 1) and one_d[0, 0] == 20


def test_recall_against_brute_force(open_index):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3000, 24)).astype(np.float32)
    keys = rng.permutation(100_000)[:3000].astype(np.int64)
    ix = open_index()
    ix.build(keys, vectors)
    q = rng.normal(size=(50, 24)).astype(np.float32)
    got, scores = ix.search(q, 10)
    truth = brute_force(keys, vectors, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-5)  # best first
    row_of = {int(k): i for i, k in enumerate(keys)}
    recomputed = np.array([[q[r] @ vectors[row_of[int(k)]] for k in row] for r, row in enumerate(got)])
    np.testing.assert_allclose(scores, recomputed, rtol=1e-4, atol=1e-4)  # scores are inner products


def test_build_replaces_contents(open_index):
    ix = open_index()
    ix.build(np.arange(5), np.eye(5, dtype=np.float32))
    ix.build(np.array([100, 200]), np.array([[1, 1], [1, -1]], np.float32))  # new dimension too
    assert len(ix) == 2
    got, _ = ix.search(np.array([[1, -1]], np.float32), 3)
    assert list(got[0]) == [200, 100, -1]


def test_concurrent_searches_agree(open_index):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    ix = open_index()
    ix.build(np.arange(500), vectors)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    expected, _ = ix.search(q, 5)
    results: list = []

    def searcher() -> None:
        for _ in range(5):
            results.append(ix.search(q, 5)[0])

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and all((r == expected).all() for r in results)


def test_restart(open_index):
    ix = open_index()
    ix.build(np.array([1, 2, 3]), np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    again = open_index()
    if open_index.backend == "pgvector":  # shared by every replica and kept across restarts
        assert len(again) == 3 and list(again.search(np.array([[1, 1]], np.float32), 1)[0][0]) == [3]
    else:  # in-process indexes are rebuilt (or loaded from the model version) by each process
        assert len(again) == 0
