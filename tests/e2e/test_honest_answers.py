"""Honest answers through the HTTP API: a rail says when it knew nothing about the shopper or the item (``fallback``,
per slot ``reason`` and ``fallback``), and a product page or cart the shop never heard of is a 404 naming the
field — unless the item is in the catalog but newer than the model, which gets its category's best sellers,
marked as a fallback."""

from __future__ import annotations

import pytest

from shelfwise.domain import Item
from shelfwise.stores import open_catalog, open_event_store
from tests.conftest import api_client

CHARGER = {"id": "h-new", "title": "Charger 65 W", "category": ["Accessories", "Chargers"], "brand": "Volt",
           "price": 39.0, "stock": 5}


def add_unseen(settings, *items: dict) -> None:
    """Items in the catalog that the serving model does not know: written to the catalog by another process (an
    import, another API replica), as items added after training are until the model learns them."""
    store = open_event_store(settings.events_dsn)
    open_catalog(store).upsert([Item.model_validate(it) for it in items])
    store.close()


@pytest.fixture
def client(trained_settings):
    with api_client(trained_settings) as c:
        yield c


def rail(client, placement, **params):
    r = client.get(f"/v1/recommendations/{placement}", params={"k": 4} | params)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_brand_new_shopper_gets_a_rail_marked_fallback(client):
    body = rail(client, "homepage", user_id="never-seen")
    assert body["items"] and body["fallback"] is True
    for it in body["items"]:
        assert it["reason"] == "popular" and it["fallback"] is True
        assert set(it["sources"]) <= {"trending", "fallback"}


def test_a_known_shopper_and_a_known_item_get_evidence(client):
    body = rail(client, "homepage", user_id="u1")
    assert body["fallback"] is False
    assert any(it["reason"] == "evidence" and not it["fallback"] for it in body["items"])
    for it in body["items"]:  # a slot is a fallback exactly when only popularity supports it
        assert it["fallback"] == (set(it["sources"]) <= {"trending", "fallback"})
        assert it["reason"] == ("popular" if it["fallback"] else "evidence")
    page = rail(client, "pdp_similar", item_id="p1")
    assert page["fallback"] is False and page["items"][0]["reason"] == "evidence"


def test_an_empty_rail_is_a_fallback(client):
    body = rail(client, "homepage", user_id="u1", category="No Such Category")
    assert body["items"] == [] and body["fallback"] is True


@pytest.mark.parametrize("placement", ["pdp_similar", "pdp_fbt"])
def test_an_item_the_shop_never_sent_is_a_404_naming_the_field_and_id(client, placement):
    r = client.get(f"/v1/recommendations/{placement}", params={"item_id": "no-such-sku"})
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["errors"][0]["field"] == "item_id" and "'no-such-sku'" in body["errors"][0]["reason"]
    assert "no-such-sku" in body["detail"]


def test_a_cart_of_unknown_items_is_a_404_but_one_known_item_is_enough(client):
    r = client.get("/v1/recommendations/cart_upsell", params={"cart": "zz1,zz2"})
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "cart"
    assert "'zz1'" in r.json()["errors"][0]["reason"]
    body = rail(client, "cart_upsell", cart="zz1,p0")
    assert body["items"] and "p0" not in {it["item_id"] for it in body["items"]}


def test_an_item_newer_than_the_model_gets_its_category_best_sellers_marked_fallback(client, trained_settings):
    add_unseen(trained_settings, CHARGER)
    for placement in ("pdp_similar", "pdp_fbt"):
        body = rail(client, placement, item_id="h-new")
        assert body["fallback"] is True
        shown = [it["item_id"] for it in body["items"]]
        assert sorted(shown) == ["h0", "h1"]  # the chargers the model knows (the category has two)
        assert all(it["reason"] == "popular" and it["fallback"] for it in body["items"])
    # a cart of items newer than the model: the best sellers, marked fallback (never a 404)
    cart = rail(client, "cart_upsell", cart="h-new")
    assert cart["items"] and cart["fallback"] is True and "h-new" not in {it["item_id"] for it in cart["items"]}
    # an explicit category filter of the request wins
    body = rail(client, "pdp_similar", item_id="h-new", category="Phones")
    assert body["fallback"] is True and all(it["item_id"].startswith("p") for it in body["items"])


def test_a_deleted_item_is_still_known_to_the_model(client):
    """Deleting an item from the catalog takes it out of every rail; its page is still answered from the model."""
    assert client.delete("/v1/items/c2").status_code == 204
    body = rail(client, "pdp_similar", item_id="c2")
    assert body["items"] and "c2" not in {it["item_id"] for it in body["items"]}


def test_unknown_items_can_get_best_sellers_by_setting(trained_settings):
    trained_settings.api.unknown_item = "fallback"
    with api_client(trained_settings) as c:
        body = rail(c, "pdp_similar", item_id="no-such-sku")
        assert body["items"] and body["fallback"] is True
        assert all(it["reason"] == "popular" for it in body["items"])
        assert rail(c, "cart_upsell", cart="zz1")["fallback"] is True


def test_a_pinned_slot_says_so(client):
    doc = {"rules": [{"id": "hero", "action": {"type": "pin", "items": ["h1"], "slot": 1}}]}
    assert client.put("/v1/rulesets/default", params={"publish": True}, json=doc).status_code == 201
    body = rail(client, "homepage", user_id="never-seen")
    first = body["items"][0]
    assert first["item_id"] == "h1" and first["reason"] == "pinned"
    assert body["fallback"] is True  # a pin is the shop's choice, not evidence about this shopper


@pytest.fixture
def unsynced_client(trained_settings):
    """A replica that does not follow the catalog's changes (``api.catalog_sync_s = 0``): an item another process
    adds stays unknown to its model (a following replica learns it within a second, which would race the test)."""
    settings = trained_settings.model_copy(deep=True)
    settings.api.catalog_sync_s = 0
    with api_client(settings) as c:
        yield c


def test_pins_that_cannot_apply_say_so_in_warnings_reports_and_explanations(unsynced_client, trained_settings):
    client = unsynced_client
    add_unseen(trained_settings, CHARGER)
    sold_out = {"id": "h0", "title": "Charger 0", "category": ["Accessories", "Chargers"], "price": 30, "stock": 0}
    assert client.put("/v1/items", json=[sold_out]).status_code == 200
    doc = {"rules": [{"id": "hero", "action": {"type": "pin", "items": ["ghost", "h-new", "h0", "c1"], "slot": 1}}]}

    def reasons(body):
        return {w["reason"] for w in body["warnings"] if w["path"] == "rules[0].action.items"}

    expected = {"'h-new' cannot be pinned now: unknown to the model (not in the catalog, or added after the model "
                "was trained)", "'h0' cannot be pinned now: out of stock"}
    dry = client.put("/v1/rulesets/default", json=doc, params={"dry_run": True})
    assert dry.status_code == 200 and expected <= reasons(dry.json())
    assert any("'ghost'" in r and "unknown item id" in r for r in reasons(dry.json()))  # not in the catalog at all
    saved = client.put("/v1/rulesets/default", json=doc, params={"publish": True})
    assert saved.status_code == 201 and expected <= reasons(saved.json())
    # an item made unavailable after saving: publishing again says so
    client.put("/v1/items", json=[{"id": "c1", "title": "Case for phone 1", "price": 20, "available": False}])
    published = client.post("/v1/rulesets/default/publish")
    assert published.status_code == 200
    assert "'c1' cannot be pinned now: unavailable" in reasons(published.json())
    # the answer explains every pinned item it could not show, by id and reason
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 4, "explain": True}).json()
    notes = r["explanation"]["conflicts"]
    assert "pin default/hero: item 'h-new' not shown: unknown to the model (not in the catalog, or added after the " \
           "model was trained)" in notes
    assert "pin default/hero: item 'ghost' not shown: unknown to the model (not in the catalog, or added after the " \
           "model was trained)" in notes
    assert "pin default/hero: item 'h0' not shown: out of stock" in notes
    assert "pin default/hero: item 'c1' not shown: unavailable" in notes
    assert not {"h-new", "h0", "c1"} & {it["item_id"] for it in r["items"]}
    # a draft's shadow report lists the pins that cannot apply, before any traffic
    draft = {"rules": [{"id": "hero2", "action": {"type": "pin", "items": ["p2", "h0"], "slot": 1}}]}
    assert client.put("/v1/rulesets/draft", json=draft).status_code == 201
    report = client.get("/v1/rulesets/draft/shadow-report").json()
    assert report["warnings"] == [{"path": "rules[0].action.items",
                                   "reason": "'h0' cannot be pinned now: out of stock"}]


def test_a_pin_excluded_for_one_request_says_why(client):
    doc = {"rules": [{"id": "hero", "action": {"type": "pin", "items": ["c1"], "slot": 1}}]}
    assert client.put("/v1/rulesets/default", json=doc, params={"publish": True}).json()["warnings"] == []
    r = client.get("/v1/recommendations/pdp_similar", params={"item_id": "c1", "explain": True}).json()
    assert "pin default/hero: item 'c1' not shown: excluded for this request (the page's or cart's own item, " \
           "already bought, an exclude or category filter)" in r["explanation"]["conflicts"]
