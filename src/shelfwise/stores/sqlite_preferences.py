"""Shoppers' explicit preferences on SQLite (by default in the event store's database file).

A write connection of its own and one read-only connection per thread (``Readers``), with ``secure_delete`` on when
asked, so erased preferences are overwritten in the file rather than left on free pages.
"""

from __future__ import annotations

from typing import Sequence

import orjson

from shelfwise.domain import Preferences
from shelfwise.stores.protocols import ShopperPreferences
from shelfwise.stores.sqlite import SQLiteRole

SCHEMA = """
CREATE TABLE IF NOT EXISTS shopper_preferences (
    shopper    TEXT PRIMARY KEY,
    doc        BLOB NOT NULL,
    updated_at REAL NOT NULL
);
"""


class SQLitePreferenceStore(SQLiteRole):
    """PreferenceStore on one SQLite file. Thread-safe."""

    def __init__(self, dsn: str, secure_delete: bool = True) -> None:
        super().__init__(dsn, SCHEMA, secure_delete)

    def preferences(self, shoppers: Sequence[str]) -> dict[str, ShopperPreferences]:
        out: dict[str, ShopperPreferences] = {}
        shoppers = list(dict.fromkeys(shoppers))
        db = self._readers.get() if shoppers else None
        for start in range(0, len(shoppers), 500):
            chunk = shoppers[start:start + 500]
            rows = db.execute("SELECT shopper, doc, updated_at FROM shopper_preferences WHERE shopper IN "
                              f"({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update((s, ShopperPreferences(s, Preferences.model_validate(orjson.loads(doc)), at))
                       for s, doc, at in rows)
        return out

    def set_preferences(self, record: ShopperPreferences) -> None:
        doc = orjson.dumps(record.preferences.model_dump(mode="json"))
        with self._lock:
            self._db.execute("INSERT INTO shopper_preferences VALUES (?, ?, ?) ON CONFLICT(shopper) DO UPDATE SET "
                             "doc = excluded.doc, updated_at = excluded.updated_at",
                             (record.shopper, doc, record.updated_at))

    def delete_preferences(self, shopper: str) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM shopper_preferences WHERE shopper = ?", (shopper,)).rowcount
