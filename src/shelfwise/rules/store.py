"""Versioned rule sets: a small ``RuleStore`` protocol and its SQLite backend (tables next to the catalog).

Every change is a new immutable version (author, time, comment). A rule set has at most one *live* (published)
version and at most one *shadow* version (a draft run beside the live one on a share of traffic). Rolling back
copies an old version into a new one and publishes it, so the history only grows. ``generation()`` changes on
every write; replicas compare it to reload rules without a restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from shelfwise.stores.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS rulesets (
    id             TEXT PRIMARY KEY,
    live_version   INTEGER,
    shadow_version INTEGER,
    shadow_share   REAL,
    created        REAL NOT NULL,
    updated        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ruleset_versions (
    ruleset_id   TEXT NOT NULL REFERENCES rulesets(id),
    version      INTEGER NOT NULL,
    document     BLOB NOT NULL,
    author       TEXT NOT NULL,
    comment      TEXT NOT NULL,
    created      REAL NOT NULL,
    published_at REAL,
    based_on     INTEGER,
    PRIMARY KEY (ruleset_id, version)
);
CREATE TABLE IF NOT EXISTS ruleset_audit (
    seq        INTEGER PRIMARY KEY,
    ruleset_id TEXT NOT NULL,
    version    INTEGER,
    action     TEXT NOT NULL,
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL,
    ts         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rules_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO rules_meta (key, value) VALUES ('generation', 0);
"""


@dataclass(frozen=True)
class RuleVersion:
    ruleset_id: str
    version: int
    document: dict[str, Any]
    author: str
    comment: str
    created_at: float
    published_at: float | None  # first time this version went live
    based_on: int | None  # the version a rollback copied


@dataclass(frozen=True)
class RuleSetState:
    id: str
    live_version: int | None
    shadow_version: int | None
    shadow_share: float | None  # None: the settings' default
    latest_version: int
    created_at: float
    updated_at: float

    def status(self, v: RuleVersion) -> str:
        if v.version == self.live_version:
            return "published"
        if v.published_at is not None:
            return "retired"
        return "draft"


@dataclass(frozen=True)
class AuditEntry:
    ruleset_id: str
    version: int | None
    action: str  # save | publish | rollback | shadow | shadow_stop
    author: str
    comment: str
    ts: float


class NotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@runtime_checkable
class RuleStore(Protocol):
    """Versioned rule set documents. Implementations: SQLite (here); a PostgreSQL one maps table for table."""

    def save(self, ruleset_id: str, document: dict[str, Any], author: str, comment: str,
             based_on: int | None = None) -> RuleVersion:
        """Store a new version (a draft); versions count from 1 per rule set."""

    def publish(self, ruleset_id: str, version: int, author: str, comment: str, action: str = "publish") -> RuleSetState:
        """Make a version live (clears the shadow when it is that version)."""

    def set_shadow(self, ruleset_id: str, version: int | None, share: float | None, author: str,
                   comment: str = "") -> RuleSetState:
        """Run a version in shadow on ``share`` of traffic (None: the default share); version None stops it."""

    def states(self) -> list[RuleSetState]: ...

    def version(self, ruleset_id: str, version: int | None = None) -> RuleVersion:
        """One version (the latest when None); raises NotFound."""

    def versions(self, ruleset_id: str) -> list[RuleVersion]: ...

    def audit(self, ruleset_id: str) -> list[AuditEntry]: ...

    def generation(self) -> int:
        """A number that changes whenever anything in the store changes."""

    def close(self) -> None: ...


class SQLiteRuleStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = connect(self.path, secure_delete=False)  # holds no shopper data
        with self._lock:
            self._db.executescript(SCHEMA)
        self._data_version = -1
        self._generation = -1

    # ---- writes --------------------------------------------------------------------------------------
    def _tx(self):
        return _Tx(self._db, self._lock)

    def _bump(self, cur: sqlite3.Cursor) -> None:
        cur.execute("UPDATE rules_meta SET value = value + 1 WHERE key = 'generation'")
        self._generation = -1  # our own commits do not change our PRAGMA data_version

    def _audit(self, cur: sqlite3.Cursor, rid: str, version: int | None, action: str, author: str, comment: str,
               now: float) -> None:
        cur.execute("INSERT INTO ruleset_audit (ruleset_id, version, action, author, comment, ts) VALUES (?,?,?,?,?,?)",
                    (rid, version, action, author, comment, now))

    def save(self, ruleset_id: str, document: dict[str, Any], author: str, comment: str,
             based_on: int | None = None) -> RuleVersion:
        now = time.time()
        with self._tx() as cur:
            cur.execute("INSERT INTO rulesets (id, created, updated) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                        "SET updated = excluded.updated", (ruleset_id, now, now))
            (latest,) = cur.execute("SELECT coalesce(max(version), 0) FROM ruleset_versions WHERE ruleset_id = ?",
                                    (ruleset_id,)).fetchone()
            version = latest + 1
            cur.execute("INSERT INTO ruleset_versions (ruleset_id, version, document, author, comment, created, "
                        "based_on) VALUES (?,?,?,?,?,?,?)",
                        (ruleset_id, version, orjson.dumps(document), author, comment, now, based_on))
            self._audit(cur, ruleset_id, version, "save", author, comment, now)
            self._bump(cur)
        return RuleVersion(ruleset_id, version, document, author, comment, now, None, based_on)

    def publish(self, ruleset_id: str, version: int, author: str, comment: str, action: str = "publish") -> RuleSetState:
        now = time.time()
        with self._tx() as cur:
            self._require(cur, ruleset_id, version)
            cur.execute("UPDATE ruleset_versions SET published_at = coalesce(published_at, ?) "
                        "WHERE ruleset_id = ? AND version = ?", (now, ruleset_id, version))
            cur.execute("UPDATE rulesets SET live_version = ?, updated = ?, shadow_version = CASE WHEN shadow_version "
                        "<= ? THEN NULL ELSE shadow_version END WHERE id = ?", (version, now, version, ruleset_id))
            self._audit(cur, ruleset_id, version, action, author, comment, now)
            self._bump(cur)
        return self.state(ruleset_id)

    def set_shadow(self, ruleset_id: str, version: int | None, share: float | None, author: str,
                   comment: str = "") -> RuleSetState:
        now = time.time()
        with self._tx() as cur:
            if version is not None:
                self._require(cur, ruleset_id, version)
            elif cur.execute("SELECT 1 FROM rulesets WHERE id = ?", (ruleset_id,)).fetchone() is None:
                raise NotFound(f"no rule set {ruleset_id!r}")
            cur.execute("UPDATE rulesets SET shadow_version = ?, shadow_share = ?, updated = ? WHERE id = ?",
                        (version, share if version is not None else None, now, ruleset_id))
            self._audit(cur, ruleset_id, version, "shadow" if version is not None else "shadow_stop", author,
                        comment, now)
            self._bump(cur)
        return self.state(ruleset_id)

    def _require(self, cur: sqlite3.Cursor, rid: str, version: int) -> None:
        if cur.execute("SELECT 1 FROM ruleset_versions WHERE ruleset_id = ? AND version = ?",
                       (rid, version)).fetchone() is None:
            if cur.execute("SELECT 1 FROM rulesets WHERE id = ?", (rid,)).fetchone() is None:
                raise NotFound(f"no rule set {rid!r}")
            raise NotFound(f"rule set {rid!r} has no version {version}")

    # ---- reads ---------------------------------------------------------------------------------------
    _STATE = ("SELECT r.id, r.live_version, r.shadow_version, r.shadow_share, "
              "(SELECT max(version) FROM ruleset_versions v WHERE v.ruleset_id = r.id), r.created, r.updated "
              "FROM rulesets r")

    def states(self) -> list[RuleSetState]:
        with self._lock:
            rows = self._db.execute(self._STATE + " ORDER BY r.id").fetchall()
        return [RuleSetState(*row) for row in rows]

    def state(self, ruleset_id: str) -> RuleSetState:
        with self._lock:
            row = self._db.execute(self._STATE + " WHERE r.id = ?", (ruleset_id,)).fetchone()
        if row is None:
            raise NotFound(f"no rule set {ruleset_id!r}")
        return RuleSetState(*row)

    _VERSION = ("SELECT ruleset_id, version, document, author, comment, created, published_at, based_on "
                "FROM ruleset_versions")

    def version(self, ruleset_id: str, version: int | None = None) -> RuleVersion:
        with self._lock:
            if version is None:
                row = self._db.execute(self._VERSION + " WHERE ruleset_id = ? ORDER BY version DESC LIMIT 1",
                                       (ruleset_id,)).fetchone()
            else:
                row = self._db.execute(self._VERSION + " WHERE ruleset_id = ? AND version = ?",
                                       (ruleset_id, version)).fetchone()
        if row is None:
            self.state(ruleset_id)  # raises when the rule set does not exist
            raise NotFound(f"rule set {ruleset_id!r} has no version {version}")
        return _version(row)

    def versions(self, ruleset_id: str) -> list[RuleVersion]:
        with self._lock:
            rows = self._db.execute(self._VERSION + " WHERE ruleset_id = ? ORDER BY version", (ruleset_id,)).fetchall()
        if not rows:
            self.state(ruleset_id)
        return [_version(r) for r in rows]

    def audit(self, ruleset_id: str) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute("SELECT ruleset_id, version, action, author, comment, ts FROM ruleset_audit "
                                    "WHERE ruleset_id = ? ORDER BY seq", (ruleset_id,)).fetchall()
        return [AuditEntry(*r) for r in rows]

    def generation(self) -> int:
        """Cheap when nothing changed: ``PRAGMA data_version`` first, the counter only after a commit elsewhere."""
        with self._lock:
            (dv,) = self._db.execute("PRAGMA data_version").fetchone()
            if dv != self._data_version or self._generation < 0:
                self._data_version = dv
                (self._generation,) = self._db.execute(
                    "SELECT value FROM rules_meta WHERE key = 'generation'").fetchone()
            return self._generation

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Tx:
    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Cursor:
        self.lock.acquire()
        self.cur = self.db.cursor()
        self.cur.execute("BEGIN IMMEDIATE")
        return self.cur

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.cur.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()


def _version(row: tuple) -> RuleVersion:
    rid, version, doc, author, comment, created, published, based_on = row
    return RuleVersion(rid, version, orjson.loads(doc), author, comment, created, published, based_on)
