"""The rule store and the exposure / shadow log contract, run against SQLite and PostgreSQL: versions, publish,
shadow, errors, the generation replicas reload by, concurrent writers, and a log that every replica writes to and
reads from (exposures, shadow records, impression counts, erasure)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from shelfwise.rules import admin
from shelfwise.rules.log import Exposure, ExposureLog, ShadowRecord
from shelfwise.rules.stage import StoreRules
from shelfwise.rules.store import NotFound, RuleStore
from shelfwise.settings import load_settings

PLACEMENTS = ["homepage", "pdp_similar", "pdp_fbt", "cart_upsell"]
BLOCK_P0 = {"rules": [{"id": "b", "action": {"type": "block"}, "match": {"ids": ["p0"]}}]}
PIN_H1 = {"rules": [{"id": "p", "action": {"type": "pin", "items": ["h1"], "slot": 1}}]}


@pytest.fixture(params=["sqlite", "postgresql"])
def rules_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Settings whose rule store and exposure log live on the backend under test (``rules.dsn``)."""
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        from shelfwise.rules.pg import drop_schema

        dsn = request.getfixturevalue("pg_database")
        drop_schema(dsn)
        dsn += "?refresh_s=0.2"
    yield load_settings(data_dir=tmp_path / "data", rules={"dsn": dsn})
    if request.param == "postgresql":
        drop_schema(dsn)


@pytest.fixture
def open_store(rules_settings) -> Iterator[Callable[[], RuleStore]]:
    opened: list[RuleStore] = []

    def factory() -> RuleStore:
        s = admin.open_rule_store(rules_settings)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def open_log(rules_settings) -> Iterator[Callable[[], ExposureLog]]:
    opened: list[ExposureLog] = []

    def factory() -> ExposureLog:
        s = admin.open_exposure_log(rules_settings)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# ---- rule store ------------------------------------------------------------------------------------------------
def test_versions_publish_shadow_and_history(open_store):
    s = open_store()
    assert isinstance(s, RuleStore)
    v1 = s.save("main", BLOCK_P0, "ann", "block p0")
    v2 = s.save("main", PIN_H1, "bob", "pin h1")
    assert (v1.version, v2.version, v2.author, v2.comment) == (1, 2, "bob", "pin h1")
    assert s.version("main").version == 2 and s.version("main", 1).document == BLOCK_P0
    st = s.publish("main", 1, "ann", "go")
    assert (st.live_version, st.latest_version) == (1, 2)
    st = s.set_shadow("main", 2, 0.25, "ann", "try")
    assert (st.shadow_version, st.shadow_share) == (2, 0.25)
    got = admin.rollback(s, "main", 1, "carl", "undo")
    assert got["version"] == 3 and got["based_on"] == 1 and got["status"] == "published"
    assert s.states()[0].shadow_version is None  # publishing v3 ended the shadow of v2
    assert [(a.action, a.version) for a in s.audit("main")] == [
        ("save", 1), ("save", 2), ("publish", 1), ("shadow", 2), ("save", 3), ("rollback", 3)]
    assert [v.version for v in s.versions("main")] == [1, 2, 3]
    assert s.versions("main")[0].published_at is not None and s.versions("main")[1].published_at is None


def test_errors_name_what_is_missing_and_change_nothing(open_store):
    s = open_store()
    s.save("main", BLOCK_P0, "ann", "")
    gen = s.generation()
    with pytest.raises(NotFound, match="no rule set 'nope'"):
        s.publish("nope", 1, "ann", "")
    with pytest.raises(NotFound, match="has no version 9"):
        s.publish("main", 9, "ann", "")
    with pytest.raises(NotFound, match="no rule set 'nope'"):
        s.set_shadow("nope", None, None, "ann")
    with pytest.raises(NotFound):
        s.version("main", 9)
    with pytest.raises(NotFound):
        s.versions("nope")
    assert s.generation() == gen and s.states()[0].live_version is None
    assert [a.action for a in s.audit("main")] == ["save"]


def test_a_replica_sees_another_replicas_writes(open_store):
    a, b = open_store(), open_store()
    rules_b = StoreRules(b)
    assert rules_b.snapshot().live == ()
    admin.put_ruleset(a, "main", BLOCK_P0, "ann", "", PLACEMENTS)
    admin.publish(a, "main", 1, "ann", "live")
    # replica b reloads once its generation check sees the write (at most its refresh interval later)
    until(lambda: [(rid, v) for rid, v, _ in rules_b.snapshot().live] == [("main", 1)])
    assert b.state("main").live_version == 1 and b.version("main", 1).document["rules"] == BLOCK_P0["rules"]
    g = b.generation()
    admin.put_ruleset(a, "main", PIN_H1, "ann", "", PLACEMENTS)
    until(lambda: b.generation() != g)


def test_concurrent_writers_get_consecutive_versions(open_store):
    stores = [open_store() for _ in range(3)]
    errors: list[BaseException] = []

    def save(s: RuleStore, n: int) -> None:
        try:
            for i in range(n):
                s.save("main", {"rules": [], "n": i}, f"w{id(s)}", "")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(s, 8)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [v.version for v in stores[0].versions("main")] == list(range(1, 25))
    assert stores[1].state("main").latest_version == 24


# ---- exposure and shadow log -------------------------------------------------------------------------------------
def exposure(rid: str, shopper: str | None, items: list[str], ts: float) -> Exposure:
    return Exposure(request_id=rid, ts=ts, shopper=shopper, placement="homepage", items=items,
                    scores=[1.0 - 0.1 * i for i in range(len(items))], model_version="m1", rules="main@1",
                    propensities=[1.0] + [0.5] * (len(items) - 1))


def test_exposures_are_logged_and_read_by_every_replica(open_log):
    a, b = open_log(), open_log()
    now = time.time()
    assert a.started_at() is None
    a.record([exposure("r1", "u1", ["p1", "p2"], now - 10), exposure("r2", "u2", ["p2", "p3"], now - 5)])
    b.record([exposure("r3", None, ["p2"], now - 1)])
    a.flush()
    b.flush()
    for log in (a, b):
        assert log.request("r1") == [(0, "p1"), (1, "p2")] and log.request("zz") == []
        assert log.started_at() == pytest.approx(now - 10)
        shown = log.last_shown(now - 6)
        assert set(shown) == {"p2", "p3"} and shown["p2"] == pytest.approx(now - 1)
    # impression counts of watched items add up what every replica showed
    b.counts.watch(["p2", "p9"])
    until(lambda: b.counts.get(["p2", "p9"]) == [3, 0])
    a.record([exposure("r4", "u1", ["p2"], now)])
    a.flush()
    b.counts.refresh_s = 0.0  # re-read every watched total at the next wake-up
    b.counts.watch(["p3"])
    until(lambda: b.counts.get(["p2", "p3"]) == [4, 1])


def test_the_ranker_reads_the_logged_impressions(open_log, rules_settings):
    from shelfwise.ranking.exposures import read_exposures

    where = admin.rules_dsn(rules_settings)
    where = where if where.startswith("postgres") else admin.rules_db_path(rules_settings)
    assert len(read_exposures(where, "homepage")) == 0  # no log yet
    lg = open_log()
    now = time.time()
    lg.record([exposure("r1", "u1", ["p1", "p2"], now - 10), exposure("r2", None, ["p3"], now)])
    lg.flush()
    got = read_exposures(where, "homepage", since=now - 5)
    assert list(got.item) == ["p3"] and list(got.shopper) == [""]
    got = read_exposures(where, "homepage")
    assert list(got.request_id) == ["r1", "r1", "r2"] and list(got.position) == [0, 1, 0]
    assert list(got.propensity) == [1.0, 0.5, 1.0]
    assert len(read_exposures(where, "pdp_fbt")) == 0


def test_shadow_records_round_trip_and_erasure_removes_a_shopper(open_log):
    a, b = open_log(), open_log()
    now = time.time()
    rec = ShadowRecord(ts=now, request_id="r1", shopper="u1", placement="homepage", ruleset_id="main",
                       live_version=1, shadow_version=2, live=[["p1", 1.0, 10.0, 2.0]],
                       shadow=[["h1", 0.0, 5.0, 1.0]], pinned=["h1"], blocked=["p1"])
    a.record_shadow([rec, ShadowRecord(ts=now, request_id="r2", shopper="u2", placement="homepage",
                                       ruleset_id="main", live_version=1, shadow_version=3, live=[], shadow=[])])
    a.record([exposure("r1", "u1", ["p1"], now), exposure("r2", "u2", ["p1"], now)])
    a.flush()
    got = b.shadow_records("main", 2)
    assert got == [rec]
    assert len(b.shadow_records("main")) == 2 and b.shadow_records("main", since=now + 1) == []
    assert b.shadow_records("other") == []
    assert b.erase("u1") == (1, 1)
    assert b.erase("u1") == (0, 0)
    assert a.request("r1") == [] and a.request("r2") == [(0, "p1")]
    assert [r.shopper for r in a.shadow_records("main")] == ["u2"]


def test_a_log_of_one_row_per_slot_becomes_one_row_per_answer(open_log, rules_settings):
    """Logs written before one row per answer (a row per shown slot) are migrated when the log is opened: the same
    slots in the same order, propensities only where a slot explored, the same erasure."""
    from shelfwise.ranking.exposures import read_exposures

    where = admin.rules_dsn(rules_settings)
    t = time.time() - 100  # within the log's retention
    slots = [("r1", t, "u1", "homepage", 1, "p2", 0.5, "m1", "main@1", 0.25),
             ("r1", t, "u1", "homepage", 0, "p1", 0.9, "m1", "main@1", None),
             ("r2", t + 1, None, "homepage", 0, "p3", 0.7, "m1", "main@1", None),
             ("r3", t + 2, "u2", "pdp_fbt", 0, "p4", 0.6, "m1", "", 1.0),
             ("a0", t + 3, "u2", "pdp_fbt", 0, "p5", 0.6, "m1", "", None)]
    old = ("CREATE TABLE exposures (request_id TEXT NOT NULL, ts REAL NOT NULL, shopper TEXT, placement TEXT NOT "
           "NULL, position INTEGER NOT NULL, item_id TEXT NOT NULL, score REAL, model_version TEXT, rules TEXT, "
           "propensity REAL)")
    if where.startswith("postgres"):
        import psycopg

        from shelfwise.rules.pg import MIGRATIONS, _MIGRATION_LOCK
        from shelfwise.stores.postgres import apply_migrations

        with psycopg.connect(where.split("?")[0], autocommit=True) as conn:
            apply_migrations(conn, MIGRATIONS[:2], "shelfwise_rules_migrations", _MIGRATION_LOCK, "rules schema")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO exposures VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", slots)
    else:
        import sqlite3

        where = str(admin.rules_db_path(rules_settings))
        Path(where).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(where) as db:
            db.execute(old)
            db.executemany("INSERT INTO exposures VALUES (?,?,?,?,?,?,?,?,?,?)", slots)
        db.close()
        before = read_exposures(where, "homepage")  # training reads an old log: migrated first, the same slots
        assert list(before.item) == ["p1", "p2", "p3"] and list(before.propensity) == [1.0, 0.25, 1.0]
    lg = open_log()
    assert lg.request("r1") == [(0, "p1"), (1, "p2")] and lg.request("r3") == [(0, "p4")]
    if not where.startswith("postgres"):  # answers stored in time order, as the writer stores them (row ids)
        with sqlite3.connect(where) as db:
            assert [r[0] for r in db.execute("SELECT request_id FROM exposures ORDER BY rowid")] == \
                ["r1", "r2", "r3", "a0"]
        db.close()
    got = read_exposures(where, "homepage")
    assert list(got.request_id) == ["r1", "r1", "r2"] and list(got.position) == [0, 1, 0]
    assert list(got.item) == ["p1", "p2", "p3"] and list(got.propensity) == [1.0, 0.25, 1.0]
    assert list(got.shopper) == ["u1", "u1", ""]
    lg.record([exposure("r9", "u1", ["p5", "p6"], t + 3)])  # new answers beside the migrated ones
    lg.flush()
    assert lg.erase("u1") == (2, 0) and lg.request("r1") == [] and lg.request("r2") == [(0, "p3")]
