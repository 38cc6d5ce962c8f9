"""Versioned rule sets: a small ``RuleStore`` protocol, its SQLite backend (tables next to the catalog) and the
shared SQL of the PostgreSQL backend (``rules/pg.py``), picked by DSN (``rules.admin.open_rule_store``).

Every change is a new immutable version (author, time, comment). A rule set has at most one *live* (published)
version and at most one *shadow* version (a draft run beside the live one on a share of traffic). Rolling back
copies an old version into a new one and publishes it, so the history only grows. ``generation()`` changes on
every write; replicas compare it to reload rules without a restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Protocol, runtime_checkable

import orjson

from shelfwise.experiments.sql import SQLiteTransactions, _Exec
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
    """Versioned rule set documents. Implementations: SQLite (here), PostgreSQL (``rules/pg.py``)."""

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


class SQLRuleStore:
    """Everything but the connection handling (SQLite here, PostgreSQL in ``rules/pg.py``); subclasses provide
    ``_write()`` (one transaction, serialised with every other writer of the database) and ``_read()``."""

    def _write(self) -> ContextManager[_Exec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self) -> ContextManager[_Exec]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- writes --------------------------------------------------------------------------------------
    @staticmethod
    def _audit(x: _Exec, rid: str, version: int | None, action: str, author: str, comment: str, now: float) -> None:
        x.run("INSERT INTO ruleset_audit (ruleset_id, version, action, author, comment, ts) VALUES (?,?,?,?,?,?)",
              (rid, version, action, author, comment, now))
        x.run("UPDATE rules_meta SET value = value + 1 WHERE key = 'generation'")

    def save(self, ruleset_id: str, document: dict[str, Any], author: str, comment: str,
             based_on: int | None = None) -> RuleVersion:
        now = time.time()
        with self._write() as x:
            x.run("INSERT INTO rulesets (id, created, updated) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
                  "SET updated = excluded.updated", (ruleset_id, now, now))
            (latest,) = x.one("SELECT coalesce(max(version), 0) FROM ruleset_versions WHERE ruleset_id = ?",
                              (ruleset_id,))
            version = latest + 1
            x.run("INSERT INTO ruleset_versions (ruleset_id, version, document, author, comment, created, based_on) "
                  "VALUES (?,?,?,?,?,?,?)", (ruleset_id, version, orjson.dumps(document), author, comment, now,
                                             based_on))
            self._audit(x, ruleset_id, version, "save", author, comment, now)
        return RuleVersion(ruleset_id, version, document, author, comment, now, None, based_on)

    def publish(self, ruleset_id: str, version: int, author: str, comment: str, action: str = "publish") -> RuleSetState:
        now = time.time()
        with self._write() as x:
            self._require(x, ruleset_id, version)
            x.run("UPDATE ruleset_versions SET published_at = coalesce(published_at, ?) "
                  "WHERE ruleset_id = ? AND version = ?", (now, ruleset_id, version))
            x.run("UPDATE rulesets SET live_version = ?, updated = ?, shadow_version = CASE WHEN shadow_version "
                  "<= ? THEN NULL ELSE shadow_version END WHERE id = ?", (version, now, version, ruleset_id))
            self._audit(x, ruleset_id, version, action, author, comment, now)
        return self.state(ruleset_id)

    def set_shadow(self, ruleset_id: str, version: int | None, share: float | None, author: str,
                   comment: str = "") -> RuleSetState:
        now = time.time()
        with self._write() as x:
            if version is not None:
                self._require(x, ruleset_id, version)
            elif x.one("SELECT 1 FROM rulesets WHERE id = ?", (ruleset_id,)) is None:
                raise NotFound(f"no rule set {ruleset_id!r}")
            x.run("UPDATE rulesets SET shadow_version = ?, shadow_share = ?, updated = ? WHERE id = ?",
                  (version, share if version is not None else None, now, ruleset_id))
            self._audit(x, ruleset_id, version, "shadow" if version is not None else "shadow_stop", author,
                        comment, now)
        return self.state(ruleset_id)

    @staticmethod
    def _require(x: _Exec, rid: str, version: int) -> None:
        if x.one("SELECT 1 FROM ruleset_versions WHERE ruleset_id = ? AND version = ?", (rid, version)) is None:
            if x.one("SELECT 1 FROM rulesets WHERE id = ?", (rid,)) is None:
                raise NotFound(f"no rule set {rid!r}")
            raise NotFound(f"rule set {rid!r} has no version {version}")

    # ---- reads ---------------------------------------------------------------------------------------
    _STATE = ("SELECT r.id, r.live_version, r.shadow_version, r.shadow_share, "
              "(SELECT max(version) FROM ruleset_versions v WHERE v.ruleset_id = r.id), r.created, r.updated "
              "FROM rulesets r")

    def states(self) -> list[RuleSetState]:
        with self._read() as x:
            rows = x.all(self._STATE + " ORDER BY r.id")
        return [RuleSetState(*row) for row in rows]

    def state(self, ruleset_id: str) -> RuleSetState:
        with self._read() as x:
            row = x.one(self._STATE + " WHERE r.id = ?", (ruleset_id,))
        if row is None:
            raise NotFound(f"no rule set {ruleset_id!r}")
        return RuleSetState(*row)

    _VERSION = ("SELECT ruleset_id, version, document, author, comment, created, published_at, based_on "
                "FROM ruleset_versions")

    def version(self, ruleset_id: str, version: int | None = None) -> RuleVersion:
        with self._read() as x:
            if version is None:
                row = x.one(self._VERSION + " WHERE ruleset_id = ? ORDER BY version DESC LIMIT 1", (ruleset_id,))
            else:
                row = x.one(self._VERSION + " WHERE ruleset_id = ? AND version = ?", (ruleset_id, version))
        if row is None:
            self.state(ruleset_id)  # raises when the rule set does not exist
            raise NotFound(f"rule set {ruleset_id!r} has no version {version}")
        return _version(row)

    def versions(self, ruleset_id: str) -> list[RuleVersion]:
        with self._read() as x:
            rows = x.all(self._VERSION + " WHERE ruleset_id = ? ORDER BY version", (ruleset_id,))
        if not rows:
            self.state(ruleset_id)
        return [_version(r) for r in rows]

    def audit(self, ruleset_id: str) -> list[AuditEntry]:
        with self._read() as x:
            rows = x.all("SELECT ruleset_id, version, action, author, comment, ts FROM ruleset_audit "
                         "WHERE ruleset_id = ? ORDER BY seq", (ruleset_id,))
        return [AuditEntry(*r) for r in rows]

    def generation(self) -> int:
        with self._read() as x:
            return x.one("SELECT value FROM rules_meta WHERE key = 'generation'")[0]


class SQLiteRuleStore(SQLiteTransactions, SQLRuleStore):
    """Tables next to the events and catalog in the event store's SQLite file. Thread-safe."""

    meta_table = "rules_meta"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._open(connect(self.path, secure_delete=False), SCHEMA)  # holds no shopper data


def _version(row: tuple) -> RuleVersion:
    rid, version, doc, author, comment, created, published, based_on = row
    return RuleVersion(rid, version, orjson.loads(doc), author, comment, created, published, based_on)
