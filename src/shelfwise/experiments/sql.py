"""SQL helpers shared by the experiment store and log backends: a cursor with ``?`` placeholders (rewritten for
PostgreSQL) and the SQLite connection settings."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence


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


class SQLiteTransactions:
    """One SQLite connection behind a lock, for the stores whose SQL lives in a shared class (experiments, rule
    sets): ``_write`` (``BEGIN IMMEDIATE`` … ``COMMIT``), ``_read``, and ``generation()``, the store's change counter
    (``value`` of key ``generation`` in ``meta_table``), cheap when nothing changed: ``PRAGMA data_version`` first,
    the counter only after a commit elsewhere (this connection's own commits reset it)."""

    meta_table = ""

    def _open(self, db: sqlite3.Connection, schema: str) -> None:
        self._lock = threading.RLock()
        self._db = db
        with self._lock:
            self._db.executescript(schema)
        self._data_version = -1
        self._generation = -1

    @contextmanager
    def _write(self) -> Iterator[_Exec]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield _Exec(cur, pg=False)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            self._generation = -1  # our own commits do not change our PRAGMA data_version

    @contextmanager
    def _read(self) -> Iterator[_Exec]:
        with self._lock:
            yield _Exec(self._db.cursor(), pg=False)

    def generation(self) -> int:
        with self._lock:
            (dv,) = self._db.execute("PRAGMA data_version").fetchone()
            if dv != self._data_version or self._generation < 0:
                self._data_version = dv
                (self._generation,) = self._db.execute(
                    f"SELECT value FROM {self.meta_table} WHERE key = 'generation'").fetchone()
            return self._generation

    def close(self) -> None:
        with self._lock:
            self._db.close()


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
