"""Consent states, pseudonymisation and complete erasure on the embedded default (SQLite + in-process state and
bus), through the HTTP API. The same erasure on PostgreSQL + Redis + a Redis stream is in
tests/contract/test_erasure_scaleout.py."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from shelfwise.domain import ConsentUpdate, Event
from shelfwise.privacy.pseudonym import Pseudonymizer
from shelfwise.service import Shelfwise
from shelfwise.training import train
from tests.conftest import api_client, tiny_catalog, tiny_events

WHO = "shopper/Ä-42 😀"  # a slash, non-ASCII and an emoji: must survive every path and be erased everywhere
KEY = "k" * 24


def ev(i, user=WHO, item="p1", minute=0, **kw):
    return {"event_id": f"pv-{i}", "type": "product_viewed", "user_id": user, "session_id": "sess/7", "item_id": item,
            "timestamp": f"2026-11-20T10:{minute:02d}:00Z"} | kw


def rail(client, **params):
    r = client.get("/v1/recommendations/homepage", params={"k": 6} | params)
    assert r.status_code == 200, r.text
    return [x["item_id"] for x in r.json()["items"]]


def places(receipt) -> dict[str, int]:
    return {p["place"]: p["removed"] for p in receipt["places"]}


def occurrences(data_dir: Path, needles: list[str]) -> list[str]:
    """Every file under the data directory (database, WAL, models…) that contains one of the needles, as UTF-8
    or as JSON escapes."""
    forms = set()
    for n in needles:
        forms |= {n.encode(), json.dumps(n).strip('"').encode(), n.encode("utf-16-le")}
    return [f"{p}: {f!r}" for p in data_dir.rglob("*") if p.is_file() for f in forms if f in p.read_bytes()]


def prepare_shop(settings, pseudonymize=False):
    """The tiny storefront plus WHO's events, a model that knows WHO, a consent record, a shadow draft."""
    if pseudonymize:
        settings.privacy.pseudonymize, settings.privacy.pseudonym_key = True, KEY
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    eng.ingest([Event.model_validate(ev(i, item=it, minute=i)) for i, it in enumerate(["p3", "c3", "p2", "c2", "h1"])])
    train(eng.store, eng.catalog, eng.models, settings.models)
    eng.close()


@pytest.mark.parametrize("pseudonymize", [False, True], ids=["raw ids", "pseudonymised"])
def test_erasure_leaves_nothing_behind(settings, pseudonymize):
    prepare_shop(settings, pseudonymize)
    stored = Pseudonymizer(KEY).shopper(WHO) if pseudonymize else WHO
    with api_client(settings) as client:
        client.put("/v1/rulesets/draft", json={"rules": [{"id": "b", "action": {"type": "block"},
                                                          "match": {"ids": ["p0"]}}]})
        client.put("/v1/rulesets/draft/shadow", params={"share": 1.0})
        assert client.put("/v1/consent", params={"user_id": WHO}, json={"analytics": "granted",
                                                                         "experiments": "granted"}).status_code == 200
        # a running experiment: WHO is assigned, their exposure and (below) their event join the experiment log
        assert client.post("/v1/experiments", json={
            "id": "e1", "name": "two arms", "variants": [{"name": "control", "share": 0.5},
                                                         {"name": "treatment", "share": 0.5}]}).status_code == 201
        assert client.post("/v1/experiments/e1/start").status_code == 200
        personal = rail(client, user_id=WHO)
        anonymous = rail(client)
        assert personal != anonymous  # the model and the history know this shopper
        assert client.post("/v1/events", json=ev(99, item="c1", minute=30)).status_code == 202
        needles = [WHO, stored] if pseudonymize else [WHO]
        assert occurrences(settings.data_dir, needles), "the id should be somewhere before the erasure"
        if pseudonymize:
            assert not occurrences(settings.data_dir, [WHO])  # raw id never stored
        r = client.delete("/v1/shoppers", params={"user_id": WHO})
        assert r.status_code == 200, r.text
        receipt = r.json()
        got = places(receipt)
        assert got["event store: events (and their purchase lines)"] == 6
        # the exposure log holds a row per answer: the one rail served to WHO
        assert got["online state"] == 1 and got["exposure log"] == 1 and got["shadow log"] >= 1
        assert got["consent record"] == 1 and got["running model: shopper index"] == 1
        assert got["model store: shopper index rows and ALS user factors"] == 1
        assert got["experiment log"] >= 1  # the assignment's exposures (and the identity map)
        assert "WAL checkpointed" in next(p["detail"] for p in receipt["places"] if p["place"] == "database files")
        assert receipt["removed_total"] == sum(got.values()) and receipt["pseudonymized"] == pseudonymize
        assert WHO not in json.dumps(receipt, ensure_ascii=False) and stored not in json.dumps(receipt)
        assert client.get(f"/v1/erasures/{receipt['receipt_id']}").json() == receipt
        leftovers = occurrences(settings.data_dir, needles)
        assert not leftovers, leftovers
        # the model's row is unusable at once: the shopper now gets what an unknown visitor gets (a request made
        # after the erasure is new data: its exposure is logged again, as for any shopper)
        assert rail(client, user_id=WHO) == anonymous
    with api_client(settings) as client:  # after a restart too
        assert rail(client, user_id=WHO) == anonymous
        again = client.delete(f"/v1/shoppers/{WHO}").json()  # the path form takes ids with a slash
        got = places(again)  # idempotent: only the exposures of the requests made since are found
        assert got["event store: events (and their purchase lines)"] == 0
        assert got["model store: shopper index rows and ALS user factors"] == 0


def test_anonymous_session_with_slash_is_erased(trained_settings):
    with api_client(trained_settings) as client:
        e = {"event_id": "s-1", "type": "product_viewed", "session_id": "a/b/c", "item_id": "p1",
             "timestamp": "2026-11-20T10:00:00Z"}
        assert client.post("/v1/events", json=e).status_code == 202
        receipt = client.delete("/v1/shoppers", params={"session_id": "a/b/c"}).json()
        assert receipt["subject"] == "session" and places(receipt)["event store: events (and their purchase lines)"] == 1
        r = client.delete("/v1/shoppers", params={"session_id": "x", "user_id": "y"})
        assert r.status_code == 422 and "exactly one" in r.json()["errors"][0]["reason"]
        assert client.delete("/v1/shoppers").status_code == 422


def count_events(settings, shopper: str) -> int:
    db = sqlite3.connect(settings.data_dir / "shelfwise.db")
    try:
        return db.execute("SELECT count(*) FROM events WHERE shopper = ?", (shopper,)).fetchone()[0]
    finally:
        db.close()


def test_consent_states(trained_settings):
    with api_client(trained_settings) as client:
        anonymous = rail(client)
        assert client.get("/v1/consent", params={"user_id": "u1"}).json() == {
            "purposes": {"personalisation": "granted", "analytics": "granted", "experiments": "granted"},
            "decided": [], "updated_at": None, "source": "default"}
        personal = rail(client, user_id="u1")
        assert personal != anonymous
        # denied: events are withheld (only anonymous counts), rails are non-personal, existing data erased
        r = client.put("/v1/consent", params={"user_id": "u1"}, json={"personalisation": "denied"})
        assert r.status_code == 200 and r.json()["purposes"]["personalisation"] == "denied"
        assert r.json()["decided"] == ["personalisation"] and r.json()["source"] == "api"
        assert count_events(trained_settings, "u1") == 0  # erase_on_withdrawal
        assert rail(client, user_id="u1") == anonymous
        r = client.post("/v1/events", json=ev(1, user="u1", item="c2"))
        assert r.status_code == 202 and r.json() == {"stored": 0, "duplicates": 0, "duplicate_ids": [],
                                                     "unknown_items": [], "invalid": 0, "withheld": 1}
        assert count_events(trained_settings, "u1") == 0
        counts = client.get("/v1/reports/anonymous-counts").json()["counts"]
        assert counts == [{"day": "2026-11-20", "item_id": "c2", "type": "product_viewed", "count": 1}]
        # consent carried on an event: granted again (decided after the denial), the event itself is stored
        now = datetime.now(timezone.utc).isoformat()
        old = client.post("/v1/events", json=ev(3, user="u1", item="c3", consent={"personalisation": "granted"}))
        assert old.json()["withheld"] == 1  # an event from before the API's denial does not overturn it
        r = client.post("/v1/events", json=ev(2, user="u1", item="c3", timestamp=now,
                                              consent={"personalisation": "granted"}))
        assert r.json()["stored"] == 1 and count_events(trained_settings, "u1") == 1
        assert client.get("/v1/consent", params={"user_id": "u1"}).json()["source"] == "event"


def test_pending_stores_nothing_personal(trained_settings):
    trained_settings.privacy.default_consent = "pending"
    with api_client(trained_settings) as client:
        anonymous = rail(client)
        assert rail(client, user_id="u1") == anonymous  # no decision yet: non-personal
        r = client.post("/v1/events", json=[ev(1, user="newbie"), ev(2, user="newbie", consent={
            "personalisation": "pending"})])
        assert r.json()["withheld"] == 2 and count_events(trained_settings, "newbie") == 0
        consent = client.get("/v1/consent", params={"user_id": "newbie"}).json()
        assert consent["source"] == "default"  # "pending" for a shopper without a record stores nothing
        db = sqlite3.connect(trained_settings.data_dir / "shelfwise.db")
        assert db.execute("SELECT count(*) FROM consents").fetchone()[0] == 0
        db.close()
        r = client.post("/v1/events", json=ev(3, user="newbie", consent={"personalisation": "granted"}))
        assert r.json()["stored"] == 1 and count_events(trained_settings, "newbie") == 1


def test_analytics_consent_decides_whether_the_exposure_log_keeps_the_id(trained_settings):
    with api_client(trained_settings) as client:
        client.put("/v1/consent", params={"user_id": "u2"}, json={"analytics": "denied"})
        client.put("/v1/consent", params={"user_id": "u3"}, json={"analytics": "granted"})
        for u in ("u2", "u3"):
            rail(client, user_id=u)
        client.get("/v1/reports/zero-impressions")  # flushes the exposure log
    db = sqlite3.connect(trained_settings.data_dir / "shelfwise.db")
    shoppers = {r[0] for r in db.execute("SELECT DISTINCT shopper FROM exposures")}
    db.close()
    assert "u3" in shoppers and "u2" not in shoppers and None in shoppers


def test_pseudonymised_shop_personalises_without_raw_ids(settings):
    prepare_shop(settings, pseudonymize=True)
    with api_client(settings) as client:
        assert rail(client, user_id=WHO) != rail(client)
        assert client.post("/v1/events", json=ev(50, item="c1", minute=40)).status_code == 202
    assert count_events(settings, WHO) == 0 and count_events(settings, Pseudonymizer(KEY).user(WHO)) == 6
    assert not occurrences(settings.data_dir, [WHO, "sess/7"])


def test_erasure_during_training_is_applied_when_the_model_loads(trained_settings):
    """A model whose training read the events before an erasure must not bring the shopper back."""
    eng = Shelfwise(trained_settings)
    path = eng.models.path(eng.models.current())
    scan = json.loads((path / "scanned_at.json").read_text())["scanned_at"]
    assert "u5" in eng.pipeline.shopper_index
    eng.privacy_store.forget("u5", scan + 1)  # as if erased while this model was training
    eng.close()
    eng = Shelfwise(trained_settings)
    try:
        assert "u5" not in eng.pipeline.shopper_index and "u6" in eng.pipeline.shopper_index
        assert "u5" not in json.loads((path / "shoppers.json").read_text())
    finally:
        eng.close()


def test_training_leaves_out_shoppers_without_consent(trained_settings):
    """With erase_on_withdrawal off a withdrawn shopper's events stay stored, but the next training skips them."""
    trained_settings.privacy.erase_on_withdrawal = False
    eng = Shelfwise(trained_settings)
    try:
        eng.set_consent("u4", ConsentUpdate(personalisation="denied"))
        assert count_events(trained_settings, "u4") == 5  # kept: erasure on withdrawal is off
        report = train(eng.store, eng.catalog, eng.models, trained_settings.models, consenting=eng.guard.consenting)
        shoppers = json.loads((eng.models.path(report.version) / "shoppers.json").read_text())
        assert "u4" not in shoppers and "u6" in shoppers and report.shoppers == 39
    finally:
        eng.close()
