"""Merchandising through the HTTP API: rule sets, publish/rollback taking effect on the next request, clear 422s,
shadow mode and its report, explanations, the exposure log and the zero-impression report."""

import pytest
from fastapi.testclient import TestClient

from shelfwise.api.app import create_app
from shelfwise.rules import admin
from shelfwise.rules.store import SQLiteRuleStore
from shelfwise.service import Shelfwise
from shelfwise.training import train
from tests.conftest import api_client, tiny_catalog, tiny_events

BLOCK_P0 = {"description": "no p0", "rules": [{"id": "no-p0", "action": {"type": "block"}, "match": {"ids": ["p0"]}}]}
PIN_H1 = {"rules": [{"id": "hero", "priority": 10, "action": {"type": "pin", "items": ["h1"], "slot": 1},
                     "when": {"placements": ["homepage"]}}]}


@pytest.fixture
def client(trained_settings):
    with api_client(trained_settings) as c:
        yield c


def rail(client, placement="homepage", **params):
    params = {"user_id": "u1", "k": 5} | params
    r = client.get(f"/v1/recommendations/{placement}", params=params)
    assert r.status_code == 200, r.text
    return [x["item_id"] for x in r.json()["items"]]


def test_put_publish_rollback_take_effect_on_the_next_request(client):
    assert "p0" in rail(client)
    r = client.put("/v1/rulesets/default", json=BLOCK_P0, params={"author": "ann", "comment": "no p0"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["version"] == 1 and body["status"] == "draft" and body["shadow"] and body["warnings"] == []
    assert "p0" in rail(client)  # a draft is not served
    r = client.post("/v1/rulesets/default/publish", headers={"X-Author": "bob"})
    assert r.status_code == 200 and r.json()["status"] == "published"
    assert "p0" not in rail(client)  # next request, no restart
    r = client.put("/v1/rulesets/default", json=PIN_H1, params={"publish": "true", "comment": "hero"})
    assert r.json()["status"] == "published" and r.json()["version"] == 2
    got = rail(client, k=10)
    assert got[0] == "h1" and "p0" in got  # v2 replaced v1
    assert rail(client, "pdp_similar", item_id="p2")[0] != "h1"  # homepage only
    r = client.post("/v1/rulesets/default/rollback", params={"version": 1, "comment": "hero pulled"})
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["based_on"] == 1
    got = rail(client, k=10)
    assert "p0" not in got and got[0] != "h1"
    versions = client.get("/v1/rulesets/default/versions").json()
    assert [(v["version"], v["status"], v["author"]) for v in versions["versions"]] == [
        (1, "retired", "ann (key tester)"), (2, "retired", "tester"), (3, "published", "tester")]  # key names
    assert versions["versions"][2]["comment"] == "rollback to v1: hero pulled"
    assert [a["action"] for a in versions["audit"]] == ["save", "shadow", "publish", "save", "publish", "save",
                                                        "rollback"]
    listing = client.get("/v1/rulesets").json()["rulesets"]
    assert [(x["id"], x["live_version"], x["latest_version"]) for x in listing] == [("default", 3, 3)]
    got = client.get("/v1/rulesets/default", params={"version": 2}).json()
    assert got["document"]["rules"] == PIN_H1["rules"] and got["status"] == "retired"


def test_put_on_the_collection_uses_the_document_id(client):
    r = client.put("/v1/rulesets", json={"id": "campaign", **PIN_H1}, params={"publish": "true"})
    assert r.status_code == 201 and r.json()["id"] == "campaign"
    assert rail(client)[0] == "h1"
    r = client.put("/v1/rulesets", json=PIN_H1)
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "id"
    r = client.put("/v1/rulesets/other", json={"id": "campaign", "rules": []})
    assert r.status_code == 422 and "differs" in r.json()["errors"][0]["reason"]


@pytest.mark.parametrize("doc, path, reason", [
    ({"rules": [{"id": "a", "action": {"type": "pin", "items": ["h1"], "slot": 0}}]}, "rules[0].action.slot",
     "greater than or equal to 1"),
    ({"rules": [{"id": "a", "action": {"type": "block"}}]}, "rules[0].match", "non-empty match"),
    ({"rules": [{"id": "a", "action": {"type": "boost", "multiply": 2}, "match": {"brand": ["Nova"]}}]},
     "rules[0].match.brand", "unknown field"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"ids": ["p0"]},
                 "when": {"placements": ["checkout"]}}]}, "rules[0].when.placements", "unknown placement"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"ids": ["p0"]},
                 "when": {"start": "2026-12-02T00:00:00Z", "end": "2026-11-02T00:00:00Z"}}]}, "rules[0].when",
     "after start"),
    ([], "", "JSON object"),
])
def test_invalid_documents_get_a_clear_422_and_nothing_is_saved(client, doc, path, reason):
    r = client.put("/v1/rulesets/default", json=doc)
    assert r.status_code == 422
    body = r.json()
    assert body["detail"] == "invalid rule set; nothing was saved"
    assert body["errors"][0]["path"] == path and reason in body["errors"][0]["reason"]
    assert client.get("/v1/rulesets").json() == {"rulesets": []}


def test_dry_run_warnings_404s_and_bad_ids(client):
    doc = {"rules": [{"id": "a", "action": {"type": "pin", "items": ["ghost"]}}]}
    r = client.put("/v1/rulesets/default", json=doc, params={"dry_run": "true"})
    assert r.status_code == 200 and r.json()["valid"] and "ghost" in r.json()["warnings"][0]["reason"]
    assert client.get("/v1/rulesets").json() == {"rulesets": []}
    assert client.get("/v1/rulesets/nope").status_code == 404
    assert client.post("/v1/rulesets/nope/publish").status_code == 404
    client.put("/v1/rulesets/default", json=BLOCK_P0)
    assert client.post("/v1/rulesets/default/rollback", params={"version": 7}).status_code == 404
    assert client.post("/v1/rulesets/default/rollback").status_code == 422  # version is required
    r = client.put("/v1/rulesets/bad id", json=BLOCK_P0)
    assert r.status_code == 422


def test_a_change_from_another_process_applies_to_the_next_request(client, settings):
    other = SQLiteRuleStore(admin.rules_db_path(settings))  # e.g. `shelfwise rules put` in a terminal
    admin.put_ruleset(other, "cli", BLOCK_P0, "ann", "", ["homepage"], publish=True)
    other.close()
    assert "p0" not in rail(client)


def test_device_and_segment_conditions_through_the_api(client):
    doc = {"rules": [
        {"id": "mobile-h1", "action": {"type": "pin", "items": ["h1"], "slot": 1}, "when": {"devices": ["mobile"]}},
        {"id": "vip-h0", "priority": 5, "action": {"type": "pin", "items": ["h0"], "slot": 1},
         "when": {"segments": ["vip"]}}]}
    base = rail(client)
    client.put("/v1/rulesets/default", json=doc, params={"publish": "true"})
    assert rail(client) == base and "h1" not in base
    assert rail(client, device="mobile")[0] == "h1"
    assert rail(client, device="mobile", segment="new,vip")[:2] == ["h0", "h1"]


def test_explain_returns_why_each_item_is_where_it_is(client):
    client.put("/v1/rulesets/default", json=PIN_H1, params={"publish": "true"})
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 3, "explain": "true"}).json()
    first = r["items"][0]
    assert first["item_id"] == "h1" and first["explanation"]["reason"] == "pinned by default/hero"
    assert first["explanation"]["rules"][0]["action"] == "pin"
    for it in r["items"]:
        assert set(it["explanation"]) == {"position", "reason", "score", "components", "rules", "diversity_penalty"}
    assert r["explanation"]["rulesets"] == "default@1" and r["explanation"]["conflicts"] == []
    plain = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 3}).json()
    assert "explanation" not in plain
    assert set(plain["items"][0]) == {"item_id", "score", "sources", "reason", "fallback"}


def test_shadow_mode_serves_live_logs_the_draft_and_reports(client):
    client.put("/v1/rulesets/default", json=BLOCK_P0, params={"publish": "true"})
    draft = {"rules": BLOCK_P0["rules"] + PIN_H1["rules"] + [
        {"id": "no-cases", "action": {"type": "block"}, "match": {"categories": ["Accessories > Phone Cases"]}}]}
    r = client.put("/v1/rulesets/default", json=draft, params={"comment": "try hero"})
    assert r.json()["shadow"] and r.json()["status"] == "draft"
    r = client.put("/v1/rulesets/default/shadow", params={"share": 1.0})
    assert r.status_code == 200 and r.json()["shadow_version"] == 2
    for i in range(12):
        got = rail(client, user_id=f"u{i}")
        assert "p0" not in got and got[0] != "h1"  # the live answer is served
    rep = client.get("/v1/rulesets/default/shadow-report").json()
    assert rep["requests"] == 12 and rep["shadow_version"] == 2 and rep["live_version"] == 1 and rep["shadow_active"]
    assert rep["rank_changes"]["requests_changed"] == 1.0 and rep["rank_changes"]["top1_changed"] == 1.0
    assert rep["would_pin"][0] == {"item_id": "h1", "requests": 12}
    assert {x["item_id"] for x in rep["would_block"]} <= {"c0", "c1", "c2", "c3"} and rep["would_block"]
    assert sorted(rep["would_block_catalog"]["examples"]) == ["c0", "c1", "c2", "c3", "p0"]
    assert set(rep["expected"]) == {"revenue_live", "revenue_shadow", "revenue_change", "margin_live",
                                    "margin_shadow", "margin_change"}
    assert rep["coverage"]["live_items"] > 0 and "propensity" in rep["note"]
    # share 0: nothing more is sampled
    client.put("/v1/rulesets/default/shadow", params={"share": 0.0})
    rail(client, user_id="u30")
    assert client.get("/v1/rulesets/default/shadow-report").json()["requests"] == 12
    client.delete("/v1/rulesets/default/shadow")
    assert client.get("/v1/rulesets/default").json()["shadow_version"] is None


def test_exposure_log_and_zero_impression_report(settings):
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, settings.models)
    eng.close()
    eng = Shelfwise(settings)
    with api_client(settings, engine=eng) as client:
        r = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 4}).json()
        shown = [x["item_id"] for x in r["items"]]
        rep = client.get("/v1/reports/zero-impressions").json()
        assert eng.merch.log.request(r["request_id"]) == list(enumerate(shown))  # request id, positions, items
        assert rep["window_hours"] == 72 and rep["servable_items"] == 10 and rep["shown_items"] == 4
        assert sorted(i["item_id"] for i in rep["items"]) == sorted({i.id for i in tiny_catalog()} - set(shown))
        assert rep["zero_impression_items"] == 6 and rep["share"] == 0.6
        rep = client.get("/v1/reports/zero-impressions", params={"hours": 1, "limit": 2}).json()
        assert len(rep["items"]) == 2 and rep["zero_impression_items"] == 6
        assert client.get("/v1/reports/zero-impressions", params={"hours": 0}).status_code == 422
    eng.close()
