"""Two replicas (each its own registry and experiment store connections, one shared model directory) agree on a
staged rollout: the same rollout state, the same version for the same shopper, one advance per stage, and a
rollback seen by both. On SQLite (one host) and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from shelfwise.experiments.assignment import Assigner
from shelfwise.experiments.backends import open_experiment_store
from shelfwise.release import Releases
from shelfwise.settings import load_settings
from shelfwise.stores import open_model_registry
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import ModelVersion


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    from shelfwise.experiments.pg import drop_schema as drop_experiments
    from shelfwise.stores.postgres import drop_schema

    url = request.getfixturevalue("pg_database")
    drop_schema(url)
    drop_experiments(url)
    yield url
    drop_schema(url)
    drop_experiments(url)


def test_two_replicas_agree_on_a_rollout(dsn: str, tmp_path: Path):
    settings = load_settings(data_dir=tmp_path / "data", stores={"events": dsn, "registry": dsn},
                             registry={"stage_minutes": 0})
    models = DirectoryModelStore(settings.models_dir)
    opened = []

    def replica() -> Releases:
        reg, xs = open_model_registry(dsn), open_experiment_store(dsn)
        opened.extend([reg, xs])
        return Releases(settings, models, reg, xs, None)

    a, b = replica(), replica()
    good = {"requests": 500, "NDCG@12": 0.10, "coverage@12": 0.3}
    for v in ("v1", "v2"):
        models.path(v).mkdir(parents=True)
        a.registry.register(ModelVersion(v, 1.0, metrics=good))
    a.release("v1", "test")  # the first version: live at once
    assert b.live() == "v1" and b.version("v1").status == "live"
    started = b.promote("v2", "ops")
    assert started["action"] == "rollout"
    r = a.running()
    assert r is not None and r.candidate == "v2" and r.share == 0.1

    def candidates(rel: Releases) -> set[str]:
        assigner = Assigner(rel.experiments.active())
        return {u for u in (f"u{i}" for i in range(4000))
                if any(x.variant == "candidate" for x in assigner.assign(u, "homepage"))}

    seen_a, seen_b = candidates(a), candidates(b)
    assert seen_a == seen_b and 0.08 < len(seen_a) / 4000 < 0.12  # same shoppers on both replicas, about 10 %

    # both replicas judged the same stage ready (what each one's check does) and advance it at once
    stage = a.running()
    results = []
    threads = [threading.Thread(target=lambda rel=rel: results.append(rel._advance(stage, "registry")))
               for rel in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.running().share == 0.5 and b.registry.rollout().revision == 2  # both asked: one advance, not two
    wider = candidates(b)
    assert seen_a <= wider and 0.45 < len(wider) / 4000 < 0.55  # sticky: nobody given the candidate loses it

    assert a.check()["action"] == "waiting"  # no exposure log here: the guardrail cannot judge, nothing advances
    b.rollback("ops", "test rollback")
    assert a.running() is None and a.registry.rollout().state == "rolled_back"
    assert a.version("v2").status == "rolled_back" and a.live() == "v1"
    assert candidates(a) == set()  # the stopped experiment serves live to everyone it had
    for x in opened:
        x.close()
