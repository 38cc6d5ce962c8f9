"""The search ranker's training requests (logged searches → labelled points) and its feature list."""


import numpy as np
import pytest

from shelfwise.domain import EventType
from shelfwise.ranking.features import SEARCH_FEATURES, FeatureSpec, feature_names
from shelfwise.ranking.search import search_points
from shelfwise.stores.protocols import EventLog, LoggedSearch

V, C, P = int(EventType.product_viewed), int(EventType.add_to_cart), int(EventType.purchase_completed)


def log_of(rows: list[tuple[str, str, int, float]]) -> EventLog:
    """(shopper, item, kind, ts) rows, grouped by shopper in time order as ``EventStore.scan`` gives them."""
    rows = sorted(rows, key=lambda r: (r[0], r[3]))
    n = len(rows)
    return EventLog(np.array([r[0] for r in rows], object), np.array(["s"] * n, object),
                    np.array([r[1] for r in rows], object), np.array([r[2] for r in rows], np.int8),
                    np.array([r[3] for r in rows], float), np.array([""] * n, object), np.ones(n, np.int32),
                    np.full(n, np.nan))


def test_points_are_searches_after_the_cut_labelled_by_the_results_acted_on_next():
    log = log_of([("u1", "a", V, 10), ("u1", "r2", V, 105), ("u1", "x", V, 110), ("u1", "r2", C, 120),
                  ("u1", "r1", V, 5000),  # after the session gap: not a label
                  ("u2", "r9", V, 300), ("u3", "r1", V, 60)])
    searches = [LoggedSearch("u1", "s", 100, "phone", ("r1", "r2", "r3")),
                LoggedSearch("u2", "s", 200, "case", ("r1",)),  # acted on nothing of its results: no point
                LoggedSearch("u3", "s", 50, "case", ("r1",))]  # before the cut
    points = search_points(searches, log, since=90, session_gap_s=1800)
    assert len(points) == 1
    p = points[0]
    assert (p.shopper, p.ts, p.query, p.given) == ("u1", 100, "phone", ("r1", "r2", "r3"))
    assert p.labels == {"r2": 2}  # viewed then carted; "x" is no result, r1 came after the session gap
    assert [h.item_id for h in p.history] == ["a"]  # what the shopper did before the search only
    req = p.request("search", 3)
    assert list(req.given) == ["r1", "r2", "r3"] and req.query == "phone" and req.now == 100


def test_search_features_only_in_the_search_rankers_spec():
    plain = feature_names(FeatureSpec(["trending"], []))
    search = feature_names(FeatureSpec(["trending"], [], search=True))
    assert not set(SEARCH_FEATURES) & set(plain)
    assert search == plain + SEARCH_FEATURES


# ---- on a small synthetic storefront with logged searches ----------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from datetime import timedelta

    from shelfwise.service import Shelfwise
    from shelfwise.settings import RankerSettings, load_settings
    from shelfwise.synthetic import generate_storefront
    from shelfwise.training import fit_pipeline
    from tests.unit.test_ranking import FAST, SOURCES

    from tests.conftest import clear_settings_env

    mp = clear_settings_env(pytest.MonkeyPatch())
    settings = load_settings(data_dir=tmp_path_factory.mktemp("search"))
    models = settings.models.model_copy(update={"ranker": RankerSettings(**FAST)})
    settings = settings.model_copy(update={"models": models})
    eng = Shelfwise(settings)
    store = generate_storefront(n_items=400, n_shoppers=400, n_events=12_000, seed=3)
    eng.upsert_items(store.items)
    logged = store.searches(600, at=store.end - timedelta(days=10), hours=240, stream=1)
    events = list(store.events()) + [ev for s in logged for ev in s.events()]
    for i in range(0, len(events), 5000):
        eng.ingest(events[i:i + 5000])
    fitted = fit_pipeline(eng.store.scan(), eng.catalog, settings.models, SOURCES, searches=eng.store.searches())
    version, path = eng.models.new_version()
    fitted.model.version = version
    fitted.model.save(path)
    eng.models.publish(version)
    eng.close()
    eng = Shelfwise(settings)  # the saved version, loaded as served
    yield eng, store
    eng.close()
    mp.undo()


def test_training_with_logged_searches_gives_a_search_ranker_for_the_search_placement_only(shop):
    eng, _ = shop
    pipe = eng.pipeline
    search, main = pipe.model.search_ranker, pipe.ranker
    assert search is not None and main is not None
    assert search.applies("search") and not search.applies("homepage") and not search.applies("category")
    assert main.applies("homepage") and not set(SEARCH_FEATURES) & set(main.feature_names)
    assert search.feature_names[-len(SEARCH_FEATURES):] == SEARCH_FEATURES
    assert search.report["points_with_positive"] >= 50 and np.isfinite(search.report["cut"])
    assert search.searches is not None and search.searches.picked.sum() > 0  # saved and loaded with it
    assert (search.searches.picked <= search.searches.shown).all()


def test_search_features_equal_between_training_and_serving(shop, monkeypatch):
    """A search as training rebuilds it (a point from the event log, the catalog's titles for the query match)
    and as ``POST /v1/rerank`` serves it give the same candidates and the same features; the answer at impact 1 is
    the search ranker's order."""
    from shelfwise.ranking.features import FeatureContext
    from shelfwise.ranking.labels import point_at, request_features
    from shelfwise.ranking.query import QueryMatcher
    from shelfwise.request import RecRequest
    from shelfwise.rules.compile import ItemFacts
    import shelfwise.ranking.model as ranker_module

    eng, store = shop
    pipe = eng.pipeline
    ranker = pipe.model.search_ranker
    log = eng.store.scan()
    now = float(log.ts.max()) + 600.0
    facts = ItemFacts.build(pipe.items, {it.id: it for it in eng.catalog.all()})
    ctx = FeatureContext.build(pipe.items, ranker.stats, ranker.spec, pipe.retrievers,
                               QueryMatcher(pipe.items, lambda _: facts), ranker.searches)
    held = store.searches(5, at=store.end, stream=2)
    seen = []
    original = ranker_module.compute_features

    def spy(ctx_, requests, queries, cand):
        X = original(ctx_, requests, queries, cand)
        seen.append((cand.items.copy(), X.copy()))
        return X

    for s in held:
        lo = int(np.flatnonzero(log.shopper == s.shopper)[0])
        hi = lo + int((log.shopper == s.shopper).sum())
        p = point_at(log, lo, hi, eng.settings.models.history_length, ts=now)
        p.given, p.query = s.results, s.query
        cand_t, X_t = request_features(pipe, ctx, [p], "search", len(s.results))
        monkeypatch.setattr(ranker_module, "compute_features", spy)
        ans = eng.recommend(RecRequest("search", shopper=s.shopper, given=s.results, query=s.query, now=now,
                                       k=len(s.results), impact=1.0))
        monkeypatch.setattr(ranker_module, "compute_features", original)
        items, X = seen[-1]
        np.testing.assert_array_equal(items, cand_t.items)
        np.testing.assert_allclose(X, X_t, rtol=1e-5, atol=1e-6)
        assert np.any(X[0, :, -len(SEARCH_FEATURES) + SEARCH_FEATURES.index("query_match")] > 0)
        final = dict(zip((str(pipe.items.ids[i]) for i in items[0]), ranker.predict(X)[0]))
        got = [final[r.item_id] for r in ans.items[:10]]
        assert got == sorted(got, reverse=True) and len(set(got)) > 1  # the search ranker's order (ties aside)
