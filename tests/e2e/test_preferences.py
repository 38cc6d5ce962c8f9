"""Explicit preferences through the HTTP API: stored, validated (422 naming the field), consent-bound, erased with
the shopper, and used: they change the answer, boost above older evidence but not above the current session,
and their hard fields (sizes, price) keep items out of every rail."""

from __future__ import annotations

import json
import sqlite3

import pytest

from shelfwise.domain import Item
from shelfwise.privacy.pseudonym import Pseudonymizer
from tests.conftest import api_client, tiny_catalog

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
