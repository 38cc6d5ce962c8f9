"""Model registry and release: held-out metrics at training time, gates that block a worse model and pass a normal
one, and a staged rollout that advances on a healthy CTR and rolls back by itself when the candidate's CTR drops."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from shelfwise.domain import Event
from shelfwise.release import GateBlocked, ReleaseConflict, UnknownVersion
from shelfwise.request import RecRequest
from shelfwise.settings import load_settings
from shelfwise.synthetic import generate_storefront
from shelfwise.evaluation.holdout import released
from shelfwise.training import train

SOURCES = ("trending", "covisit", "copurchase")


class Thinned:
    """An event store that trains on a random ``share`` of the events (a deliberately worse model)."""

    def __init__(self, store, share: float) -> None:
        self.store, self.share = store, share

    def scan(self):
        log = self.store.scan()
        return log.take(np.random.default_rng(0).random(len(log)) < self.share)

    def entry_contexts(self):
        return self.store.entry_contexts()

    def searches(self, since=None):
        return self.store.searches(since)


@pytest.fixture
def shop_engine(settings, tmp_path):
    from shelfwise.service import Shelfwise

    conf = load_settings(data_dir=tmp_path / "data", models=settings.models.model_dump(),
                         registry={"stage_minutes": 0, "min_units": 40, "check_interval_s": 0},
                         experiments={"guardrail_interval_s": 0, "reload_interval_s": 0},
                         api={"cache_ttl_s": 0})
    shop = generate_storefront(n_items=150, n_shoppers=500, n_events=12_000, seed=3)
    eng = Shelfwise(conf)
    eng.upsert_items(shop.items)
    eng.ingest(list(shop.events()))
    yield eng
    eng.close()


def _train(eng, store=None):
    got = {}

    release = released(eng.releases, into=got)
    train(store or eng.store, eng.catalog, eng.models, eng.settings.models, sources=SOURCES, release=release)
    eng.refresh_model(0)
    return got


def test_gates_block_a_worse_model_and_pass_a_normal_one(shop_engine):
    eng = shop_engine
    first = _train(eng)
    assert first["action"] == "promoted" and eng.releases.live() == first["version"]
    v1 = eng.registry.get(first["version"])
    assert v1.status == "live" and v1.metrics["requests"] >= 20
    for name in ("NDCG@12", "HR@12", "coverage@12", "long_tail@12"):
        assert 0 <= v1.metrics[name] <= 1
    assert v1.metrics["NDCG@12"] > 0 and v1.window["events"] > 10_000 and v1.settings["ranker"]["enabled"]
    assert "early-stopping" in v1.metrics["slice"]  # the ranker's held-out requests, not data taken from the model

    worse = _train(eng, Thinned(eng.store, 0.05))  # trained on 5 % of the events
    assert worse["action"] == "rejected", worse["gates"]
    rec = eng.registry.get(worse["version"])
    assert rec.status == "rejected" and rec.note.startswith("gates: ")
    assert eng.releases.live() == first["version"] and eng.pipeline.version == first["version"]  # not served
    assert eng.models.path(worse["version"]).is_dir()  # stored all the same
    failed = {c["gate"] for c in rec.gates["checks"] if not c["passed"]}
    assert failed & {"NDCG@12", "coverage@12", "held_out_requests"}
    with pytest.raises(GateBlocked, match="blocked by its gates"):
        eng.releases.promote(worse["version"], "ops")
    with pytest.raises(UnknownVersion):
        eng.releases.promote("v-nope", "ops")

    normal = _train(eng)  # the same data again: passes, and starts a staged rollout
    assert normal["gates"]["passed"], normal["gates"]
    assert normal["action"] == "rollout" and normal["rollout"]["share"] == 0.1
    assert eng.registry.get(normal["version"]).status == "rolling_out"
    assert eng.releases.live() == first["version"]  # the live model stays live during the rollout
    with pytest.raises(ReleaseConflict, match="already live"):
        eng.releases.promote(first["version"], "ops")


def _visit(eng, shoppers, click_p: dict[str, float], minute: float) -> dict[str, int]:
    """Each shopper asks for their homepage; their arm's share of them click the first slot (every arm's clicks
    spread evenly over its requests, so equal shares give equal CTRs whichever shoppers the hashing put where)."""
    served: dict[str, int] = {}
    seen: dict[str, int] = {}
    clicks = []
    reqs = [RecRequest("homepage", shopper=s, k=6) for s in shoppers]
    answers = [a for i in range(0, len(reqs), 250) for a in eng.recommend_many(reqs[i:i + 250])]
    for s, req, ans in zip(shoppers, reqs, answers):
        arm = next((x["variant"] for x in ans.experiments if x["experiment"].startswith("rollout-")), "outside")
        served[ans.model_version] = served.get(ans.model_version, 0) + 1
        if arm == "candidate":
            assert ans.model_version == eng.releases.running().candidate  # the answer names the candidate
        n = seen[arm] = seen.get(arm, 0) + 1
        p = click_p.get(arm, 0.0)
        if ans.items and int(n * p) > int((n - 1) * p):  # the n-th request of the arm clicks at rate p
            clicks.append(Event(event_id=f"click-{s}-{minute}", type="recommendation_clicked", user_id=s,
                                item_id=ans.items[0].item_id,
                                timestamp=datetime.now(timezone.utc) + timedelta(seconds=1),
                                context={"request_id": req.request_id, "placement": "homepage", "position": 0}))
    eng.ingest(clicks)
    return served


def test_staged_rollout_advances_then_rolls_back_when_ctr_drops(shop_engine):
    import time

    eng = shop_engine
    live = _train(eng)["version"]
    cand = _train(eng)
    assert cand["action"] == "rollout"
    version = cand["version"]
    shoppers = [f"shopper-{i}" for i in range(1000)]

    # stage 10 %: the same CTR in both arms -> the guardrail is ok -> the next stage (50 %)
    served = _visit(eng, shoppers, {"live": 0.3, "candidate": 0.3}, 1)
    assert 0.05 < served.get(version, 0) / len(shoppers) < 0.16  # about 10 % of shoppers get the candidate
    got = eng.releases.check(now=time.time() + 5)
    assert got["action"] == "advanced", got
    assert eng.releases.running().share == 0.5

    # sticky: a shopper keeps their arm; the candidate now serves about half of them
    served = _visit(eng, shoppers, {"live": 0.3, "candidate": 0.3}, 2)
    assert 0.4 < served.get(version, 0) / len(shoppers) < 0.6

    # the candidate's CTR drops far below the live model's: rolled back by itself
    for minute in range(3, 6):
        _visit(eng, shoppers, {"live": 0.5, "candidate": 0.05}, minute)
    got = eng.releases.check(now=time.time() + 5)
    assert got["action"] == "rolled_back", got
    r = eng.registry.rollout()
    assert r.state == "rolled_back" and "ctr" in r.reason
    assert eng.registry.get(version).status == "rolled_back"
    assert eng.releases.live() == live
    served = _visit(eng, shoppers[:300], {}, 9)
    assert set(served) == {live}  # every shopper is back on the live model
    assert [e.action for e in eng.registry.history()][:1] == ["rollback"]


def test_train_every_keeps_its_schedule_through_a_failed_run():
    from shelfwise.console import CLIError
    from shelfwise.release_cli import every, parse_every

    assert parse_every("6h") == 21600 and parse_every("30m") == 1800 and parse_every("90") == 90
    for bad in ("0h", "-1m", "six hours", "h"):
        with pytest.raises(CLIError, match="--every"):
            parse_every(bad)
    runs, sleeps = [], []

    def once():
        runs.append(len(runs))
        if len(runs) == 2:
            raise RuntimeError("the event store is down")

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        every(60.0, once, sleep=sleep)
    assert runs == [0, 1, 2] and all(55 < s <= 60 for s in sleeps)  # the failed run did not stop the schedule
