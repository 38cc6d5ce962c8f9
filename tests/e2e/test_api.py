"""The HTTP API through a real test client, on the embedded default."""

import sys

import pytest

from tests.conftest import api_client


def event(i, **kw):
    return {"event_id": f"api-{i}", "type": "product_viewed", "user_id": "web1", "session_id": "w",
            "item_id": "p1", "timestamp": "2026-11-20T10:00:00Z"} | kw


@pytest.fixture
def client(trained_settings):
    with api_client(trained_settings) as c:
        yield c


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["trained"] and ready["model_version"].startswith("v")


def test_ingest_single_batch_duplicates_and_unknown_items(client):
    r = client.post("/v1/events", json=event(1))
    assert r.status_code == 202 and r.json()["stored"] == 1
    r = client.post("/v1/events", json=[event(1), event(2, item_id="not-in-catalog"),
                                        event(3, type="purchase_completed", item_id=None,
                                              items=[{"item_id": "c1", "quantity": 2, "price": 20}])])
    body = r.json()
    assert r.status_code == 202
    assert body["stored"] == 2 and body["duplicates"] == 1 and body["duplicate_ids"] == ["api-1"]
    assert body["unknown_items"] == ["not-in-catalog"]


def test_partial_batch_stores_valid_events_and_names_bad_ones(client, settings):
    batch = [event(10), event(11, type="teleported"), event(12), event(13, timestamp="2026-11-20 10:00"),
             event(14, item_id=None)]
    r = client.post("/v1/events", json=batch)
    assert r.status_code == 422
    body = r.json()
    assert body["stored"] == 2 and body["invalid"] == 3
    assert {(e["index"], e["field"]) for e in body["errors"]} >= {(1, "type"), (3, "timestamp")}
    assert any(e["index"] == 4 and "item_id" in e["reason"] for e in body["errors"])
    assert "valid event(s) of the batch were stored" in body["detail"]
    # the valid ones really are stored: sending them again reports duplicates
    again = client.post("/v1/events", json=[event(10), event(12)]).json()
    assert again["duplicates"] == 2 and again["stored"] == 0


def test_batch_limit_and_garbage(client):
    too_many = [event(i) for i in range(1001)]
    r = client.post("/v1/events", json=too_many)
    assert r.status_code == 422 and "1000" in r.json()["errors"][0]["reason"]
    assert client.post("/v1/events", json=[]).status_code == 422
    r = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/events", json=[42])
    assert r.status_code == 422 and r.json()["errors"][0]["index"] == 0


def test_catalog_crud_and_validation(client):
    item = {"id": "n1", "title": "New cable", "category": ["Accessories", "Cables"], "brand": "Volt",
            "price": 9.99, "cost": 2.5, "stock": 100, "attributes": {"length_m": 1}, "tags": ["usb-c"]}
    assert client.put("/v1/items", json=[item]).json() == {"upserted": 1}
    got = client.get("/v1/items/n1").json()
    assert got["title"] == "New cable" and got["margin"] == pytest.approx((9.99 - 2.5) / 9.99)
    bad = client.put("/v1/items", json=[item | {"id": "n2"}, item | {"id": "n3", "price": -1},
                                         item | {"id": "n4", "stock": -5}])
    assert bad.status_code == 422
    fields = {(e["index"], e["field"]) for e in bad.json()["errors"]}
    assert fields == {(1, "price"), (2, "stock")}
    assert client.get("/v1/items/n2").status_code == 404  # nothing of an invalid batch is stored
    assert client.delete("/v1/items/n1").status_code == 204
    assert client.get("/v1/items/n1").status_code == 404
    assert client.delete("/v1/items/n1").status_code == 404


@pytest.mark.parametrize("placement, params", [
    ("homepage", {"user_id": "u1"}),
    ("pdp_similar", {"item_id": "p1"}),
    ("pdp_fbt", {"item_id": "p2"}),
    ("cart_upsell", {"cart": "p0,h0", "session_id": "anon"}),
])
def test_every_placement_answers(client, placement, params):
    r = client.get(f"/v1/recommendations/{placement}", params=params | {"k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["placement"] == placement and len(body["request_id"]) == 32
    assert body["model_version"].startswith("v")
    assert len(body["items"]) == 4
    for it in body["items"]:
        assert set(it) == {"item_id", "score", "sources", "reason", "fallback"} and it["sources"]
    shown = {it["item_id"] for it in body["items"]}
    assert params.get("item_id") not in shown
    if placement == "cart_upsell":
        assert not shown & {"p0", "h0"}


def test_recommendation_errors(client):
    assert client.get("/v1/recommendations/checkout").status_code == 404
    r = client.get("/v1/recommendations/pdp_similar")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "item_id"
    r = client.get("/v1/recommendations/homepage", params={"k": 0})
    assert r.status_code == 422 and "k" in r.json()["errors"][0]["field"]
    assert client.get("/v1/recommendations/homepage", params={"k": 5000}).status_code == 422


def test_a_view_changes_the_next_answer(client):
    """No refresh cycle: an ingested event is in the shopper's very next answer."""
    before = client.get("/v1/recommendations/homepage", params={"user_id": "fresh", "k": 3}).json()["items"]
    views = [event(100 + i, user_id="fresh", item_id=it, timestamp=f"2026-11-20T10:0{i}:00Z")
             for i, it in enumerate(["p3", "c3"])]
    assert client.post("/v1/events", json=views).status_code == 202
    after = client.get("/v1/recommendations/homepage", params={"user_id": "fresh", "k": 3}).json()["items"]
    assert [x["item_id"] for x in after] != [x["item_id"] for x in before]
    assert "covisit" in after[0]["sources"]


def test_forget_shopper(client):
    client.post("/v1/events", json=[event(200, user_id="gdpr")])
    first = client.delete("/v1/shoppers/gdpr").json()
    places = {p["place"]: p["removed"] for p in first["places"]}
    assert places["event store: events (and their purchase lines)"] == 1 and first["subject"] == "user"
    again = client.delete("/v1/shoppers/gdpr").json()  # idempotent: a new receipt, nothing left to remove
    assert again["removed_total"] == 0 and again["receipt_id"] != first["receipt_id"]
    assert client.get(f"/v1/erasures/{first['receipt_id']}").json() == first


def metric(text: str, name: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics_count_what_was_served(client):
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.get("/v1/recommendations/homepage", params={"user_id": "u1"}).status_code == 200
    client.get("/v1/recommendations/pdp_fbt", params={"item_id": "p1"})
    assert client.post("/v1/events", json=[event(90), event(91)]).status_code == 202
    after = client.get("/metrics").text
    home = 'shelfwise_recommendation_seconds_count{placement="homepage"}'
    assert metric(after, home) - metric(before, home) == 3
    assert metric(after, 'shelfwise_recommendation_seconds_count{placement="pdp_fbt"}') >= 1
    stored = 'shelfwise_events_total{outcome="stored"}'
    assert metric(after, stored) - metric(before, stored) == 2
    if sys.platform.startswith("linux"):  # CPU by thread (/proc): the pipeline runs on the micro-batcher's thread
        batch = 'shelfwise_thread_cpu_seconds_total{thread="shelfwise-batch"}'
        for i in range(100):  # /proc counts in 10 ms ticks: enough distinct answers to be sure of a few
            client.get("/v1/recommendations/homepage", params={"user_id": f"cpu{i}"})
        assert metric(client.get("/metrics").text, batch) > metric(after, batch)


def test_answers_name_their_model_and_rules_and_product_pages_are_edge_cacheable(client):
    personal = client.get("/v1/recommendations/homepage", params={"user_id": "u1"})
    assert personal.headers["cache-control"] == "private, no-store" and "etag" not in personal.headers
    body = personal.json()
    assert body["model_version"] == client.get("/readyz").json()["model_version"] and body["rulesets"] == ""
    page = client.get("/v1/recommendations/pdp_similar", params={"item_id": "p1"})
    tag = page.headers["etag"]
    assert page.status_code == 200 and page.headers["cache-control"] == "public, max-age=90"
    again = client.get("/v1/recommendations/pdp_similar", params={"item_id": "p1"}, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["etag"] == tag and not again.content
    other = client.get("/v1/recommendations/pdp_similar", params={"item_id": "p2"}, headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag
    # a catalog change makes a new answer (and a new tag) at once
    shown = page.json()["items"][0]["item_id"]
    item = client.get(f"/v1/items/{shown}").json()
    item.pop("margin")
    assert client.put("/v1/items", json=[item | {"stock": 0}]).status_code == 200
    changed = client.get("/v1/recommendations/pdp_similar", params={"item_id": "p1"}, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert shown not in [x["item_id"] for x in changed.json()["items"]]



@pytest.mark.parametrize("every_s", [0.5, 0.0], ids=["on", "off"])
def test_the_api_keeps_its_long_lived_objects_out_of_the_collectors_full_passes(trained_settings, every_s):
    import gc
    import time

    trained_settings.api.freeze_heap_s = every_s
    gc.unfreeze()
    try:
        with api_client(trained_settings) as c:
            assert c.get("/readyz").status_code == 200
            assert (gc.get_freeze_count() > 10_000) == bool(every_s)  # the loaded model, the libraries, the app
            kept = [[i] for i in range(100)]  # an object that lives on (like a cached answer or a shopper's state)
            assert any(o is kept for o in gc.get_objects())  # the collector still walks it...
            time.sleep(2.6)  # one watcher interval (2 s) after freeze_heap_s
            walked = any(o is kept for o in gc.get_objects())
            assert walked == (not every_s)  # ...until the next pass freezes it (gc.get_objects omits frozen ones)
    finally:
        gc.unfreeze()
