"""New shoppers on the synthetic storefront: the very first request is answered from the shopper's cohort (device,
segments, entry category), which differs by cohort and says so; from the first view on the session-aware sources
answer; the learned ranker leaves a cohort answer in the centroid's order."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from shelfwise.domain import Event
from shelfwise.request import RecRequest
from shelfwise.service import Shelfwise
from shelfwise.settings import load_settings
from shelfwise.synthetic import generate_storefront
from shelfwise.training import train
from tests.conftest import make_key


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small synthetic storefront (600 items, 1,500 shoppers, 30k events; 75% of shoppers carry an interest
    segment) and a model with trending, co-visitation, the cohort source and a learned ranker."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("cohorts"))
    settings.models.cohort.min_support = 20
    settings.models.ranker.compile = False
    settings.models.ranker.min_requests = 20
    settings.api.cache_ttl_s = 0  # the ranker on and off for the same request: never a cached answer
    store = generate_storefront(n_items=600, n_shoppers=1500, n_events=30_000, seed=3)
    eng = Shelfwise(settings)
    eng.upsert_items(store.items)
    events = list(store.events())
    for i in range(0, len(events), 5000):
        eng.ingest(events[i:i + 5000])
    train(eng.store, eng.catalog, eng.models, settings.models, sources=("trending", "covisit"))
    eng.close()
    eng = Shelfwise(settings)
    assert "cohort" in eng.pipeline.retrievers and eng.pipeline.ranker is not None
    roots = {it.id: it.category[0] for it in store.items}
    yield settings, eng, roots
    eng.close()


def first_request(eng, shopper, **kw):
    return eng.recommend(RecRequest(placement="homepage", shopper=shopper, k=8, explain=True, **kw))


def departments(answer, roots) -> Counter:
    return Counter(roots[r.item_id] for r in answer.items)


@pytest.mark.parametrize("segment, department", [("cameras-fan", "Cameras"), ("audio-fan", "Audio"),
                                                 ("gaming-fan", "Gaming"), ("laptops-fan", "Laptops")])
def test_a_new_shoppers_first_answer_comes_from_their_cohort(shop, segment, department):
    _, eng, roots = shop
    ans = first_request(eng, f"new-{segment}", device="mobile", segments=[segment])
    assert ans.items and ans.fallback  # nothing about this shopper's own behaviour went in ...
    assert all(r.reason == "cohort" and r.fallback and "cohort" in r.sources for r in ans.items)  # ... their cohort
    assert segment in ans.explanation["cohort"]
    got = departments(ans, roots)
    # the department the segment is about leads (accessories of it may join), unlike the shop's best sellers
    assert got.most_common(1)[0][0] in (department, "Accessories") and got[department] >= 3, got


def test_cohorts_differ(shop):
    _, eng, roots = shop
    answers = {seg: [r.item_id for r in first_request(eng, f"n-{seg}", segments=[seg]).items]
               for seg in ("cameras-fan", "audio-fan", "phones-fan", "tvs-fan")}
    assert len({tuple(a) for a in answers.values()}) == 4
    assert all(len(set(a) & set(b)) <= 2 for x, a in answers.items() for y, b in answers.items() if x < y)
    # devices alone differ less, but they do name different cohorts
    mobile = first_request(eng, "n-mobile", device="mobile")
    desktop = first_request(eng, "n-desktop", device="desktop")
    assert "device=mobile" in mobile.explanation["cohort"] and "device=desktop" in desktop.explanation["cohort"]
    assert all(r.reason == "cohort" for r in mobile.items + desktop.items)


def test_an_unknown_cohort_gets_the_best_sellers_marked_popular(shop):
    _, eng, _ = shop
    ans = first_request(eng, "n-nothing", segments=["no-such-segment"])
    assert ans.items and ans.fallback and "cohort" not in ans.explanation
    assert all(r.reason == "popular" and set(r.sources) <= {"trending", "fallback"} for r in ans.items)


def test_from_the_first_view_the_session_sources_take_over(shop):
    _, eng, roots = shop
    camera = first_request(eng, "n-camera-fan", segments=["cameras-fan"]).items[0].item_id  # a popular camera
    shopper = "n-one-view"
    eng.ingest([Event.model_validate(
        {"event_id": "first-view", "type": "product_viewed", "user_id": shopper, "item_id": camera,
         "timestamp": datetime.now(timezone.utc).isoformat(),
         "context": {"device": "mobile", "segments": ["audio-fan"]}})])
    ans = first_request(eng, shopper, device="mobile", segments=["audio-fan"])
    assert not any("cohort" in r.sources for r in ans.items) and "cohort" not in ans.explanation
    assert not ans.fallback and sum(r.reason == "evidence" for r in ans.items) >= len(ans.items) // 2
    assert departments(ans, roots).most_common(1)[0][0] in ("Cameras", "Accessories")  # the view, not the segment


def test_the_ranker_keeps_a_cohort_answer_in_centroid_order_but_ranks_known_shoppers(shop):
    _, eng, _ = shop
    known = next(s for s in eng.pipeline.shopper_index if s.startswith("u"))
    new = {"shopper": "n-ranked", "segments": ["audio-fan"], "device": "mobile"}

    def ids(answer):
        return [r.item_id for r in answer.items]

    # one batch through the ranker: the new shopper's row and a known shopper's row
    on_new, on_known = map(ids, eng.recommend_many([RecRequest(placement="homepage", k=8, **new),
                                                    RecRequest(placement="homepage", k=8, shopper=known)]))
    off_new, off_known = (ids(eng.recommend(RecRequest(placement="homepage", k=8, ranker=False, **kw)))
                          for kw in (new, {"shopper": known}))
    assert on_new == off_new  # the centroid's order
    assert on_known != off_known  # the ranker does re-rank a shopper with a history


def test_through_the_api_with_segment_and_device(shop):
    from fastapi.testclient import TestClient

    from shelfwise.api.app import create_app

    settings, _, roots = shop
    key = make_key(settings, ["read"], name="cohort-reader")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as c:
        body = c.get("/v1/recommendations/homepage", params={"user_id": "api-new", "segment": "cameras-fan",
                                                             "device": "mobile", "k": 6}).json()
        assert body["fallback"] is True and all(it["reason"] == "cohort" for it in body["items"])
        other = c.get("/v1/recommendations/homepage", params={"user_id": "api-new2", "segment": "tvs-fan",
                                                              "k": 6}).json()
        assert [it["item_id"] for it in other["items"]] != [it["item_id"] for it in body["items"]]
