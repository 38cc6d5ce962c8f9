"""Shoppers' explicit preferences on PostgreSQL (by default in the event store's database; migration 3 of
``stores/postgres.py``). Same semantics as ``SQLitePreferenceStore``; a small pool of its own."""

from __future__ import annotations

from typing import Sequence

from psycopg.types.json import Jsonb

from shelfwise.domain import Preferences
from shelfwise.stores.postgres import PostgresRole
from shelfwise.stores.protocols import ShopperPreferences


class PostgresPreferenceStore(PostgresRole):
    """PreferenceStore on PostgreSQL. Thread-safe; shared by every replica."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, "shelfwise-preferences")

    def preferences(self, shoppers: Sequence[str]) -> dict[str, ShopperPreferences]:
        if not shoppers:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT shopper, doc, updated_at FROM shopper_preferences WHERE shopper = ANY(%s)",
                                (list(dict.fromkeys(shoppers)),)).fetchall()
        return {s: ShopperPreferences(s, Preferences.model_validate(doc), at) for s, doc, at in rows}

    def set_preferences(self, record: ShopperPreferences) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO shopper_preferences VALUES (%s, %s, %s) ON CONFLICT (shopper) DO UPDATE SET "
                         "doc = excluded.doc, updated_at = excluded.updated_at",
                         (record.shopper, Jsonb(record.preferences.model_dump(mode="json")), record.updated_at))

    def delete_preferences(self, shopper: str) -> int:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM shopper_preferences WHERE shopper = %s", (shopper,)).rowcount
