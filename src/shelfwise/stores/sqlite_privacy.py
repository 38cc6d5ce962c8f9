"""Key store, consent store and erasure ledger on SQLite, in the event store's database file.

A connection of its own (WAL: reads never wait for an ingest transaction), with ``secure_delete`` on when asked,
so erased consent records and markers are overwritten in the file rather than left on free pages.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Sequence

import orjson

from shelfwise.stores.privacy_common import (
    KEY_COLUMNS, consent_from_row, consent_row, key_from_row, key_row, marker, merge_consent,
)
from shelfwise.stores.protocols import ApiKey, Consent, KeyExists
from shelfwise.stores.sqlite import SQLiteRole

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  REAL NOT NULL,
    origins     TEXT NOT NULL,
    rate        REAL,
    revoked_at  REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS consents (
    shopper         TEXT PRIMARY KEY,
    personalisation TEXT,
    analytics       TEXT,
    experiments     TEXT,
    updated_at      REAL NOT NULL,
    source          TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anonymous_counts (
    day     TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type    INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (day, item_id, type)
);
CREATE TABLE IF NOT EXISTS forgotten (marker TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS forgotten_at ON forgotten (at);
CREATE TABLE IF NOT EXISTS erasure_receipts (receipt_id TEXT PRIMARY KEY, created_at REAL NOT NULL, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS privacy_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLitePrivacyStore(SQLiteRole):
    """KeyStore + ConsentStore + ErasureLedger on one SQLite file. Thread-safe."""

    def __init__(self, dsn: str, secure_delete: bool = True) -> None:
        super().__init__(dsn, SCHEMA, secure_delete)
        self._db.execute("INSERT OR IGNORE INTO privacy_meta (key, value) VALUES ('marker_salt', ?)",
                         (os.urandom(32).hex(),))
        self._db.execute("INSERT OR IGNORE INTO privacy_meta (key, value) VALUES ('keys_generation', '0')")
        self._salt = bytes.fromhex(self._db.execute(
            "SELECT value FROM privacy_meta WHERE key = 'marker_salt'").fetchone()[0])

    def _write(self, fn):
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                out = fn(cur)
                cur.execute("COMMIT")
                return out
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # ---- keys --------------------------------------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        def go(cur):
            try:
                cur.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", key_row(key))
            except sqlite3.IntegrityError:
                raise KeyExists(f"an active key named {key.name!r} (or with id {key.key_id}) already exists") from None
            cur.execute("UPDATE privacy_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'keys_generation'")
        self._write(go)

    def get_key(self, key_id: str) -> ApiKey | None:
        row = self._readers.get().execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return key_from_row(row) if row else None

    def list_keys(self, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self._readers.get().execute(f"SELECT {KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, key_id")
        return [key_from_row(r) for r in rows.fetchall()]

    def revoke_key(self, id_or_name: str, at: float) -> ApiKey | None:
        def go(cur):
            row = cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL AND (key_id = ? OR "
                              "name = ?) ORDER BY key_id = ? DESC LIMIT 1", (id_or_name, id_or_name,
                                                                            id_or_name)).fetchone()
            if row is None:
                return None
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (at, row[0]))
            cur.execute("UPDATE privacy_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'keys_generation'")
            return key_from_row(row[:-1] + (at,))
        return self._write(go)

    def keys_generation(self) -> int:
        db = self._readers.get()
        return int(db.execute("SELECT value FROM privacy_meta WHERE key = 'keys_generation'").fetchone()[0])

    # ---- consent -----------------------------------------------------------------------------------------
    def _consents(self, cur, shoppers: Sequence[str]) -> dict[str, Consent]:
        out: dict[str, Consent] = {}
        shoppers = list(dict.fromkeys(shoppers))
        for start in range(0, len(shoppers), 500):
            chunk = shoppers[start:start + 500]
            rows = cur.execute("SELECT shopper, personalisation, analytics, experiments, updated_at, source FROM "
                               f"consents WHERE shopper IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update((r[0], consent_from_row(r)) for r in rows)
        return out

    def consents(self, shoppers: Sequence[str]) -> dict[str, Consent]:
        if not shoppers:
            return {}
        return self._consents(self._readers.get(), shoppers)

    def set_consents(self, updates: Sequence[Consent]) -> dict[str, tuple[Consent | None, Consent]]:
        if not updates:
            return {}

        def go(cur):
            before = self._consents(cur, [u.shopper for u in updates])
            out: dict[str, tuple[Consent | None, Consent]] = {}
            current = dict(before)
            for u in updates:
                current[u.shopper] = merge_consent(current.get(u.shopper), u)
                out[u.shopper] = (before.get(u.shopper), current[u.shopper])
            cur.executemany("INSERT INTO consents VALUES (?,?,?,?,?,?) ON CONFLICT(shopper) DO UPDATE SET "
                            "personalisation = excluded.personalisation, analytics = excluded.analytics, "
                            "experiments = excluded.experiments, updated_at = excluded.updated_at, "
                            "source = excluded.source", [consent_row(after) for _, after in out.values()])
            return out
        return self._write(go)

    def delete_consent(self, shopper: str) -> int:
        return self._write(lambda cur: cur.execute("DELETE FROM consents WHERE shopper = ?", (shopper,)).rowcount)

    def add_counts(self, counts: dict[tuple[str, str, int], int]) -> None:
        if counts:
            self._write(lambda cur: cur.executemany(
                "INSERT INTO anonymous_counts VALUES (?,?,?,?) ON CONFLICT(day, item_id, type) DO UPDATE SET "
                "n = n + excluded.n", [(d, i, t, n) for (d, i, t), n in counts.items()]))

    def counts(self, since_day: str) -> list[tuple[str, str, int, int]]:
        return [tuple(r) for r in self._readers.get().execute(
            "SELECT day, item_id, type, n FROM anonymous_counts WHERE day >= ? ORDER BY day, item_id, type",
            (since_day,)).fetchall()]

    # ---- erasure ledger ----------------------------------------------------------------------------------
    def forget(self, shopper: str, at: float) -> None:
        self._write(lambda cur: cur.execute(
            "INSERT INTO forgotten VALUES (?, ?) ON CONFLICT(marker) DO UPDATE SET at = max(at, excluded.at)",
            (marker(self._salt, shopper), at)))

    def forgotten(self, shoppers: Sequence[str]) -> dict[str, float]:
        if not shoppers:
            return {}
        marks = {marker(self._salt, s): s for s in dict.fromkeys(shoppers)}
        out: dict[str, float] = {}
        keys = list(marks)
        db = self._readers.get()
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for m, at in db.execute(f"SELECT marker, at FROM forgotten WHERE marker IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall():
                out[marks[m]] = at
        return out

    def latest_forget(self) -> float:
        return float(self._readers.get().execute("SELECT coalesce(max(at), 0) FROM forgotten").fetchone()[0])

    def prune_forgotten(self, before: float) -> int:
        return self._write(lambda cur: cur.execute("DELETE FROM forgotten WHERE at < ?", (before,)).rowcount)

    def save_receipt(self, receipt: dict) -> None:
        self._write(lambda cur: cur.execute("INSERT INTO erasure_receipts VALUES (?, ?, ?)",
                                            (receipt["receipt_id"], time.time(), orjson.dumps(receipt))))

    def receipt(self, receipt_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM erasure_receipts WHERE receipt_id = ?", (receipt_id,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def receipts(self, limit: int = 100) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM erasure_receipts ORDER BY created_at DESC LIMIT ?", (limit,))
            return [orjson.loads(r[0]) for r in rows]
