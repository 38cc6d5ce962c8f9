"""Learning to rank: labels and time split, IPW, train/serve feature equality, persistence, a planted signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shelfwise.domain import EventType
from shelfwise.assemble import assemble
from shelfwise.pipeline import Model, Pipeline
from shelfwise.ranking.features import FeatureContext, FeatureSpec, feature_names
from shelfwise.ranking.labels import RankRows, ipw_weights, point_at, request_features, split_history
from shelfwise.ranking.model import Ranker
from shelfwise.ranking.train import without_ranker
from shelfwise.request import RecRequest
from shelfwise.settings import RankerSettings, load_settings
from shelfwise.stores.protocols import EventLog
from shelfwise.training import fit_pipeline

V, C, P = int(EventType.product_viewed), int(EventType.add_to_cart), int(EventType.purchase_completed)
SOURCES = ("trending", "covisit", "copurchase", "als")
FAST = {"enabled": True, "num_boost_round": 40, "early_stopping_rounds": 10, "min_data_in_leaf": 20,
        "max_requests": 3000, "holdout_fraction": 0.15, "candidates": 40}


def make_log(rows: list[tuple[str, str, str, int, float]]) -> EventLog:
    """(shopper, session, item, kind, minute) rows, grouped by shopper and time-ordered as scan() returns them."""
    rows = sorted(rows, key=lambda r: (r[0], r[4]))
    n = len(rows)
    obj = lambda i: np.array([r[i] for r in rows], dtype=object)  # noqa: E731
    return EventLog(obj(0), obj(1), obj(2), np.array([r[3] for r in rows], np.int8),
                    np.array([r[4] * 60.0 for r in rows]), np.full(n, "", dtype=object), np.ones(n, np.int32),
                    np.full(n, np.nan))


# ---- labels and the time split ---------------------------------------------------------------------------
def hand_made() -> EventLog:
    return make_log([
        # shopper a: a first session before the cut, then a second one straddling it
        ("a", "a1", "x", V, 0), ("a", "a1", "y", V, 1),
        ("a", "a2", "z", V, 100), ("a", "a2", "w", V, 101), ("a", "a2", "w", C, 102), ("a", "a2", "w", P, 103),
        ("a", "a2", "v", V, 104),
        ("a", "a3", "q", V, 500),  # a later session: never a label of the a2 points
        # shopper b: everything before the cut
        ("b", "b1", "x", V, 2), ("b", "b1", "z", V, 3),
        # shopper c: only after the cut, a single event (no history: not a training point)
        ("c", "c1", "y", V, 200),
    ])


def test_time_split_labels_grades_and_no_leakage():
    log = hand_made()
    split = split_history(log, RankerSettings(split="time", holdout_fraction=0.5, label_horizon=3),
                          session_gap_s=1800)
    assert split.cut == 101 * 60  # the time leaving half of the interactions at or after it
    assert (split.prefix.ts < split.cut).all()  # the sources never see a held-out event
    assert len(split.prefix) == int((log.ts < split.cut).sum())
    got = {(p.shopper, p.ts / 60): p for p in split.points}
    # every held-out interaction with an earlier one of its shopper (c has none), labelled by what came next in
    # the same session (next 3 interactions), best grade per item: purchase 3 > cart 2 > view 1
    assert {k: p.labels for k, p in got.items()} == {
        ("a", 101): {"w": 3}, ("a", 102): {"w": 3, "v": 1}, ("a", 103): {"w": 3, "v": 1},  # 103: a3 not reached
        ("a", 104): {"v": 1}, ("a", 500): {"q": 1}}
    for p in split.points:
        assert all(h.ts < p.ts for h in p.history)  # history strictly before the request
    assert [h.item_id for h in got[("a", 101)].history] == ["x", "y", "z"]
    assert got[("a", 104)].purchased == {"w"} and got[("a", 101)].purchased == set()


def test_last_split_holds_out_each_shoppers_last_item():
    log = make_log([(u, u, f"i{j}", P, j) for u, n in (("a", 4), ("b", 3), ("c", 1)) for j in range(n)])
    split = split_history(log, RankerSettings(split="last"))
    got = {p.shopper: (p.labels, [h.item_id for h in p.history]) for p in split.points}
    assert got == {"a": ({"i3": 3}, ["i0", "i1", "i2"]), "b": ({"i2": 3}, ["i0", "i1"])}
    prefix = set(zip(split.prefix.shopper, split.prefix.item))
    assert ("a", "i3") not in prefix and ("b", "i2") not in prefix and ("c", "i0") in prefix


# ---- IPW -------------------------------------------------------------------------------------------------
def test_ipw_weights_by_position():
    pos = np.array([0, 1, 4, 100, -1])
    np.testing.assert_allclose(ipw_weights(pos), [1, 2, 5, 20, 1])
    np.testing.assert_allclose(ipw_weights(pos, eta=0.5, max_weight=100), [1, 2 ** .5, 5 ** .5, 101 ** .5, 1],
                               rtol=1e-6)
    np.testing.assert_allclose(ipw_weights(pos, clicked=np.array([1, 0, 1, 0, 1], bool)), [1, 1, 5, 1, 1])
    np.testing.assert_allclose(ipw_weights(pos, eta=0.0), 1.0)
    w = ipw_weights(np.arange(10))
    assert (np.diff(w) > 0).all()  # lower positions are examined less: clicks there count more
    # an exploration slot: placed there with probability 0.25, so its click counts 4x more (then clipped)
    np.testing.assert_allclose(ipw_weights(pos, shown=np.array([1, 0.25, 0.5, 1, 1])), [1, 8, 10, 20, 1])


# ---- a planted signal ------------------------------------------------------------------------------------
def planted(rng, groups: int, n: int, names: list[str], signal: str) -> RankRows:
    X = rng.normal(size=(groups * n, len(names))).astype(np.float32)
    j = names.index(signal)
    best = X[:, j].reshape(groups, n).argmax(axis=1)
    y = np.zeros((groups, n), np.int8)
    y[np.arange(groups), best] = 1
    return RankRows(X, y.ravel(), np.full(groups, n), np.ones(groups * n, np.float32), np.arange(groups, dtype=float),
                    np.array([str(g) for g in range(groups)], dtype=object), groups, groups)


def test_ranker_learns_a_planted_signal():
    rng = np.random.default_rng(0)
    spec = FeatureSpec(["covisit", "als"], ["als"])
    names = feature_names(spec)
    assert len(names) >= 25
    s = RankerSettings(num_boost_round=60, min_data_in_leaf=10, early_stopping_rounds=20)
    ranker = Ranker(s, spec).fit(planted(rng, 400, 20, names, "margin_rate"), planted(rng, 100, 20, names,
                                                                                         "margin_rate"))
    test = planted(rng, 200, 20, names, "margin_rate")
    scores = ranker.predict(test.X.reshape(200, 20, -1))
    acc = (scores.argmax(axis=1) == test.y.reshape(200, 20).argmax(axis=1)).mean()
    assert acc > 0.7  # chance: 1 in 20
    assert next(iter(ranker.importances())) == "margin_rate"


# ---- on a small synthetic storefront ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from shelfwise.service import Shelfwise
    from shelfwise.synthetic import generate_storefront

    from tests.conftest import clear_settings_env

    mp = clear_settings_env(pytest.MonkeyPatch())
    data = tmp_path_factory.mktemp("rank")
    settings = load_settings(data_dir=data)
    models = settings.models
    home = models.placements["homepage"]
    if hasattr(home, "score"):  # relevance only after ranking (no business terms), so orders compare exactly
        home = home.model_copy(update={"score": type(home.score)(trend=0, stock=0, margin=0, freshness=0,
                                                                 seasonality=0)})
    models = models.model_copy(update={"ranker": RankerSettings(**FAST),
                                       "placements": {**models.placements, "homepage": home}})
    settings = settings.model_copy(update={"models": models})
    eng = Shelfwise(settings)
    store = generate_storefront(n_items=400, n_shoppers=400, n_events=12_000, seed=3)
    eng.upsert_items(store.items)
    events = list(store.events())
    for i in range(0, len(events), 5000):
        eng.ingest(events[i:i + 5000])
    # the sources pinned (not the default set, which may grow slow sources): what `train` does, step by step
    fitted = fit_pipeline(eng.store.scan(), eng.catalog, settings.models, SOURCES)
    version, path = eng.models.new_version()
    fitted.model.version = version
    fitted.model.save(path)
    eng.models.publish(version)
    eng.close()
    eng = Shelfwise(settings)
    yield eng
    eng.close()
    mp.undo()


def sample_shoppers(log: EventLog, k: int = 12) -> list[tuple[str, int, int]]:
    change = np.flatnonzero(log.shopper[1:] != log.shopper[:-1]) + 1
    bounds = np.r_[0, change, len(log)]
    out = [(str(log.shopper[lo]), lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi - lo >= 3]
    return out[:: max(1, len(out) // k)][:k]


def test_trained_model_has_a_ranker_that_reorders(shop):
    ranker = shop.pipeline.ranker
    assert ranker is not None and ranker.applies("homepage") and not ranker.applies("pdp_fbt")
    assert len(ranker.feature_names) >= 25
    assert ranker.report["points_with_positive"] > 0
    assert sum(ranker.importances().values()) == pytest.approx(1.0, abs=1e-3)


def test_features_equal_between_training_and_serving(shop, monkeypatch):
    """The training path (history rebuilt from the event log) and the serving path (online state through
    ``Shelfwise.recommend``) give the same candidates and bit-identical features for the same requests."""
    pipe: Pipeline = shop.pipeline
    ranker: Ranker = pipe.ranker
    log = shop.store.scan()
    now = float(log.ts.max()) + 600.0
    hl = shop.settings.models.history_length
    picks = sample_shoppers(log)
    points = [point_at(log, lo, hi, hl, ts=now) for _, lo, hi in picks]
    n = ranker.settings.candidates
    ctx = FeatureContext.build(pipe.items, ranker.stats, ranker.spec, pipe.retrievers)
    cand_t, X_t = request_features(pipe, ctx, points, "homepage", n)  # one batch
    singles = [request_features(pipe, ctx, [p], "homepage", n) for p in points]

    seen = []
    import shelfwise.ranking.model as ranker_module

    original = ranker_module.compute_features

    def spy(ctx_, requests, queries, cand):
        X = original(ctx_, requests, queries, cand)
        seen.append((cand.items.copy(), X.copy()))
        return X

    monkeypatch.setattr(ranker_module, "compute_features", spy)
    for r, (shopper, _, _) in enumerate(picks):
        shop.recommend(RecRequest("homepage", shopper=shopper, k=10, now=now))
        items, X = seen[-1]
        # bit-identical to the training path on the same request (batch of one, as served)
        np.testing.assert_array_equal(items, singles[r][0].items)
        np.testing.assert_array_equal(X, singles[r][1])  # NaNs compare equal here
        # and to the batched training rows up to float rounding of the sources' batched matrix products
        np.testing.assert_array_equal(items[0], cand_t.items[r])
        np.testing.assert_allclose(X[0], X_t[r], rtol=1e-5, atol=1e-6)
    assert len(seen) == len(picks)
    assert np.isfinite(X_t).mean() > 0.5


def test_save_load_round_trip_gives_identical_scores(shop, tmp_path):
    pipe: Pipeline = shop.pipeline
    log = shop.store.scan()
    reqs = [RecRequest("homepage", shopper=s, k=20, now=float(log.ts.max()), state=shop.shopper_state(s))
            for s, _, _ in sample_shoppers(log, 8)]
    before = pipe.recommend(reqs)
    pipe.model.save(tmp_path)
    loaded = assemble(Model.load(tmp_path, pipe.settings))
    assert loaded.ranker is not None and loaded.ranker.feature_names == pipe.ranker.feature_names
    after = loaded.recommend(reqs)
    for a, b in zip(before, after):
        assert [x.item_id for x in a.items] == [x.item_id for x in b.items]
        assert [x.score for x in a.items] == [x.score for x in b.items]


def test_ranker_changes_the_order_and_k_beyond_n_keeps_blend_tail(shop):
    pipe: Pipeline = shop.pipeline
    log = shop.store.scan()
    n = pipe.ranker.settings.candidates
    changed = 0
    for s, _, _ in sample_shoppers(log, 8):
        req = lambda: RecRequest("homepage", shopper=s, k=n + 15, now=float(log.ts.max()),  # noqa: E731
                                 state=shop.shopper_state(s))
        ranked = pipe.recommend([req()])[0]
        blend = assemble(dataclasses.replace(pipe.model, ranker=None)).recommend([req()])[0]
        a, b = [x.item_id for x in ranked.items], [x.item_id for x in blend.items]
        assert len(a) == len(b) == n + 15 and len(set(a)) == len(a)
        assert set(a[:n]) == set(b[:n])  # the ranker re-orders the blend's top N ...
        assert a[n:] == b[n:]  # ... and the rest follows in blend order
        scores = [x.score for x in ranked.items]
        assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
        changed += a[:10] != b[:10]
    assert changed > 0


def test_margin_weight_trades_relevance_for_margin(shop):
    pipe: Pipeline = shop.pipeline
    log = shop.store.scan()
    reqs = [RecRequest("homepage", shopper=s, k=10, now=float(log.ts.max()), state=shop.shopper_state(s))
            for s, _, _ in sample_shoppers(log, 10)]

    def shown_margin(w: float) -> float:
        pipe.ranker.settings = pipe.ranker.settings.model_copy(update={"margin_weight": w})
        idx = pipe.items.index
        got = [idx[x.item_id] for a in pipe.recommend(reqs) for x in a.items]
        return float(np.nanmean(pipe.items.price[got] * pipe.items.margin[got]))

    try:
        m0, m1, m5 = shown_margin(0.0), shown_margin(1.0), shown_margin(5.0)
    finally:
        pipe.ranker.settings = pipe.ranker.settings.model_copy(update={"margin_weight": 0.0})
    assert m5 >= m1 >= m0 and m5 > m0


def test_prefix_sources_never_see_labelled_events(shop):
    log = shop.store.scan()
    s = shop.settings.models
    split = split_history(log, s.ranker, s.history_length)
    prefix = fit_pipeline(split.prefix, shop.catalog, without_ranker(s), ("trending", "covisit"))  # fast subset
    assert prefix.pipeline.trained_until < min(p.ts for p in split.points)
    assert prefix.pipeline.ranker is None


# ---- the exposure log ------------------------------------------------------------------------------------
@pytest.mark.parametrize("explored", [None, 0.25], ids=["ranked slots", "an explored slot"])
def test_exposure_log_requests_become_weighted_points(tmp_path, settings, explored):
    from shelfwise.ranking.exposures import exposure_points, read_exposures
    from shelfwise.ranking.features import ItemStats
    from shelfwise.ranking.labels import build_rows
    from shelfwise.rules.log import Exposure, SQLiteExposureLog

    log = hand_made()
    xlog = SQLiteExposureLog(tmp_path / "x.db", retention_days=100_000)
    # a's request at minute 100.5 showed [v, q, w]: a then carted and bought w (shown at position 2)
    # with ``explored``, w's slot was an item bandit's pick with that propensity (the others ranked: 1)
    props = None if explored is None else [1.0, 1.0, explored]
    xlog.record([Exposure("r1", 100.5 * 60, "a", "homepage", ["v", "q", "w"], [3.0, 2.0, 1.0], propensities=props),
                 Exposure("r2", 100.5 * 60, "zz", "homepage", ["v"], [1.0]),  # unknown shopper: skipped
                 Exposure("r3", 100.5 * 60, "a", "pdp_fbt", ["v"], [1.0])])  # another placement
    xlog.flush()
    xlog.close()
    rows = read_exposures(tmp_path / "x.db", "homepage")
    assert sorted(rows.request_id.tolist()) == ["r1", "r1", "r1", "r2"]
    assert read_exposures(tmp_path / "missing.db", "homepage").item.shape == (0,)
    points = exposure_points(rows, log, label_horizon=3)
    assert len(points) == 1
    p = points[0]
    assert p.positions == {"v": 0, "q": 1, "w": 2}
    assert p.shown == ({} if explored is None else {"w": explored})
    assert p.labels == {"w": 3}  # the next 3 interactions: w viewed, carted, bought
    assert [h.item_id for h in p.history] == ["x", "y", "z"] and all(h.ts < p.ts for h in p.history)
    # in the training rows the bought w (shown at position 2) weighs 3 = 1 / P(examined at position 2), divided by
    # the probability that the bandit put it there when it explored
    catalog_items = sorted(set(log.item.tolist()))
    from shelfwise.domain import Item

    cat = [Item(id=i) for i in catalog_items]
    s = settings.models

    class Cat:
        def all(self):
            return cat

    fitted = fit_pipeline(log, Cat(), without_ranker(s), ("trending", "covisit"))
    pipe = fitted.pipeline
    spec = FeatureSpec.from_sources(s.placements["homepage"].weights, pipe.retrievers, pipe.items, 1800.0)
    ctx = FeatureContext.build(pipe.items, ItemStats.fit(fitted.data), spec, pipe.retrievers)
    rows_ = build_rows(pipe, ctx, points, "homepage", 10)
    assert rows_.with_positive == 1
    assert rows_.weight[rows_.y == 3].tolist() == [3.0 if explored is None else 12.0]
    assert set(rows_.weight[rows_.y == 0].tolist()) == {1.0}


def planted_ranker(rounds: int) -> tuple[Ranker, np.ndarray]:
    """A ranker fit on planted rows of one source's features, and a (3, 20, F) batch to predict."""
    rng = np.random.default_rng(1)
    spec = FeatureSpec(["covisit"], [])
    names = feature_names(spec)
    ranker = Ranker(RankerSettings(num_boost_round=rounds, min_data_in_leaf=5), spec)
    ranker.fit(planted(rng, 100, 20, names, "pop_log"))
    return ranker, rng.normal(size=(3, 20, len(names))).astype(np.float32)


def test_fast_predict_matches_lightgbm_predict():
    ranker, X = planted_ranker(20)
    X[0, 0, 5] = np.nan
    np.testing.assert_array_equal(ranker.predict(X), ranker.booster.predict(X.reshape(60, -1)).reshape(3, 20))


@pytest.mark.parametrize("compiled", [False, True])
def test_predict_leaves_no_cyclic_garbage(compiled, tmp_path):
    """A request's predict left objects in reference cycles (numpy's ``ctypes.data_as`` casts, in our LightGBM call
    and in lleaves' predict), which only the collector's full pass frees: the API's heap settling walked them every
    2 s (the only cyclic garbage of the rails' requests). The compiled path gives lleaves' own scores."""
    import gc

    ranker, X = planted_ranker(5)
    if compiled:
        assert ranker.compile(tmp_path)
        np.testing.assert_array_equal(ranker.predict(X).ravel(), ranker.compiled.predict(X.reshape(60, -1), n_jobs=1))
    ranker.predict(X)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            ranker.predict(X)
        gc.collect()
        assert [type(o).__name__ for o in gc.garbage] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_too_little_history_trains_no_ranker_and_serves_the_blend(settings):
    from shelfwise.domain import Item

    cat = [Item(id=i) for i in sorted(set(hand_made().item.tolist()))]

    class Cat:
        def all(self):
            return cat

    ms = settings.models.model_copy(update={"ranker": RankerSettings(enabled=True, holdout_fraction=0.5)})
    fitted = fit_pipeline(hand_made(), Cat(), ms, ("trending", "covisit"))
    assert fitted.pipeline.ranker is None and "ranker" in fitted.seconds
    ans = fitted.pipeline.recommend([RecRequest("homepage", shopper="a", k=3)])[0]
    assert len(ans.items) == 3


def test_an_exposure_log_from_before_the_propensity_column_still_reads(tmp_path):
    import sqlite3

    from shelfwise.ranking.exposures import read_exposures
    from shelfwise.rules.log import Exposure, SQLiteExposureLog

    db = sqlite3.connect(tmp_path / "x.db")  # the table as earlier versions created it
    db.execute("CREATE TABLE exposures (request_id TEXT NOT NULL, ts REAL NOT NULL, shopper TEXT, placement TEXT NOT "
               "NULL, position INTEGER NOT NULL, item_id TEXT NOT NULL, score REAL, model_version TEXT, rules TEXT)")
    db.execute("INSERT INTO exposures VALUES ('old', 1.0, 'a', 'homepage', 0, 'v', 1.0, '', '')")
    db.commit()
    db.close()
    assert read_exposures(tmp_path / "x.db", "homepage").propensity.tolist() == [1.0]
    xlog = SQLiteExposureLog(tmp_path / "x.db", retention_days=100_000)  # adds the column, keeps the rows
    xlog.record([Exposure("new", 2.0, "a", "homepage", ["q", "w"], [2.0, 1.0], propensities=[1.0, 0.5])])
    xlog.flush()
    xlog.close()
    rows = read_exposures(tmp_path / "x.db", "homepage")
    assert rows.request_id.tolist() == ["old", "new", "new"] and rows.propensity.tolist() == [1.0, 1.0, 0.5]


def test_features_and_ranked_answers_with_items_added_after_training(shop):
    """Last in this module (it adds items to the shared engine): rows past the ranker's statistics and the
    embeddings read as items without interactions, and the ranked homepage serves a history holding them."""
    from shelfwise.domain import Item
    from shelfwise.ranking.features import compute_features
    from shelfwise.request import Candidates, Query
    from shelfwise.stores.protocols import Interaction, ShopperState

    trained = len(shop.pipeline.items)
    shop.upsert_items([Item(id="zz-new", title="A new thing", category=["Brand new"], price=12.0, stock=4)])
    pipe: Pipeline = shop.pipeline
    new = pipe.items.index["zz-new"]
    assert new == trained and pipe.ranker is not None
    ctx = FeatureContext.build(pipe.items, pipe.ranker.stats, pipe.ranker.spec, pipe.retrievers)
    now = pipe.trained_until + 60
    q = Query(history=np.array([0, new], np.int32), history_kind=np.zeros(2, np.int8),
              history_ts=np.array([now - 5, now - 1]), now=now)
    items = np.array([[new, 1, 2]])
    cand = Candidates(items, {s: np.zeros(items.shape, np.float32) for s in pipe.ranker.spec.sources},
                      np.zeros(items.shape, np.float32), np.zeros(items.shape, np.float32))
    X = compute_features(ctx, [RecRequest(now=now)], [q], cand)
    names = feature_names(pipe.ranker.spec)
    col = {n: X[0, 0, names.index(n)] for n in names}
    assert col["pop_log"] == 0 and col["conversion"] == pytest.approx(0.1)
    assert col["price_log"] == pytest.approx(np.log(12.0))  # the live table: its own price
    assert all(col[f"emb_sim_last_{s}"] == 0 for s in pipe.ranker.spec.embeddings)  # no embedding: cosine 0
    assert np.isfinite(pipe.ranker.score(ctx, [RecRequest(now=now)], [q], cand)).all()
    state = ShopperState(recent=[Interaction("zz-new", V, now), Interaction(str(pipe.items.ids[3]), V, now + 1)],
                         purchased=set())
    ans = shop.recommend(RecRequest("homepage", shopper="someone-new", k=10, state=state, now=now + 2))
    assert len(ans.items) == 10 and "zz-new" not in [r.item_id for r in ans.items]
