"""The synthetic storefront: deterministic, valid, and shaped like a real electronics shop."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from itertools import pairwise

import pytest

from shelfwise.domain import Event, Item
from shelfwise.synthetic import ACCESSORY, DEVICE, PART, Storefront, generate_storefront

SMALL = dict(n_items=300, n_shoppers=200, n_events=5000, seed=7)
MEDIUM = dict(n_items=1000, n_shoppers=500, n_events=20_000, seed=11)


@pytest.fixture(scope="module")
def small() -> tuple[Storefront, list[Event]]:
    store = generate_storefront(**SMALL)
    return store, list(store.events())


@pytest.fixture(scope="module")
def medium() -> tuple[Storefront, list[Event]]:
    store = generate_storefront(**MEDIUM)
    return store, list(store.events())


def _sessions(events: list[Event]) -> dict[str, list[Event]]:
    sessions: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        sessions[e.session_id].append(e)
    return sessions


def test_same_arguments_give_identical_catalog_and_events(small):
    store, events = small
    again = generate_storefront(**SMALL)
    assert [it.model_dump() for it in again.items] == [it.model_dump() for it in store.items]
    assert again.accessories == store.accessories and again.shoppers == store.shoppers
    assert [e.model_dump() for e in again.events()] == [e.model_dump() for e in events]
    assert [e.model_dump() for e in store.events()] == [e.model_dump() for e in events]  # events() replays


def test_another_seed_gives_another_storefront(small):
    store, events = small
    other = generate_storefront(**{**SMALL, "seed": 8})
    assert [it.title for it in other.items] != [it.title for it in store.items]
    assert [e.item_id for e in other.events()][:200] != [e.item_id for e in events][:200]


def test_every_event_and_item_validates(small):
    store, events = small
    for e in events:
        assert Event.model_validate(e.model_dump()) == e
    Event.model_validate_json(events[0].model_dump_json())
    for it in store.items:
        assert Item.model_validate(it.model_dump()) == it
        assert it.created_at is not None and it.created_at <= store.start


def test_sizes_and_ids(small):
    store, events = small
    assert len(store.items) == SMALL["n_items"] and len(store.shoppers) == SMALL["n_shoppers"]
    assert store.shoppers[42] == "u00042"
    assert abs(len(events) - SMALL["n_events"]) <= 0.1 * SMALL["n_events"]
    assert len({e.event_id for e in events}) == len(events)
    assert len({it.id for it in store.items}) == len(store.items)
    assert set(store.kinds) == {it.id for it in store.items}


def test_timestamps_ordered_and_inside_the_window(small):
    store, events = small
    assert all(a.timestamp <= b.timestamp for a, b in pairwise(events))
    assert all(store.start <= e.timestamp < store.start + timedelta(days=store.days) for e in events)
    assert all(e.timestamp.tzinfo is not None and e.timestamp.utcoffset() == timedelta(0) for e in events)
    assert events[-1].timestamp - events[0].timestamp > timedelta(days=store.days - 3)  # the whole window is used


def test_custom_window_is_respected():
    start = datetime(2027, 1, 1, tzinfo=timezone.utc)
    store = generate_storefront(n_items=100, n_shoppers=50, n_events=1000, seed=1, start=start, days=3)
    events = list(store.events())
    assert all(start <= e.timestamp < start + timedelta(days=3) for e in events)


def test_funnel_rates_are_realistic(medium):
    _, events = medium
    counts = Counter(e.type for e in events)
    bought = sum(len(e.items) for e in events if e.type == "purchase_completed")
    assert 0.08 <= counts["add_to_cart"] / counts["product_viewed"] <= 0.12
    assert 0.30 <= bought / counts["add_to_cart"] <= 0.50
    assert 0 < counts["remove_from_cart"] < 0.2 * counts["add_to_cart"]
    assert counts["search"] > 0


def test_sessions_are_short_bursts_with_a_coherent_funnel(small):
    _, events = small
    for sid, evs in _sessions(events).items():
        assert evs[-1].timestamp - evs[0].timestamp < timedelta(hours=6)
        assert len({e.user_id for e in evs}) == 1
        cart: set[str] = set()
        for e in evs:
            if e.type == "add_to_cart":
                cart.add(e.item_id)
            elif e.type == "remove_from_cart":
                assert e.item_id in cart
                cart.discard(e.item_id)
            elif e.type == "purchase_completed":
                assert {line.item_id for line in e.items} == cart and e.order_id


def test_purchases_use_catalog_prices_and_in_stock_items(small):
    store, events = small
    by_id = {it.id: it for it in store.items}
    purchases = [e for e in events if e.type == "purchase_completed"]
    assert purchases and len({e.order_id for e in purchases}) == len(purchases)
    for e in purchases:
        for line in e.items:
            assert line.price == by_id[line.item_id].price and line.quantity >= 1
            assert by_id[line.item_id].in_stock


def test_unavailable_and_out_of_stock_items_get_few_events(medium):
    store, events = medium
    by_id = {it.id: it for it in store.items}
    assert any(not it.available for it in store.items) and any(it.stock == 0 for it in store.items)
    per_item = Counter(e.item_id for e in events if e.item_id)
    assert all(per_item[it.id] == 0 for it in store.items if not it.available)
    assert all(by_id[e.item_id].in_stock for e in events if e.type == "add_to_cart")
    out = [it for it in store.items if it.available and it.stock == 0]
    assert sum(per_item[it.id] for it in out) / len(out) < 0.2 * sum(per_item.values()) / len(store.items)


def test_accessories_and_parts_carry_higher_margins_than_devices(small):
    store, _ = small
    margins = defaultdict(list)
    for it in store.items:
        margins[store.kinds[it.id]].append(it.margin)
    assert all(0.03 <= m <= 0.17 for m in margins[DEVICE])
    assert all(0.38 <= m <= 0.72 for m in margins[ACCESSORY] + margins[PART])
    assert min(margins[ACCESSORY] + margins[PART]) > max(margins[DEVICE])


def test_catalog_looks_like_an_electronics_shop(small):
    store, _ = small
    roots = {it.category[0] for it in store.items}
    assert {"Phones", "Laptops", "Audio", "Accessories", "Replacement Parts", "TVs"} <= roots
    assert len({it.brand for it in store.items}) >= 25
    phone = next(it for it in store.items if it.category == ["Phones", "Smartphones"])
    assert "Smartphone" in phone.title and phone.attributes["storage"] in phone.title
    assert 150 <= phone.price <= 1400 and phone.description


def test_accessory_graph_is_consistent(small):
    store, _ = small
    by_id = {it.id: it for it in store.items}
    assert store.accessories
    for device, accessories in store.accessories.items():
        assert store.kinds[device] == DEVICE
        for acc in accessories:
            assert store.kinds[acc] in (ACCESSORY, PART)
            assert device in by_id[acc].attributes["compatible_with"]
    for it in store.items:
        if store.kinds[it.id] != DEVICE:
            fits = it.attributes["compatible_with"]
            assert fits and all(it.id in store.accessories[d] for d in fits)
    cases = [it for it in store.items if it.category == ["Accessories", "Phone Cases"]]
    assert all(by_id[d].category == ["Phones", "Smartphones"] for it in cases for d in it.attributes["compatible_with"])


def test_item_popularity_is_skewed(medium):
    store, events = medium
    views = sorted(Counter(e.item_id for e in events if e.type == "product_viewed").values(), reverse=True)
    assert sum(views[: len(store.items) // 10]) > 0.4 * sum(views)


def test_sessions_browse_sequentially(small):
    store, events = small
    leaf = {it.id: tuple(it.category) for it in store.items}
    pairs = [(a.item_id, b.item_id) for evs in _sessions(events).values()
             for a, b in pairwise([e for e in evs if e.type == "product_viewed"])]
    same = sum(leaf[a] == leaf[b] for a, b in pairs) / len(pairs)
    shares = Counter(leaf[e.item_id] for e in events if e.type == "product_viewed")
    total = sum(shares.values())
    chance = sum((c / total) ** 2 for c in shares.values())
    assert same > 4 * chance and same > 0.5


def test_shoppers_move_from_devices_to_their_accessories(medium):
    store, events = medium
    fits = {d: set(a) for d, a in store.accessories.items()}
    steps = [(a.item_id, b.item_id) for evs in _sessions(events).values()
             for a, b in pairwise([e for e in evs if e.type == "product_viewed"]) if a.item_id in fits]
    assert sum(b in fits[a] for a, b in steps) / len(steps) > 0.1
    baskets = [{line.item_id for line in e.items} for e in events if e.type == "purchase_completed"]
    with_device = [basket for basket in baskets if basket & fits.keys()]
    together = sum(any(basket & fits[d] for d in basket & fits.keys()) for basket in with_device)
    assert together / len(with_device) > 0.05  # what "frequently bought together" should learn


def test_anonymous_and_logged_in_sessions(small):
    store, events = small
    users = set(store.shoppers)
    anonymous = {e.session_id for e in events if e.user_id is None}
    logged_in = {e.session_id for e in events if e.user_id is not None}
    assert anonymous and logged_in and not anonymous & logged_in
    assert 0.1 < len(anonymous) / (len(anonymous) + len(logged_in)) < 0.4
    assert all(e.session_id for e in events)
    assert {e.user_id for e in events if e.user_id} <= users
    assert {e.context.device for e in events} <= {"mobile", "desktop", "tablet"}


def test_searches_carry_a_query(small):
    _, events = small
    searches = [e for e in events if e.type == "search"]
    assert searches and all(e.properties["query"].strip() for e in searches)


def test_shoppers_have_latent_tastes_that_show_in_their_views(medium):
    store, events = medium
    assert set(store.tastes) == set(store.shoppers)
    leaf = {it.id: it.category[-1] for it in store.items}
    views = [e for e in events if e.type == "product_viewed" and e.user_id]
    in_taste = sum(leaf[e.item_id] in store.tastes[e.user_id].categories for e in views) / len(views)
    accessory = sum(store.kinds[e.item_id] != DEVICE for e in views) / len(views)
    assert in_taste + accessory > 0.9 and in_taste > 0.5


@pytest.mark.slow
def test_default_size_is_fast():
    began = time.perf_counter()
    store = generate_storefront()
    n = sum(1 for _ in store.events())
    assert abs(n - 500_000) <= 50_000
    assert time.perf_counter() - began < 60
