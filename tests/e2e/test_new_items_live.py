"""Issue 14, item 2: a product added through ``PUT /v1/items`` after training is live at once, without retraining.

It gets a row in the serving item table at the PUT, its content vector is computed in the background, and from
then on the content source proposes it on the pages of items like it, proposes content neighbours on its own page,
and a rule can pin it."""

import time

import pytest

from shelfwise.service import Shelfwise
from tests.conftest import api_client

NEW_PHONE = {"id": "p9", "title": "Phone 9", "category": ["Phones", "Smartphones"], "brand": "Nova", "price": 505,
             "cost": 450, "stock": 10}


@pytest.fixture
def engine(trained_settings):
    eng = Shelfwise(trained_settings)
    assert eng.encoder is not None and eng.encoder.flush(60)  # the text encoder loads at start, off the requests
    yield eng
    eng.close()


@pytest.fixture
def client(trained_settings, engine):
    with api_client(trained_settings, engine=engine) as c:
        yield c


def similar(client, item_id, k=12):
    r = client.get("/v1/recommendations/pdp_similar", params={"item_id": item_id, "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_new_item_appears_in_pdp_similar_of_a_similar_warm_item_within_a_second(client, engine):
    before = similar(client, "p1")
    assert "p9" not in [x["item_id"] for x in before["items"]]
    t0 = time.perf_counter()
    assert client.put("/v1/items", json=[NEW_PHONE]).status_code == 200
    put_s = time.perf_counter() - t0
    got = None  # (a tiny catalog shows every item, p9 too, without evidence ("fallback") until its vector is in)
    while got is None and time.perf_counter() - t0 < 1.0:
        got = next((x for x in similar(client, "p1")["items"] if x["item_id"] == "p9" and x["sources"] != ["fallback"]),
                   None)
        time.sleep(0.01)
    assert got is not None, f"p9 not on p1's page a second after the PUT (encoder errors: {engine.encoder.last_error})"
    assert got["sources"] == ["content"]  # the only source that knows it
    assert put_s < 0.5  # the PUT does not wait for the encoder
    warm = [x["item_id"] for x in before["items"]]
    after = [x["item_id"] for x in similar(client, "p1")["items"] if x["item_id"] != "p9"]
    assert after == warm  # the warm items keep their order
    assert client.get("/readyz").json()["content"] == {"encoded": 1, "pending": False, "errors": 0,
                                                       "last_error": None}


def test_the_page_of_a_new_item_has_content_neighbours_not_trending(client, engine):
    client.put("/v1/items", json=[NEW_PHONE])
    assert engine.encoder.flush(5)
    body = similar(client, "p9", k=5)
    assert len(body["items"]) == 5 and not body["fallback"]
    assert all("content" in x["sources"] for x in body["items"])
    assert "p9" not in [x["item_id"] for x in body["items"]]


def test_a_new_item_is_not_proposed_by_content_before_its_vector_exists(trained_settings, engine):
    engine.encoder.close()  # no background encoder: the row exists, the vector never comes
    engine.encoder = None
    with api_client(trained_settings, engine=engine) as client:
        client.put("/v1/items", json=[NEW_PHONE])
        shown = {x["item_id"]: x["sources"] for x in similar(client, "p1")["items"]}
        assert shown.get("p9", ["fallback"]) == ["fallback"]  # a tiny catalog shows every item; no evidence
        body = similar(client, "p9", k=5)  # its own page: no source knows it yet
        assert all("content" not in x["sources"] for x in body["items"])


def test_a_pin_of_a_new_item_applies(client):
    client.put("/v1/items", json=[NEW_PHONE | {"id": "p8", "title": "Phone 8"}])
    rules = {"rules": [{"id": "launch", "action": {"type": "pin", "items": ["p8"], "slot": 1}}]}
    r = client.put("/v1/rulesets/default", json=rules, params={"publish": "true"})
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == []
    for placement, params in (("homepage", {"user_id": "u1"}), ("pdp_similar", {"item_id": "p1"})):
        body = client.get(f"/v1/recommendations/{placement}", params=params | {"k": 5}).json()
        assert body["items"][0]["item_id"] == "p8", placement


def test_warm_answers_do_not_change_when_items_are_added(client, engine):
    home = client.get("/v1/recommendations/homepage", params={"user_id": "u3", "k": 8}).json()
    fbt = client.get("/v1/recommendations/pdp_fbt", params={"item_id": "p2", "k": 8}).json()
    client.put("/v1/items", json=[NEW_PHONE, NEW_PHONE | {"id": "x1", "title": "Garden hose", "category": ["Garden"],
                                                          "brand": "Aqua"}])
    assert engine.encoder.flush(5)
    for n in range(20):
        again = client.get("/v1/recommendations/homepage", params={"user_id": "u3", "k": 8}).json()
        # the homepage does not weigh content: new items have no evidence there and come only in exploration slots
        ranked = [x for x in again["items"] if x["reason"] != "exploration"]
        assert ranked == home["items"][:len(ranked)]
        assert all(x["item_id"] in ("p9", "x1") for x in again["items"] if x["reason"] == "exploration")
        engine.merch.log.flush()  # the new items' impressions are counted: they may be explored
        engine.cache.clear()
    fbt_again = client.get("/v1/recommendations/pdp_fbt", params={"item_id": "p2", "k": 8}).json()
    warm = [x["item_id"] for x in fbt["items"]]
    kept = [x["item_id"] for x in fbt_again["items"] if x["item_id"] in warm]
    assert kept == warm[:len(kept)]  # new items may come in (content), the warm ones keep their order


def test_new_items_with_odd_texts_are_encoded(client, engine):
    odd = [{"id": "q1"},  # no text, no category: content from nothing but its (empty) fields
           {"id": "q2", "title": "Смартфон Nova 9 — 手机", "category": ["Phones", "Smartphones"], "brand": "Nova"},
           {"id": "q3", "title": "Phone 10", "description": "very long " * 2000, "category": ["Phones", "Smartphones"],
            "attributes": {"colour": "red", "size": {"w": 7, "h": 15}, "tags": ["new", 1, None]}}]
    assert client.put("/v1/items", json=odd).status_code == 200
    assert engine.encoder.flush(10)
    status = client.get("/readyz").json()["content"]
    assert status["errors"] == 0 and status["encoded"] == 3
    for item_id in ("q2", "q3"):  # items with a category or a text have content neighbours
        body = similar(client, item_id, k=3)
        assert all("content" in x["sources"] for x in body["items"]), item_id


def test_new_items_get_exploration_slots_marked_in_the_answer(client, engine):
    """Issue 14, item 3: a share of the homepage's slots (1 of 12 by default) goes to new items, chosen by content
    match; the answer says which slots explore."""
    phones = [NEW_PHONE | {"id": f"n{i}", "title": f"Nova phone {i}"} for i in range(3)]
    assert client.put("/v1/items", json=phones).status_code == 200
    assert engine.encoder.flush(5)
    seen = []
    for n in range(40):
        body = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 4}).json()
        slots = [x for x in body["items"] if x["reason"] == "exploration"]
        assert len(slots) <= 1 and all(x["item_id"] in ("n0", "n1", "n2") for x in slots)
        assert all(not x["fallback"] and x["sources"][0] == "content" for x in slots)  # u1 viewed phones
        seen += [x["item_id"] for x in slots]
        engine.merch.log.flush()
        engine.cache.clear()
    assert 3 <= len(seen) <= 27  # k=4: a third of the requests explore one slot
    off = client.get("/v1/recommendations/pdp_fbt", params={"item_id": "p1", "k": 12}).json()
    assert all(x["reason"] != "exploration" for x in off["items"])
