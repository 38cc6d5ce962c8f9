"""/v1/models: the registry's read view, 404 for an unknown version, 409 naming the gate that blocks a promotion,
409 when there is nothing to roll back, and the admin scope."""

from __future__ import annotations

from shelfwise.evaluation.holdout import released
from shelfwise.training import train
from tests.conftest import api_client, tiny_catalog, tiny_events


def test_models_routes(settings):
    from shelfwise.service import Shelfwise

    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    versions = []
    for _ in range(2):
        got: dict = {}
        train(eng.store, eng.catalog, eng.models, settings.models, sources=("trending", "covisit"),
              release=released(eng.releases, into=got))
        versions.append((got["version"], got))
    eng.close()
    (first, got1), (second, got2) = versions
    assert got1["action"] == "promoted"  # the first version goes live
    assert got2["action"] == "rejected"  # the tiny shop holds out too few requests to judge it
    with api_client(settings) as client:
        _check(client, first, second)
    with api_client(settings, scopes=("read",)) as reader:
        assert reader.get("/v1/models").status_code == 403


def _check(client, first: str, second: str) -> None:
    body = client.get("/v1/models").json()
    assert body["live"] == first and body["rollout"] is None
    assert [v["version"] for v in body["versions"]] == [second, first]
    assert body["versions"][1]["metrics"]["requests"] > 0 and "NDCG@12" in body["versions"][1]["metrics"]
    assert client.get(f"/v1/models/{first}").json()["status"] == "live"
    r = client.get("/v1/models/v-unknown")
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "version"
    r = client.post(f"/v1/models/{second}/promote")
    assert r.status_code == 409 and "blocked by its gates" in r.json()["detail"]
    assert "held_out_requests" in {e["field"] for e in r.json()["errors"]}
    r = client.post("/v1/models/rollback")
    assert r.status_code == 409 and "nothing to roll back" in r.json()["detail"]
    assert client.post("/v1/models/_check").json() == {"action": "none"}
