"""Versioned rule sets: every change a new version, publish, roll back, shadow, reload by generation; the exposure
log; the CLI."""

import json
import threading

import pytest
from typer.testing import CliRunner

from shelfwise.rules import admin
from shelfwise.rules.log import Exposure, ShadowRecord, SQLiteExposureLog
from shelfwise.rules.reports import shadow_report, zero_impressions
from shelfwise.rules.schema import RuleSetInvalid
from shelfwise.rules.stage import StoreRules, in_sample
from shelfwise.rules.store import NotFound, SQLiteRuleStore
from tests.conftest import tiny_catalog

PLACEMENTS = ["homepage", "pdp_similar", "pdp_fbt", "cart_upsell"]
BLOCK_P0 = {"rules": [{"id": "b", "action": {"type": "block"}, "match": {"ids": ["p0"]}}]}
PIN_H1 = {"rules": [{"id": "p", "action": {"type": "pin", "items": ["h1"], "slot": 1}}]}


@pytest.fixture
def store(tmp_path):
    s = SQLiteRuleStore(tmp_path / "r.db")
    yield s
    s.close()


def put(store, doc, **kw):
    return admin.put_ruleset(store, "main", doc, kw.pop("author", "ann"), kw.pop("comment", "c"), PLACEMENTS, **kw)


def test_every_change_is_a_new_version_with_author_time_comment(store):
    v1 = put(store, BLOCK_P0, comment="block p0")
    v2 = put(store, PIN_H1, author="bob", comment="pin h1")
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["status"] == v2["status"] == "draft" and v2["shadow"]
    hist = admin.versions(store, "main")
    assert [(v["version"], v["author"], v["comment"]) for v in hist] == [(1, "ann", "block p0"), (2, "bob", "pin h1")]
    assert hist[0]["created_at"] <= hist[1]["created_at"]
    assert admin.get_ruleset(store, "main", 1)["document"]["rules"] == BLOCK_P0["rules"]
    assert admin.get_ruleset(store, "main")["version"] == 2  # latest by default


def test_publish_and_rollback_keep_the_history_growing(store):
    put(store, BLOCK_P0)
    put(store, PIN_H1)
    got = admin.publish(store, "main", 1, "ann", "go live")
    assert got["status"] == "published" and got["live_version"] == 1
    got = admin.publish(store, "main", None, "ann", "latest")  # latest = v2
    assert got["version"] == 2 and got["live_version"] == 2 and got["shadow_version"] is None
    got = admin.rollback(store, "main", 1, "carl", "v2 broke the homepage")
    assert got["version"] == 3 and got["status"] == "published" and got["based_on"] == 1
    assert got["document"]["rules"] == BLOCK_P0["rules"] and got["comment"] == "rollback to v1: v2 broke the homepage"
    statuses = {v["version"]: v["status"] for v in admin.versions(store, "main")}
    assert statuses == {1: "retired", 2: "retired", 3: "published"}
    actions = [(a.action, a.version, a.author) for a in store.audit("main")]
    assert ("rollback", 3, "carl") in actions and ("publish", 1, "ann") in actions


def test_publish_on_save_and_shadow_controls(store):
    got = put(store, BLOCK_P0, publish=True)
    assert got["status"] == "published" and got["shadow_version"] is None
    got = put(store, PIN_H1, shadow=False)
    assert got["shadow_version"] is None
    got = admin.set_shadow(store, "main", None, 0.25, "ann")
    assert got["shadow_version"] == 2
    assert admin.list_rulesets(store, 0.05)[0]["shadow_share"] == 0.25
    with pytest.raises(admin.Conflict):
        admin.set_shadow(store, "main", 1, None, "ann")  # the live version
    got = admin.set_shadow(store, "main", None, None, "ann", stop=True)
    assert got["shadow_version"] is None


def test_invalid_documents_and_unknown_versions(store):
    with pytest.raises(RuleSetInvalid) as exc:
        put(store, {"rules": [{"id": "x", "action": {"type": "cap", "by": "brand", "max": 0}}]})
    assert exc.value.errors == [{"path": "rules[0].action.max", "reason": "Input should be greater than or equal to 1"}]
    with pytest.raises(RuleSetInvalid):
        put(store, {"id": "other", "rules": []})  # the body names another rule set
    assert store.states() == []  # nothing saved
    with pytest.raises(NotFound):
        admin.get_ruleset(store, "main")
    put(store, BLOCK_P0)
    with pytest.raises(NotFound, match="no version 7"):
        admin.publish(store, "main", 7, "ann", "")
    with pytest.raises(NotFound):
        admin.rollback(store, "main", 9, "ann", "")


def test_generation_changes_on_writes_from_any_connection(store, tmp_path):
    g0 = store.generation()
    assert store.generation() == g0
    put(store, BLOCK_P0)
    g1 = store.generation()
    assert g1 != g0
    other = SQLiteRuleStore(tmp_path / "r.db")  # another process
    admin.publish(other, "main", 1, "ann", "")
    assert store.generation() != g1
    other.close()


def test_store_rules_snapshot_reloads_on_change(store):
    src = StoreRules(store, default_share=0.05)
    assert src.snapshot().live == ()
    put(store, BLOCK_P0, publish=True)
    snap = src.snapshot()
    assert [(rid, v) for rid, v, _ in snap.live] == [("main", 1)] and snap.label == "main@1"
    assert src.snapshot() is snap  # unchanged: cached
    put(store, PIN_H1)
    snap = src.snapshot()
    assert [(rid, v, share) for rid, v, _, share in snap.shadows] == [("main", 2, 0.05)]


def test_versions_are_numbered_without_gaps_under_concurrency(store):
    def writer(n):
        for _ in range(5):
            put(store, BLOCK_P0, author=f"w{n}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v["version"] for v in admin.versions(store, "main")] == list(range(1, 21))


def test_shadow_sampling_is_deterministic_and_close_to_the_share():
    keys = [f"u{i}" for i in range(20_000)]
    picked = [k for k in keys if in_sample(k, "main", 0.05)]
    assert 0.04 < len(picked) / len(keys) < 0.06
    assert picked == [k for k in keys if in_sample(k, "main", 0.05)]
    assert set(picked) != {k for k in keys if in_sample(k, "other", 0.05)}  # salted per rule set
    assert not in_sample("", "main", 1.0) and in_sample("x", "main", 1.0) and not in_sample("x", "main", 0.0)


def test_exposure_log_summary_and_zero_impressions(tmp_path):
    log = SQLiteExposureLog(tmp_path / "x.db")
    now = 1_800_000_000.0
    log.record([Exposure("r1", now - 100 * 3600, "u1", "homepage", ["p0", "c0"], [1.0, 0.5]),
                Exposure("r2", now - 3600, "u2", "pdp_fbt", ["c1", "p0"], [0.9, 0.4])])
    log.flush()
    assert log.request("r2") == [(0, "c1"), (1, "p0")]
    assert log.last_shown(now - 72 * 3600) == {"c1": now - 3600, "p0": now - 3600}
    catalog = tiny_catalog()
    catalog[-1] = catalog[-1].model_copy(update={"stock": 0})  # h1 out of stock
    rep = zero_impressions(catalog, log, 72, now=now)
    assert rep["zero_impression_items"] == 7 and "c0" in [i["item_id"] for i in rep["items"]]  # c0: 100 h ago
    assert "h1" not in [i["item_id"] for i in rep["items"]] and rep["servable_items"] == 9
    assert "warning" not in rep and rep["log_started_at"] == now - 100 * 3600  # the log covers the window
    assert "covers less" in zero_impressions(catalog, log, 200, now=now)["warning"]
    rep = zero_impressions(catalog, log, 200, now=now, servable_only=False)
    assert rep["zero_impression_items"] == 7  # 10 items - p0, c0, c1
    log.close()


def test_shadow_report_figures():
    recs = [ShadowRecord(0, "r", "u", "homepage", "main", 1, 2,
                         live=[["p0", 1.0, 500.0, 0.1], ["c0", 0.5, 20.0, 0.7]],
                         shadow=[["c0", 0.5, 20.0, 0.7], ["h1", 0.2, 30.0, None]], pinned=["h1"], blocked=["p0"])]
    rep = shadow_report(recs, catalog_size=10, ruleset_id="main", version=2, blocked_by_draft=["p0"])
    assert rep["rank_changes"]["requests_changed"] == 1 and rep["rank_changes"]["mean_overlap"] == 0.5
    assert rep["rank_changes"]["mean_abs_rank_shift"] == 1.0
    live_rev = 1.0 * 500 + 0.5 * 20 / 1.584962500721156
    assert rep["expected"]["revenue_live"] == pytest.approx(live_rev, abs=0.01)
    assert rep["expected"]["margin_live"] == pytest.approx(50 + 0.5 * 20 * 0.7 / 1.584962500721156, abs=0.01)
    assert rep["expected"]["revenue_change"] < 0 and rep["would_pin"] == [{"item_id": "h1", "requests": 1}]
    assert rep["would_block"] == [{"item_id": "p0", "requests": 1}]
    assert rep["coverage"] == {"live_items": 2, "shadow_items": 2, "live_share": 0.2, "shadow_share": 0.2}
    assert "proxy" in rep["note"]


def test_cli_put_publish_versions_rollback_and_errors(tmp_path, monkeypatch, settings):
    from shelfwise.cli import app

    runner = CliRunner()
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(BLOCK_P0))
    bad.write_text(json.dumps({"rules": [{"id": "x", "action": {"type": "pin", "items": ["p1"], "slot": "first"}}]}))
    r = runner.invoke(app, ["rules", "put", "main", str(good), "--author", "ann", "-m", "block p0"])
    assert r.exit_code == 0, r.output
    assert "main v1: draft (shadow)" in r.output
    r = runner.invoke(app, ["rules", "put", "main", str(bad)])
    assert r.exit_code == 2 and "rules[0].action.slot" in r.output
    r = runner.invoke(app, ["rules", "validate", str(bad)])
    assert r.exit_code == 2 and "valid integer" in r.output
    assert runner.invoke(app, ["rules", "publish", "main"]).exit_code == 0
    r = runner.invoke(app, ["rules", "put", "main", str(good), "--publish", "-m", "again"])
    assert "main v2: published" in r.output
    r = runner.invoke(app, ["rules", "rollback", "main", "--version", "1"])
    assert r.exit_code == 0 and "main v3 (copy of v1): published" in r.output
    r = runner.invoke(app, ["rules", "versions", "main"])
    assert "rollback to v1" in r.output and "ann" in r.output
    r = runner.invoke(app, ["rules", "show", "main", "--version", "1"])
    assert json.loads(r.output)["document"]["rules"] == BLOCK_P0["rules"]
    assert runner.invoke(app, ["rules", "show", "nope"]).exit_code == 2
    r = runner.invoke(app, ["reports", "zero-impressions", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["catalog_items"] == 0


def test_cli_warns_of_pins_that_cannot_apply(tmp_path, settings):
    from shelfwise.cli import app
    from shelfwise.domain import Item
    from shelfwise.stores import open_catalog, open_event_store

    open_catalog(open_event_store(settings.events_dsn)).upsert([
        Item(id="p1", title="Phone", price=500, stock=0), Item(id="p2", title="Phone", available=False),
        Item(id="p3", title="Phone", price=500)])
    doc = tmp_path / "pins.json"
    doc.write_text(json.dumps({"rules": [{"id": "hero", "action": {"type": "pin", "items": ["p1", "p2", "p3"]}}]}))
    runner = CliRunner()
    for args in (["rules", "validate", str(doc)], ["rules", "put", "main", str(doc)], ["rules", "publish", "main"],
                 ["rules", "rollback", "main", "--version", "1"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        text = " ".join(r.output.split())
        assert "'p1' cannot be pinned now: out of stock" in text and "'p2' cannot be pinned now: unavailable" in text
        assert "'p3'" not in text
