"""One contract for every candidate source (like the storage roles' suites): shapes and dtypes, shoppers and
histories the model has never seen, batch equals one-by-one, save/load, and that a source only ever proposes
items a request may show, with the same scores it gives when asked about those items."""

from __future__ import annotations

import numpy as np
import pytest

from shelfwise.request import Exclusions, Query, Visit
from shelfwise.retrieval import REGISTRY, build_retrievers, load_retriever
from shelfwise.retrieval.base import Retriever, TrainData
from shelfwise.settings import ModelSettings, SequenceSettings
from shelfwise.synthetic import generate_storefront
from shelfwise.stores.sqlite import SQLiteStore

SOURCES = sorted(REGISTRY)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    shop = generate_storefront(n_items=200, n_shoppers=150, n_events=5000, seed=5)
    store = SQLiteStore(f"sqlite:///{tmp_path_factory.mktemp('retrievers') / 'r.db'}")
    store.upsert(shop.items)
    store.append(list(shop.events()))
    ms = ModelSettings()
    out = TrainData.from_log(store.scan(), {it.id: it for it in shop.items}, ms.event_weights,
                             contexts=store.entry_contexts())
    store.close()
    return out


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, Retriever]:
    ms = ModelSettings(sequence=SequenceSettings(dim=16, layers=1, heads=1, max_epochs=2, progress=False,
                                                 candidates=50))
    out = build_retrievers(ms, tuple(SOURCES))
    for r in out.values():
        r.fit(data)
    return out


def queries(data: TrainData) -> list[Query]:
    seqs = data.sequences()
    known = [u for u in range(data.n_users) if len(seqs[u]) >= 3][:6]
    out = [Query(user=u, history=seqs[u][-10:], history_kind=np.zeros(len(seqs[u][-10:]), np.int8),
                 history_ts=np.arange(len(seqs[u][-10:]), dtype=np.float64)) for u in known]
    out.append(Query())  # an unknown shopper with no history
    out.append(Query(user=-1, history=seqs[known[0]][-3:], history_kind=np.zeros(3, np.int8),
                     history_ts=np.arange(3.0), fresh=True))  # unknown shopper, fresh history
    out.append(Query(anchors=np.array([int(data.item[0])], np.int32)))  # a product page
    out.append(Query(anchors=np.array([int(data.item[1]), int(data.item[2])], np.int32)))  # a cart
    out.append(Query(visit=Visit("mobile", "homepage")))  # a new shopper on a phone: their cohort is known
    return out


def exclusions(data: TrainData, qs: list[Query]) -> Exclusions:
    rng = np.random.default_rng(0)
    banned = np.zeros(data.n_items, bool)
    banned[rng.choice(data.n_items, data.n_items // 10, replace=False)] = True  # out of stock
    rows = [np.unique(np.concatenate([q.history, q.anchors]).astype(np.int64)) for q in qs]
    allowed: list[np.ndarray | None] = [None] * len(qs)
    allowed[0] = data.items.category == data.items.category[int(data.item[5])]  # a category filter
    return Exclusions(banned, rows, allowed)


@pytest.mark.parametrize("name", SOURCES)
def test_shapes_dtypes_and_no_evidence_for_the_unknown(name, fitted, data):
    r = fitted[name]
    qs = queries(data)
    sc = r.scores(qs)
    idx, val = sc.top(20, exclusions(data, qs))
    assert idx.shape == val.shape == (len(qs), 20) and idx.dtype == np.int64 and val.dtype == np.float32
    assert sc.peak().shape == (len(qs),) and sc.dense().shape == (len(qs), data.n_items)
    assert sc.at(idx).shape == idx.shape and sc.at(idx).dtype == np.float32
    assert ((idx >= -1) & (idx < data.n_items)).all() and (val[idx < 0] == 0).all() and (val[idx >= 0] > 0).all()
    empty = qs[len(qs) - 5]  # unknown shopper, no history: only a popularity source has evidence
    row = r.scores([empty]).dense()[0]
    assert row.any() == (name == "trending")
    row = r.scores([qs[-1]]).dense()[0]  # ... and, for a new shopper whose cohort is known, the cohort source
    assert row.any() == (name in ("trending", "cohort"))


@pytest.mark.parametrize("name", SOURCES)
def test_top_is_consistent_with_at_dense_and_peak(name, fitted, data):
    r = fitted[name]
    qs = queries(data)
    sc = r.scores(qs)
    idx, val = sc.top(30, Exclusions.none(data.n_items, len(qs)))
    dense = sc.dense()
    np.testing.assert_allclose(sc.at(idx), val, rtol=1e-5, atol=1e-7)
    for q in range(len(qs)):
        got = idx[q][idx[q] >= 0]
        assert len(set(got.tolist())) == len(got)  # no duplicates
        assert (np.diff(val[q][: len(got)]) <= 1e-6).all()  # best first
        np.testing.assert_allclose(dense[q, got], val[q][: len(got)], rtol=1e-5, atol=1e-7)
        positive = np.flatnonzero(dense[q] > 0)
        # the exact top of the dense row (up to ties at the cut), and the peak is its maximum
        assert len(got) == min(30, len(positive))
        if len(got):
            assert val[q][len(got) - 1] >= np.sort(dense[q])[::-1][len(got) - 1] - 1e-6
        np.testing.assert_allclose(sc.peak()[q], max(dense[q].max(), 0.0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", SOURCES)
def test_candidates_are_servable_for_the_request(name, fitted, data):
    qs = queries(data)
    ex = exclusions(data, qs)
    idx, _ = fitted[name].scores(qs).top(50, ex)
    for q in range(len(qs)):
        got = idx[q][idx[q] >= 0]
        assert not ex.banned[got].any() and not np.isin(got, ex.rows[q]).any()
        if ex.allowed[q] is not None:
            assert ex.allowed[q][got].all()


@pytest.mark.parametrize("name", SOURCES)
def test_batch_equals_one_by_one(name, fitted, data):
    r = fitted[name]
    qs = queries(data)
    ex = exclusions(data, qs)
    bi, bv = r.scores(qs).top(15, ex)
    for q in range(len(qs)):
        si, sv = r.scores([qs[q]]).top(15, ex.subset(np.array([q])))
        np.testing.assert_array_equal(si[0], bi[q])
        np.testing.assert_allclose(sv[0], bv[q], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SOURCES)
def test_save_load_round_trip(name, fitted, data, tmp_path):
    r = fitted[name]
    r.save(tmp_path)
    back = load_retriever(name, tmp_path)
    qs = queries(data)
    ex = exclusions(data, qs)
    a, b = r.scores(qs), back.scores(qs)
    np.testing.assert_array_equal(a.top(25, ex)[0], b.top(25, ex)[0])
    np.testing.assert_allclose(a.dense(), b.dense(), rtol=1e-5, atol=1e-6)
    assert back.n_items == r.n_items == data.n_items
