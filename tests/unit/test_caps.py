"""Frequency caps on the engine: explanations name capped items, fatigue lowers an item before its cap, and an item
taken out of the cart is negative evidence."""

from __future__ import annotations

from datetime import timedelta

from shelfwise.domain import Event
from shelfwise.rerank.caps import cap_view, capped
from shelfwise.request import RecRequest
from shelfwise.service import Shelfwise
from shelfwise.settings import CapSettings, CapsSettings
from shelfwise.stores.protocols import Interaction, SeenItem
from tests.conftest import T0, ids

NOW = (T0 + timedelta(days=10)).timestamp()
H = 3600.0


def test_cap_counts_impressions_since_the_last_engagement_within_the_window():
    conf = CapSettings(max_impressions=2, window_hours=24)
    seen = {"a": SeenItem(0.0, ((NOW - 30 * H, "homepage"), (NOW - 2 * H, "homepage"), (NOW - H, "homepage"))),
            "b": SeenItem(NOW - 1.5 * H, ((NOW - 2 * H, "homepage"), (NOW - H, "homepage"))),  # clicked between
            "c": SeenItem(0.0, ((NOW - 2 * H, "homepage"), (NOW - H, "pdp_similar")))}
    got = capped(seen, NOW, "homepage", conf)
    assert set(got) == {"a"} and "shown 2 times on homepage in the last 24 h" in got["a"]
    assert set(capped(seen, NOW, "homepage", CapSettings(max_impressions=2, scope="all"))) == {"a", "c"}
    email = CapSettings(max_impressions=1, window_hours=28 * 24, seen_elsewhere_hours=72)
    assert set(capped(seen, NOW, "email_weekly", email)) == {"a", "b", "c"}  # all seen on the site lately


def test_fatigue_decays_and_a_removal_counts_until_the_item_is_carted_again():
    conf = CapSettings(penalty=0.2, half_life_hours=6)
    seen = {"a": SeenItem(0.0, ((NOW - 6 * H, "homepage"),)), "b": SeenItem(0.0, ((NOW, "homepage"),))}
    recent = [Interaction("x", 1, NOW - 10), Interaction("x", 2, NOW - 5),  # carted, then taken out
              Interaction("y", 2, NOW - 9), Interaction("y", 1, NOW - 4)]  # taken out, then carted again
    view = cap_view(seen, recent, NOW, "homepage", conf, CapsSettings(removed_penalty=0.3))
    assert abs(view.penalty["a"] - 0.1) < 1e-9 and abs(view.penalty["b"] - 0.2) < 1e-9
    assert 0.29 < view.penalty["x"] <= 0.3 and "y" not in view.penalty and not view.capped


def test_explanations_name_capped_items_and_fatigue(trained_settings):
    s = trained_settings.model_copy(deep=True)
    s.models.caps.placements["homepage"] = CapSettings(max_impressions=2, window_hours=24, penalty=0.5)
    eng = Shelfwise(s)
    try:
        first = ids(eng.recommend(RecRequest("homepage", shopper="u1", k=4, now=NOW)))
        second = eng.recommend(RecRequest("homepage", shopper="u1", k=10, now=NOW + 60, explain=True))
        assert len(second.items) == 10  # every item of the tiny shop: seen once is not capped
        tired = {r.item_id: r.explanation["components"].get("fatigue", 0.0) for r in second.items}
        assert all(tired[x] < 0 for x in first) and all(v == 0 for x, v in tired.items() if x not in first)
        third = eng.recommend(RecRequest("homepage", shopper="u1", k=10, now=NOW + 120, explain=True))
        named = {c["item_id"]: c["reason"] for c in third.explanation["capped"]}
        assert set(first) == set(named) and all("frequency cap" in r for r in named.values())
        assert len(third.items) == 6 and not set(first) & set(ids(third))  # the other six fill the rail
        # a click on a capped item lifts its cap
        eng.ingest([Event(event_id="cap-click", type="recommendation_clicked", user_id="u1", item_id=first[0],
                          timestamp=T0 + timedelta(days=10, minutes=3))])
        fourth = eng.recommend(RecRequest("homepage", shopper="u1", k=10, now=NOW + 240, explain=True))
        assert first[0] in ids(fourth) and first[0] not in {c["item_id"] for c in fourth.explanation["capped"]}
    finally:
        eng.close()


def test_a_removed_item_ranks_lower(trained_settings):
    eng = Shelfwise(trained_settings)
    try:
        before = ids(eng.recommend(RecRequest("homepage", shopper="u1", k=10, now=NOW)))
        top = before[0]
        eng.ingest([Event(event_id="rm-1", type="remove_from_cart", user_id="u1", item_id=top,
                          timestamp=T0 + timedelta(days=10, minutes=1))])
        after = ids(eng.recommend(RecRequest("homepage", shopper="u1", k=10, now=NOW + 120)))
        assert top in after and after.index(top) > 0
    finally:
        eng.close()


def test_wishlist_rail_lists_items_back_in_stock_or_cheaper(trained_settings):
    from shelfwise.domain import Item  # noqa: F401
    from tests.conftest import tiny_catalog

    eng = Shelfwise(trained_settings)
    try:
        catalog = {i.id: i for i in tiny_catalog()}
        eng.upsert_items([catalog["c1"].model_copy(update={"stock": 0})])

        def wish(eid: str, kind: str, item: str, minute: float) -> Event:
            return Event(event_id=eid, type=kind, user_id="u7", item_id=item,
                         timestamp=T0 + timedelta(days=10, minutes=minute))

        eng.ingest([wish("w1", "wishlist_added", "c1", 1),  # sold out when wishlisted (from the catalog)
                    wish("w2", "wishlist_added", "p2", 2), wish("w3", "wishlist_added", "h0", 3),
                    wish("w4", "wishlist_added", "p3", 4), wish("w5", "wishlist_removed", "p3", 5)])
        rail = lambda: eng.recommend(RecRequest("wishlist_alerts", shopper="u7", k=5, now=NOW, explain=True))  # noqa
        assert ids(rail()) == []  # nothing changed yet
        eng.upsert_items([catalog["c1"], catalog["p2"].model_copy(update={"price": 400.0}),
                          catalog["h0"].model_copy(update={"price": 29.0}),
                          catalog["p3"].model_copy(update={"price": 100.0})])  # p3 left the wishlist
        got = rail()
        assert ids(got) == ["p2", "h0", "c1"]  # the biggest drop first, then back in stock
        assert got.items[0].explanation["reason"] == "price dropped from 502 to 400"
        assert got.items[2].explanation["reason"] == "back in stock"
        assert ids(eng.recommend(RecRequest("wishlist_alerts", shopper="u8", k=5, now=NOW))) == []
    finally:
        eng.close()


def test_the_in_process_impressions_leave_the_garbage_collectors_reach():
    """A shopper's impressions are kept as plain tuples (GC-untracked after a collection: the API's periodic
    collections do not walk them) and read back as ``SeenItem``s."""
    import gc

    from shelfwise.stores.memory import MemoryOnlineState

    online = MemoryOnlineState()
    online.show({"u": [("a", "homepage"), ("b", "pdp_similar")]}, at=100.0)
    online.show({"u": [("a", "cart_upsell")]}, at=101.0)
    for _ in range(3):  # a pass untracks tuples whose items are untracked, then dicts of untracked values
        gc.collect()
    rows = online._seen["u"]
    assert not gc.is_tracked(rows) and not any(gc.is_tracked(v) for v in rows.values())
    seen = online.read(["u"])[1]["u"]
    assert isinstance(seen["a"], SeenItem) and seen["a"].shown == ((100.0, "homepage"), (101.0, "cart_upsell"))
    assert seen["b"] == SeenItem(0.0, ((100.0, "pdp_similar"),))
