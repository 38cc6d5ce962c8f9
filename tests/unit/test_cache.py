"""The answer cache: hits for repeated requests, and never stale after a shopper's event, a catalog change, a new
model version or erasure."""

import time

import pytest

from shelfwise.cache import AnswerCache, state_fingerprint
from shelfwise.request import Answer, RecRequest
from shelfwise.service import Shelfwise
from shelfwise.stores.protocols import Interaction, ShopperState
from tests.conftest import T0, view, ids


@pytest.fixture
def engine(trained_engine):
    return trained_engine


def test_repeated_requests_hit_and_a_shoppers_event_changes_the_next_answer(engine):
    ask = lambda: engine.recommend(RecRequest("homepage", shopper="u1", k=4))  # noqa: E731
    first = ask()
    hits = engine.cache.hits
    assert ask() is first and engine.cache.hits == hits + 1
    minute = (time.time() - T0.timestamp()) / 60  # now: newer than the model
    engine.ingest([view("cache-1", "u1", "h1", minute), view("cache-2", "u1", "h0", minute + 0.1)])
    after = ask()
    assert after is not first and ids(after) != ids(first)


def test_a_stock_change_reaches_cached_answers_at_once(engine):
    ask = lambda: engine.recommend(RecRequest("pdp_fbt", item_id="p2", k=3))  # noqa: E731
    first = ask()
    assert ask() is first
    gone = first.items[0].item_id
    engine.upsert_items([engine.get_item(gone).model_copy(update={"stock": 0})])
    assert gone not in ids(ask())


def test_erasure_drops_the_shoppers_answers(engine):
    engine.recommend(RecRequest("homepage", shopper="u2", k=4))
    engine.recommend(RecRequest("homepage", shopper="u3", k=4))
    before = len(engine.cache)
    engine.forget_shopper("u2")
    assert len(engine.cache) == before - 1


def test_expiry_and_bounds():
    cache = AnswerCache(ttl_s=0.05, max_entries=2)
    a = Answer([], "homepage")
    cache.put(("homepage", "x"), a)
    assert cache.get(("homepage", "x")) is a
    time.sleep(0.06)
    assert cache.get(("homepage", "x")) is None
    for i in range(3):
        cache.put(("homepage", str(i)), a)
    assert len(cache) == 2 and cache.get(("homepage", "0")) is None
    assert not AnswerCache(ttl_s=0).enabled


def test_fingerprint_changes_with_every_event():
    s = ShopperState([Interaction("a", 0, 1.0)], set())
    t = ShopperState([Interaction("a", 0, 1.0), Interaction("b", 0, 2.0)], set())
    u = ShopperState([Interaction("a", 0, 1.0), Interaction("b", 2, 2.0)], {"b"})
    assert len({state_fingerprint(x) for x in (None, s, t, u)}) == 4
    assert state_fingerprint(ShopperState([], set())) == state_fingerprint(None)
