"""ModelRegistry contract: the same behaviour on the embedded SQLite file and on PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from conftest import reopener
from shelfwise.stores.protocols import ModelRegistry, ModelVersion, Rollout


@pytest.fixture(params=["sqlite", "postgresql"])
def open_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    from shelfwise.stores import open_model_registry

    yield from reopener(request, tmp_path, open_model_registry)


def test_register_get_list_update(open_registry):
    reg = open_registry()
    assert isinstance(reg, ModelRegistry)
    assert reg.get("v1") is None and reg.list() == [] and reg.rollout() is None
    a = reg.register(ModelVersion("v1", 100.0, metrics={"NDCG@12": 0.1, "coverage@12": 0.3},
                                  window={"events": 10}, settings={"als": {"factors": 8}}))
    assert a.status == "registered" and a.metrics["NDCG@12"] == 0.1 and a.settings == {"als": {"factors": 8}}
    reg.register(ModelVersion("v2", 200.0))
    with pytest.raises(ValueError, match="already registered"):
        reg.register(ModelVersion("v1", 300.0))
    assert [v.version for v in reg.list()] == ["v2", "v1"]  # newest first
    assert [v.version for v in reg.list(limit=1)] == ["v2"]
    got = reg.update("v1", status="rejected", note="coverage@12 0.01 < 0.02", gates={"passed": False})
    assert (got.status, got.note, got.gates) == ("rejected", "coverage@12 0.01 < 0.02", {"passed": False})
    assert got.metrics == a.metrics  # the rest of the document is kept
    with pytest.raises(KeyError):
        reg.update("nope", status="live")
    with pytest.raises(ValueError, match="unknown status"):
        reg.update("v1", status="bogus")
    other = open_registry()  # another process / replica sees the same
    assert other.get("v1").status == "rejected"


def test_rollout_is_compare_and_set(open_registry):
    reg, other = open_registry(), open_registry()
    r = Rollout("v2", "v1", "rollout-v2", 0.1, started_at=1.0, stage_started_at=1.0)
    first = reg.save_rollout(r, 0)
    assert first is not None and first.revision == 1
    assert other.save_rollout(r, 0) is None  # a rollout is stored already
    assert other.rollout() == first
    ahead = other.save_rollout(replace(first, share=0.5), first.revision)
    assert ahead is not None and ahead.revision == 2
    assert reg.save_rollout(replace(first, state="rolled_back"), first.revision) is None  # stale: refused
    assert reg.rollout().share == 0.5 and reg.rollout().state == "running"


def test_concurrent_advances_only_one_wins(open_registry):
    reg = open_registry()
    r = reg.save_rollout(Rollout("v2", "v1", "rollout-v2", 0.1), 0)
    wins: list[bool] = []
    replicas = [open_registry() for _ in range(4)]

    def advance(x) -> None:
        wins.append(x.save_rollout(replace(r, share=0.5), r.revision) is not None)

    threads = [threading.Thread(target=advance, args=(x,)) for x in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]
    assert reg.rollout().revision == 2


def test_audit_trail(open_registry):
    reg = open_registry()
    reg.audit("register", "v1", "training")
    reg.audit("promote", "v1", "admin", "gates passed")
    got = reg.history()
    assert [(e.action, e.version, e.author) for e in got] == [("promote", "v1", "admin"), ("register", "v1", "training")]
    assert got[0].detail == "gates passed" and got[0].ts >= got[1].ts
