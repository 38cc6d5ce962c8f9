"""Each candidate source on a tiny hand-made case whose answer is known."""

import numpy as np
import pytest

from shelfwise.domain import Item
from shelfwise.request import Query
from shelfwise.retrieval import TrainData, build_retrievers, load_retriever
from shelfwise.settings import ModelSettings
from shelfwise.stores import open_event_store
from tests.conftest import buy, tiny_catalog, tiny_events, view


def data_from(tmp_path, events, catalog=None) -> TrainData:
    store = open_event_store(f"sqlite:///{tmp_path}/r.db")
    store.append(events)
    items = {it.id: it for it in (catalog or tiny_catalog())}
    return TrainData.from_log(store.scan(), items, ModelSettings().event_weights)


def q(data, *, history=(), anchors=(), user=-1):
    idx = data.items.index
    h = np.array([idx[i] for i in history], np.int32)
    return Query(user=user, history=h, history_kind=np.zeros(len(h), np.int8), history_ts=np.zeros(len(h)),
                 anchors=np.array([idx[i] for i in anchors], np.int32))


def ranked(data, row, k=3):
    order = np.argsort(-row, kind="stable")
    return [str(data.items.ids[i]) for i in order[:k] if row[i] > 0]


def test_traindata_sessions_orders_and_weights(tmp_path):
    data = data_from(tmp_path, [view("a", "u1", "p0", 0), view("b", "u1", "c0", 1), view("c", "u1", "p1", 500),
                                buy("d", "u1", ["p0", "c0"], 501)])
    assert data.session.tolist() == [0, 0, 1, 1, 1]  # the 499-minute gap starts a new session
    assert data.order.tolist()[-2:] == [0, 0] and data.order[0] == -1
    w = ModelSettings().event_weights
    assert data.weight.tolist() == [w.product_viewed] * 3 + [w.purchase_completed] * 2
    m = data.user_item_matrix()
    assert m[0, data.items.index["p0"]] == pytest.approx(w.product_viewed + w.purchase_completed)


def test_trending_prefers_recent_popularity(tmp_path):
    events = [view(f"old{i}", f"u{i}", "p1", 0) for i in range(10)]  # p1: many views, 60 days ago
    events += [view(f"new{i}", f"v{i}", "p2", 60 * 24 * 60) for i in range(4)]  # p2: fewer, recent
    data = data_from(tmp_path, events)
    tr = build_retrievers(ModelSettings(), ("trending",))["trending"].fit(data)
    row = tr.score([q(data)])[0]
    assert ranked(data, row, 2) == ["p2", "p1"]
    # with a product page in Accessories, accessories outrank the more popular phones
    events.append(view("acc", "w", "c3", 60 * 24 * 60))
    data = data_from(tmp_path / "b", events)
    tr.fit(data)
    row = tr.score([q(data, anchors=["c0"])])[0]
    assert ranked(data, row, 1) == ["c3"]


def test_covisit_learns_session_neighbours(tmp_path):
    data = data_from(tmp_path, tiny_events())
    # cosine normalisation (not the default, which keeps raw counts): popular p0 must not outrank the neighbours
    settings = ModelSettings(covisit={"normalize": "cosine"})
    cv = build_retrievers(settings, ("covisit",))["covisit"].fit(data)
    # p2 is browsed next to c2 (its case) and p3 in every session that starts with p2
    top = ranked(data, cv.score([q(data, anchors=["p2"])])[0], 3)
    assert "c2" in top
    assert "c3" not in top  # never in a session with p2
    # after c1, shoppers went on to p2: the forward neighbour leads
    assert ranked(data, cv.score([q(data, history=["c1"])])[0], 1) == ["p2"]
    # the shopper's last item dominates (recency weights)
    p2, p3 = data.items.index["p2"], data.items.index["p3"]
    last_c1 = cv.score([q(data, history=["c3", "c1"])])[0]
    last_c3 = cv.score([q(data, history=["c1", "c3"])])[0]
    assert last_c1[p2] > last_c3[p2] and last_c3[p3] > last_c1[p3]


def test_copurchase_is_frequently_bought_together(tmp_path):
    data = data_from(tmp_path, tiny_events())
    cp = build_retrievers(ModelSettings(), ("copurchase",))["copurchase"].fit(data)
    idx, scores = cp.similar(np.array([data.items.index[i] for i in ("p0", "p2", "p1")]), k=2)
    assert str(data.items.ids[idx[0, 0]]) == "c0"  # bought together in every order with p0
    assert str(data.items.ids[idx[1, 0]]) == "c2"
    assert scores[0, 1] == 0  # nothing else was ever bought with p0
    assert scores[2].max() == 0  # p1 was never bought


def test_als_ranks_co_consumed_items(tmp_path):
    # two disjoint taste groups: {p0, c0, h0} and {p3, c3, h1}
    events, n = [], 0
    for s in range(30):
        group = ["p0", "c0", "h0"] if s % 2 else ["p3", "c3", "h1"]
        for j, it in enumerate(group[: 2 + s % 2] if s < 28 else group[:1]):
            n += 1
            events.append(view(f"e{n}", f"u{s}", it, s * 100 + j))
    data = data_from(tmp_path, events)
    als = build_retrievers(ModelSettings(), ("als",))["als"].fit(data)
    u = data.shopper_index["u28"]  # saw only p3
    row = als.score([q(data, user=u)])[0]
    assert set(ranked(data, row, 3)) >= {"c3"}
    assert row[data.items.index["c3"]] > row[data.items.index["c0"]]
    # fold-in for an unknown shopper with the same history gives the same preference
    row2 = als.score([q(data, history=["p0"])])[0]
    assert row2[data.items.index["c0"]] > row2[data.items.index["c3"]]


@pytest.mark.parametrize("name", ["trending", "covisit", "copurchase", "als"])
def test_save_load_roundtrip_gives_identical_scores(tmp_path, name):
    data = data_from(tmp_path, tiny_events())
    r = build_retrievers(ModelSettings(), (name,))[name].fit(data)
    (tmp_path / "m").mkdir()
    r.save(tmp_path / "m")
    r2 = load_retriever(name, tmp_path / "m")
    queries = [q(data, history=["p1", "c1"], user=3), q(data, anchors=["p2"]), q(data)]
    np.testing.assert_array_equal(r.score(queries), r2.score(queries))


def test_items_seen_only_in_events_join_the_vocabulary(tmp_path):
    data = data_from(tmp_path, [view("a", "u1", "ghost", 0)], catalog=[Item(id="p0", price=1.0)])
    assert list(data.items.ids) == ["ghost", "p0"]
    assert data.items.category[data.items.index["ghost"]] == -1


def test_trending_reads_only_as_much_of_its_order_as_a_filtered_request_needs():
    """``first_kept`` (trending's top and the candidate stage's popular fill under a request's filter and rule masks
    and excluded items) equals masking the whole order."""
    from shelfwise.retrieval.trending import first_kept

    rng = np.random.default_rng(3)
    order = rng.permutation(5000)
    for share in (0.9, 0.1, 0.002, 0.0):
        allow = rng.random(5000) < share
        drop = rng.random(5000) < 0.3
        for a, d in ((allow, None), (None, drop), (allow, drop), (None, None)):
            full = order
            if a is not None:
                full = full[a[full]]
            if d is not None:
                full = full[~d[full]]
            for k in (1, 40, 700):
                assert np.array_equal(first_kept(order, k, keep=[a], drop=[d]), full[:k])
                gone = order[::7]
                assert np.array_equal(first_kept(order, k, keep=[a], drop=[d], without=gone),
                                      full[~np.isin(full, gone)][:k])
