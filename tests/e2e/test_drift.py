"""Drift monitoring on synthetic traffic (issue 16, item 4): a storefront's traffic is served day by day (every
request logged in the exposure log, as in production), a model is trained on the first ten days, and day ten is
played four ways — as generated, with two categories' popularity swapped, with prices up 30 %, and flooded with new
items. The unshifted day is not flagged against the model's training window; each shift is flagged on the checks
it moves and not on unrelated ones. The command line (exit codes, JSON, plot) and the API route run on the same
data."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shelfwise.domain import Event, EventType, Item
from shelfwise.monitor.drift import run_drift
from shelfwise.privacy.pseudonym import shopper_key
from shelfwise.request import RecRequest
from shelfwise.service import Shelfwise
from shelfwise.settings import Settings, load_settings
from shelfwise.stores.protocols import Interaction, ShopperState
from shelfwise.synthetic import LEAVES, generate_storefront
from shelfwise.training import train
from tests.conftest import api_client, make_key

DAYS = 11  # days 0-9 before training; day 10 is the current window
DAY = 86400.0
START = datetime(2026, 9, 1, tzinfo=timezone.utc)
UNTIL = START.timestamp() + DAYS * DAY  # the end of day 10
SWAP = ("Smartphones", "Smart Speakers")  # Phones ↔ Smart Home: a big root and a small one trade their views


def shop_settings(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir, models={
        "content": {"source": False}, "sequence": {"progress": False},
        "ranker": {"num_boost_round": 60, "max_requests": 2000}},
        # the synthetic catalog gains no items during its days (those made "new" before its start age out over
        # the reference window), so "new" is younger than 3 days: none in an unshifted window
        monitor={"sample_requests": 800, "scan_hours": 48, "new_item_days": 3},
        rules={"exposure_retention_days": 36500})  # the synthetic shop's days lie in the past


class Traffic:
    """Plays events into an engine in time order and serves a homepage and a product-page request before a share
    of the product views, each with the shopper's history as of that moment and logged at that time."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)
        self.history: dict[str, list[Interaction]] = {}

    def play(self, engine: Shelfwise, events: list[Event], serve_share: float = 0.12) -> None:
        """Serve the requests of ``events`` (already ingested) with the engine's model."""
        reqs = []
        for ev in events:
            who = shopper_key(ev.user_id, ev.session_id)
            ts = ev.timestamp.timestamp()
            h = self.history.setdefault(who, [])
            if ev.type == "product_viewed" and self.rng.random() < serve_share:
                bought = {x.item_id for x in h if x.kind == EventType.purchase_completed}
                reqs.append(RecRequest("homepage", shopper=who, now=ts - 1, state=ShopperState(h[-50:], bought)))
                reqs.append(RecRequest("pdp_similar", shopper=who, item_id=ev.item_id, k=8, now=ts - 1,
                                       state=ShopperState(h[-50:], bought)))
            for item in [line.item_id for line in ev.items] if ev.items else [ev.item_id]:
                h.append(Interaction(item, int(EventType[ev.type]), ts))
        for start in range(0, len(reqs), 256):
            engine.recommend_many(reqs[start:start + 256])
        engine.merch.log.flush()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Ten days of traffic served and a model trained on them; day 10's events and the traffic state."""
    root = tmp_path_factory.mktemp("drift")
    shop = generate_storefront(n_items=600, n_shoppers=1500, n_events=33_000, seed=3, days=DAYS, start=START)
    events = list(shop.events())
    cut = shop.start + timedelta(days=DAYS - 1)
    past, day = [e for e in events if e.timestamp < cut], [e for e in events if e.timestamp >= cut]
    settings = shop_settings(root / "base")
    engine = Shelfwise(settings)
    engine.upsert_items(shop.items)
    engine.ingest(past)
    train(engine.store, engine.catalog, engine.models, settings.models,
          sources=("trending", "covisit", "copurchase", "als"))
    engine.close()
    engine = Shelfwise(settings)  # the trained model serves the ten days' requests (logged at their times)
    traffic = Traffic()
    traffic.play(engine, past)
    engine.close()
    return root, shop, day, traffic


def scenario(base, name: str, day: list[Event] | None = None, items: list[Item] = (),
             retrain: bool = False) -> Settings:
    """A copy of the base data with day 10 played (as generated unless ``day`` says otherwise)."""
    root, shop, generated, traffic = base
    shutil.copytree(root / "base", root / name)
    settings = shop_settings(root / name)
    engine = Shelfwise(settings)
    if items:
        engine.upsert_items(items)
    engine.ingest(generated if day is None else day)
    if retrain:  # a quick model that knows the new items (trending and co-visitation) serves the day
        train(engine.store, engine.catalog, engine.models, settings.models.model_copy(update={
            "ranker": settings.models.ranker.model_copy(update={"enabled": False})}),
            sources=("trending", "covisit", "copurchase"))
        engine.close()
        engine = Shelfwise(settings)
    played = Traffic()
    played.history = {k: list(v) for k, v in traffic.history.items()}
    played.play(engine, generated if day is None else day)
    engine.close()
    return settings


def report(settings: Settings, reference: str = "training"):
    engine = Shelfwise(settings)
    try:  # the current window is day 10
        return run_drift(engine, reference=reference, reference_days=6, current_hours=24, until=UNTIL)
    finally:
        engine.close()


def verdicts(rep) -> dict[str, str]:
    return {c.feature: c.verdict for c in rep.checks}


def with_items(ev: Event, swap: dict[str, str] | None = None, price: float = 1.0) -> Event:
    if ev.items:
        lines = [line.model_copy(update={"item_id": (swap or {}).get(line.item_id, line.item_id),
                                         "price": round(line.price * price, 2) if line.price else line.price})
                 for line in ev.items]
        return ev.model_copy(update={"items": lines})
    if ev.item_id and swap:
        return ev.model_copy(update={"item_id": swap.get(ev.item_id, ev.item_id)})
    return ev


@pytest.fixture(scope="module")
def unshifted(base):
    return scenario(base, "unshifted")


def test_an_unshifted_day_is_not_flagged(unshifted):
    rep = report(unshifted)
    v = verdicts(rep)
    assert rep.status == "ok", [(c.feature, c.reasons) for c in rep.drifted]
    ranker = [f for f in v if f.startswith("ranker.")]
    assert sum(v[f] == "ok" for f in ranker) >= 15  # the ranker's most important features, rebuilt and compared
    for name in ("scores.homepage", "scores.pdp_similar", "items.new_share", "events.type", "events.category",
                 "events.price_index"):
        assert v[name] == "ok", name
    assert rep.reference.label.startswith("the 6 days before the model's newest training event")
    by = {c.feature: c for c in rep.checks}
    assert by["scores.homepage"].n_current >= 150 and by["events.type"].n_reference >= 300


def test_a_category_popularity_swap_is_flagged_on_the_category_mix(base):
    _, shop, day, _ = base
    leaf = {it.id: it.category[-1] for it in shop.items}
    a = [i for i, c in leaf.items() if c == SWAP[0]]
    b = [i for i, c in leaf.items() if c == SWAP[1]]
    rng = np.random.default_rng(1)
    swap = {i: b[rng.integers(len(b))] for i in a} | {i: a[rng.integers(len(a))] for i in b}
    rep = report(scenario(base, "swap", [with_items(e, swap) for e in day]))
    v = verdicts(rep)
    assert v["events.category"] == "drift"
    cat = next(c for c in rep.checks if c.feature == "events.category")
    assert cat.shares_current["Smart Home"] > 2 * cat.shares_reference["Smart Home"]
    assert v["events.type"] == "ok" and v["items.new_share"] == "ok" and v["events.price_index"] == "ok"


def test_prices_up_30_percent_are_flagged_on_the_price_index(base):
    _, shop, day, _ = base
    dearer = [it.model_copy(update={"price": round(it.price * 1.3, 2), "cost": it.cost}) for it in shop.items]
    rep = report(scenario(base, "prices", [with_items(e, price=1.3) for e in day], items=dearer))
    v = verdicts(rep)
    assert v["events.price_index"] == "drift"
    idx = next(c for c in rep.checks if c.feature == "events.price_index")
    assert idx.mean_current - idx.mean_reference == pytest.approx(np.log(1.3), abs=0.02)
    assert v["events.type"] == "ok" and v["events.category"] == "ok" and v["items.new_share"] == "ok"
    # the ranker's features are computed with today's catalog for both windows: a price change is not their drift
    assert all(verdict != "drift" for f, verdict in v.items() if f.startswith("ranker."))


def test_a_new_item_flood_is_flagged_on_the_new_item_share(base):
    _, shop, day, _ = base
    start = day[0].timestamp
    popular = sorted(shop.items, key=lambda it: -shop.popularity[it.id])[:150]
    clones = {it.id: it.model_copy(update={"id": f"new-{it.id}", "created_at": start}) for it in popular}
    rng = np.random.default_rng(2)
    new_ids = [c.id for c in clones.values()]
    flooded = [e.model_copy(update={"item_id": new_ids[rng.integers(len(new_ids))]})
               if e.type == "product_viewed" and rng.random() < 0.4 else e for e in day]
    rep = report(scenario(base, "flood", flooded, items=list(clones.values()), retrain=True), reference="previous")
    v = verdicts(rep)
    assert v["items.new_share"] == "drift"
    new = next(c for c in rep.checks if c.feature == "items.new_share")
    assert new.shares_reference["new"] == 0 and new.shares_current["new"] > 0.02
    assert v["events.type"] == "ok" and v["events.price_index"] == "ok"
    assert "the live model has no learned ranker: no ranker-feature checks" in rep.notes


# ---- command line ----------------------------------------------------------------------------------------------
def run_cli(settings: Settings, monkeypatch, *args: str):
    from shelfwise.cli import app

    monkeypatch.setenv("SHELFWISE_DATA_DIR", str(settings.data_dir))
    for key, value in (("MONITOR__SAMPLE_REQUESTS", "800"), ("MONITOR__SCAN_HOURS", "48"), ("MONITOR__NEW_ITEM_DAYS", "3"),
                       ("RULES__EXPOSURE_RETENTION_DAYS", "36500")):
        monkeypatch.setenv(f"SHELFWISE_{key}", value)
    monkeypatch.setenv("SHELFWISE_MODELS__CONTENT__SOURCE", "false")
    monkeypatch.delenv("COLUMNS", raising=False)  # the table is 160 wide off a terminal
    return CliRunner().invoke(app, ["monitor", *args])


def test_cli_exit_codes_json_and_plot(base, unshifted, monkeypatch, tmp_path):
    until = str(UNTIL)  # unix seconds here, ISO 8601 in the API test
    ok = run_cli(unshifted, monkeypatch, "--until", until, "--reference-days", "6", "--current", "24h", "--json")
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.stdout)
    assert body["status"] == "ok" and body["drifted"] == [] and body["checks"]
    swapped = base[0] / "swap"
    if not swapped.exists():
        pytest.skip("runs after the swap scenario")
    png = tmp_path / "drift.png"
    settings = shop_settings(swapped)
    bad = run_cli(settings, monkeypatch, "--until", until, "--reference-days", "6", "--current", "1d", "--reference", "training",
                  "--plot", str(png))
    assert bad.exit_code == 1, bad.output
    assert "DRIFT: events.category" in bad.output
    row = next(line for line in bad.output.splitlines() if "│ events.category" in line)
    assert "│ drift" in row and "│ chi2" in row and "Smart Home" in row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--current", "tomorrow"], "--current must be a positive number with a unit"),
    (["--until", "yesterday"], "--until must be an ISO 8601 date/time"),
    (["--reference", "last-week"], "reference must be 'training', 'previous' or START..END"),
    (["--every", "1h", "--until", "0"], "give one of them"),
    (["--metrics-port", "9999"], "use it with --every"),
])
def test_cli_errors_are_messages(unshifted, monkeypatch, args, message):
    res = run_cli(unshifted, monkeypatch, *args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_cli_without_a_model_says_so(tmp_path, monkeypatch):
    res = run_cli(shop_settings(tmp_path / "empty"), monkeypatch)
    assert res.exit_code == 2 and "no model is trained yet" in res.output


def test_cli_on_a_schedule_runs_again(unshifted, monkeypatch):
    res = run_cli(unshifted, monkeypatch, "--reference", "previous", "--every", "0.1s", "--runs", "2", "--json")
    assert res.exit_code == 0, res.output  # no traffic in the last day: nothing can be decided, nothing drifted
    reports = [json.loads(chunk) for chunk in res.stdout.replace("}\n{", "}\n\x00{").split("\x00")]
    assert len(reports) == 2 and all(r["status"] == "insufficient" for r in reports)


# ---- API -----------------------------------------------------------------------------------------------------
def test_api_report_needs_the_admin_scope_and_sets_the_gauges(unshifted):
    until = (START + timedelta(days=DAYS)).isoformat()
    with api_client(unshifted) as client:
        res = client.get("/v1/monitor/drift", params={"until": until, "reference_days": 6, "current_hours": 24})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["status"] == "ok" and {"ranker", "scores", "items", "events"} <= {c["group"] for c in
                                                                                     body["checks"]}
        metrics = client.get("/metrics").text
        assert 'shelfwise_drift_flag{feature="events.type"} 0.0' in metrics
        assert 'shelfwise_drift_statistic{feature="scores.homepage"}' in metrics
        bad = client.get("/v1/monitor/drift", params={"until": "soon"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "until"
        bad = client.get("/v1/monitor/drift", params={"reference": "2030-01-01..2029-01-01"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "reference"
        assert client.get("/v1/monitor/drift", headers={"Authorization": ""}).status_code == 401
    key = make_key(unshifted, ("read", "ingest"), name="reader")
    with api_client(unshifted) as client:
        res = client.get("/v1/monitor/drift", headers={"Authorization": f"Bearer {key}"})
        assert res.status_code == 403
