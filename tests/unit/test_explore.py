"""Exploration slots for new items (stages/explore.py): the share of slots, only new items with few impressions,
marked in the answer with their propensity (logged with the exposure), rules first, off by setting, the same
draw for the same request id and seed, and the content match that picks the items."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest

from shelfwise.domain import Item
from shelfwise.experiments.bandits import explore_count, explore_positions, weighted_draw
from shelfwise.items import ItemTable
from shelfwise.request import RecRequest
from shelfwise.rules.admin import put_ruleset, rules_db_path
from shelfwise.rules.log import Exposure, ImpressionCounts, SQLiteExposureLog
from shelfwise.service import Shelfwise
from shelfwise.stores.protocols import Interaction, ShopperState
from shelfwise.training import train
from tests.conftest import T0, ids, tiny_catalog, tiny_events

PHONES = [Item(id=f"np{i}", title=f"Nova smartphone {i}, OLED screen, 5G", category=["Phones", "Smartphones"],
               brand="Nova", price=510 + i, cost=450, stock=5) for i in range(6)]
HOSES = [Item(id=f"ng{i}", title=f"Garden hose {i}, 20 m, brass fittings", category=["Garden", "Hoses"],
              brand="Aqua", price=25 + i, cost=10, stock=5) for i in range(6)]
NEW = {it.id for it in PHONES + HOSES}


def make_engine(settings, share: float = 0.5, **explore) -> Shelfwise:
    """The tiny shop trained (no sequence model or ranker: quick), then 12 new items upserted (no created_at: new
    since now) and encoded; the homepage explores ``share`` of its slots."""
    settings.models.placements["homepage"] = settings.models.placements["homepage"].model_copy(
        update={"explore": share})
    settings.models.explore = settings.models.explore.model_copy(update=explore)
    settings.api.cache_ttl_s = 0  # every request draws (a cached answer repeats its draw)
    # the content source's own vectors: ALS on ten items projects every new item to nearly the same place
    settings.models.content = settings.models.content.model_copy(update={"space": "content"})
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    models = settings.models.model_copy(update={"ranker": settings.models.ranker.model_copy(update={"enabled": False})})
    train(eng.store, eng.catalog, eng.models, models, sources=("trending", "covisit", "copurchase", "als"))
    eng.close()
    eng = Shelfwise(settings)
    eng.upsert_items(PHONES + HOSES)
    assert eng.encoder is not None and eng.encoder.flush(60) and eng.encoder.errors == 0
    warm_up(eng)
    return eng


def warm_up(eng: Shelfwise) -> None:
    """A first request makes the stage watch the new items; the exposure log's writer then reads their counts."""
    eng.recommend(RecRequest("homepage", shopper="u1", k=4))
    eng.merch.log.flush()


@pytest.fixture
def engine(settings):
    eng = make_engine(settings)
    yield eng
    eng.close()


def home(eng: Shelfwise, rid: str, **kw):
    kw.setdefault("shopper", "u1")
    kw.setdefault("k", 4)
    return eng.recommend(RecRequest("homepage", request_id=rid, **kw))


def explored(answer) -> list[str]:
    return [r.item_id for r in answer.items if r.reason == "exploration"]


# ---- the draw's building blocks -------------------------------------------------------------------------------
def test_weighted_draw_propensities_are_exact():
    w = np.array([1.0, 3.0, 0.0, 4.0])
    first = Counter()
    for seed in range(4000):
        (j, p), = weighted_draw(w, 1, np.random.default_rng(seed))
        assert p == w[j] / w.sum() and j != 2
        first[j] += 1
    assert abs(first[3] / 4000 - 0.5) < 0.03 and abs(first[0] / 4000 - 0.125) < 0.02
    two = weighted_draw(w, 5, np.random.default_rng(1))
    assert len(two) == 3 and len({j for j, _ in two}) == 3  # never the zero weight, never twice
    (a, pa), (b, pb), _ = two
    assert pb == w[b] / (w.sum() - w[a])  # conditional on the first draw
    assert weighted_draw(np.zeros(3), 1, np.random.default_rng(0)) == []


def test_explore_count_and_positions():
    rng = np.random.default_rng(0)
    assert {explore_count(12, 1 / 12, rng) for _ in range(200)} == {1}
    assert {explore_count(8, 0.5, rng) for _ in range(50)} == {4}
    share = np.mean([explore_count(3, 1 / 12, rng) for _ in range(4000)])
    assert abs(share - 0.25) < 0.03  # a fractional slot is a coin flip
    pos = explore_positions(12, 3, rng)
    assert pos == sorted(pos) and len(set(pos)) == 3 and all(0 <= p < 12 for p in pos)


def test_item_age_is_created_at_else_first_seen():
    old = T0.timestamp() - 400 * 86400
    items = [Item(id="a", created_at=T0), Item(id="b"), Item(id="c")]
    table = ItemTable.build(["a", "b", "c"], {it.id: it for it in items})
    assert np.isnan(table.first_seen).all()
    table.seen({"a": 5.0, "b": 7.0, "zz": 1.0})
    table.seen({"b": 9.0})  # the earlier time stays
    assert table.born()[0] == T0.timestamp() and table.born()[1] == 7.0 and np.isnan(table.born()[2])
    grown = table.with_items([Item(id="d"), Item(id="e")], {"d": old})
    assert grown.first_seen[3] == old and abs(grown.first_seen[4] - time.time()) < 5  # not in the catalog's: now
    assert table.with_items([Item(id="a")]) is table


# ---- the impression counts ----------------------------------------------------------------------------------
def test_impression_counts_follow_the_log_and_other_writers(tmp_path):
    path = tmp_path / "log.db"
    mine, other = SQLiteExposureLog(path, counts_refresh_s=0.2), SQLiteExposureLog(path, counts_refresh_s=0.2)
    try:
        other.record([Exposure("r0", time.time(), None, "homepage", ["x", "y", "x"], [1, 1, 1])])
        other.flush()
        counts = mine.counts
        assert counts.get(["x", "y", "z"]) == [-1, -1, -1]  # not watched: unknown
        counts.watch(["x", "z"])
        mine.flush()
        assert counts.get(["x", "y", "z"]) == [2, -1, 0]  # read from the log at once (z: never shown)
        mine.record([Exposure("r1", time.time(), None, "homepage", ["x", "z", "y"], [1, 1, 1])])
        mine.flush()
        assert counts.get(["x", "z"]) == [3, 1]  # its own impressions, as committed
        other.record([Exposure("r2", time.time(), None, "homepage", ["z"] * 4, [1] * 4)])
        other.flush()
        assert counts.get(["z"]) == [1]  # another process's: with the next refresh
        time.sleep(0.25)
        mine.record([Exposure("r3", time.time(), None, "homepage", ["q"], [1])])
        mine.flush()
        assert counts.get(["x", "z"]) == [3, 5]
    finally:
        mine.close()
        other.close()


def test_counts_forget_items_nobody_asks_about():
    counts = ImpressionCounts(refresh_s=0.0, forget_s=0.05)
    woken = []
    counts.wake = lambda: woken.append(1)
    counts.watch(["a", "b"])
    counts.watch(["a"])
    assert woken == [1] and counts.to_read(time.monotonic()) == ["a", "b"]
    counts.read(["a", "b"], {"a": 4})
    assert counts.get(["a", "b"]) == [4, 0]
    time.sleep(0.06)
    counts.watch(["b"])
    assert counts.to_read(time.monotonic()) == ["b"] and counts.get(["a"]) == [-1]


# ---- serving --------------------------------------------------------------------------------------------------
def test_share_of_slots_and_only_new_items(engine):
    seen = Counter()
    for i in range(40):
        a = home(engine, f"share-{i}", shopper=f"u{i % 40}")
        got = explored(a)
        assert len(got) == 2 and set(got) <= NEW, ids(a)  # k=4 × share 0.5
        assert len(set(ids(a))) == len(a.items) == 4
        assert not NEW & set(ids(a)) - set(got)  # new items only where exploration put them
        seen.update(got)
    assert set(seen) == {x.id for x in PHONES}  # the draw spreads over the new items like these phone buyers'
    for k, want in ((2, {1}), (3, {1, 2})):  # a fractional slot is a coin per request
        assert {len(explored(home(engine, f"k{k}-{i}", k=k))) for i in range(30)} == want
    # pdp_fbt and cart_upsell explore nothing by default
    assert not explored(engine.recommend(RecRequest("pdp_fbt", item_id="p1", k=8, request_id="fbt")))
    assert not explored(engine.recommend(RecRequest("cart_upsell", cart=["p1"], k=8, request_id="cart")))


def test_slots_are_marked_with_their_propensity_and_logged(engine):
    a = home(engine, "marked", explain=True)
    slots = [r for r in a.items if r.reason == "exploration"]
    assert len(slots) == 2
    for r in slots:
        assert 0 < r.propensity < 1 and r.sources[0] == "content" and not r.fallback  # u1 has a history
        assert r.explanation["reason"].startswith("exploration slot for a new item: content match")
    assert all(r.propensity == 1.0 for r in a.items if r.reason != "exploration")
    engine.merch.log.flush()
    db = sqlite3.connect(rules_db_path(engine.settings))
    (answer,) = db.execute("SELECT items, propensities FROM exposures WHERE request_id = 'marked'").fetchall()
    rows = list(zip(range(len(ids(a))), orjson.loads(answer[0]), orjson.loads(answer[1])))
    db.close()
    assert [r[1] for r in rows] == ids(a)
    assert [r[2] for r in rows] == [r.propensity if r.reason == "exploration" else None for r in a.items]
    # a new visitor without history: drawn without a content match, so a fallback (like the popular fill)
    b = home(engine, "blind", shopper="nobody-new")
    assert all(r.fallback and r.sources == ["fallback"] for r in b.items if r.reason == "exploration")
    assert b.fallback


def test_content_match_picks_the_new_items_like_the_shopper_s(engine):
    now = time.time()
    phones = ShopperState(recent=[Interaction(f"p{i}", 0, now - 60 + i) for i in range(4)], purchased=set())
    hoses = ShopperState(recent=[Interaction("ng0", 0, now - 5)], purchased=set())
    got = Counter(x[:2] for i in range(60) for x in explored(home(engine, f"m{i}", shopper="fan", state=phones)))
    assert got["np"] > 3 * got["ng"]
    got = Counter(x[:2] for i in range(60) for x in explored(home(engine, f"h{i}", shopper="gardener",
                                                                   state=hoses)))
    assert got["ng"] > 3 * got["np"]
    # on a product page: new items like the page's item
    page = Counter(x[:2] for i in range(60) for x in explored(engine.recommend(
        RecRequest("pdp_similar", item_id="p2", k=12, request_id=f"pdp{i}"))))
    assert page["np"] > 3 * page["ng"]  # 1 of 12 slots by default (a phone ranked on its own merit is not drawn)


def test_items_leave_exploration_after_max_impressions(settings):
    eng = make_engine(settings, max_impressions=3)
    try:
        eng.merch.log.record([Exposure("shown", time.time(), None, "pdp_similar", [x.id for x in PHONES] * 3,
                                       [1.0] * 18)])
        eng.merch.log.flush()
        time.sleep(1.05)  # changed counts rebuild the pool at most once a second
        got = {x for i in range(30) for x in explored(home(eng, f"cap-{i}"))}
        assert got and got <= {x.id for x in HOSES}
    finally:
        eng.close()


def test_items_created_long_ago_are_not_new(settings):
    """A catalog's created_at says when an item came out, whenever Shelfwise first saw it."""
    eng = make_engine(settings)
    try:
        old = [it.model_copy(update={"id": f"o{it.id}", "created_at": T0}) for it in PHONES]
        recent = [it.model_copy(update={"id": f"r{it.id}", "created_at": datetime.now(timezone.utc)})
                  for it in PHONES]
        eng.upsert_items(old + recent)
        assert eng.encoder.flush(60)
        warm_up(eng)
        got = {x for i in range(30) for x in explored(home(eng, f"old-{i}"))}
        assert got and not got & {x.id for x in old} and got & {x.id for x in recent}
    finally:
        eng.close()


def test_rules_and_exclusions_win(engine):
    engine.upsert_items([PHONES[0].model_copy(update={"stock": 0}), PHONES[1].model_copy(update={"available": False})])
    shown = [home(engine, f"rules-{i}", exclude=["ng0"], k=4) for i in range(40)]
    got = {x for a in shown for x in explored(a)}
    assert got and not got & {"np0", "np1", "ng0"}
    garden = [home(engine, f"cat-{i}", category="Garden", k=4) for i in range(10)]
    assert all(x.startswith("ng") for a in garden for x in ids(a))
    assert all(len(set(ids(a))) == len(a.items) for a in shown + garden)
    # a block rule and a pin: blocked items are never explored; the pin keeps its slot
    put_ruleset(engine.merch.store, "shop", {"rules": [
        {"id": "no-hoses", "action": {"type": "block"}, "match": {"brands": ["Aqua"]}},
        {"id": "hero", "action": {"type": "pin", "items": ["c3"], "slot": 1}}]}, "test", "", ["homepage"],
        publish=True)
    engine.merch.rules_changed()
    answers = [home(engine, f"pinned-{i}", k=4) for i in range(40)]
    assert all(a.items[0].item_id == "c3" and a.items[0].reason == "pinned" for a in answers)
    got = [x for a in answers for x in explored(a)]
    assert got and all(x.startswith("np") for x in got)
    assert all(len(explored(a)) == 2 for a in answers)  # the slot the pin took moved on


def test_switched_off_by_setting(settings):
    eng = make_engine(settings, enabled=False)
    try:
        assert "explore" not in [s.name for s in eng.pipeline.stages]
        assert not any(explored(home(eng, f"off-{i}")) for i in range(20))
    finally:
        eng.close()


def test_share_zero_and_no_new_items_cost_nothing(engine):
    stage = engine.pipeline.stage("explore")
    batch_stage_calls = []
    real = stage.pool
    stage.pool = lambda now: batch_stage_calls.append(now) or real(now)
    a = engine.recommend(RecRequest("pdp_fbt", item_id="p1", k=8, request_id="z"))
    assert not explored(a) and batch_stage_calls == []  # a placement without a share stops at once
    later = time.time() + 30 * 86400  # a month on, nothing is new any more
    assert len(real(later).items) == 0


def test_same_request_id_and_seed_draw_the_same_slots(settings):
    eng = make_engine(settings)
    try:
        first = [ids(home(eng, f"seed-{i}")) for i in range(10)]
        again = [ids(home(eng, f"seed-{i}")) for i in range(10)]
        assert first == again
        eng.pipeline.stage("explore").settings = eng.settings.models.explore.model_copy(update={"seed": 7})
        eng.cache.clear()
        other = [ids(home(eng, f"seed-{i}")) for i in range(10)]
        assert other != first
    finally:
        eng.close()
