"""The experiment store: a small typed protocol with SQLite and PostgreSQL backends picked by the events DSN.

Experiments live in the event store's database (the SQLite file, or the PostgreSQL database), so every API
replica reads the same experiments and assigns the same way. Every write is one transaction that validates
against the current state first (``BEGIN IMMEDIATE`` on SQLite; a transaction-scoped advisory lock on
PostgreSQL, so two replicas cannot both pass an overlap check), so a rejected write leaves nothing behind.

Rules enforced here (``Conflict``, HTTP 409, naming the problem):

* experiments that are not stopped never overlap within a layer (their ``layer_range`` slices are disjoint);
* lifecycle draft → running → stopped; only a draft may be edited; a stopped experiment cannot be ramped,
  started or stopped again; ramps only grow (a smaller traffic share would drop exposed shoppers);
* ``serve`` (what a stopped experiment keeps serving its shoppers) names one of its variants or none.

``generation()`` changes on every write; serving processes compare it to reload (``runtime.py``). The identity
map (``link_identity``) records the unit a logged-in shopper is bucketed by when ``experiments.identity`` is
``first_seen``: the first link of a user wins, atomically, on every replica.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import orjson

from shelfwise.experiments.schema import Experiment, ExperimentInvalid, ExperimentSpec
from shelfwise.experiments.sql import SQLiteTransactions, _Exec, sqlite_connect


class NotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class Conflict(ValueError):
    """The request contradicts the state of the experiments (HTTP 409)."""


@dataclass(frozen=True)
class AuditEntry:
    experiment_id: str
    action: str  # create | update | start | ramp | stop | serve
    author: str
    comment: str
    detail: dict[str, Any]
    ts: float


@runtime_checkable
class ExperimentStore(Protocol):
    def create(self, spec: ExperimentSpec, author: str, comment: str = "") -> Experiment:
        """Store a new draft (``Conflict``: id taken, or its slice overlaps a non-stopped experiment)."""

    def update(self, spec: ExperimentSpec, author: str, comment: str = "") -> Experiment:
        """Replace a draft's document (same id)."""

    def start(self, experiment_id: str, author: str, comment: str = "") -> Experiment: ...

    def ramp(self, experiment_id: str, traffic: float, author: str, comment: str = "") -> Experiment:
        """Raise the exposure share (drafts and running experiments)."""

    def stop(self, experiment_id: str, author: str, reason: str = "", serve: str | None = None) -> Experiment:
        """Stop; ``serve`` keeps serving that variant to the experiment's exposed shoppers (rollback: control)."""

    def set_serve(self, experiment_id: str, serve: str | None, author: str, comment: str = "") -> Experiment:
        """Change what a stopped experiment serves (None releases its shoppers to the running configuration)."""

    def get(self, experiment_id: str) -> Experiment: ...

    def list(self, status: str | None = None) -> list[Experiment]: ...

    def active(self) -> list[Experiment]:
        """What assignment needs: running experiments and stopped ones that serve a variant."""

    def history(self, experiment_id: str) -> list[AuditEntry]: ...

    def generation(self) -> int:
        """A number that changes whenever anything in the store changes."""

    def link_identity(self, user_id: str, unit: str) -> str:
        """Bucket ``user_id`` by ``unit`` unless it already has a unit; returns the user's unit."""

    def identities(self, user_ids: Sequence[str]) -> dict[str, str]: ...

    def forget_identity(self, shopper: str) -> int:
        """Erase a shopper's identity link (as the user, or as the unit a user was linked to)."""

    def close(self) -> None: ...


# ---- shared logic over a tiny SQL executor -------------------------------------------------------------------
_COLUMNS = ("id, spec, status, traffic, serve, created, updated, started, stopped, stop_reason, revision")


def _row(row: tuple) -> Experiment:
    eid, spec, status, traffic, serve, created, updated, started, stopped, reason, revision = row
    doc = orjson.loads(spec)
    return Experiment(spec=ExperimentSpec.model_validate(doc), status=status, traffic=traffic, serve=serve,
                      created_at=created, updated_at=updated, started_at=started, stopped_at=stopped,
                      stop_reason=reason or "", revision=revision)


def _spec_json(spec: ExperimentSpec) -> str:
    return orjson.dumps(spec.model_dump(mode="json")).decode()


class SQLExperimentStore:
    """Everything but the connection handling; subclasses provide ``_write()`` and ``_read()``."""

    def _write(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- helpers --------------------------------------------------------------------------------------
    def _load(self, x: _Exec, experiment_id: str) -> Experiment:
        row = x.one(f"SELECT {_COLUMNS} FROM experiments WHERE id = ?", (experiment_id,))
        if row is None:
            raise NotFound(f"no experiment {experiment_id!r}")
        return _row(row)

    def _audit(self, x: _Exec, eid: str, action: str, author: str, comment: str, detail: dict[str, Any],
               now: float) -> None:
        x.run("INSERT INTO experiment_audit (experiment_id, action, author, comment, detail, ts) "
              "VALUES (?, ?, ?, ?, ?, ?)", (eid, action, author, comment, orjson.dumps(detail).decode(), now))
        x.run("UPDATE experiment_meta SET value = value + 1 WHERE key = 'generation'")

    def _check_overlap(self, x: _Exec, spec: ExperimentSpec) -> None:
        lo, hi = spec.layer_range
        rows = x.all("SELECT id, lo, hi, status FROM experiments WHERE layer = ? AND status <> 'stopped' "
                     "AND id <> ? ORDER BY id", (spec.layer, spec.id))
        clashes = [(eid, a, b, st) for eid, a, b, st in rows if a < hi and lo < b]
        if clashes:
            eid, a, b, st = clashes[0]
            raise Conflict(f"experiment {spec.id!r} overlaps {st} experiment {eid!r} in layer {spec.layer!r}: "
                           f"[{lo:g}, {hi:g}) intersects [{a:g}, {b:g}); experiments of one layer must use "
                           "disjoint layer_range slices (or another layer)")

    def _save(self, x: _Exec, e: Experiment) -> None:
        x.run("UPDATE experiments SET spec = ?, layer = ?, lo = ?, hi = ?, status = ?, traffic = ?, serve = ?, "
              "updated = ?, started = ?, stopped = ?, stop_reason = ?, revision = ? WHERE id = ?",
              (_spec_json(e.spec), e.spec.layer, e.spec.layer_range[0], e.spec.layer_range[1], e.status, e.traffic,
               e.serve, e.updated_at, e.started_at, e.stopped_at, e.stop_reason, e.revision, e.id))

    # ---- writes ---------------------------------------------------------------------------------------
    def create(self, spec: ExperimentSpec, author: str, comment: str = "") -> Experiment:
        now = time.time()
        with self._write() as x:
            if x.one("SELECT 1 FROM experiments WHERE id = ?", (spec.id,)) is not None:
                raise Conflict(f"experiment {spec.id!r} already exists (ids are never reused: they salt the "
                               "bucketing); choose another id")
            self._check_overlap(x, spec)
            e = Experiment(spec=spec, status="draft", traffic=spec.traffic, created_at=now, updated_at=now)
            x.run(f"INSERT INTO experiments ({_COLUMNS}, layer, lo, hi) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                  (e.id, _spec_json(spec), e.status, e.traffic, None, now, now, None, None, "", 1, spec.layer,
                   spec.layer_range[0], spec.layer_range[1]))
            self._audit(x, e.id, "create", author, comment, {"traffic": e.traffic}, now)
        return e

    def update(self, spec: ExperimentSpec, author: str, comment: str = "") -> Experiment:
        now = time.time()
        with self._write() as x:
            cur = self._load(x, spec.id)
            if cur.status != "draft":
                raise Conflict(f"experiment {spec.id!r} is {cur.status}: only a draft can be edited (variants, "
                               "shares, layer and salt decide who sees what once it runs); create a new experiment")
            self._check_overlap(x, spec)
            e = cur.model_copy(update={"spec": spec, "traffic": spec.traffic, "updated_at": now,
                                       "revision": cur.revision + 1})
            self._save(x, e)
            self._audit(x, e.id, "update", author, comment, {}, now)
        return e

    def start(self, experiment_id: str, author: str, comment: str = "") -> Experiment:
        now = time.time()
        with self._write() as x:
            cur = self._load(x, experiment_id)
            if cur.status != "draft":
                raise Conflict(f"experiment {experiment_id!r} is {cur.status}; only a draft can be started")
            self._check_overlap(x, cur.spec)
            e = cur.model_copy(update={"status": "running", "started_at": now, "updated_at": now,
                                       "revision": cur.revision + 1})
            self._save(x, e)
            self._audit(x, e.id, "start", author, comment, {"traffic": e.traffic}, now)
        return e

    def ramp(self, experiment_id: str, traffic: float, author: str, comment: str = "") -> Experiment:
        if not (0.0 < traffic <= 1.0):
            raise ExperimentInvalid([{"path": "traffic", "reason": f"a ramp is a share in (0, 1], got {traffic:g}"}])
        now = time.time()
        with self._write() as x:
            cur = self._load(x, experiment_id)
            if cur.status == "stopped":
                raise Conflict(f"experiment {experiment_id!r} is stopped; a stopped experiment cannot be ramped "
                               "(create a new experiment to test again)")
            if traffic < cur.traffic:
                raise Conflict(f"experiment {experiment_id!r} runs at {cur.traffic:.4g}; a ramp only grows "
                               f"(lowering it to {traffic:.4g} would drop exposed shoppers). Stop it instead")
            e = cur.model_copy(update={"traffic": traffic, "updated_at": now, "revision": cur.revision + 1})
            self._save(x, e)
            self._audit(x, e.id, "ramp", author, comment, {"from": cur.traffic, "to": traffic}, now)
        return e

    def stop(self, experiment_id: str, author: str, reason: str = "", serve: str | None = None) -> Experiment:
        now = time.time()
        with self._write() as x:
            cur = self._load(x, experiment_id)
            if cur.status == "stopped":
                raise Conflict(f"experiment {experiment_id!r} is already stopped "
                               f"({cur.stop_reason or 'no reason given'})")
            self._check_serve(cur, serve)
            e = cur.model_copy(update={"status": "stopped", "stopped_at": now, "updated_at": now, "serve": serve,
                                       "stop_reason": reason, "revision": cur.revision + 1})
            self._save(x, e)
            self._audit(x, e.id, "stop", author, reason, {"serve": serve, "was": cur.status}, now)
        return e

    def set_serve(self, experiment_id: str, serve: str | None, author: str, comment: str = "") -> Experiment:
        now = time.time()
        with self._write() as x:
            cur = self._load(x, experiment_id)
            if cur.status != "stopped":
                raise Conflict(f"experiment {experiment_id!r} is {cur.status}; serve applies to stopped "
                               "experiments (stop it with serve=...)")
            self._check_serve(cur, serve)
            e = cur.model_copy(update={"serve": serve, "updated_at": now, "revision": cur.revision + 1})
            self._save(x, e)
            self._audit(x, e.id, "serve", author, comment, {"from": cur.serve, "to": serve}, now)
        return e

    @staticmethod
    def _check_serve(e: Experiment, serve: str | None) -> None:
        names = [v.name for v in e.spec.variants]
        if serve is not None and serve not in names:
            raise ExperimentInvalid([{"path": "serve", "reason": f"{serve!r} is not a variant of experiment "
                                                                 f"{e.id!r}; variants: {names}"}])

    def link_identity(self, user_id: str, unit: str) -> str:
        with self._write() as x:
            x.run("INSERT INTO experiment_identities (user_id, unit, created) VALUES (?, ?, ?) "
                  "ON CONFLICT (user_id) DO NOTHING", (user_id, unit, time.time()))
            row = x.one("SELECT unit FROM experiment_identities WHERE user_id = ?", (user_id,))
        return row[0]

    def forget_identity(self, shopper: str) -> int:
        with self._write() as x:
            return x.run("DELETE FROM experiment_identities WHERE user_id = ? OR unit = ?", (shopper, shopper))

    def identities(self, user_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = list(dict.fromkeys(user_ids))
        with self._read() as x:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                out.update(x.all(f"SELECT user_id, unit FROM experiment_identities WHERE user_id IN ({marks})",
                                 chunk))
        return out

    # ---- reads ----------------------------------------------------------------------------------------
    def get(self, experiment_id: str) -> Experiment:
        with self._read() as x:
            return self._load(x, experiment_id)

    def list(self, status: str | None = None) -> list[Experiment]:
        with self._read() as x:
            if status is None:
                rows = x.all(f"SELECT {_COLUMNS} FROM experiments ORDER BY created, id")
            else:
                rows = x.all(f"SELECT {_COLUMNS} FROM experiments WHERE status = ? ORDER BY created, id", (status,))
        return [_row(r) for r in rows]

    def active(self) -> list[Experiment]:
        with self._read() as x:
            rows = x.all(f"SELECT {_COLUMNS} FROM experiments WHERE status = 'running' OR "
                         "(status = 'stopped' AND serve IS NOT NULL) ORDER BY created, id")
        return [_row(r) for r in rows]

    def history(self, experiment_id: str) -> list[AuditEntry]:
        with self._read() as x:
            self._load(x, experiment_id)
            rows = x.all("SELECT experiment_id, action, author, comment, detail, ts FROM experiment_audit "
                         "WHERE experiment_id = ? ORDER BY seq", (experiment_id,))
        return [AuditEntry(eid, a, au, c, orjson.loads(d), ts) for eid, a, au, c, d, ts in rows]

    def generation(self) -> int:
        with self._read() as x:
            return x.one("SELECT value FROM experiment_meta WHERE key = 'generation'")[0]


# ---- SQLite ----------------------------------------------------------------------------------------------------
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id          TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    layer       TEXT NOT NULL,
    lo          REAL NOT NULL,
    hi          REAL NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('draft', 'running', 'stopped')),
    traffic     REAL NOT NULL,
    serve       TEXT,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    started     REAL,
    stopped     REAL,
    stop_reason TEXT NOT NULL DEFAULT '',
    revision    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS experiments_layer ON experiments (layer, status);
CREATE TABLE IF NOT EXISTS experiment_audit (
    seq           INTEGER PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    action        TEXT NOT NULL,
    author        TEXT NOT NULL,
    comment       TEXT NOT NULL,
    detail        TEXT NOT NULL,
    ts            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS experiment_audit_id ON experiment_audit (experiment_id, seq);
CREATE TABLE IF NOT EXISTS experiment_identities (
    user_id TEXT PRIMARY KEY,
    unit    TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO experiment_meta (key, value) VALUES ('generation', 0);
"""


class SQLiteExperimentStore(SQLiteTransactions, SQLExperimentStore):
    """Tables next to the events and catalog in the event store's SQLite file. Thread-safe."""

    meta_table = "experiment_meta"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._open(sqlite_connect(self.path), SQLITE_SCHEMA)
