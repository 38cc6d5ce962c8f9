"""The experiment exposure & outcome log: what every served rail showed under which variants, and what the shopper
did next — joined for analysis.

Writing is off the hot path: ``record`` / ``record_outcomes`` / ``record_events`` only enqueue, and a writer
thread commits what queued within ``linger_s`` (0.25 s) as one transaction (like ``rules/log.py``). A full queue drops
rows and counts them (``dropped``) rather than slowing requests down. Exposures are idempotent by (experiment,
request id), outcomes by event id (the event bus delivers at least once).

**Attribution** (identical in every backend; the contract suite checks it):

* a *visit* is the session id, or the shopper key when a request / event carries no session;
* a ``recommendation_clicked`` with a request id counts for the exposure of that request, if it happened within
  ``window`` seconds after it;
* add-to-cart, purchases (with revenue = Σ price × quantity of the order's lines) and clicks without a request id
  count for the *latest* exposure of the experiment in the same visit at or before the event, if the event came
  within ``window`` seconds of that exposure;
* a shopper's *pre-period* (CUPED covariates) is every outcome of the shoppers behind the unit in
  ``[pre_since, pre_until)`` — before the experiment started, so untouched by the treatment.

``unit_table`` aggregates all that per bucketing unit and variant; units seen in more than one variant (possible
only through identity changes) are left out of A/B analysis and counted in ``mixed_units``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import orjson

from shelfwise.experiments.sql import _Exec, sqlite_connect
from shelfwise.stores.handoff import Handoff

log = logging.getLogger(__name__)

OutcomeType = Literal["click", "cart", "purchase"]
_EVENT_TYPES = {"recommendation_clicked": "click", "add_to_cart": "cart", "purchase_completed": "purchase"}


def visit_key(user_id: str | None, session_id: str | None) -> str | None:
    """The attribution key: the session, else the shopper (the same on requests and events)."""
    return session_id or user_id or None


@dataclass
class ExposureRecord:
    """One served rail (or a failed request: ``error``, no items) and the experiment variants behind it.

    ``propensities[i]``: the probability that the policy put ``items[i]`` in slot i (1 for a deterministic slot,
    the bandit's estimate for an exploration slot); ``teams[i]``: "a"/"b", which ranker an interleaved slot came
    from. ``assignments``: (experiment id, variant, propensity of that variant)."""

    request_id: str
    ts: float
    placement: str
    unit: str | None
    shopper: str | None
    visit: str | None
    items: list[str]
    assignments: list[tuple[str, str, float]]
    propensities: list[float] | None = None
    teams: list[str] | None = None
    latency_ms: float | None = None
    error: bool = False
    model_version: str = ""
    segment: str = ""  # the shopper segment the request named (contextual bandit)


@dataclass
class OutcomeRecord:
    event_id: str
    type: OutcomeType
    ts: float
    shopper: str | None
    visit: str | None
    request_id: str | None = None
    item_id: str | None = None
    position: int | None = None
    revenue: float = 0.0
    quantity: int = 0


def outcomes_from_events(events: Iterable[Any]) -> list[OutcomeRecord]:
    """The outcome records of ingested ``domain.Event`` s (other event types are not outcomes)."""
    out = []
    for ev in events:
        kind = _EVENT_TYPES.get(ev.type)
        if kind is None:
            continue
        revenue, qty = 0.0, 0
        if kind == "purchase":
            for _, q, p in ev.lines():
                qty += q
                if p is not None:
                    revenue += q * p
        elif kind == "cart":
            qty = 1
        out.append(OutcomeRecord(event_id=ev.event_id, type=kind, ts=ev.timestamp.timestamp(), shopper=ev.shopper,
                                 visit=visit_key(ev.user_id, ev.session_id), request_id=ev.context.request_id or None,
                                 item_id=ev.item_id, position=ev.context.position, revenue=round(revenue, 6),
                                 quantity=qty))
    return out


@dataclass
class UnitTable:
    """Per bucketing unit (one row each): its variant and what it did, inside the analysed window."""

    unit: np.ndarray  # object
    variant: np.ndarray  # object
    first_ts: np.ndarray
    rails: np.ndarray  # served rails (requests) of the experiment
    impressions: np.ndarray  # slots shown
    visits: np.ndarray  # distinct visits with an exposure
    errors: np.ndarray
    clicks: np.ndarray
    carts: np.ndarray
    cart_visits: np.ndarray  # visits with an attributed add-to-cart
    orders: np.ndarray
    revenue: np.ndarray
    pre_clicks: np.ndarray
    pre_carts: np.ndarray
    pre_orders: np.ndarray
    pre_revenue: np.ndarray
    mixed_units: int = 0

    COUNTS = ("rails", "impressions", "visits", "errors", "clicks", "carts", "cart_visits", "orders", "pre_clicks",
              "pre_carts", "pre_orders")

    def __len__(self) -> int:
        return len(self.unit)

    def take(self, mask: np.ndarray) -> "UnitTable":
        vals = {f.name: getattr(self, f.name)[mask] for f in fields(self) if f.name != "mixed_units"}
        return UnitTable(**vals, mixed_units=self.mixed_units)

    @property
    def variants(self) -> list[str]:
        return sorted(set(self.variant.tolist()))

    @classmethod
    def empty(cls) -> "UnitTable":
        obj = np.array([], dtype=object)
        z = np.zeros(0)
        return cls(obj, obj.copy(), *([z] * 14))


@dataclass
class LoggedRequest:
    """A served request with the clicks that came back on it (by request id, within the window)."""

    request_id: str
    ts: float
    placement: str
    unit: str | None
    visit: str | None
    items: list[str]
    propensities: list[float] | None
    teams: list[str] | None
    experiments: dict[str, tuple[str, float]] = field(default_factory=dict)  # experiment -> (variant, propensity)
    clicks: list[str] = field(default_factory=list)  # clicked item ids
    segment: str = ""


@runtime_checkable
class ExperimentLog(Protocol):
    dropped: int
    queued: int  # records waiting for the writer (metrics)

    def record(self, exposures: Sequence[ExposureRecord]) -> None:
        """Enqueue served rails; never blocks the caller."""

    def record_outcomes(self, outcomes: Sequence[OutcomeRecord]) -> None: ...

    def record_events(self, events: Sequence[Any]) -> None:
        """Enqueue the outcome events among ingested ``domain.Event`` s."""

    def flush(self) -> None:
        """Wait until everything enqueued so far is committed."""

    def unit_table(self, experiment_id: str, window_s: float, since: float | None = None,
                   until: float | None = None, pre_since: float | None = None,
                   pre_until: float | None = None) -> UnitTable: ...

    def request_metrics(self, experiment_id: str, since: float | None = None,
                        until: float | None = None) -> dict[str, tuple[np.ndarray, int, int]]:
        """variant -> (latencies in ms of successful requests, errors, requests)."""

    def requests(self, since: float | None = None, until: float | None = None, experiment_id: str | None = None,
                 placement: str | None = None, window_s: float = 86400.0, limit: int = 1_000_000
                 ) -> list[LoggedRequest]: ...

    def forget(self, shopper: str) -> int:
        """Erase a shopper (their stored key: a user id or ``session:<id>``, pseudonymised when that is on): every
        served rail, exposure and outcome of theirs. Returns the rows removed."""

    def close(self) -> None: ...


# ---- turning aggregate rows into a unit table (shared by every backend) ---------------------------------------
def build_unit_table(pairs: dict[tuple[str, str], list[float]], clicks: dict[tuple[str, str], float],
                     attributed: dict[tuple[str, str, str], tuple[float, float, float]],
                     pre: dict[tuple[str, str], tuple[float, float]]) -> UnitTable:
    """``pairs``: (unit, variant) -> [first_ts, rails, impressions, visits, errors];
    ``clicks``: (unit, variant) -> clicks by request id; ``attributed``: (unit, variant, type) -> (count, revenue,
    distinct visits); ``pre``: (unit, type) -> (count, revenue)."""
    variants_of: dict[str, list[str]] = {}
    for u, v in pairs:
        variants_of.setdefault(u, []).append(v)
    units = sorted(u for u, vs in variants_of.items() if len(vs) == 1)
    mixed = len(variants_of) - len(units)
    n = len(units)
    cols = {name: np.zeros(n) for name in ("first_ts", "rails", "impressions", "visits", "errors", "clicks", "carts",
                                           "cart_visits", "orders", "revenue", "pre_clicks", "pre_carts",
                                           "pre_orders", "pre_revenue")}
    variant = np.empty(n, dtype=object)
    for i, u in enumerate(units):
        v = variants_of[u][0]
        variant[i] = v
        first, rails, imps, visits, errors = pairs[(u, v)]
        cols["first_ts"][i], cols["rails"][i], cols["impressions"][i] = first, rails, imps
        cols["visits"][i], cols["errors"][i] = visits, errors
        c = attributed.get((u, v, "click"))
        cols["clicks"][i] = clicks.get((u, v), 0.0) + (c[0] if c else 0.0)
        c = attributed.get((u, v, "cart"))
        if c:
            cols["carts"][i], cols["cart_visits"][i] = c[0], c[2]
        c = attributed.get((u, v, "purchase"))
        if c:
            cols["orders"][i], cols["revenue"][i] = c[0], c[1]
        for kind, name in (("click", "pre_clicks"), ("cart", "pre_carts"), ("purchase", "pre_orders")):
            p = pre.get((u, kind))
            if p:
                cols[name][i] = p[0]
                if kind == "purchase":
                    cols["pre_revenue"][i] = p[1]
    return UnitTable(unit=np.array(units, dtype=object), variant=variant, mixed_units=mixed, **cols)


def _bounds(since: float | None, until: float | None) -> tuple[float, float]:
    return (-1e300 if since is None else since), (1e300 if until is None else until)


# ---- the SQL backends' queries (SQLite and PostgreSQL run the same text) -------------------------------------
Q_PAIRS = """
SELECT unit, variant, min(ts), count(*), sum(n_items), count(DISTINCT visit), sum(error)
  FROM xp_exposures WHERE experiment_id = ? AND ts >= ? AND ts < ? GROUP BY unit, variant
"""
Q_CLICKS = """
SELECT x.unit, x.variant, count(*)
  FROM xp_outcomes o JOIN xp_exposures x ON x.request_id = o.request_id
 WHERE x.experiment_id = ? AND x.ts >= ? AND x.ts < ? AND o.type = 'click' AND o.ts >= x.ts AND o.ts <= x.ts + ?
   AND o.ts < ?
 GROUP BY x.unit, x.variant
"""
Q_ATTRIBUTED = """
WITH att AS (
  SELECT o.type AS type, o.visit AS visit, o.revenue AS revenue, o.ts AS ts,
         (SELECT x.seq FROM xp_exposures x
           WHERE x.experiment_id = ? AND x.visit = o.visit AND x.ts <= o.ts AND x.ts >= ? AND x.ts < ?
           ORDER BY x.ts DESC, x.seq DESC LIMIT 1) AS xseq
    FROM xp_outcomes o
   WHERE o.ts >= ? AND o.ts < ? AND (o.type <> 'click' OR o.request_id IS NULL)
     AND o.visit IN (SELECT DISTINCT visit FROM xp_exposures WHERE experiment_id = ?)
)
SELECT x.unit, x.variant, att.type, count(*), sum(att.revenue), count(DISTINCT att.visit)
  FROM att JOIN xp_exposures x ON x.seq = att.xseq
 WHERE att.ts <= x.ts + ?
 GROUP BY x.unit, x.variant, att.type
"""
Q_PRE = """
SELECT u.unit, o.type, count(*), sum(o.revenue)
  FROM (SELECT DISTINCT unit, shopper FROM xp_exposures
         WHERE experiment_id = ? AND ts >= ? AND ts < ? AND shopper IS NOT NULL) u
  JOIN xp_outcomes o ON o.shopper = u.shopper
 WHERE o.ts >= ? AND o.ts < ?
 GROUP BY u.unit, o.type
"""
Q_REQUEST_METRICS = "SELECT variant, latency_ms, error FROM xp_exposures WHERE experiment_id = ? AND ts >= ? AND ts < ?"


def sql_unit_table(x: Any, experiment_id: str, window_s: float, since: float | None, until: float | None,
                   pre_since: float | None, pre_until: float | None) -> UnitTable:
    """``x``: a ``store._Exec`` on either backend."""
    lo, hi = _bounds(since, until)
    pairs = {(u, v): [t, n, imp, vis, err] for u, v, t, n, imp, vis, err in
             x.all(Q_PAIRS, (experiment_id, lo, hi))}
    clicks = {(u, v): c for u, v, c in x.all(Q_CLICKS, (experiment_id, lo, hi, window_s, hi))}
    attributed = {(u, v, t): (c, rev or 0.0, vis) for u, v, t, c, rev, vis in
                  x.all(Q_ATTRIBUTED, (experiment_id, lo, hi, lo, hi, experiment_id, window_s))}
    pre: dict[tuple[str, str], tuple[float, float]] = {}
    if pre_since is not None and pre_until is not None and pre_until > pre_since:
        pre = {(u, t): (c, rev or 0.0) for u, t, c, rev in
               x.all(Q_PRE, (experiment_id, lo, hi, pre_since, pre_until))}
    return build_unit_table(pairs, clicks, attributed, pre)


def sql_request_metrics(x: Any, experiment_id: str, since: float | None,
                        until: float | None) -> dict[str, tuple[np.ndarray, int, int]]:
    lo, hi = _bounds(since, until)
    return request_metrics_from_rows(x.all(Q_REQUEST_METRICS, (experiment_id, lo, hi)))


def request_metrics_from_rows(rows: Iterable[tuple[str, float | None, int]]) -> dict[str, tuple[np.ndarray, int, int]]:
    by: dict[str, list] = {}
    for v, lat, err in rows:
        acc = by.setdefault(v, [[], 0, 0])
        acc[2] += 1
        if err:
            acc[1] += 1
        elif lat is not None:
            acc[0].append(lat)
    return {v: (np.array(lats, float), errors, n) for v, (lats, errors, n) in by.items()}


def sql_requests(x: Any, since: float | None, until: float | None, experiment_id: str | None,
                 placement: str | None, window_s: float, limit: int) -> list[LoggedRequest]:
    lo, hi = _bounds(since, until)
    q = ("SELECT r.request_id, r.ts, r.placement, r.unit, r.visit, r.items, r.propensities, r.teams, r.segment "
         "FROM xp_requests r WHERE r.ts >= ? AND r.ts < ?")
    params: list[Any] = [lo, hi]
    if placement is not None:
        q += " AND r.placement = ?"
        params.append(placement)
    if experiment_id is not None:
        q += " AND r.request_id IN (SELECT request_id FROM xp_exposures WHERE experiment_id = ?)"
        params.append(experiment_id)
    q += " ORDER BY r.ts, r.request_id LIMIT ?"
    params.append(limit)
    out: dict[str, LoggedRequest] = {}
    for rid, ts, pl, unit, visit, items, props, teams, segment in x.all(q, params):
        out[rid] = LoggedRequest(rid, ts, pl, unit, visit, orjson.loads(items),
                                 None if props is None else orjson.loads(props),
                                 None if teams is None else orjson.loads(teams), segment=segment or "")
    ids = list(out)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for rid, eid, variant, prop in x.all(f"SELECT request_id, experiment_id, variant, propensity FROM "
                                             f"xp_exposures WHERE request_id IN ({marks})", chunk):
            out[rid].experiments[eid] = (variant, prop)
        for rid, item, ts in x.all(f"SELECT request_id, item_id, ts FROM xp_outcomes WHERE type = 'click' AND "
                                   f"request_id IN ({marks}) ORDER BY ts, event_id", chunk):
            r = out[rid]
            if r.ts <= ts <= r.ts + window_s and item is not None:
                r.clicks.append(item)
    return list(out.values())


_FORGET = ("DELETE FROM xp_exposures WHERE shopper = ? OR unit = ?", "DELETE FROM xp_requests WHERE shopper = ? OR unit = ?",
           "DELETE FROM xp_outcomes WHERE shopper = ? OR shopper = ?")


def sql_forget(x: Any, shopper: str) -> int:
    return sum(x.run(q, (shopper, shopper)) for q in _FORGET)


def exposure_rows(batch: Sequence[ExposureRecord]) -> tuple[list[tuple], list[tuple]]:
    requests, exposures = [], []
    for e in batch:
        requests.append((e.request_id, e.ts, e.placement, e.unit, e.shopper, e.visit,
                         orjson.dumps(e.items).decode(),
                         None if e.propensities is None else orjson.dumps(e.propensities).decode(),
                         None if e.teams is None else orjson.dumps(e.teams).decode(),
                         e.latency_ms, int(e.error), e.model_version, e.segment))
        if e.unit is None:
            continue
        for eid, variant, prop in e.assignments:
            exposures.append((eid, e.request_id, variant, float(prop), e.unit, e.shopper, e.visit, e.ts, len(e.items),
                              e.latency_ms, int(e.error)))
    return requests, exposures


def outcome_rows(batch: Sequence[OutcomeRecord]) -> list[tuple]:
    return [(o.event_id, o.type, o.ts, o.shopper, o.visit, o.request_id or None, o.item_id, o.position,
             float(o.revenue), int(o.quantity)) for o in batch]


class QueuedLog:
    """The enqueue side and the writer thread; backends implement ``_connect_writer`` and ``_write``."""

    def __init__(self, retention_days: float, max_queue: int, batch: int, linger_s: float = 0.25) -> None:
        self.retention_s = retention_days * 86400.0
        self.batch = batch
        self._q = Handoff(max_queue, linger_s)  # a batch gathers for linger_s: few transactions, not one per call
        self._closed = False
        self._pruned_at = 0.0
        self._writer = threading.Thread(target=self._run, name="shelfwise-experiment-log", daemon=True)
        self._writer.start()

    @property
    def dropped(self) -> int:
        """Records lost: refused by a full queue, or in a batch the writer could not commit."""
        return self._q.dropped

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return len(self._q)

    def _put(self, item: tuple) -> None:
        if not self._closed:
            self._q.put(item)

    def record(self, exposures: Sequence[ExposureRecord]) -> None:
        for e in exposures:
            self._put(("exposure", e))

    def record_outcomes(self, outcomes: Sequence[OutcomeRecord]) -> None:
        for o in outcomes:
            self._put(("outcome", o))

    def record_events(self, events: Sequence[Any]) -> None:
        self.record_outcomes(outcomes_from_events(events))

    def flush(self) -> None:
        if self._closed or not self._writer.is_alive():
            return
        done = threading.Event()
        self._q.put_control(("flush", done))
        done.wait(60)

    def _run(self) -> None:
        conn = self._connect_writer()
        stop = False
        while not stop:
            items = self._q.take(self.batch)
            waiters = [x[1] for x in items if x[0] == "flush"]
            stop = any(x[0] == "stop" for x in items)
            exposures = [x[1] for x in items if x[0] == "exposure"]
            outcomes = [x[1] for x in items if x[0] == "outcome"]
            if exposures or outcomes:
                now = time.time()
                prune = now - self._pruned_at > 600
                if prune:
                    self._pruned_at = now
                try:
                    self._write(conn, exposures, outcomes, now - self.retention_s if prune else None)
                except Exception:  # a bad row, a full disk, a lost connection: the writer must survive
                    log.exception("experiment log: %d rows could not be written", len(exposures) + len(outcomes))
                    self._q.lost(len(exposures) + len(outcomes))
                    conn = self._reconnect(conn)
            for w in waiters:
                w.set()
        self._close_writer(conn)

    def _reconnect(self, conn: Any) -> Any:
        return conn

    def _stop_writer(self) -> None:
        if self._writer.is_alive():
            done = threading.Event()
            self._q.put_control(("flush", done))
            self._q.put_control(("stop", None))
            done.wait(60)
            self._writer.join(60)
        self._closed = True

    # backends
    def _connect_writer(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write(self, conn: Any, exposures: list[ExposureRecord], outcomes: list[OutcomeRecord],
               prune_before: float | None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_writer(self, conn: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


# ---- SQLite ----------------------------------------------------------------------------------------------------
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS xp_requests (
    request_id    TEXT PRIMARY KEY,
    ts            REAL NOT NULL,
    placement     TEXT NOT NULL,
    unit          TEXT,
    shopper       TEXT,
    visit         TEXT,
    items         TEXT NOT NULL,
    propensities  TEXT,
    teams         TEXT,
    latency_ms    REAL,
    error         INTEGER NOT NULL DEFAULT 0,
    model_version TEXT NOT NULL DEFAULT '',
    segment       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS xp_requests_ts ON xp_requests (ts);
CREATE TABLE IF NOT EXISTS xp_exposures (
    seq           INTEGER PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    variant       TEXT NOT NULL,
    propensity    REAL NOT NULL DEFAULT 1,
    unit          TEXT NOT NULL,
    shopper       TEXT,
    visit         TEXT,
    ts            REAL NOT NULL,
    n_items       INTEGER NOT NULL,
    latency_ms    REAL,
    error         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (experiment_id, request_id)
);
CREATE INDEX IF NOT EXISTS xp_exposures_visit ON xp_exposures (experiment_id, visit, ts);
CREATE INDEX IF NOT EXISTS xp_exposures_request ON xp_exposures (request_id);
CREATE INDEX IF NOT EXISTS xp_exposures_ts ON xp_exposures (experiment_id, ts);
CREATE TABLE IF NOT EXISTS xp_outcomes (
    event_id   TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    ts         REAL NOT NULL,
    shopper    TEXT,
    visit      TEXT,
    request_id TEXT,
    item_id    TEXT,
    position   INTEGER,
    revenue    REAL NOT NULL DEFAULT 0,
    quantity   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS xp_outcomes_visit ON xp_outcomes (visit, ts);
CREATE INDEX IF NOT EXISTS xp_outcomes_request ON xp_outcomes (request_id);
CREATE INDEX IF NOT EXISTS xp_outcomes_shopper ON xp_outcomes (shopper, ts);
CREATE INDEX IF NOT EXISTS xp_outcomes_ts ON xp_outcomes (ts);
"""

_INSERT_REQUEST = ("INSERT INTO xp_requests (request_id, ts, placement, unit, shopper, visit, items, propensities, "
                   "teams, latency_ms, error, model_version, segment) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                   "ON CONFLICT (request_id) DO NOTHING")
_INSERT_EXPOSURE = ("INSERT INTO xp_exposures (experiment_id, request_id, variant, propensity, unit, shopper, visit, "
                    "ts, n_items, latency_ms, error) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (experiment_id, request_id) DO NOTHING")
_INSERT_OUTCOME = ("INSERT INTO xp_outcomes (event_id, type, ts, shopper, visit, request_id, item_id, position, "
                   "revenue, quantity) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (event_id) DO NOTHING")
_PRUNE = ("DELETE FROM xp_requests WHERE ts < ?", "DELETE FROM xp_exposures WHERE ts < ?",
          "DELETE FROM xp_outcomes WHERE ts < ?")


class SQLiteExperimentLog(QueuedLog):
    def __init__(self, path: Path | str, retention_days: float = 180.0, max_queue: int = 200_000,
                 batch: int = 2000) -> None:
        self.path = Path(path)
        self._read_lock = threading.Lock()
        self._db = sqlite_connect(self.path)
        self._db.executescript(SQLITE_SCHEMA)
        super().__init__(retention_days, max_queue, batch)

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite_connect(self.path)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _write(self, db: sqlite3.Connection, exposures: list[ExposureRecord], outcomes: list[OutcomeRecord],
               prune_before: float | None) -> None:
        requests, rows = exposure_rows(exposures)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT_REQUEST, requests)
            db.executemany(_INSERT_EXPOSURE, rows)
            db.executemany(_INSERT_OUTCOME, outcome_rows(outcomes))
            if prune_before is not None:
                for q in _PRUNE:
                    db.execute(q, (prune_before,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _close_writer(self, db: sqlite3.Connection) -> None:
        db.close()

    def _exec(self) -> _Exec:
        return _Exec(self._db.cursor(), pg=False)

    def unit_table(self, experiment_id: str, window_s: float, since: float | None = None, until: float | None = None,
                   pre_since: float | None = None, pre_until: float | None = None) -> UnitTable:
        with self._read_lock:
            return sql_unit_table(self._exec(), experiment_id, window_s, since, until, pre_since, pre_until)

    def request_metrics(self, experiment_id: str, since: float | None = None,
                        until: float | None = None) -> dict[str, tuple[np.ndarray, int, int]]:
        with self._read_lock:
            return sql_request_metrics(self._exec(), experiment_id, since, until)

    def requests(self, since: float | None = None, until: float | None = None, experiment_id: str | None = None,
                 placement: str | None = None, window_s: float = 86400.0,
                 limit: int = 1_000_000) -> list[LoggedRequest]:
        with self._read_lock:
            return sql_requests(self._exec(), since, until, experiment_id, placement, window_s, limit)

    def forget(self, shopper: str) -> int:
        self.flush()  # what is still queued is erased too
        with self._read_lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                n = sql_forget(_Exec(cur, pg=False), shopper)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        return n

    def close(self) -> None:
        if self._closed:
            return
        self._stop_writer()
        with self._read_lock:
            self._db.close()
