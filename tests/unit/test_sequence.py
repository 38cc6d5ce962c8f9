"""The sequence model (SASRec-style transformer): learns a known sequential rule, persists exactly, serves live."""

import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shelfwise.domain import EventType
from shelfwise.request import Query
from shelfwise.retrieval import TrainData, build_retrievers, load_retriever
from shelfwise.items import ItemTable
from shelfwise.retrieval.sequence import SequenceRetriever, collapse, query_sequence
from shelfwise.settings import CandidateSettings, ModelSettings, PlacementSettings, SequenceSettings
from shelfwise.stores.vectors import HNSWIndex

TINY = dict(dim=32, layers=1, heads=2, dropout=0.1, lr=5e-3, batch_size=64, max_len=12, patience=4,
            progress=False, candidates=20)
ANN = CandidateSettings(exact_max_items=0, ann_max_batch=8)  # small requests through the index even at 30 items


def hnsw(name, vectors):
    index = HNSWIndex(m=16, ef_construction=100, ef_search=50)
    index.build(np.arange(len(vectors)), vectors)
    return index


def with_ann(model):
    model.attach_index(hnsw, ANN)
    return model


def chain_data(n_items=30, n_users=300, seed=0) -> TrainData:
    """Every shopper walks the catalog in order: item i is always followed by item i+1 (mod n_items)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        start, length = rng.integers(0, n_items), rng.integers(5, 12)
        users += [u] * length
        items += [(start + j) % n_items for j in range(length)]
    user = np.array(users, np.int32)
    n = len(user)
    table = ItemTable.build([f"i{j:02d}" for j in range(n_items)], {})
    return TrainData(table, np.array([f"u{u}" for u in range(n_users)], dtype=object), user,
                     np.array(items, np.int32), np.zeros(n, np.int8), np.arange(n, dtype=np.float64),
                     user.astype(np.int64), np.full(n, -1, np.int64), np.ones(n, np.float32))


def hq(items, kinds=None) -> Query:
    items = np.array(items, np.int32)
    kinds = np.zeros(len(items), np.int8) if kinds is None else np.array(kinds, np.int8)
    return Query(history=items, history_kind=kinds, history_ts=np.arange(len(items), dtype=np.float64))


@pytest.fixture(scope="module")
def chain_model():
    data = chain_data()
    model = with_ann(SequenceRetriever(SequenceSettings(**TINY, max_epochs=40, finetune_epochs=2)).fit(data))
    return data, model


def test_learns_item_i_is_followed_by_i_plus_1(chain_model):
    data, model = chain_model
    rng = np.random.default_rng(1)
    starts = rng.integers(0, 30, 200)
    queries = [hq([(s + j) % 30 for j in range(rng.integers(1, 6))]) for s in starts]
    scores = model.score(queries)
    predicted = scores.argmax(axis=1)
    expected = np.array([(q.history[-1] + 1) % 30 for q in queries])
    assert (predicted == expected).mean() >= 0.95
    assert model.report["val_hr10"] >= 0.95 and model.report["best_epoch"] >= 1
    assert model.report["finetune_epochs"] == 2
    assert scores.max(axis=1) == pytest.approx(1.0)  # exp(s - s_max): the best candidate scores 1
    assert ((scores > 0).sum(axis=1) <= TINY["candidates"]).all()


def test_ann_and_exact_paths_agree(chain_model):
    data, model = chain_model
    queries = [hq([i, (i + 1) % 30]) for i in range(30)]
    vecs = model.encode(queries)[1]
    ak, as_ = model.space.search(vecs[:8], 10)  # up to ann_max_batch: the index
    ek, es = model.space.search(np.concatenate([vecs, vecs])[:16], 10)  # a bigger batch: exact
    ek, es = ek[:8], es[:8]
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ak, ek)]) >= 0.98
    assert np.allclose(as_[:, 0], es[:, 0], atol=1e-4)


def test_batch_equals_single_requests_and_empty_history_has_no_evidence(chain_model):
    data, model = chain_model
    queries = [hq([3, 4, 5]), hq([]), hq([10]), Query(anchors=np.array([7], np.int32))]
    batch = model.score(queries)
    assert not batch[1].any()
    for r, q in enumerate(queries):
        assert np.allclose(model.score([q])[0], batch[r], atol=1e-5)
    assert batch[3].argmax() == 8  # a product page: what follows the anchor item


def chain_accuracy(model, n_items=30, seed=1) -> float:
    rng = np.random.default_rng(seed)
    queries = [hq([(s + j) % n_items for j in range(rng.integers(1, 6))]) for s in rng.integers(0, n_items, 200)]
    expected = np.array([(q.history[-1] + 1) % n_items for q in queries])
    return float((model.score(queries).argmax(axis=1) == expected).mean())


def test_warm_start_continues_the_prefix_fit_with_a_few_epochs(chain_model):
    data, prefix_model = chain_model
    warm = SequenceRetriever(SequenceSettings(**TINY, max_epochs=40, finetune_epochs=1))
    warm.warm_start(prefix_model, data.items)
    warm.fit(chain_data(seed=5))  # the "whole log": other walks of the same chain
    assert warm.report["warm_start"] and warm.report["same_vocabulary"] and warm.report["epochs"] == 1
    assert chain_accuracy(warm) >= 0.95  # one epoch from scratch learns nothing of the kind
    cold = SequenceRetriever(SequenceSettings(**TINY, max_epochs=1, finetune_epochs=0)).fit(chain_data(seed=5))
    assert chain_accuracy(cold) < 0.5


def test_warm_start_maps_items_by_id_when_the_vocabulary_changed(chain_model):
    data, prefix_model = chain_model
    later = chain_data(seed=5)
    ids = ["a-new-item"] + [str(x) for x in later.items.ids]  # one new item first: every index moves by one
    later.items = ItemTable.build(ids, {})
    later.item = later.item + 1
    warm = SequenceRetriever(SequenceSettings(**TINY, max_epochs=40, finetune_epochs=1))
    warm.warm_start(prefix_model, data.items)
    warm.fit(later)
    assert warm.report["warm_start"] and not warm.report["same_vocabulary"]
    old, new = prefix_model.item_vectors, warm.item_vectors
    assert new.shape == (31, old.shape[1])
    # item "i05" kept its learned embedding (moved one row down), up to one epoch of updates
    cos = new[6] @ old[5] / np.linalg.norm(new[6]) / np.linalg.norm(old[5])
    assert cos > 0.8
    rng = np.random.default_rng(2)
    queries = [hq([1 + (s + j) % 30 for j in range(3)]) for s in rng.integers(0, 30, 100)]
    expected = np.array([1 + (q.history[-1]) % 30 for q in queries])  # model index i+1 is old item i
    assert (warm.score(queries).argmax(axis=1) == expected).mean() >= 0.9


def test_sampled_softmax_learns_the_chain_too():
    model = SequenceRetriever(SequenceSettings(**TINY, max_epochs=40, finetune_epochs=0, negatives=8)).fit(
        chain_data())
    assert chain_accuracy(model) >= 0.9


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    data = chain_data(n_users=120)
    model = with_ann(SequenceRetriever(SequenceSettings(**TINY, max_epochs=3)).fit(data))
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"sequence.pt", "sequence.json"}
    back = with_ann(load_retriever("sequence", tmp_path))
    small = [hq([1, 2]), hq([5, 6, 7], [0, 1, 3])]  # ANN path
    big = [hq([i % 30, (i + 1) % 30]) for i in range(40)]  # exact path (more than ann_max_batch)
    for qs in (small, big):
        assert np.array_equal(model.score(qs), back.score(qs))
    assert back.report == model.report


def test_collapse_and_query_sequence():
    items, kinds = collapse(np.array([4, 4, 4, 7, 4]), np.array([0, 1, 3, 0, 0]))
    assert items.tolist() == [4, 7, 4] and kinds.tolist() == [3, 0, 0]
    q = Query(history=np.arange(60, dtype=np.int32), history_kind=np.zeros(60, np.int8),
              anchors=np.array([99], np.int32))
    items, kinds = query_sequence(q, max_len=50)
    assert len(items) == 50 and items[-1] == 99 and items[-2] == 59 and kinds[-1] == EventType.product_viewed


def test_settings_validation():
    with pytest.raises(ValueError):
        SequenceRetriever(SequenceSettings(dim=30, heads=4))
    assert "sequence" in build_retrievers(ModelSettings(), ("sequence",))


def test_torch_is_not_imported_by_the_api_and_cli():
    code = ("import sys, shelfwise.api.app, shelfwise.cli, shelfwise.retrieval, shelfwise.training; "
            "assert 'torch' not in sys.modules and 'hnswlib' not in sys.modules, 'eager import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_api_answer_moves_after_new_views(settings):
    from shelfwise.api.app import create_app
    from shelfwise.service import Shelfwise
    from shelfwise.training import fit_pipeline
    from tests.conftest import api_client, tiny_catalog, tiny_events

    settings.models.sequence = SequenceSettings(**TINY, max_epochs=15)
    settings.models.placements["homepage"] = PlacementSettings(weights={"sequence": 1.0})
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    fitted = fit_pipeline(eng.store.scan(), eng.catalog, settings.models, sources=("trending", "sequence"))
    version, path = eng.models.new_version()
    fitted.model.version = version
    fitted.model.save(path)
    eng.models.publish(version)
    eng.close()
    with api_client(settings) as client:
        def rail():
            r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 4})
            assert r.status_code == 200 and r.json()["model_version"] == version
            return r.json()["items"]

        before = rail()
        assert before and all(x["sources"] == ["sequence"] for x in before)
        events = [{"event_id": f"seq-{i}", "type": "product_viewed", "user_id": "u1", "session_id": "new",
                   "item_id": item, "timestamp": f"2026-11-30T10:0{i}:00Z"} for i, item in enumerate(["p3", "c3"])]
        assert client.post("/v1/events", json=events).status_code == 202
        after = rail()
        assert [x["item_id"] for x in after] != [x["item_id"] for x in before]
        assert all(x["sources"] == ["sequence"] for x in after)


def test_small_catalogs_are_searched_exactly(chain_model):
    data, model = chain_model

    def no_ann(name, vectors):
        raise AssertionError("a catalog below exact_max_items must not build an index")

    queries = [hq([i, (i + 1) % 30]) for i in range(5)]
    exact = load_like(model)
    exact.attach_index(no_ann, CandidateSettings(exact_max_items=1000))  # below the size: exact, no index
    vecs = model.encode(queries)[1]
    keys, scores = exact.space.search(vecs, 10)
    want = vecs @ model.item_vectors.T
    assert np.array_equal(keys, np.argsort(-want, axis=1, kind="stable")[:, :10])
    assert exact.score(queries).shape == (5, 30)

    class Counting:
        calls = 0

        def search(self, q, k):
            Counting.calls += 1
            return hnsw("x", model.item_vectors).search(q, k)

        def __len__(self):
            return model.n_items

    big = load_like(model)
    big.attach_index(lambda name, v: Counting(), CandidateSettings(exact_max_items=10))
    big.space.search(vecs, 10)  # above the threshold: the index
    assert Counting.calls == 1


def load_like(model):
    out = SequenceRetriever(model.settings)
    out.model, out.n_items, out.item_vectors = model.model, model.n_items, model.item_vectors
    out.space = type(model.space)("sequence", model.item_vectors)
    return out
