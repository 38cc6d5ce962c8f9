"""POST /v1/rerank, request-time filters and placements configured by name, through the API on the tiny shop."""

import pytest

from shelfwise.domain import Item
from shelfwise.settings import load_settings
from tests.conftest import CATALOG_SINCE, api_client


@pytest.fixture
def client(trained_settings):
    with api_client(trained_settings) as c:
        yield c


def ids(body):
    return [r["item_id"] for r in body["items"]]


def test_rerank_keeps_only_the_given_items_and_reports_unknown_ids(client):
    shop = ["h1", "c3", "p2", "nope", "c0", "p0"]
    r = client.post("/v1/rerank", json={"items": shop, "user_id": "u1", "personalization_impact": 1.0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["placement"] == "search"
    assert sorted(ids(body)) == sorted(x for x in shop if x != "nope")
    assert body["unknown_items"] == ["nope"] and body["removed"] == []
    assert r.headers["cache-control"] == "private, no-store"


def test_impact_zero_keeps_the_shop_order_and_one_personalises(client):
    shop = ["h1", "h0", "c2", "c3", "p3", "p1", "c1", "p2"]  # u1 browsed phone 1 and its case: c1/p1 matter
    keep = client.post("/v1/rerank", json={"items": shop, "user_id": "u1", "personalization_impact": 0.0}).json()
    assert ids(keep) == shop
    mine = client.post("/v1/rerank", json={"items": shop, "user_id": "u1", "personalization_impact": 1.0}).json()
    assert set(ids(mine)) == set(shop) and ids(mine) != shop
    assert ids(mine).index("p2") < ids(mine).index("h1")  # the shopper's next phone before a charger
    assert any(r["reason"] == "evidence" for r in mine["items"])


def test_a_request_without_impact_takes_its_placements(trained_settings):
    """No personalization_impact: the placement's ``impact`` (search 1, category 0.75 by default) decides."""
    shop = ["h1", "h0", "c2", "c3", "p3", "p1", "c1", "p2"]
    settings = trained_settings.model_copy(deep=True)
    assert settings.models.placements["search"].impact == 1.0
    assert settings.models.placements["category"].impact == 0.75
    settings.models.placements["search"].impact = 0.0
    with api_client(settings) as c:
        kept = c.post("/v1/rerank", json={"items": shop, "user_id": "u1"}).json()
        mine = c.post("/v1/rerank", json={"items": shop, "user_id": "u1", "personalization_impact": 1.0}).json()
    assert ids(kept) == shop and ids(mine) != shop


def test_rerank_k_filters_and_query(client):
    shop = ["h1", "c3", "p2", "c0", "p0", "h0"]
    body = client.post("/v1/rerank", json={"items": shop, "k": 2, "user_id": "u2"}).json()
    assert len(body["items"]) == 2
    body = client.post("/v1/rerank", json={"items": shop, "filters": {"categories": ["Accessories > Chargers"]},
                                           "personalization_impact": 0}).json()
    assert ids(body) == ["h1", "h0"] and set(body["removed"]) == {"c3", "p2", "c0", "p0"}


@pytest.mark.parametrize("payload, field", [
    ({"items": []}, "items"),
    ({"items": [f"x{i}" for i in range(1001)]}, "items"),
    ({"items": ["p0", "p1", "p0"]}, "items"),
    ({"items": ["p0"], "personalization_impact": 1.5}, "personalization_impact"),
    ({"items": ["p0"], "filters": {"price": {"min": 10, "max": 1}}}, "filters.price"),
    ({"items": ["p0"], "filters": {"colour": ["x"]}}, "filters.colour"),
])
def test_rerank_bad_input_names_the_field(client, payload, field):
    r = client.post("/v1/rerank", json=payload)
    assert r.status_code == 422, r.text
    assert any(e["field"] == field for e in r.json()["errors"]), r.json()


def test_duplicate_ids_say_which_and_where(client):
    r = client.post("/v1/rerank", json={"items": ["p0", "p1", "p0"]})
    assert "'p0' is given twice (positions 0 and 2)" in r.json()["errors"][0]["reason"]


def test_unknown_and_wrong_kind_placements(client):
    r = client.post("/v1/rerank", json={"items": ["p0"], "placement": "nowhere"})
    assert r.status_code == 404 and "search" in r.json()["detail"] and "homepage" in r.json()["detail"]
    r = client.get("/v1/recommendations/nowhere")
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "placement" and "pdp_fbt" in r.json()["detail"]
    r = client.post("/v1/rerank", json={"items": ["p0"], "placement": "homepage"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "placement"
    r = client.get("/v1/recommendations/search?user_id=u1")
    assert r.status_code == 422 and "POST /v1/rerank" in r.json()["errors"][0]["reason"]


def test_rail_filters(client):
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "brand": "Shield", "k": 10})
    assert r.status_code == 200 and set(ids(r.json())) <= {f"c{i}" for i in range(4)} and ids(r.json())
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "price_min": 25, "price_max": 100,
                                                          "k": 10})
    assert set(ids(r.json())) == {"h0", "h1"}  # never empty while servable items match
    r = client.get("/v1/recommendations/pdp_similar", params=[("item_id", "p1"), ("categories", "Phones"),
                                                              ("categories", "Accessories > Chargers")])
    assert ids(r.json()) and set(ids(r.json())) <= {"p0", "p2", "p3", "h0", "h1"}
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "brand": "Nobody"})
    assert r.status_code == 200 and r.json()["items"] == []
    assert r.json()["detail"] == "no servable item matches the filters"
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "price_min": 50, "price_max": 10})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "price_min"
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "attr": "colour"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "attr"


def test_attribute_stock_and_age_filters(client):
    items = [Item(id="c9", title="Case 9", category=["Accessories", "Phone Cases"], brand="Shield", price=22,
                  stock=3, attributes={"color": ["Red", "Black"]}, created_at=CATALOG_SINCE),
             Item(id="c8", title="Case 8", category=["Accessories", "Phone Cases"], brand="Shield", price=22,
                  attributes={"color": "red"})]  # no created_at: new since first seen now; stock untracked
    assert client.put("/v1/items", json=[i.model_dump(mode="json") for i in items]).status_code == 200
    got = ids(client.get("/v1/recommendations/homepage", params={"user_id": "u1", "attr": "color:RED"}).json())
    assert set(got) == {"c8", "c9"}
    got = ids(client.get("/v1/recommendations/homepage", params={"user_id": "u1", "attr": "color:red",
                                                                 "min_stock": 2}).json())
    assert got == ["c9"]
    got = ids(client.get("/v1/recommendations/homepage", params={"user_id": "u1", "new_days": 1}).json())
    assert got == ["c8"]
    body = client.post("/v1/rerank", json={"items": ["c8", "p0", "c9"], "filters": {"attributes": {
        "color": ["black"]}, "in_stock": True}}).json()
    assert ids(body) == ["c9"]


def test_custom_placements_by_name(trained_settings, tmp_path):
    placements = dict(trained_settings.models.placements)
    placements["homepage_hero"] = placements["homepage"].model_copy(update={"k": 3})
    placements["brand_page"] = placements["search"]
    placements["pdp_extra"] = placements["pdp_similar"].model_copy(update={"weights": {"content": 1.0}})
    placements["text"] = placements["search"].model_copy(update={"query_weight": 1.0})
    s = load_settings(data_dir=trained_settings.data_dir, models=trained_settings.models.model_copy(
        update={"placements": placements}))
    with api_client(s) as c:
        r = c.get("/v1/recommendations/homepage_hero", params={"user_id": "u1"})
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        r = c.get("/v1/recommendations/pdp_extra")
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "item_id"
        assert c.get("/v1/recommendations/pdp_extra", params={"item_id": "p1"}).status_code == 200
        r = c.post("/v1/rerank", json={"items": ["p0", "c1"], "placement": "brand_page"})
        assert r.status_code == 200 and r.json()["placement"] == "brand_page"
        # query_weight 1: the text match alone orders the personal side (cases match "phone cases" fully, phones
        # half, chargers not at all)
        r = c.post("/v1/rerank", json={"items": ["h1", "p2", "c3", "h0", "c0", "p0"], "placement": "text",
                                       "query": "Phone CASES", "personalization_impact": 1.0})
        got = ids(r.json())
        assert set(got[:2]) == {"c3", "c0"} and set(got[2:4]) == {"p2", "p0"} and set(got[4:]) == {"h0", "h1"}


def test_only_the_first_shown_slots_of_a_long_list_count_as_impressions_and_exposures(trained_settings):
    """A re-ranked list of many items is not that many impressions: its placement's ``shown`` first slots are
    (48 for the shop's lists by default), in the caps' online state and in the exposure log."""
    import sqlite3

    import orjson

    from shelfwise.rules.admin import rules_db_path

    shop = ["h1", "h0", "c2", "c3", "p3", "p1", "c1", "p2"]
    settings = trained_settings.model_copy(deep=True)
    assert settings.models.placements["search"].shown == 48 and settings.models.placements["homepage"].shown is None
    settings.models.placements["search"].shown = 3
    from shelfwise.service import Shelfwise

    engine = Shelfwise(settings)
    try:
        with api_client(settings, engine=engine) as c:
            body = c.post("/v1/rerank", json={"items": shop, "user_id": "u7"}).json()
            assert len(body["items"]) == len(shop)  # the whole list is answered
            rail = c.get("/v1/recommendations/homepage", params={"user_id": "u8", "k": 5}).json()
        first = ids(body)[:3]
        assert set(engine.shopper_state("u7").seen) == set(first)  # the caps count these impressions only
        assert len(engine.shopper_state("u8").seen) == 5
    finally:
        engine.close()
    db = sqlite3.connect(rules_db_path(settings))
    try:
        (logged,) = [orjson.loads(r[0]) for r in db.execute("SELECT items FROM exposures WHERE request_id = ?",
                                                             (body["request_id"],))]
        (rail_logged,) = [len(orjson.loads(r[0])) for r in db.execute("SELECT items FROM exposures WHERE request_id = ?",
                                                                      (rail["request_id"],))]
    finally:
        db.close()
    assert logged == first and rail_logged == len(rail["items"]) == 5
