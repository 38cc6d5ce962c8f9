"""SQL helpers shared by the experiment store and log backends: a cursor with ``?`` placeholders (rewritten for
PostgreSQL) and the SQLite connection settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Sequence


class _Exec:
    """A cursor with ``?`` placeholders (rewritten for PostgreSQL)."""

    def __init__(self, cur: Any, pg: bool):
        self.cur, self.pg = cur, pg

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.cur.execute(self._sql(sql), params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.cur.execute(self._sql(sql), params).fetchone()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.cur.execute(self._sql(sql), params).rowcount


def sqlite_connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


def sqlite_path(dsn: str) -> Path:
    if not dsn.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite DSN: {dsn!r} (expected sqlite:///path/to/file.db)")
    return Path(dsn.removeprefix("sqlite:///"))


def scheme(dsn: str) -> str:
    return dsn.split("://", 1)[0] if "://" in dsn else ""
