"""Experiments through the request path: a running experiment's variants change what shoppers are served (their
placement settings, rail size, the learned ranker, a rule set at another version), every answer names its
variants, exposures are logged, interleaving merges two variants, and consent to experiments is honoured."""

from __future__ import annotations

import pytest

from shelfwise.ranking.exposures import read_exposures
from shelfwise.rules.admin import rules_db_path
from shelfwise.service import Shelfwise
from tests.conftest import api_client


@pytest.fixture
def client(trained_settings):
    eng = Shelfwise(trained_settings)
    with api_client(trained_settings, engine=eng) as c:
        yield c, eng
    eng.close()


def ok(r, status=200):
    assert r.status_code == status, r.text
    return r.json()


def start(client, doc):
    ok(client.post("/v1/experiments", json=doc), 201)
    ok(client.post(f"/v1/experiments/{doc['id']}/start"))


def rails(client, n=60, **params):
    return {f"u{i}": ok(client.get("/v1/recommendations/homepage", params={"user_id": f"u{i}", **params}))
            for i in range(n)}


def test_variants_are_served_named_and_logged(client):
    client, engine = client
    start(client, {"id": "small-rail", "name": "a shorter rail, co-visitation only", "layer": "ui",
                   "variants": [{"name": "control", "share": 0.5},
                                {"name": "short", "share": 0.5,
                                 "config": {"k": 3, "placements": {"homepage": {"weights": {"covisit": 1.0}}}}}]})
    got = rails(client, k=6)
    by = {}
    for user, body in got.items():
        (label,) = body["experiments"]
        assert label["experiment"] == "small-rail"
        by.setdefault(label["variant"], []).append(body)
    assert set(by) == {"control", "short"} and min(len(v) for v in by.values()) >= 10
    assert all(len(b["items"]) == 6 for b in by["control"])
    assert all(len(b["items"]) == 3 for b in by["short"])  # the variant's k
    # the variant's blend: every item shown with evidence comes from co-visitation (or is a fallback)
    assert all(set(x["sources"]) <= {"covisit", "fallback"} for b in by["short"] for x in b["items"])
    # a shopper keeps their variant (sticky) and their answer
    again = ok(client.get("/v1/recommendations/homepage", params={"user_id": "u7", "k": 6}))
    assert again["experiments"] == got["u7"]["experiments"] and again["items"] == got["u7"]["items"]
    engine.experiments.log.flush()
    units = ok(client.get("/v1/experiments/small-rail/results"))["analysis"]["units"]
    assert sum(units.values()) == 60 and set(units) == {"control", "short"}


def test_a_variant_can_serve_another_rule_set_version(client):
    client, engine = client
    rules = {"rules": [{"id": "pin-charger", "action": {"type": "pin", "items": ["h1"], "slot": 1}}]}
    ok(client.put("/v1/rulesets/promo", json=rules), 201)  # version 1: a draft, not live
    start(client, {"id": "promo-test", "name": "the promo pin", "layer": "merch",
                   "variants": [{"name": "control", "share": 0.5},
                                {"name": "promo", "share": 0.5, "config": {"ruleset": "promo@1"}}]})
    seen = {}
    for user, body in rails(client, k=4).items():
        variant = body["experiments"][0]["variant"]
        seen.setdefault(variant, set()).add(body["items"][0]["item_id"])
        if variant == "promo":
            assert body["rulesets"] == "promo@1"
        else:
            assert body["rulesets"] == ""
    assert seen["promo"] == {"h1"} and seen["control"] != {"h1"}


def test_interleaving_merges_both_variants(client):
    client, engine = client
    start(client, {"id": "ranker-vs-blend", "name": "interleaved", "layer": "interleave", "kind": "interleave",
                   "variants": [{"name": "covisit", "share": 0.5,
                                 "config": {"placements": {"homepage": {"weights": {"covisit": 1.0}}}}},
                                {"name": "trending", "share": 0.5,
                                 "config": {"placements": {"homepage": {"weights": {"trending": 1.0}}}}}]})
    body = ok(client.get("/v1/recommendations/homepage", params={"user_id": "u3", "k": 6}))
    assert body["experiments"] == [{"experiment": "ranker-vs-blend", "variant": "interleaved"}]
    sources = [set(x["sources"]) for x in body["items"]]
    assert any("covisit" in s for s in sources) and any(s == {"trending"} for s in sources)
    engine.experiments.log.flush()
    assert ok(client.get("/v1/experiments/ranker-vs-blend/results"))


def test_no_experiments_without_consent(client):
    client, engine = client
    start(client, {"id": "small-rail", "name": "short", "layer": "ui",
                   "variants": [{"name": "control", "share": 0.5}, {"name": "short", "share": 0.5,
                                                                      "config": {"k": 2}}]})
    ok(client.put("/v1/consent", params={"user_id": "u5"}, json={"experiments": "denied"}))
    body = ok(client.get("/v1/recommendations/homepage", params={"user_id": "u5", "k": 5}))
    assert body["experiments"] == [] and len(body["items"]) == 5


def test_item_exploration_logs_propensities(client):
    client, engine = client
    start(client, {"id": "explore", "name": "explore new items", "layer": "explore",
                   "variants": [{"name": "control", "share": 0.5},
                                {"name": "explore", "share": 0.5, "config": {"exploration": 0.5}}]})
    got = rails(client, n=40, k=4)
    explored = [u for u, b in got.items() if b["experiments"][0]["variant"] == "explore"]
    assert explored and all(len(got[u]["items"]) == 4 for u in explored)
    engine.experiments.log.flush()
    logged = engine.experiments.log.requests(experiment_id="explore")
    by_variant = {v: [r for r in logged if r.experiments["explore"][0] == v] for v in ("control", "explore")}
    assert len(by_variant["explore"]) == len(explored) and by_variant["control"]
    # each explored slot's propensity is logged (1 for the ranked ones); the control rails have none
    props = [p for r in by_variant["explore"] for p in r.propensities]
    assert props and min(props) < 1.0 and max(props) == 1.0
    assert all(r.propensities is None for r in by_variant["control"])
    # the same propensities reach the exposure log the learned ranker trains from (inverse propensity weights)
    engine.merch.log.flush()
    shown = read_exposures(rules_db_path(engine.settings), "homepage")
    explored_slots = {(rid, item) for rid, item, p in zip(shown.request_id, shown.item, shown.propensity) if p < 1}
    assert explored_slots == {(r.request_id, item) for r in by_variant["explore"]
                              for item, p in zip(r.items, r.propensities) if p < 1}
