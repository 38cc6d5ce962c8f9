"""``top_k_wide``: its threshold selection (wide rows) gives exactly what a full sort gives, ties and all."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shelfwise.retrieval.base import ABOVE_MIN_ITEMS, _top_k_partition, top_k_wide


def reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row completely: best first, ties to the lower index."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 12), extra=st.integers(0, 6000),
       k=st.integers(2, 700), kind=st.sampled_from(["normal", "ties", "mostly_zero", "minus_inf", "constant",
                                                      "sorted", "float64"]))
def test_threshold_selection_equals_the_full_sort(seed, rows, extra, k, kind):
    rng = np.random.default_rng(seed)
    n = ABOVE_MIN_ITEMS + extra
    k = min(k, n // 8)
    s = rng.normal(size=(rows, n)).astype(np.float32)
    if kind == "ties":  # few distinct values: ties at the threshold and at the k-th place
        s = rng.integers(0, 40, size=(rows, n)).astype(np.float32)
    elif kind == "mostly_zero":  # clipped scores: a few positive, the rest 0
        s = np.where(rng.random((rows, n)) < 0.02, s, 0.0).astype(np.float32)
    elif kind == "minus_inf":  # excluded items, some rows with fewer than k finite scores
        s[rng.random((rows, n)) < rng.uniform(0.5, 1.0, size=(rows, 1))] = -np.inf
    elif kind == "constant":
        s[:] = 1.5
    elif kind == "sorted":  # scores following the column order (a strided sample sees a trend)
        s = np.sort(s, axis=1)[:, ::-1].copy() if seed % 2 else np.sort(s, axis=1)
    elif kind == "float64":
        s = s.astype(np.float64)
    idx, val = top_k_wide(s, k)
    want_idx, want_val = reference(s, k)
    assert idx.dtype == np.int64 and val.dtype == s.dtype and idx.shape == (rows, k)
    assert np.array_equal(idx, want_idx)
    assert np.array_equal(val, want_val)
    p_idx, p_val = _top_k_partition(s, k)
    assert np.array_equal(p_idx, want_idx) and np.array_equal(p_val, want_val)


def test_wide_rows_partition_only_their_passing_scores(monkeypatch):
    """On continuous scores every row passes the threshold: one partition of (rows, a few hundred), never of a whole
    row; a row with fewer than k finite scores takes the whole row's partition, and still gets its k."""
    from shelfwise.retrieval import base

    widths = []
    real = base._top_k_partition
    monkeypatch.setattr(base, "_top_k_partition", lambda s, k: widths.append(s.shape) or real(s, k))
    s = np.random.default_rng(3).normal(size=(6, 50_000)).astype(np.float32)
    s[5, 100:] = -np.inf
    idx, val = top_k_wide(s, 300)
    assert len(widths) == 2 and widths[0][0] == 5 and widths[0][1] < 2_000 and widths[1] == (1, 50_000)
    want_idx, want_val = reference(s, 300)
    assert np.array_equal(idx, want_idx) and np.array_equal(val, want_val)
    assert np.isneginf(val[5, 100:]).all() and list(idx[5, 100:110]) == list(range(100, 110))
