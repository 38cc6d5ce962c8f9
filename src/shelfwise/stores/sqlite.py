"""Embedded default: event store and catalog in one SQLite file (WAL, synchronous=FULL)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

from shelfwise.domain import Event, EventType, Item
from shelfwise.stores.protocols import (
    TOMBSTONE_S, AppendResult, CatalogChanges, EntryContext, EventLog, Interaction, ShopperState, WishlistEntry,
    LoggedSearch, entry_contexts, fold_wishlist, logged_search,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    type       INTEGER NOT NULL,
    shopper    TEXT NOT NULL,
    user_id    TEXT,
    session_id TEXT,
    item_id    TEXT,
    order_id   TEXT,
    ts         REAL NOT NULL,
    payload    BLOB NOT NULL,
    unknown    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_shopper ON events (shopper, ts);
CREATE TABLE IF NOT EXISTS lines (
    seq      INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    item_id  TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    price    REAL
);
CREATE INDEX IF NOT EXISTS lines_seq ON lines (seq);
CREATE TABLE IF NOT EXISTS items (
    id         TEXT PRIMARY KEY,
    doc        BLOB NOT NULL,
    updated    REAL NOT NULL DEFAULT (((julianday('now') - 2440587.5) * 86400.0)),
    first_seen REAL  -- when the item was first stored (NULL: stored before the column existed)
);
CREATE INDEX IF NOT EXISTS items_updated ON items (updated);
-- deleted items, so that other replicas polling the catalog's changes drop them too (a later upsert removes the row)
CREATE TABLE IF NOT EXISTS item_deletions (
    id      TEXT PRIMARY KEY,
    deleted REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS item_deletions_deleted ON item_deletions (deleted);
"""
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

# Every item interaction, purchases expanded to one row per line. Single-item events keep item_id in `events`.
_INTERACTIONS = """
SELECT e.seq, e.shopper, coalesce(e.session_id, ''), e.item_id, e.type, e.ts, coalesce(e.order_id, ''), 1, NULL
  FROM events e WHERE e.item_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM lines l WHERE l.seq = e.seq) {where}
UNION ALL
SELECT e.seq, e.shopper, coalesce(e.session_id, ''), l.item_id, e.type, e.ts, coalesce(e.order_id, ''),
       l.quantity, l.price
  FROM lines l JOIN events e ON e.seq = l.seq {where_join}
"""


def connect(path: Path, synchronous: str = "FULL", secure_delete: bool = True) -> sqlite3.Connection:
    """A connection as every SQLite role opens it: autocommit (explicit transactions), WAL, a 10 s busy wait, and
    ``secure_delete`` (deleted rows overwritten with zeros, not left readable on free pages)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    # switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once
    # (without the busy wait) while another connection opens the same new file: retry for up to 10 s
    deadline = time.monotonic() + 10.0
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.02)
    db.execute(f"PRAGMA synchronous={synchronous}")
    if secure_delete:
        db.execute("PRAGMA secure_delete=ON")
    return db


class Readers:
    """One read-only connection per thread. In WAL mode a reader never waits for a writer (nor for its commit's
    fsync) and sees every commit made before its statement began; writes stay serialised on the one write
    connection. Each statement is its own transaction, so no reader holds a snapshot that blocks a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._guard = threading.Lock()

    def get(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, secure_delete=False)
            db.execute("PRAGMA query_only=ON")
            with self._guard:
                self._opened.append(db)
            self._local.db = db
        return db

    def close(self) -> None:
        with self._guard:
            for db in self._opened:
                db.close()
            self._opened.clear()
        self._local = threading.local()


def path_from_dsn(dsn: str) -> Path:
    if not dsn.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite DSN: {dsn!r} (expected sqlite:///path/to/file.db)")
    return Path(dsn.removeprefix("sqlite:///"))


class SQLiteRole:
    """What a role with connections of its own to a SQLite file shares (keys and consent, preferences): its schema
    created, one write connection (``_db``, used under ``_lock``) with ``secure_delete`` when asked, one read-only
    connection per thread (``_readers``), the checkpoint after an erasure, and closing."""

    def __init__(self, dsn: str, schema: str, secure_delete: bool = True) -> None:
        self.path = path_from_dsn(dsn)
        self._lock = threading.RLock()
        self._db = connect(self.path, secure_delete=secure_delete)
        self._db.executescript(schema)
        self._readers = Readers(self.path)

    def checkpoint(self) -> str:
        """Fold the WAL into the database file and truncate it (erased rows must not linger in the WAL)."""
        with self._lock:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return "WAL checkpointed and truncated" if not busy else "WAL checkpoint blocked by a reader; retried later"

    def close(self) -> None:
        self._readers.close()
        with self._lock:
            self._db.close()


class SQLiteStore:
    """EventStore + Catalog on one SQLite database. Thread-safe; writes are serialised."""

    def __init__(self, dsn: str, secure_delete: bool = True) -> None:
        self.path = path_from_dsn(dsn)
        self._lock = threading.RLock()
        self._db = connect(self.path, secure_delete=secure_delete)
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        if "first_seen" not in {r[1] for r in self._db.execute("PRAGMA table_info(items)")}:
            # a database from before the column: its items' first-seen times are unknown (NULL), not now
            self._db.execute("ALTER TABLE items ADD COLUMN first_seen REAL")
        self._readers = Readers(self.path)

    # ---- event store -------------------------------------------------------------------------------
    def append(self, events: Sequence[Event], known_items: set[str] | None = None) -> AppendResult:
        stored: list[str] = []
        duplicates: list[str] = []
        unknown: set[str] = set()
        insert_event = ("INSERT INTO events (event_id, type, shopper, user_id, session_id, item_id, order_id, ts,"
                        " payload, unknown) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(event_id) DO NOTHING")
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                # Inside the write transaction nobody else can insert, so ids found here are the duplicates.
                existing = self._existing_ids([ev.event_id for ev in events])
                seen_in_batch: set[str] = set()
                run: list[tuple] = []  # consecutive single-item events, inserted with one executemany
                for ev in events:
                    if ev.event_id in seen_in_batch or ev.event_id in existing:
                        duplicates.append(ev.event_id)
                        continue
                    seen_in_batch.add(ev.event_id)
                    lines = ev.lines()
                    flagged = known_items is not None and any(i not in known_items for i, _, _ in lines)
                    if flagged:
                        unknown.update(i for i, _, _ in lines if i not in known_items)  # type: ignore[operator]
                    order_id = ev.order_id or (ev.event_id if ev.type == "purchase_completed" else None)
                    payload = orjson.dumps(
                        {"context": ev.context.model_dump(exclude_none=True), "properties": ev.properties}
                    )
                    row = (ev.event_id, int(EventType[ev.type]), ev.shopper, ev.user_id, ev.session_id,
                           ev.item_id if not ev.items else None, order_id, ev.timestamp.timestamp(), payload,
                           int(flagged))
                    stored.append(ev.event_id)
                    if not ev.items:
                        run.append(row)
                        continue
                    if run:  # keep arrival order (seq) exactly: flush earlier events first
                        cur.executemany(insert_event, run)
                        run = []
                    cur.execute(insert_event, row)
                    seq = cur.lastrowid
                    cur.executemany(
                        "INSERT INTO lines (seq, item_id, quantity, price) VALUES (?,?,?,?)",
                        [(seq, i, q, p) for i, q, p in lines],
                    )
                if run:
                    cur.executemany(insert_event, run)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return AppendResult(stored=stored, duplicates=duplicates, unknown_items=sorted(unknown))

    def _existing_ids(self, event_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self._db.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})",
                                                        chunk))
        return found

    def scan(self, since: float | None = None, until: float | None = None) -> EventLog:
        conds, params = [], []
        if since is not None:
            conds.append("e.ts >= ?")
            params.append(since)
        if until is not None:
            conds.append("e.ts < ?")
            params.append(until)
        where = "".join(f" AND {c}" for c in conds)
        where_join = (" WHERE " + " AND ".join(conds)) if conds else ""
        sql = _INTERACTIONS.format(where=where, where_join=where_join) + " ORDER BY 2, 6, 1"
        db = self._readers.get()
        rows = db.execute(sql, params * 2).fetchall()
        if not rows:
            return EventLog.empty()
        cols = list(zip(*rows))
        return EventLog(
            shopper=np.array(cols[1], dtype=object),
            session=np.array(cols[2], dtype=object),
            item=np.array(cols[3], dtype=object),
            kind=np.array(cols[4], dtype=np.int8),
            ts=np.array(cols[5], dtype=np.float64),
            order=np.array(cols[6], dtype=object),
            quantity=np.array(cols[7], dtype=np.int32),
            price=np.array([np.nan if p is None else p for p in cols[8]], dtype=np.float64),
        )

    def searches(self, since: float | None = None) -> list[LoggedSearch]:
        after = "" if since is None else " AND ts >= ?"
        rows = self._readers.get().execute(
            f"SELECT shopper, session_id, ts, payload FROM events WHERE type = ?{after} ORDER BY ts, seq",
            (int(EventType.search),) + (() if since is None else (since,))).fetchall()
        got = (logged_search(sh, se, ts, orjson.loads(p).get("properties")) for sh, se, ts, p in rows)
        return [g for g in got if g is not None]

    def wishlist(self, shopper: str) -> dict[str, WishlistEntry]:
        rows = self._readers.get().execute(
            "SELECT type, item_id, ts, payload FROM events WHERE shopper = ? AND type IN (?, ?) ORDER BY ts, seq",
            (shopper, int(EventType.wishlist_added), int(EventType.wishlist_removed))).fetchall()
        return fold_wishlist((k, i, t, orjson.loads(p).get("properties")) for k, i, t, p in rows)

    def history(self, shoppers: Sequence[str], limit: int) -> dict[str, ShopperState]:
        out = {s: ShopperState(recent=[], purchased=set()) for s in shoppers}
        if not shoppers:
            return out
        db = self._readers.get()
        for start in range(0, len(shoppers), 500):
            chunk = list(shoppers[start:start + 500])
            marks = ",".join("?" * len(chunk))
            sql = _INTERACTIONS.format(where=f" AND e.shopper IN ({marks})",
                                       where_join=f" WHERE e.shopper IN ({marks})")
            rows = db.execute(sql + " ORDER BY 2, 6, 1", chunk * 2).fetchall()
            recent: dict[str, list[Interaction]] = defaultdict(list)
            for _, shopper, _, item, kind, ts, _, _, _ in rows:
                recent[shopper].append(Interaction(item, kind, ts))
                if kind == EventType.purchase_completed:
                    out[shopper].purchased.add(item)
            for shopper, lst in recent.items():
                out[shopper].recent = lst[-limit:]
        return out

    def entry_contexts(self) -> dict[str, EntryContext]:
        rows = self._readers.get().execute("SELECT shopper, payload FROM events ORDER BY shopper, ts, seq")
        return entry_contexts((shopper, orjson.loads(payload).get("context")) for shopper, payload in rows)

    def count(self) -> int:
        db = self._readers.get()
        return db.execute("SELECT count(*) FROM events").fetchone()[0]

    def unknown_count(self) -> int:
        db = self._readers.get()
        return db.execute("SELECT count(*) FROM events WHERE unknown = 1").fetchone()[0]

    def delete_shopper(self, shopper: str) -> int:
        with self._lock:
            cur = self._db.execute("DELETE FROM events WHERE shopper = ?", (shopper,))
            return cur.rowcount

    # ---- catalog -----------------------------------------------------------------------------------
    def upsert(self, items: Sequence[Item]) -> int:
        rows = [(it.id, orjson.dumps(it.model_dump(mode="json"))) for it in items]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(
                    f"INSERT INTO items (id, doc, first_seen) VALUES (?, ?, {_NOW}) ON CONFLICT(id) DO UPDATE SET"
                    f" doc = excluded.doc, updated = {_NOW}",
                    rows,
                )
                cur.executemany("DELETE FROM item_deletions WHERE id = ?", [(r[0],) for r in rows])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return len(rows)

    def get(self, item_ids: Sequence[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        db = self._readers.get()
        for start in range(0, len(item_ids), 500):
            chunk = list(item_ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for _id, doc in db.execute(f"SELECT id, doc FROM items WHERE id IN ({marks})", chunk).fetchall():
                out[_id] = Item.stored(orjson.loads(doc))
        return out

    def delete(self, item_id: str) -> bool:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                gone = cur.execute("DELETE FROM items WHERE id = ?", (item_id,)).rowcount > 0
                if gone:
                    cur.execute(f"INSERT INTO item_deletions (id, deleted) VALUES (?, {_NOW}) ON CONFLICT (id) "
                                f"DO UPDATE SET deleted = excluded.deleted", (item_id,))
                    # running replicas read a tombstone within seconds; one that starts reads the whole catalog
                    cur.execute(f"DELETE FROM item_deletions WHERE deleted < {_NOW} - ?", (TOMBSTONE_S,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return gone

    def all(self) -> list[Item]:
        db = self._readers.get()
        docs = db.execute("SELECT doc FROM items ORDER BY id").fetchall()
        return [Item.stored(orjson.loads(d)) for (d,) in docs]

    def changed_since(self, ts: float) -> list[Item]:
        db = self._readers.get()
        docs = db.execute("SELECT doc FROM items WHERE updated >= ? ORDER BY id", (ts,)).fetchall()
        return [Item.stored(orjson.loads(d)) for (d,) in docs]

    def changes(self, since: float) -> CatalogChanges:
        db = self._readers.get()
        db.execute("BEGIN")  # one snapshot for the three reads
        try:
            (as_of,) = db.execute(f"SELECT {_NOW}").fetchone()
            docs = db.execute("SELECT doc FROM items WHERE updated >= ? ORDER BY id", (since,)).fetchall()
            gone = db.execute("SELECT id FROM item_deletions WHERE deleted >= ? ORDER BY id", (since,)).fetchall()
        finally:
            db.execute("COMMIT")
        return CatalogChanges([Item.stored(orjson.loads(d)) for (d,) in docs], [i for (i,) in gone], as_of)

    def ids(self) -> set[str]:
        db = self._readers.get()
        return {r[0] for r in db.execute("SELECT id FROM items").fetchall()}

    def first_seen(self, item_ids: Sequence[str] | None = None,
                   since: float | None = None) -> dict[str, float]:
        db = self._readers.get()
        sql = "SELECT id, first_seen FROM items WHERE first_seen >= ?"
        after = float("-inf") if since is None else since
        if item_ids is None:
            return dict(db.execute(sql, (after,)).fetchall())
        out: dict[str, float] = {}
        for start in range(0, len(item_ids), 500):
            chunk = list(item_ids[start:start + 500])
            out.update(db.execute(f"{sql} AND id IN ({','.join('?' * len(chunk))})", [after, *chunk]).fetchall())
        return out

    def close(self) -> None:
        self._readers.close()
        with self._lock:
            self._db.close()
