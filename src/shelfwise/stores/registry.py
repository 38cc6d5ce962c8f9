"""Model registry on SQL: the SQLite file beside the model store (embedded) or the PostgreSQL database (scale-out).

Three tables: ``model_versions`` (one row per trained version: status, and a JSON document with its held-out
metrics, data window, settings, gate result and note), ``model_rollout`` (one row: the current staged rollout, with a
revision for compare-and-set, so two replicas never both advance or roll back one stage) and ``model_audit`` (who
did what). Every write is one statement; the SQL is shared, each backend only runs it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from shelfwise.stores.protocols import ModelVersion, RegistryEntry, Rollout, VERSION_STATES

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    version    TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status     TEXT NOT NULL,
    doc        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS model_rollout (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    doc      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS model_audit (
    ts      REAL NOT NULL,
    action  TEXT NOT NULL,
    version TEXT NOT NULL,
    author  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS model_audit_ts ON model_audit (ts);
"""

_DOC_FIELDS = ("metrics", "window", "settings", "gates", "note")


def _version(row: tuple) -> ModelVersion:
    version, created, updated, status, doc = row
    d = orjson.loads(bytes(doc) if not isinstance(doc, (bytes, str)) else doc)
    return ModelVersion(version, created, status, updated_at=updated, **{k: d.get(k, {} if k != "note" else "")
                                                                         for k in _DOC_FIELDS})


def _doc(record: ModelVersion) -> bytes:
    return orjson.dumps({k: getattr(record, k) for k in _DOC_FIELDS}, option=orjson.OPT_SERIALIZE_NUMPY)


class SQLModelRegistry:
    """Everything but running a statement: ``_run(sql, params) -> (rows, rowcount)`` (``?`` placeholders)."""

    def _run(self, sql: str, params: tuple = ()) -> tuple[list[tuple], int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def register(self, record: ModelVersion) -> ModelVersion:
        now = time.time()
        _, n = self._run("INSERT INTO model_versions (version, created_at, updated_at, status, doc) VALUES "
                         "(?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
                         (record.version, record.created_at, now, record.status, _doc(record)))
        if n == 0:
            raise ValueError(f"model version {record.version!r} is already registered")
        return self.get(record.version)  # type: ignore[return-value]

    def get(self, version: str) -> ModelVersion | None:
        rows, _ = self._run("SELECT version, created_at, updated_at, status, doc FROM model_versions WHERE "
                            "version = ?", (version,))
        return _version(rows[0]) if rows else None

    def list(self, limit: int = 100) -> list[ModelVersion]:
        rows, _ = self._run("SELECT version, created_at, updated_at, status, doc FROM model_versions ORDER BY "
                            "created_at DESC, version DESC LIMIT ?", (int(limit),))
        return [_version(r) for r in rows]

    def update(self, version: str, *, status: str | None = None, note: str | None = None,
               gates: dict | None = None) -> ModelVersion:
        if status is not None and status not in VERSION_STATES:
            raise ValueError(f"unknown status {status!r}; known: {', '.join(VERSION_STATES)}")
        with self._update_lock:  # read-modify-write of the document (the status is the only field two writers race
            current = self.get(version)  # on, and it is written in the same statement)
            if current is None:
                raise KeyError(version)
            fields: dict[str, Any] = {k: getattr(current, k) for k in _DOC_FIELDS}
            if note is not None:
                fields["note"] = note
            if gates is not None:
                fields["gates"] = gates
            self._run("UPDATE model_versions SET status = ?, doc = ?, updated_at = ? WHERE version = ?",
                      (status or current.status, orjson.dumps(fields), time.time(), version))
        return self.get(version)  # type: ignore[return-value]

    def rollout(self) -> Rollout | None:
        rows, _ = self._run("SELECT revision, doc FROM model_rollout WHERE id = 1")
        if not rows:
            return None
        revision, doc = rows[0]
        d = orjson.loads(bytes(doc) if not isinstance(doc, (bytes, str)) else doc)
        return Rollout(**{**d, "revision": revision})

    def save_rollout(self, rollout: Rollout, expected_revision: int) -> Rollout | None:
        doc = orjson.dumps({k: v for k, v in rollout.view().items() if k != "revision"})
        if expected_revision == 0:
            _, n = self._run("INSERT INTO model_rollout (id, revision, doc) VALUES (1, 1, ?) ON CONFLICT (id) DO "
                             "NOTHING", (doc,))
        else:
            _, n = self._run("UPDATE model_rollout SET revision = revision + 1, doc = ? WHERE id = 1 AND "
                             "revision = ?", (doc, expected_revision))
        if n == 0:
            return None
        from dataclasses import replace

        return replace(rollout, revision=expected_revision + 1)

    def audit(self, action: str, version: str, author: str, detail: str = "") -> None:
        self._run("INSERT INTO model_audit (ts, action, version, author, detail) VALUES (?, ?, ?, ?, ?)",
                  (time.time(), action, version, author, detail))

    def history(self, limit: int = 100) -> list[RegistryEntry]:
        rows, _ = self._run("SELECT ts, action, version, author, detail FROM model_audit ORDER BY ts DESC LIMIT ?",
                            (int(limit),))
        return [RegistryEntry(*r) for r in rows]


class SQLiteModelRegistry(SQLModelRegistry):
    """ModelRegistry on a SQLite file (by default ``registry.db`` in the model store's directory). Thread-safe."""

    def __init__(self, dsn: str) -> None:
        from shelfwise.stores.sqlite import SQLiteRole

        self._role = SQLiteRole(dsn, SQLITE_SCHEMA, secure_delete=False)
        self._update_lock = threading.RLock()

    def _run(self, sql: str, params: tuple = ()) -> tuple[list[tuple], int]:
        role = self._role
        if sql.lstrip().upper().startswith("SELECT"):
            return role._readers.get().execute(sql, params).fetchall(), 0
        with role._lock:
            cur = role._db.execute(sql, params)
            return [], cur.rowcount

    def close(self) -> None:
        self._role.close()


class PostgresModelRegistry(SQLModelRegistry):
    """ModelRegistry on PostgreSQL (migration 5 of ``stores/postgres.py``): shared by every replica."""

    def __init__(self, dsn: str) -> None:
        from shelfwise.stores.postgres import PostgresRole

        self._role = PostgresRole(dsn, "shelfwise-registry")
        self._update_lock = threading.RLock()  # one process; across processes the status write is one statement

    def _run(self, sql: str, params: tuple = ()) -> tuple[list[tuple], int]:
        with self._role.pool.connection() as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            rows = cur.fetchall() if cur.description is not None else []
            return rows, cur.rowcount

    def close(self) -> None:
        self._role.close()
