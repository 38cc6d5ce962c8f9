"""The experiment store contract, run against SQLite and PostgreSQL: lifecycle, layer exclusivity, atomic
rejection of bad writes (nothing half-written), replicas seeing each other's writes, the identity map."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from shelfwise.experiments.assignment import Assigner
from shelfwise.experiments.schema import ExperimentInvalid, parse_spec
from shelfwise.experiments.backends import open_experiment_store
from shelfwise.experiments.store import Conflict, ExperimentStore, NotFound


@pytest.fixture(params=["sqlite", "postgresql"])
def xp_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    from shelfwise.experiments.pg import drop_schema

    dsn = request.getfixturevalue("pg_database")
    drop_schema(dsn)
    yield dsn
    drop_schema(dsn)


@pytest.fixture
def open_store(xp_dsn: str) -> Iterator[Callable[[], ExperimentStore]]:
    opened: list[ExperimentStore] = []

    def factory() -> ExperimentStore:
        s = open_experiment_store(xp_dsn)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def spec(eid: str, layer: str = "default", rng=(0.0, 1.0), shares=(0.5, 0.5), **kw):
    doc = {"id": eid, "layer": layer, "layer_range": list(rng),
           "variants": [{"name": n, "share": s} for n, s in zip(("control", "treatment", "third"), shares)]}
    return parse_spec(doc | kw)


def snapshot(store: ExperimentStore) -> tuple:
    """Everything observable: what a rejected write must leave unchanged."""
    exps = store.list()
    return (store.generation(), [e.model_dump() for e in exps],
            [[a.__dict__ for a in store.history(e.id)] for e in exps])


def test_create_get_list_and_reopen(open_store):
    s = open_store()
    e = s.create(spec("a", traffic=0.1, owner="ann"), author="ann", comment="first")
    assert (e.status, e.traffic, e.revision, e.serve) == ("draft", 0.1, 1, None)
    again = open_store()  # a restart / another replica
    got = again.get("a")
    assert got == e and got.spec.owner == "ann"
    assert [x.id for x in again.list()] == ["a"] and again.list("running") == []
    assert [(h.action, h.author, h.comment) for h in again.history("a")] == [("create", "ann", "first")]
    with pytest.raises(NotFound, match="no experiment 'zz'"):
        again.get("zz")


def test_lifecycle_draft_running_stopped(open_store):
    s = open_store()
    s.create(spec("a", traffic=0.1), "ann")
    e = s.start("a", "ann")
    assert e.status == "running" and e.started_at is not None and e.revision == 2
    e = s.ramp("a", 0.5, "bob")
    e = s.ramp("a", 1.0, "bob", "full")
    assert e.traffic == 1.0
    e = s.stop("a", "carl", reason="done", serve="treatment")
    assert (e.status, e.serve, e.stop_reason) == ("stopped", "treatment", "done")
    e = s.set_serve("a", None, "carl", "released")
    assert e.serve is None
    assert [(h.action, h.detail) for h in s.history("a")] == [
        ("create", {"traffic": 0.1}), ("start", {"traffic": 0.1}), ("ramp", {"from": 0.1, "to": 0.5}),
        ("ramp", {"from": 0.5, "to": 1.0}), ("stop", {"serve": "treatment", "was": "running"}),
        ("serve", {"from": "treatment", "to": None})]


def test_active_lists_running_and_serving_only(open_store):
    s = open_store()
    for eid, layer in (("draft", "l1"), ("run", "l2"), ("serving", "l3"), ("done", "l4")):
        s.create(spec(eid, layer=layer), "a")
    s.start("run", "a")
    s.start("serving", "a")
    s.stop("serving", "a", "guardrail", serve="control")
    s.stop("done", "a")
    assert sorted(e.id for e in s.active()) == ["run", "serving"]


@pytest.mark.parametrize("bad", ["overlap", "id-taken", "start-twice", "ramp-stopped", "ramp-down", "stop-twice",
                                 "edit-running", "serve-unknown", "serve-running", "ramp-out-of-range"])
def test_bad_writes_are_rejected_naming_the_problem_and_change_nothing(open_store, bad):
    s = open_store()
    s.create(spec("a", layer="ranking", rng=(0.0, 0.6), traffic=0.2), "ann")
    s.create(spec("b", layer="ranking", rng=(0.6, 1.0)), "ann")
    s.start("b", "ann")
    s.create(spec("c", layer="other"), "ann")
    s.stop("c", "ann", "cancelled")
    before = snapshot(s)
    cases = {
        "overlap": (Conflict, r"'d' overlaps draft experiment 'a' in layer 'ranking': \[0.5, 0.7\) intersects "
                              r"\[0, 0.6\)", lambda: s.create(spec("d", layer="ranking", rng=(0.5, 0.7)), "x")),
        "id-taken": (Conflict, "'a' already exists", lambda: s.create(spec("a", layer="free"), "x")),
        "start-twice": (Conflict, "'b' is running; only a draft can be started", lambda: s.start("b", "x")),
        "ramp-stopped": (Conflict, "'c' is stopped; a stopped experiment cannot be ramped",
                         lambda: s.ramp("c", 0.5, "x")),
        "ramp-down": (Conflict, "a ramp only grows", lambda: s.ramp("a", 0.1, "x")),
        "stop-twice": (Conflict, "'c' is already stopped", lambda: s.stop("c", "x")),
        "edit-running": (Conflict, "'b' is running: only a draft can be edited",
                         lambda: s.update(spec("b", layer="ranking", rng=(0.6, 1.0), shares=(0.2, 0.8)), "x")),
        "serve-unknown": (ExperimentInvalid, "'nope' is not a variant of experiment 'b'",
                          lambda: s.stop("b", "x", serve="nope")),
        "serve-running": (Conflict, "'b' is running; serve applies to stopped", lambda: s.set_serve("b", None, "x")),
        "ramp-out-of-range": (ExperimentInvalid, r"a ramp is a share in \(0, 1\]", lambda: s.ramp("a", 1.5, "x")),
    }
    exc, message, call = cases[bad]
    with pytest.raises(exc, match=message):
        call()
    assert snapshot(s) == before
    assert snapshot(open_store()) == before  # and nothing reached the database


def test_layers_slices_and_stopped_experiments_free_their_slice(open_store):
    s = open_store()
    s.create(spec("a", layer="ranking", rng=(0.0, 0.5)), "x")
    s.create(spec("b", layer="ranking", rng=(0.5, 1.0)), "x")  # adjacent: [0, .5) and [.5, 1) do not overlap
    s.create(spec("c", layer="merch"), "x")  # another layer: independent
    with pytest.raises(Conflict, match="overlaps draft experiment 'b'"):
        s.create(spec("d", layer="ranking", rng=(0.9, 1.0)), "x")
    s.stop("b", "x", "cancelled")
    assert s.create(spec("d", layer="ranking", rng=(0.9, 1.0)), "x").status == "draft"


def test_update_a_draft(open_store):
    s = open_store()
    s.create(spec("a", rng=(0.0, 0.5)), "x")
    s.create(spec("b", rng=(0.5, 1.0)), "x")
    with pytest.raises(Conflict, match="'a' overlaps draft experiment 'b'"):
        s.update(spec("a", rng=(0.0, 0.7)), "x")
    e = s.update(spec("a", rng=(0.0, 0.5), shares=(0.3, 0.7), traffic=0.05), "x", "rebalanced")
    assert [v.share for v in e.spec.variants] == [0.3, 0.7] and e.traffic == 0.05 and e.revision == 2
    assert open_store().get("a") == e


def test_replicas_see_writes_through_generation(open_store):
    a, b = open_store(), open_store()
    g0 = b.generation()
    a.create(spec("x"), "ann")
    g1 = b.generation()
    assert g1 != g0
    a.start("x", "ann")
    assert b.generation() != g1 and b.get("x").status == "running"
    assert b.generation() == b.generation()  # stable while nothing changes
    # both replicas assign every shopper identically
    units = [f"u{i}" for i in range(2000)]
    assert [Assigner(a.active()).assign(u) for u in units] == [Assigner(b.active()).assign(u) for u in units]


def test_concurrent_overlapping_creates_one_wins(open_store):
    stores = [open_store() for _ in range(4)]
    results: list[str] = []
    barrier = threading.Barrier(len(stores))

    def go(i: int) -> None:
        barrier.wait()
        try:
            stores[i].create(spec(f"e{i}", layer="hot", rng=(0.0, 0.5 + i / 10)), "x")
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 3 + ["ok"]
    assert len(open_store().list()) == 1


def test_identity_map_first_link_wins(open_store):
    s = open_store()
    assert s.link_identity("u1", "session:s1") == "session:s1"
    assert s.link_identity("u1", "session:s2") == "session:s1"  # later sessions do not move the shopper
    assert s.link_identity("u2", "u2") == "u2"
    assert s.identities(["u1", "u2", "u3"]) == {"u1": "session:s1", "u2": "u2"}
    other = open_store()
    got: list[str] = []
    barrier = threading.Barrier(4)

    def link(i: int) -> None:
        barrier.wait()
        got.append((s if i % 2 else other).link_identity("u9", f"session:r{i}"))

    threads = [threading.Thread(target=link, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and got[0].startswith("session:r")


def test_forget_identity(open_store):
    s = open_store()
    s.link_identity("u1", "session:s1")
    s.link_identity("u2", "u2")
    assert s.forget_identity("u1") == 1 and s.identities(["u1", "u2"]) == {"u2": "u2"}
    s.link_identity("u3", "session:s3")
    assert s.forget_identity("session:s3") == 1  # erasing the anonymous shopper unlinks the user too
    assert s.identities(["u3"]) == {} and s.forget_identity("nobody") == 0
