"""The experiment exposure & outcome log contract, run against memory://, SQLite and PostgreSQL: the same
attribution (by request id; by visit within the window to the latest exposure), the same unit table, pre-period
covariates, latency / error metrics and logged requests on every backend; idempotent writes; writes off the
request path."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from shelfwise.domain import Event
from shelfwise.experiments.backends import open_experiment_log
from shelfwise.experiments.log import ExperimentLog, ExposureRecord, OutcomeRecord

W = 3600.0
T = 1_800_000_000.0  # an arbitrary epoch second; every time below is relative to it


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def log_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
    else:
        from shelfwise.experiments.pg import drop_schema

        dsn = request.getfixturevalue("pg_database")
        drop_schema(dsn)
        yield dsn
        drop_schema(dsn)


@pytest.fixture
def open_log(log_dsn: str) -> Iterator[Callable[[], ExperimentLog]]:
    opened: list[ExperimentLog] = []

    def factory() -> ExperimentLog:
        lg = open_experiment_log(log_dsn)
        opened.append(lg)
        return lg

    yield factory
    for lg in opened:
        lg.close()


def x(rid, t, unit, visit, variants, items=("a", "b"), latency=None, error=False, shopper=None, teams=None,
      props=None, placement="homepage"):
    return ExposureRecord(request_id=rid, ts=T + t, placement=placement, unit=unit,
                          shopper=shopper if shopper is not None else unit, visit=visit, items=list(items),
                          assignments=[(e, v, 0.5) for e, v in variants], latency_ms=latency, error=error,
                          teams=teams, propensities=props)


def o(eid, kind, t, visit, shopper, request=None, item=None, revenue=0.0):
    return OutcomeRecord(event_id=eid, type=kind, ts=T + t, shopper=shopper, visit=visit, request_id=request,
                         item_id=item, revenue=revenue, quantity=1 if kind != "click" else 0)


EXPOSURES = [
    x("r1", 100, "u1", "s1", [("e1", "control"), ("e2", "b")], items=("a", "b", "c"), latency=10),
    x("r2", 200, "u1", "s1", [("e1", "control")], items=("d", "e"), latency=20),
    x("r3", 1000, "u2", "s2", [("e1", "treatment")], latency=30),
    x("r4", 5000, "u2", "s3", [("e1", "treatment")], latency=40),
    x("r5a", 2000, "u3", "s4", [("e1", "control")], latency=50),
    x("r5b", 2100, "u3", "s4", [("e1", "treatment")], latency=60),
    x("r7", 400, "u1", "s1", [("e1", "control")], items=(), error=True),
    x("r8", 3000, "session:s5", "s5", [("e1", "control")], items=("z",), latency=80),
    x("r1", 100, "u1", "s1", [("e1", "control")], items=("a",), latency=999),  # duplicate request id: ignored
    x("r9", 150, None, None, [("e1", "control")]),  # no unit (no user, no session): request kept, no exposure
]
OUTCOMES = [
    o("c1", "click", 110, "s1", "u1", request="r1", item="a"),
    o("c2", "click", 200 + W + 1, "s1", "u1", request="r2", item="d"),  # after the window
    o("c3", "click", 210, "s1", "u1", item="e"),  # no request id: by visit → r2
    o("k1", "cart", 150, "s1", "u1", item="b"),
    o("p0", "purchase", 90, "s1", "u1", revenue=99.0),  # before any exposure of its visit
    o("p1", "purchase", 300, "s1", "u1", revenue=50.0),
    o("p1", "purchase", 300, "s1", "u1", revenue=50.0),  # redelivered event: ignored
    o("p2", "purchase", 1000, "s2", "u2", revenue=30.0),  # same second as the exposure: counts
    o("k2", "cart", 1001, "s2", "u2"),
    o("p3", "purchase", 1000 + W + 5, "s2", "u2", revenue=70.0),  # outside the window of r3
    o("k9", "cart", 1500, "s9", "u2"),  # a visit without exposure
    o("k3", "cart", 5001, "s3", "u2"),
    o("k4", "cart", 5002, "s3", "u2"),
    o("p5", "purchase", 3100, "s5", "session:s5", revenue=10.0),
    o("pre1", "purchase", -1000, "s0", "u1", revenue=20.0),  # pre-period of u1
    o("pre2", "click", -900, "s0", "u1", request="old", item="q"),
    o("pre3", "cart", -8000, "s0", "u1"),  # before the pre-period window
]


def filled(open_log) -> ExperimentLog:
    lg = open_log()
    lg.record(EXPOSURES[:5])
    lg.record_outcomes(OUTCOMES[:8])
    lg.record(EXPOSURES[5:])
    lg.record_outcomes(OUTCOMES[8:])
    lg.flush()
    return lg


def rows(table) -> dict[str, dict[str, float]]:
    cols = ("first_ts", "rails", "impressions", "visits", "errors", "clicks", "carts", "cart_visits", "orders",
            "revenue", "pre_clicks", "pre_carts", "pre_orders", "pre_revenue")
    return {u: {"variant": v} | {c: round(float(getattr(table, c)[i]), 6) for c in cols}
            for i, (u, v) in enumerate(zip(table.unit, table.variant))}


def unit(variant, first, rails, imps, visits, errors=0, clicks=0, carts=0, cart_visits=0, orders=0, revenue=0.0,
         pre=(0, 0, 0, 0.0)):
    return {"variant": variant, "first_ts": T + first, "rails": rails, "impressions": imps, "visits": visits,
            "errors": errors, "clicks": clicks, "carts": carts, "cart_visits": cart_visits, "orders": orders,
            "revenue": revenue, "pre_clicks": pre[0], "pre_carts": pre[1], "pre_orders": pre[2],
            "pre_revenue": pre[3]}


def test_unit_table_attribution(open_log):
    lg = filled(open_log)
    t = lg.unit_table("e1", W, pre_since=T - 5000, pre_until=T)
    assert t.mixed_units == 1  # u3 was served both variants
    assert rows(t) == {
        "session:s5": unit("control", 3000, 1, 1, 1, orders=1, revenue=10.0),
        "u1": unit("control", 100, 3, 5, 1, errors=1, clicks=2, carts=1, cart_visits=1, orders=1, revenue=50.0,
                   pre=(1, 0, 1, 20.0)),
        "u2": unit("treatment", 1000, 2, 4, 2, carts=3, cart_visits=2, orders=1, revenue=30.0),
    }
    # the other experiment of request r1 sees only its own exposure
    assert rows(lg.unit_table("e2", W)) == {"u1": unit("b", 100, 1, 3, 1, clicks=2, carts=1, cart_visits=1, orders=1,
                                                      revenue=50.0)}
    assert len(lg.unit_table("nope", W)) == 0


def test_unit_table_time_bounds(open_log):
    lg = filled(open_log)
    since = rows(lg.unit_table("e1", W, since=T + 120))
    assert since["u1"] == unit("control", 200, 2, 2, 1, errors=1, clicks=1, orders=1, revenue=50.0)
    until = rows(lg.unit_table("e1", W, until=T + 1001))
    assert until["u2"] == unit("treatment", 1000, 1, 2, 1, orders=1, revenue=30.0)
    assert set(until) == {"u1"} | {"u2"}
    short = rows(lg.unit_table("e1", 50.0))  # a 50 s window; its end is inclusive (the cart 50 s after r1 counts)
    assert short["u1"]["clicks"] == 2 and short["u1"]["carts"] == 1 and short["u1"]["orders"] == 0
    assert short["u2"]["orders"] == 1 and short["u2"]["carts"] == 3


def test_request_metrics(open_log):
    lg = filled(open_log)
    m = lg.request_metrics("e1")
    assert sorted(m["control"][0].tolist()) == [10.0, 20.0, 50.0, 80.0] and m["control"][1:] == (1, 5)
    assert sorted(m["treatment"][0].tolist()) == [30.0, 40.0, 60.0] and m["treatment"][1:] == (0, 3)
    recent = lg.request_metrics("e1", since=T + 1000)
    assert sorted(recent["treatment"][0].tolist()) == [30.0, 40.0, 60.0] and recent["control"][1:] == (0, 2)


def test_logged_requests(open_log):
    lg = filled(open_log)
    reqs = {r.request_id: r for r in lg.requests(experiment_id="e1", window_s=W)}
    assert sorted(reqs) == ["r1", "r2", "r3", "r4", "r5a", "r5b", "r7", "r8"]
    r1 = reqs["r1"]
    assert (r1.items, r1.clicks, r1.unit, r1.visit) == (["a", "b", "c"], ["a"], "u1", "s1")
    assert r1.experiments == {"e1": ("control", 0.5), "e2": ("b", 0.5)}
    assert reqs["r2"].clicks == []  # its only click came after the window
    assert [r.request_id for r in lg.requests(since=T + 1000, until=T + 3000)] == ["r3", "r5a", "r5b"]
    assert [r.request_id for r in lg.requests(experiment_id="e2")] == ["r1"]
    assert len(lg.requests()) == 9  # every request, also the one without a unit
    assert lg.requests(limit=2)[1].request_id == "r9"  # ordered by time


def test_propensities_and_teams_round_trip(open_log):
    lg = open_log()
    lg.record([x("q1", 10, "u1", "s1", [("il", "interleaved")], items=("a", "b", "c"), teams=["a", "b", "a"],
                 props=[1.0, 0.25, 1.0], placement="pdp_similar")])
    lg.record_outcomes([o("cq", "click", 12, "s1", "u1", request="q1", item="b")])
    lg.flush()
    (r,) = lg.requests(placement="pdp_similar")
    assert (r.teams, r.propensities, r.clicks, r.placement) == (["a", "b", "a"], [1.0, 0.25, 1.0], ["b"],
                                                                "pdp_similar")
    assert lg.requests(placement="homepage") == []


def test_outcomes_from_ingested_events(open_log):
    lg = open_log()
    t0 = datetime.fromtimestamp(T, timezone.utc)
    lg.record([x("r1", 0, "u1", "s1", [("e", "control")])])
    lg.record_events([
        Event(event_id="v1", type="product_viewed", user_id="u1", session_id="s1", item_id="a",
              timestamp=t0 + timedelta(seconds=5)),  # not an outcome
        Event(event_id="k1", type="add_to_cart", user_id="u1", session_id="s1", item_id="a",
              timestamp=t0 + timedelta(seconds=6)),
        Event(event_id="c1", type="recommendation_clicked", user_id="u1", session_id="s1", item_id="a",
              timestamp=t0 + timedelta(seconds=7), context={"request_id": "r1", "position": 0}),
        Event(event_id="b1", type="purchase_completed", user_id="u1", session_id="s1",
              items=[{"item_id": "a", "quantity": 2, "price": 12.5}, {"item_id": "b", "quantity": 1}],
              timestamp=t0 + timedelta(seconds=8)),
    ])
    lg.flush()
    assert rows(lg.unit_table("e", W))["u1"] | {} == unit("control", 0, 1, 2, 1, clicks=1, carts=1, cart_visits=1,
                                                          orders=1, revenue=25.0)


def test_reopen_keeps_everything(open_log, log_dsn):
    if log_dsn == "memory://":
        pytest.skip("memory:// lives as long as its process")
    lg = filled(open_log)
    before = rows(lg.unit_table("e1", W, pre_since=T - 5000, pre_until=T))
    lg.close()
    assert rows(open_log().unit_table("e1", W, pre_since=T - 5000, pre_until=T)) == before


def test_backends_agree_on_a_random_log(open_log):
    """A few thousand random exposures and outcomes: the unit table equals the numpy reference (memory://)."""
    from shelfwise.experiments.memlog import MemoryExperimentLog

    rng = np.random.default_rng(7)
    exps, outs = [], []
    for i in range(1500):
        u = int(rng.integers(300))
        visit = f"v{u}-{int(rng.integers(3))}"
        variant = "a" if u % 2 else "b"
        if rng.random() < 0.01:
            variant = "c"  # makes a few units mixed
        exps.append(x(f"r{i}", float(rng.integers(0, 20_000)), f"u{u}", visit, [("e", variant)],
                      items=tuple("abcde"[: int(rng.integers(0, 6))]), latency=float(rng.integers(1, 50)),
                      error=bool(rng.random() < 0.02), shopper=f"u{u}" if rng.random() < 0.9 else None))
    for j in range(3000):
        u = int(rng.integers(320))
        kind = ["click", "cart", "purchase"][int(rng.integers(3))]
        req = f"r{int(rng.integers(1500))}" if kind == "click" and rng.random() < 0.6 else None
        outs.append(o(f"o{j}", kind, float(rng.integers(-3000, 24_000)), f"v{u}-{int(rng.integers(3))}", f"u{u}",
                      request=req, item="a", revenue=float(rng.integers(1, 100)) if kind == "purchase" else 0.0))
    lg, ref = open_log(), MemoryExperimentLog()
    for target in (lg, ref):
        target.record(exps)
        target.record_outcomes(outs)
        target.flush()
    for kw in ({}, {"since": T + 5000, "until": T + 15_000}, {"pre_since": T - 3000, "pre_until": T + 2000}):
        got, want = lg.unit_table("e", 1800.0, **kw), ref.unit_table("e", 1800.0, **kw)
        assert got.mixed_units == want.mixed_units > 0
        assert min(want.clicks.sum(), want.carts.sum(), want.orders.sum(), want.errors.sum()) > 0
        assert ("pre_since" in kw) == (want.pre_orders.sum() > 0)
        assert rows(got) == rows(want)


def test_recording_never_waits_for_the_database(open_log, log_dsn):
    if not log_dsn.startswith("sqlite"):
        pytest.skip("holds a SQLite write lock")
    lg = open_log()
    blocker = sqlite3.connect(log_dsn.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the database is busy (a long write elsewhere)
    rows = [x(f"b{i}", i, f"u{i}", f"s{i}", [("e", "control")]) for i in range(2000)]
    caller = threading.Thread(target=lg.record, args=(rows,))
    caller.start()
    caller.join(30)  # a record() that wrote would wait here for the lock, released only below
    assert not caller.is_alive(), "record() waited for the database (it must only enqueue)"
    blocker.execute("COMMIT")
    blocker.close()
    lg.flush()
    assert len(lg.unit_table("e", W)) == 2000 and lg.dropped == 0


def test_forget_erases_a_shopper_everywhere(open_log):
    lg = filled(open_log)
    lg.record([x("late", 6000, "u1", "s1", [("e1", "control")])])  # still queued when the erasure comes
    removed = lg.forget("u1")
    assert removed == 4 + 5 + 9  # u1: 4 served rails, 5 exposures (r1 in two experiments), 9 outcomes
    t = lg.unit_table("e1", W, pre_since=T - 5000, pre_until=T)
    assert "u1" not in set(t.unit.tolist()) and set(t.unit.tolist()) == {"u2", "session:s5"}
    assert all(r.unit != "u1" for r in lg.requests())
    assert lg.forget("u1") == 0
    assert lg.forget("session:s5") == 3  # an anonymous shopper: request, exposure, purchase
