"""Explicit preferences through the HTTP API: stored, validated (422 naming the field), consent-bound, erased with
the shopper, and used: they change the answer, boost above older evidence but not above the current session,
and their hard fields (sizes, price) keep items out of every rail."""

from __future__ import annotations

import json
import sqlite3

import pytest

from shelfwise.domain import Item, Preferences
from shelfwise.privacy.pseudonym import Pseudonymizer
from tests.conftest import api_client, make_key, tiny_catalog

WHO = "shopper/Ä-42 😀"  # a slash, non-ASCII and an emoji: must survive the path
QUIZ = {"categories": ["Accessories > Chargers"], "brands": ["Volt"], "sizes": ["M"], "price": {"max": 100},
        "style_tags": ["minimal"]}


@pytest.fixture
def client(trained_settings):
    with api_client(trained_settings) as c:
        yield c


def prefs_path(shopper: str = WHO) -> str:
    return f"/v1/shoppers/{shopper}/preferences"


def rail(client, placement="homepage", **params):
    r = client.get(f"/v1/recommendations/{placement}", params={"k": 6} | params)
    assert r.status_code == 200, r.text
    return r.json()


def shown(body) -> list[str]:
    return [x["item_id"] for x in body["items"]]


# ---- the endpoint ------------------------------------------------------------------------------------------------
def test_put_get_delete_round_trip(client):
    assert client.get(prefs_path()).status_code == 404
    r = client.put(prefs_path(), json=QUIZ | {"brands": ["Volt", " volt ", "Nova"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["preferences"]["brands"] == ["Volt", "Nova"]  # trimmed, each kept once (case aside)
    assert body["preferences"]["price"] == {"min": None, "max": 100.0} and body["updated_at"] > 0
    assert client.get(prefs_path()).json() == body
    assert client.get(prefs_path("session:s-1")).status_code == 404  # another shopper
    # PUT replaces the whole document
    again = client.put(prefs_path(), json={"sizes": ["L"]}).json()
    assert again["preferences"] == {"categories": [], "brands": [], "sizes": ["L"], "price": None, "style_tags": []}
    assert client.delete(prefs_path()).status_code == 204
    assert client.get(prefs_path()).status_code == 404
    r = client.delete(prefs_path())
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "shopper"


@pytest.mark.parametrize("body, field, words", [
    ({"sizes": [""]}, "sizes.0", "at least 1"),
    ({"brands": ["ok", "   "]}, "brands", "value 1 is blank"),
    ({"price": {"min": 50, "max": 10}}, "price", "min (50) is greater than max (10)"),
    ({"price": {}}, "price", "give min, max or both"),
    ({"price": {"max": -3}}, "price.max", "greater than or equal to 0"),
    ({"price": {"max": "cheap"}}, "price.max", "valid number"),
    ({"colours": ["red"]}, "colours", "Extra inputs are not permitted"),
    ({"style_tags": ["t"] * 51}, "style_tags", "at most 50"),
    ({"categories": "Audio"}, "categories", "valid list"),
    ([{"sizes": ["M"]}], "body", "valid dictionary"),
])
def test_invalid_preferences_are_a_422_naming_the_field_and_nothing_is_stored(client, body, field, words):
    r = client.put(prefs_path(), json=body)
    assert r.status_code == 422, r.text
    got = r.json()
    assert got["detail"] == "invalid preferences; nothing was stored"
    assert any(e["field"] == field and words in e["reason"] for e in got["errors"]), got["errors"]
    assert client.get(prefs_path()).status_code == 404


def test_a_body_that_is_not_json_is_a_422(client):
    r = client.put(prefs_path(), content=b"{sizes", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_preferences_need_personalisation_consent(client):
    client.put("/v1/consent", params={"user_id": "no-thanks"}, json={"personalisation": "denied"})
    r = client.put(prefs_path("no-thanks"), json=QUIZ)
    assert r.status_code == 409, r.text
    assert r.json()["errors"][0]["field"] == "personalisation"
    assert client.get(prefs_path("no-thanks")).status_code == 404


def test_opt_in_regime_stores_nothing_until_consent(trained_settings):
    trained_settings.privacy.default_consent = "pending"
    with api_client(trained_settings) as c:
        assert c.put(prefs_path("newbie"), json=QUIZ).status_code == 409
        c.put("/v1/consent", params={"user_id": "newbie"}, json={"personalisation": "granted"})
        assert c.put(prefs_path("newbie"), json=QUIZ).status_code == 200


def test_withdrawing_consent_erases_the_preferences(client):
    assert client.put(prefs_path("changes-mind"), json=QUIZ).status_code == 200
    client.put("/v1/consent", params={"user_id": "changes-mind"}, json={"personalisation": "denied"})
    assert client.get(prefs_path("changes-mind")).status_code == 404


def test_erasure_removes_them_and_the_receipt_lists_them(client, trained_settings):
    assert client.put(prefs_path(), json=QUIZ | {"style_tags": ["unmistakable-style-77"]}).status_code == 200
    receipt = client.delete("/v1/shoppers", params={"user_id": WHO}).json()
    places = {p["place"]: (p["removed"], p["backend"]) for p in receipt["places"]}
    assert places["shopper preferences"] == (1, "sqlite")
    assert client.get(prefs_path()).status_code == 404
    db = trained_settings.events_dsn.removeprefix("sqlite:///")
    raw = b"".join(open(p, "rb").read() for p in (db, db + "-wal") if __import__("os").path.exists(p))
    assert b"unmistakable-style-77" not in raw and WHO.encode() not in raw
    again = client.delete("/v1/shoppers", params={"user_id": WHO}).json()
    assert {p["place"]: p["removed"] for p in again["places"]}["shopper preferences"] == 0


def test_shopper_ids_are_pseudonymised(trained_settings):
    trained_settings.privacy.pseudonymize, trained_settings.privacy.pseudonym_key = True, "k" * 24
    with api_client(trained_settings) as c:
        assert c.put(prefs_path(), json=QUIZ).status_code == 200
        assert c.get(prefs_path()).json()["preferences"]["brands"] == ["Volt"]
        db = sqlite3.connect(trained_settings.events_dsn.removeprefix("sqlite:///"))
        stored = [r[0] for r in db.execute("SELECT shopper FROM shopper_preferences")]
        db.close()
        assert stored == [Pseudonymizer("k" * 24).shopper(WHO)] and WHO not in json.dumps(stored)
        receipt = c.delete(f"/v1/shoppers/{WHO}").json()
        assert {p["place"]: p["removed"] for p in receipt["places"]}["shopper preferences"] == 1


def test_an_erasure_path_ending_in_preferences_is_the_preferences_route(client):
    """DELETE /v1/shoppers/{id} erases by path; DELETE /v1/shoppers/{id}/preferences must never erase a shopper
    named '{id}/preferences' (and needs only the ingest scope)."""
    client.put(prefs_path("u1"), json=QUIZ)
    r = client.delete(prefs_path("u1"))
    assert r.status_code == 204 and not r.content
    assert client.get(prefs_path("u1")).status_code == 404


# ---- preferences are used ----------------------------------------------------------------------------------------
def test_a_preference_changes_a_new_shoppers_answer_at_once(client):
    before = rail(client, user_id="quiz-taker")
    assert before["fallback"] is True and not {"h0", "h1"} & set(shown(before)[:2])
    assert client.put(prefs_path("quiz-taker"), json={"brands": ["volt"]}).status_code == 200
    after = rail(client, user_id="quiz-taker")  # the cached answer (api.cache_ttl_s) is not served again
    assert shown(after)[:2] in (["h0", "h1"], ["h1", "h0"])
    for slot in after["items"][:2]:
        assert slot["reason"] == "preference" and slot["fallback"] is False and "preferences" in slot["sources"]
    assert after["fallback"] is False  # the shopper's own statement went into the rail
    assert all(s["reason"] == "popular" and s["fallback"] for s in after["items"][2:])
    explained = rail(client, user_id="quiz-taker", explain=True)["items"][0]["explanation"]
    assert explained["components"]["preferences"] > 0
    assert client.delete(prefs_path("quiz-taker")).status_code == 204
    assert shown(rail(client, user_id="quiz-taker")) == shown(before)


def test_another_replica_sees_new_preferences_with_its_next_request(trained_settings):
    from fastapi.testclient import TestClient

    from shelfwise.api.app import create_app

    key = make_key(trained_settings, name="replica-b")
    with api_client(trained_settings) as a, TestClient(create_app(trained_settings),
                                                       headers={"Authorization": f"Bearer {key}"}) as b:
        first = shown(rail(b, user_id="two-replicas"))
        assert shown(rail(b, user_id="two-replicas")) == first  # b answers from its cache
        assert a.put(prefs_path("two-replicas"), json={"brands": ["Volt"]}).status_code == 200
        assert shown(rail(b, user_id="two-replicas"))[:2] in (["h0", "h1"], ["h1", "h0"])


def test_preferences_outrank_older_evidence_but_not_the_current_session(client):
    old = rail(client, user_id="u1")  # u1's events are weeks old: the model's evidence
    assert old["items"][0]["reason"] == "evidence" and not {"h0", "h1"} & set(shown(old)[:2])
    client.put(prefs_path("u1"), json={"brands": ["Volt"]})
    stated = rail(client, user_id="u1")
    assert set(shown(stated)[:2]) == {"h0", "h1"}
    now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
    assert client.post("/v1/events", json={"event_id": "now-1", "type": "product_viewed", "user_id": "u1",
                                           "item_id": "p3", "timestamp": now.isoformat()}).status_code == 202
    session = rail(client, user_id="u1", explain=True, k=10)
    top = session["items"][0]
    assert top["reason"] == "evidence" and top["item_id"] not in ("h0", "h1")  # what they do now leads
    chargers = [s for s in session["items"] if s["item_id"] in ("h0", "h1")]
    assert chargers and all("preferences" in s["sources"] for s in chargers)  # still lifted, less
    assert 0 < max(s["explanation"]["components"]["preferences"] for s in chargers)
    plain = rail(client, user_id="u2", explain=True, k=10)  # another shopper, no preferences: no lift at all
    assert not any("preferences" in s["explanation"]["components"] for s in plain["items"])


def sized_catalog(client):
    """Cases with a size attribute (c3 has none), the chargers tagged; phones cost 500, cases 20, chargers 30."""
    items = []
    for it in tiny_catalog():
        doc = it.model_dump(mode="json")
        if it.id in ("c0", "c1", "c2"):
            doc["attributes"] = {"size": {"c0": "S", "c1": "m", "c2": ["M", "L"]}[it.id]}
        if it.id == "h1":
            doc["tags"] = ["Minimal", "travel"]
        items.append(doc)
    assert client.put("/v1/items", json=items).status_code == 200


def test_hard_fields_keep_items_out_of_every_rail(client):
    sized_catalog(client)
    client.put(prefs_path("picky"), json={"sizes": ["M"], "price": {"max": 100}})
    rails = [rail(client, user_id="picky", k=20), rail(client, "pdp_similar", item_id="p0", user_id="picky", k=20),
             rail(client, "pdp_fbt", item_id="p1", user_id="picky", k=20),
             rail(client, "cart_upsell", cart="p2", user_id="picky", k=20)]
    for body in rails:
        got = set(shown(body))
        assert got and "c0" not in got  # size S
        assert not any(i.startswith("p") for i in got)  # 500: above the price range
        assert got <= {"c1", "c2", "c3", "h0", "h1"}  # sizes m and [M, L] fit; c3 has no size: kept
    assert {"c1", "c2", "c3"} <= set(shown(rails[0]))
    # another shopper still sees everything
    assert {"c0", "p0"} <= set(shown(rail(client, user_id="anyone", k=20)))


def test_a_pin_cannot_break_a_hard_preference(client):
    sized_catalog(client)
    doc = {"rules": [{"id": "hero", "action": {"type": "pin", "items": ["c0"], "slot": 1}}]}
    assert client.put("/v1/rulesets/default", params={"publish": True}, json=doc).status_code == 201
    client.put(prefs_path("picky"), json={"sizes": ["M"]})
    body = rail(client, user_id="picky", explain=True)
    assert "c0" not in shown(body) and any("c0" in c for c in body["explanation"]["conflicts"])
    assert shown(rail(client, user_id="someone-else"))[0] == "c0"


def test_hard_fields_are_a_setting(trained_settings):
    trained_settings.models.preferences.hard = ["categories"]
    with api_client(trained_settings) as c:
        sized_catalog(c)
        c.put(prefs_path("cases-only"), json={"categories": ["Accessories > Phone Cases"], "sizes": ["M"]})
        got = shown(rail(c, user_id="cases-only", k=20))
        assert set(got) == {"c0", "c1", "c2", "c3"}  # categories are hard now; sizes soft: a boost
        assert set(got[:2]) == {"c1", "c2"}


def test_style_tags_boost_tagged_items(client):
    sized_catalog(client)
    client.put(prefs_path("stylish"), json={"style_tags": ["minimal"]})
    body = rail(client, user_id="stylish")
    assert body["items"][0]["item_id"] == "h1" and body["items"][0]["reason"] == "preference"


def test_preferences_of_a_shopper_without_consent_are_not_used(trained_settings):
    trained_settings.privacy.erase_on_withdrawal = False
    with api_client(trained_settings) as c:
        anonymous = shown(rail(c))
        c.put(prefs_path("withdrew"), json={"brands": ["Volt"], "price": {"max": 25}})
        assert shown(rail(c, user_id="withdrew"))[:2] != shown(rail(c))[:2]
        c.put("/v1/consent", params={"user_id": "withdrew"}, json={"personalisation": "denied"})
        assert c.get(prefs_path("withdrew")).status_code == 200  # kept (erase_on_withdrawal off) ...
        assert shown(rail(c, user_id="withdrew")) == anonymous  # ... but not used


def test_a_preference_store_that_is_down_costs_the_preferences_not_the_answer(trained_engine, monkeypatch):
    import sqlite3

    from shelfwise.request import RecRequest

    trained_engine.set_preferences("quiz-taker", Preferences(brands=["Volt"]))
    stated = trained_engine.recommend(RecRequest(placement="homepage", shopper="quiz-taker", k=4))
    assert stated.items[0].reason == "preference" and not stated.degraded

    def down(shoppers):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(trained_engine.preference_store, "preferences", down)
    trained_engine.cache.clear()
    ans = trained_engine.recommend(RecRequest(placement="homepage", shopper="quiz-taker", k=4))
    assert ans.items and all(r.reason != "preference" for r in ans.items)
    assert any(d.startswith("preferences: unavailable (OperationalError)") for d in ans.degraded), ans.degraded
