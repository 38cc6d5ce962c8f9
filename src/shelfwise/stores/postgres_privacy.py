"""Key store, consent store and erasure ledger on PostgreSQL, in the event store's database (migration 2 of
``stores/postgres.py``). Same semantics as ``SQLitePrivacyStore``; a small pool of its own."""

from __future__ import annotations

import os
import time
from typing import Sequence

import psycopg
from psycopg.types.json import Jsonb

from shelfwise.stores.postgres import PostgresRole
from shelfwise.stores.privacy_common import (
    KEY_COLUMNS, consent_from_row, consent_row, key_from_row, key_row, marker, merge_consent,
)
from shelfwise.stores.protocols import ApiKey, Consent, KeyExists

_CONSENT_COLUMNS = "shopper, personalisation, analytics, experiments, updated_at, source"


class PostgresPrivacyStore(PostgresRole):
    """KeyStore + ConsentStore + ErasureLedger on PostgreSQL. Thread-safe; shared by every replica."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, "shelfwise-privacy")
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO privacy_meta VALUES ('marker_salt', %s), ('keys_generation', '0') "
                         "ON CONFLICT (key) DO NOTHING", (os.urandom(32).hex(),))
            self._salt = bytes.fromhex(conn.execute(
                "SELECT value FROM privacy_meta WHERE key = 'marker_salt'").fetchone()[0])

    # ---- keys --------------------------------------------------------------------------------------------
    def add_key(self, key: ApiKey) -> None:
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", key_row(key))
                self._bump(conn)
        except psycopg.errors.UniqueViolation:
            raise KeyExists(f"an active key named {key.name!r} (or with id {key.key_id}) already exists") from None

    @staticmethod
    def _bump(conn) -> None:
        conn.execute("UPDATE privacy_meta SET value = (value::bigint + 1)::text WHERE key = 'keys_generation'")

    def get_key(self, key_id: str) -> ApiKey | None:
        with self.pool.connection() as conn:
            row = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
        return key_from_row(row) if row else None

    def list_keys(self, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self.pool.connection() as conn:
            rows = conn.execute(f"SELECT {KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at, key_id").fetchall()
        return [key_from_row(r) for r in rows]

    def revoke_key(self, id_or_name: str, at: float) -> ApiKey | None:
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(f"UPDATE api_keys SET revoked_at = %s WHERE key_id = (SELECT key_id FROM api_keys "
                               "WHERE revoked_at IS NULL AND (key_id = %s OR name = %s) ORDER BY key_id = %s DESC "
                               f"LIMIT 1 FOR UPDATE) RETURNING {KEY_COLUMNS}",
                               (at, id_or_name, id_or_name, id_or_name)).fetchone()
            if row is None:
                return None
            self._bump(conn)
        return key_from_row(row)

    def keys_generation(self) -> int:
        with self.pool.connection() as conn:
            return int(conn.execute("SELECT value FROM privacy_meta WHERE key = 'keys_generation'").fetchone()[0])

    # ---- consent -----------------------------------------------------------------------------------------
    def consents(self, shoppers: Sequence[str]) -> dict[str, Consent]:
        if not shoppers:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute(f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE shopper = ANY(%s)",
                                (list(dict.fromkeys(shoppers)),)).fetchall()
        return {r[0]: consent_from_row(r) for r in rows}

    def set_consents(self, updates: Sequence[Consent]) -> dict[str, tuple[Consent | None, Consent]]:
        if not updates:
            return {}
        shoppers = sorted({u.shopper for u in updates})
        with self.pool.connection() as conn, conn.transaction():
            # lock the shoppers' rows (in a fixed order: no deadlock between concurrent batches); new ones are
            # inserted empty first so that two writers of a brand-new shopper also serialise
            conn.execute("INSERT INTO consents (shopper, updated_at, source) SELECT s, '-infinity', 'api' "
                         "FROM unnest(%s::text[]) s ORDER BY s ON CONFLICT (shopper) DO NOTHING", (shoppers,))
            rows = conn.execute(f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE shopper = ANY(%s) ORDER BY shopper "
                                "FOR UPDATE", (shoppers,)).fetchall()
            before = {r[0]: consent_from_row(r) for r in rows if r[4] != float("-inf")}
            current = dict(before)
            out: dict[str, tuple[Consent | None, Consent]] = {}
            for u in updates:
                current[u.shopper] = merge_consent(current.get(u.shopper), u)
                out[u.shopper] = (before.get(u.shopper), current[u.shopper])
            conn.cursor().executemany(
                "UPDATE consents SET personalisation = %s, analytics = %s, experiments = %s, updated_at = %s, "
                "source = %s WHERE shopper = %s",
                [consent_row(c)[1:] + (c.shopper,) for _, c in out.values()])
        return out

    def delete_consent(self, shopper: str) -> int:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM consents WHERE shopper = %s", (shopper,)).rowcount

    def add_counts(self, counts: dict[tuple[str, str, int], int]) -> None:
        if not counts:
            return
        rows = sorted((d, i, t, n) for (d, i, t), n in counts.items())
        with self.pool.connection() as conn, conn.transaction():
            conn.cursor().executemany("INSERT INTO anonymous_counts VALUES (%s,%s,%s,%s) ON CONFLICT (day, item_id, "
                                      "type) DO UPDATE SET n = anonymous_counts.n + excluded.n", rows)

    def counts(self, since_day: str) -> list[tuple[str, str, int, int]]:
        with self.pool.connection() as conn:
            return [tuple(r) for r in conn.execute(
                "SELECT day, item_id, type, n FROM anonymous_counts WHERE day >= %s ORDER BY day, item_id, type",
                (since_day,)).fetchall()]

    # ---- erasure ledger ----------------------------------------------------------------------------------
    def forget(self, shopper: str, at: float) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO forgotten VALUES (%s, %s) ON CONFLICT (marker) DO UPDATE SET "
                         "at = greatest(forgotten.at, excluded.at)", (marker(self._salt, shopper), at))

    def forgotten(self, shoppers: Sequence[str]) -> dict[str, float]:
        if not shoppers:
            return {}
        marks = {marker(self._salt, s): s for s in dict.fromkeys(shoppers)}
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT marker, at FROM forgotten WHERE marker = ANY(%s)", (list(marks),)).fetchall()
        return {marks[m]: at for m, at in rows}

    def latest_forget(self) -> float:
        with self.pool.connection() as conn:
            return float(conn.execute("SELECT coalesce(max(at), 0) FROM forgotten").fetchone()[0])

    def prune_forgotten(self, before: float) -> int:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM forgotten WHERE at < %s", (before,)).rowcount

    def save_receipt(self, receipt: dict) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO erasure_receipts VALUES (%s, %s, %s)",
                         (receipt["receipt_id"], time.time(), Jsonb(receipt)))

    def receipt(self, receipt_id: str) -> dict | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT doc FROM erasure_receipts WHERE receipt_id = %s", (receipt_id,)).fetchone()
        return row[0] if row else None

    def receipts(self, limit: int = 100) -> list[dict]:
        with self.pool.connection() as conn:
            return [r[0] for r in conn.execute("SELECT doc FROM erasure_receipts ORDER BY created_at DESC LIMIT %s",
                                               (limit,)).fetchall()]
