"""EASE: the closed form on a hand-made case, scoring from history or anchors, persistence, size guard."""

import numpy as np
import pytest

from shelfwise.request import Query
from shelfwise.retrieval import TrainData, build_retrievers, load_retriever
from shelfwise.settings import EASESettings, ModelSettings
from shelfwise.stores import open_event_store
from tests.conftest import tiny_catalog, tiny_events


@pytest.fixture
def data(tmp_path) -> TrainData:
    store = open_event_store(f"sqlite:///{tmp_path}/e.db")
    store.append(tiny_events())
    return TrainData.from_log(store.scan(), {it.id: it for it in tiny_catalog()}, ModelSettings().event_weights)


def test_ease_matches_the_closed_form(data):
    ms = ModelSettings(ease=EASESettings(l2=2.0))
    ease = build_retrievers(ms, ("ease",))["ease"].fit(data)
    X = data.user_item_matrix().toarray()
    X = (X > 0).astype(np.float64)
    G = X.T @ X + 2.0 * np.eye(X.shape[1])
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    assert ease.weights == pytest.approx(B.astype(np.float32), abs=1e-4)
    idx = data.items.index
    hist = np.array([idx["p1"], idx["c1"]], np.int32)
    row = ease.score([Query(history=hist, history_kind=np.zeros(2, np.int8))])[0]
    expected = np.maximum(X[0] * 0 + B[idx["p1"]] + B[idx["c1"]], 0)
    assert row == pytest.approx(expected.astype(np.float32), abs=1e-4)
    # a product page is scored from its anchor: the cases seen with phone 2 (c1, c2) outrank the others
    row = ease.score([Query(anchors=np.array([idx["p2"]], np.int32))])[0]
    assert min(row[idx["c1"]], row[idx["c2"]]) > max(row[idx["c0"]], row[idx["c3"]])
    assert (row >= 0).all()


def test_ease_save_load_and_size_guard(data, tmp_path):
    ease = build_retrievers(ModelSettings(), ("ease",))["ease"].fit(data)
    ease.save(tmp_path)
    again = load_retriever("ease", tmp_path)
    assert np.array_equal(again.weights, ease.weights)
    small = build_retrievers(ModelSettings(ease=EASESettings(max_items=3)), ("ease",))["ease"]
    with pytest.raises(ValueError, match="max_items"):
        small.fit(data)
