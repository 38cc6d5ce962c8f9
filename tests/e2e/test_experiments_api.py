"""Experiments through the HTTP API and the CLI: the lifecycle, results, power; every bad input a clear 4xx (or
CLI message) naming the problem, with nothing stored."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from shelfwise.api.experiments import service_of
from shelfwise.experiments.admin import ExperimentService
from shelfwise.experiments.log import OutcomeRecord
from shelfwise.experiments.runtime import ExperimentRuntime
from shelfwise.service import Shelfwise
from tests.conftest import api_client

DOC = {"id": "home-blend", "name": "More ALS on the homepage", "layer": "ranking", "layer_range": [0, 0.5],
       "traffic": 0.1, "hypothesis": "ALS finds long-tail items shoppers like",
       "variants": [{"name": "control", "share": 0.5},
                    {"name": "als", "share": 0.5,
                     "config": {"placements": {"homepage": {"weights": {"als": 1.0, "covisit": 0.5}}}}}]}


@pytest.fixture
def engine(settings):
    eng = Shelfwise(settings)
    yield eng
    eng.close()


@pytest.fixture
def client(engine, settings):
    with api_client(settings, engine=engine) as c:
        yield c


def ok(r, status=200):
    assert r.status_code == status, r.text
    return r.json()


def fill_log(svc: ExperimentService, experiment: str, settings, n: int = 3000, lift: float = 0.0) -> None:
    """Traffic (now) through the runtime's assignment into the service's log: clicks and purchases per unit."""
    rt = ExperimentRuntime(settings, store=svc.store, xlog=svc.log, background=False)
    rng = np.random.default_rng(0)
    for i in range(n):
        t = time.time()
        got = rt.assign(f"u{i}", f"s{i}", "homepage")
        if not got.items:
            continue
        v = got.items[0].variant
        rid = f"r{i}"
        items = [f"i{j}" for j in range(12)]
        rt.record(got, rid, "homepage", items, ts=t, latency_ms=float(rng.gamma(4, 5)))
        boost = 1 + lift if v != "control" else 1.0
        if rng.random() < 0.3 * boost:
            svc.log.record_outcomes([OutcomeRecord(f"c{i}", "click", t, f"u{i}", f"s{i}", rid, "i0")])
        if rng.random() < 0.08 * boost:
            svc.log.record_outcomes([OutcomeRecord(f"p{i}", "purchase", t, f"u{i}", f"s{i}",
                                                   revenue=float(rng.lognormal(3.5, 0.8)))])
    svc.log.flush()


def test_lifecycle_and_results(client, engine, settings):
    created = ok(client.post("/v1/experiments", json=DOC, params={"author": "ann", "comment": "Q4 test"}), 201)
    assert (created["id"], created["status"], created["traffic"], created["warnings"]) == ("home-blend", "draft",
                                                                                           0.1, [])
    assert ok(client.post("/v1/experiments/home-blend/start", headers={"X-Author": "bob"}))["status"] == "running"
    assert ok(client.post("/v1/experiments/home-blend/ramp", params={"traffic": 0.5}))["traffic"] == 0.5
    assert ok(client.post("/v1/experiments/home-blend/ramp", params={"traffic": 1.0}))["traffic"] == 1.0
    got = ok(client.get("/v1/experiments/home-blend"))
    assert [(h["action"], h["author"]) for h in got["history"]] == [  # the API key's name, and who said they were
        ("create", "ann (key tester)"), ("start", "bob (key tester)"), ("ramp", "tester"), ("ramp", "tester")]
    assert got["spec"]["variants"][1]["config"]["placements"]["homepage"]["weights"] == {"als": 1.0, "covisit": 0.5}
    listing = ok(client.get("/v1/experiments", params={"status": "running"}))["experiments"]
    assert [e["id"] for e in listing] == ["home-blend"]
    svc = service_of(engine)
    fill_log(svc, "home-blend", settings, lift=0.5)
    res = ok(client.get("/v1/experiments/home-blend/results"))
    a = res["analysis"]
    assert set(a["units"]) == {"control", "als"} and sum(a["units"].values()) > 1000
    assert a["srm"]["alarm"] is False
    conv = a["metrics"]["conversion"]["comparisons"]["als"]
    assert conv["relative"] > 0 and "cuped" in conv and "sequential" in conv
    assert a["bayesian"]["conversion"]["variants"]["als"]["prob_beat_control"] > 0.9
    ctr = a["metrics"]["ctr"]["comparisons"]["als"]
    assert ctr["significant"] and ctr["sequential"]["excludes_zero"]
    assert res["requests"]["als"]["p95_ms"] > 0 and res["guardrails"][0]["metric"] == "ctr"
    stopped = ok(client.post("/v1/experiments/home-blend/stop", params={"reason": "shipped", "serve": "als"}))
    assert (stopped["status"], stopped["serve"], stopped["stop_reason"]) == ("stopped", "als", "shipped")
    assert ok(client.post("/v1/experiments/home-blend/serve"))["serve"] is None
    power = ok(client.get("/v1/experiments/_power", params={"baseline": 0.1, "mde": 0.1, "units": 5000}))
    assert power["control"] == 14_749 and 0 < power["power_at_units"] < 0.8
    assert ok(client.post("/v1/experiments/_guardrails"))["checked"] == []


def test_experiments_need_the_admin_scope(settings, engine):
    with api_client(settings, engine=engine, scopes=("read", "ingest")) as c:
        r = c.post("/v1/experiments", json=DOC)
        assert r.status_code == 403 and "admin" in r.text
        assert c.get("/v1/experiments").status_code == 403


def test_dry_run_and_draft_edit(client):
    assert ok(client.post("/v1/experiments", json=DOC, params={"dry_run": True})) == {
        "valid": True, "id": "home-blend", "warnings": []}
    assert ok(client.get("/v1/experiments"))["experiments"] == []
    ok(client.post("/v1/experiments", json=DOC), 201)
    edited = ok(client.put("/v1/experiments/home-blend", json=DOC | {"traffic": 0.2, "id": "home-blend"}))
    assert edited["traffic"] == 0.2 and edited["revision"] == 2


def test_bad_input_is_a_4xx_naming_the_problem_and_stores_nothing(client):
    ok(client.post("/v1/experiments", json=DOC), 201)
    ok(client.post("/v1/experiments", json=DOC | {"id": "stopped-one", "layer": "merch"}), 201)
    ok(client.post("/v1/experiments/stopped-one/stop"))
    before = (client.get("/v1/experiments").json(), client.get("/v1/experiments/home-blend").json(),
              client.get("/v1/experiments/stopped-one").json())
    cases = [
        (client.post("/v1/experiments", json=DOC | {"id": "clash", "layer_range": [0.4, 1.0]}), 409,
         "'clash' overlaps draft experiment 'home-blend' in layer 'ranking'"),
        (client.post("/v1/experiments", json=DOC | {"id": "bad-shares", "variants": [
            {"name": "a", "share": 0.5}, {"name": "b", "share": 0.3}]}), 422, "variants[*].share",
         "variant shares must sum to 1; they sum to 0.8"),
        (client.post("/v1/experiments", json=DOC | {"id": "typo", "variants": [
            {"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "config": {"colour": "red"}}]}), 422,
         "variants[1].config.colour", "unknown variant setting 'colour'"),
        (client.post("/v1/experiments/stopped-one/ramp", params={"traffic": 0.5}), 409,
         "'stopped-one' is stopped; a stopped experiment cannot be ramped"),
        (client.post("/v1/experiments/home-blend/ramp", params={"traffic": 0.05}), 409, "a ramp only grows"),
        (client.post("/v1/experiments/home-blend/ramp", params={"traffic": 1.5}), 422, "traffic",
         "a ramp is a share in (0, 1]"),
        (client.post("/v1/experiments/nope/start"), 404, "no experiment 'nope'"),
        (client.put("/v1/experiments/home-blend", json=DOC | {"id": "other"}), 409,
         "the document's id 'other' differs from the URL's 'home-blend'"),
        (client.post("/v1/experiments/home-blend/stop", params={"serve": "winner"}), 422, "serve",
         "'winner' is not a variant"),
        (client.post("/v1/experiments/stopped-one/start"), 409, "'stopped-one' is stopped; only a draft"),
        (client.get("/v1/experiments", params={"status": "paused"}), 422, "status", "unknown status 'paused'"),
        (client.post("/v1/experiments", json=[1, 2]), 422, "", "an experiment is a JSON object"),
        (client.get("/v1/experiments/_power", params={"baseline": 1.5, "mde": 0.1}), 422, "power",
         "baseline must be a proportion"),
        (client.get("/v1/experiments/_holdout/results"), 404, "there is no global holdout"),
        (client.post("/v1/experiments", json=DOC | {"id": "k", "layer": "x", "variants": [
            {"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "config": {"k": 5000}}]}), 422,
         "variants[1].config.k", "at most api.max_k = 200"),
    ]
    for case in cases:
        r, status, *needles = case
        assert r.status_code == status, (needles, r.status_code, r.text)
        body = r.json()
        if status == 422:
            path, reason = needles
            assert any(e["path"] == path and reason in e["reason"] for e in body["errors"]), body
            assert "nothing was saved" in body["detail"]
        else:
            assert needles[0] in body["detail"], body
    after = (client.get("/v1/experiments").json(), client.get("/v1/experiments/home-blend").json(),
             client.get("/v1/experiments/stopped-one").json())
    assert after == before


def test_cli(settings, monkeypatch, tmp_path, engine):
    from shelfwise.cli import app

    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    doc = tmp_path / "exp.json"
    doc.write_text(json.dumps(DOC))

    def run(*args, code=0):
        r = runner.invoke(app, ["experiments", *args])
        assert r.exit_code == code, r.output
        return r.output

    assert "home-blend: draft at 10% of its slice" in run("create", str(doc), "-m", "first")
    assert "running" in run("start", "home-blend")
    assert "at 50% of its slice" in run("ramp", "home-blend", "50%")
    assert "a ramp only grows" in run("ramp", "home-blend", "0.2", code=2)
    assert "traffic must be a share like 0.5 or 50%" in run("ramp", "home-blend", "lots", code=2)
    assert "home-blend" in run("list") and '"status": "running"' in run("show", "home-blend")
    assert "14,749 units per variant" in run("power", "--baseline", "0.1", "--mde", "0.1")
    svc = ExperimentService(settings)
    fill_log(svc, "home-blend", settings, n=2000)
    svc.close()
    out_dir = tmp_path / "report"
    assert "report:" in run("report", "home-blend", "--out", str(out_dir))
    md = (out_dir / "report.md").read_text()
    assert "## Metrics" in md and "SRM chi²" in md and "## Bayesian readout" in md and "lift.png" in md
    assert (out_dir / "lift.png").stat().st_size > 1000 and (out_dir / "timeline.png").stat().st_size > 1000
    assert json.loads((out_dir / "results.json").read_text())["analysis"]["units"]
    assert "home-blend: ok" in run("check")
    assert "stopped" in run("stop", "home-blend", "--reason", "done")
    assert "a stopped experiment cannot be ramped" in run("ramp", "home-blend", "1", code=2)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(DOC | {"id": "typo", "variants": [
        {"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "config": {"blend": 1}}]}))
    out = run("create", str(bad), code=2)
    assert "invalid; nothing was saved" in out and "variants[1].config.blend: unknown variant setting" in out
    bad.write_text("{not json")
    assert "not JSON" in run("create", str(bad), code=2)
    assert "no experiment 'ghost'" in run("start", "ghost", code=2)


def test_interleaving_and_holdout_results(settings, tmp_path):
    from shelfwise.experiments.interleaving import team_draft
    from shelfwise.settings import load_settings

    conf = load_settings(data_dir=settings.data_dir, experiments={"holdout_share": 0.1})
    svc = ExperimentService(conf)
    svc.create({"id": "il", "kind": "interleave", "layer": "ranking", "guardrails": [], "variants": [
        {"name": "blend", "share": 0.5},
        {"name": "als", "share": 0.5, "config": {"placements": {"homepage": {"weights": {"als": 1.0}}}}}]},
        "t", start=True)
    rt = ExperimentRuntime(conf, store=svc.store, xlog=svc.log, background=False)
    rng = np.random.default_rng(1)
    held = 0
    for i in range(1500):
        got = rt.assign(f"u{i}", f"s{i}", "homepage")
        held += got.holdout
        rid = f"r{i}"
        a, b = [f"a{j}" for j in range(8)], [f"b{j}" for j in range(8)]
        items, teams = team_draft(a, b, 8, rid) if got.interleave else (a, None)
        t = time.time()
        rt.record(got, rid, "homepage", items, teams=teams, ts=t)
        clicked = [it for it in items if rng.random() < (0.12 if it.startswith("b") else 0.06)]
        svc.log.record_outcomes([OutcomeRecord(f"c{i}-{it}", "click", t, f"u{i}", f"s{i}", rid, it)
                                 for it in clicked])
    svc.log.flush()
    il = svc.results("il")["interleaving"]
    assert il["by_unit"]["winner"] == "b" and il["by_unit"]["p_value"] < 1e-4 and il["b"] == "als"
    assert il["by_impression"]["impressions"] == 1500 - held
    hold = svc.results("_holdout", since=time.time() - 3600)
    assert hold["analysis"]["units"]["holdout"] == held and 100 < held < 200
    assert hold["analysis"]["srm"]["alarm"] is False
    rt.close()
    svc.close()
