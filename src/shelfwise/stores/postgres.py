"""Scale-out event store + catalog on PostgreSQL (psycopg 3, a connection pool, versioned migrations).

Same semantics as ``SQLiteStore``: idempotent appends by ``event_id`` (``ON CONFLICT DO NOTHING``; concurrent
writers of one id wait for each other, one wins), purchases expanded to one row per line, the ``unknown`` flag
for events naming items absent from the catalog, ``scan``/``history`` ordered per shopper by (time, arrival).

Every append goes through ``COPY`` into per-connection temporary staging tables, then one ``INSERT … SELECT …
ON CONFLICT DO NOTHING RETURNING`` moves the new rows in arrival order, so a bulk import of 5,000 events is one
COPY and two statements. Migrations are numbered, recorded in ``shelfwise_migrations`` and applied on start
under an advisory lock (several replicas starting at once apply each exactly once).

DSN: ``postgresql://user:password@host:5432/db?pool_min=1&pool_max=8`` (``postgres://`` also accepted; any
libpq parameter may follow, e.g. ``options=-csearch_path%3Dshop1`` to keep several shops in one database).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Sequence

import numpy as np
import orjson
from psycopg import Connection, sql
from psycopg_pool import ConnectionPool

from shelfwise.domain import Event, EventType, Item
from shelfwise.stores._dsn import split_options, with_scheme
from shelfwise.stores.protocols import (
    TOMBSTONE_S, AppendResult, CatalogChanges, EntryContext, EventLog, Interaction, ShopperState, WishlistEntry,
    LoggedSearch, entry_contexts, fold_wishlist, logged_search,
)

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "events, lines, items", """
CREATE TABLE events (
    seq        bigserial PRIMARY KEY,
    event_id   text COLLATE "C" NOT NULL UNIQUE,
    type       smallint NOT NULL,
    shopper    text COLLATE "C" NOT NULL,
    user_id    text,
    session_id text,
    item_id    text COLLATE "C",
    order_id   text,
    ts         double precision NOT NULL,
    payload    jsonb NOT NULL,
    unknown    boolean NOT NULL DEFAULT false
);
CREATE INDEX events_shopper ON events (shopper, ts);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE lines (
    seq      bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    item_id  text COLLATE "C" NOT NULL,
    quantity integer NOT NULL,
    price    double precision,
    pos      integer NOT NULL DEFAULT 0
);
CREATE INDEX lines_seq ON lines (seq);
CREATE TABLE items (
    id      text COLLATE "C" PRIMARY KEY,
    doc     jsonb NOT NULL,
    updated timestamptz NOT NULL DEFAULT now()
);
"""),
    (2, "api keys, consent, erasure ledger", """
CREATE TABLE api_keys (
    key_id      text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    scopes      text NOT NULL,
    kind        text NOT NULL,
    secret_hash text NOT NULL,
    created_at  double precision NOT NULL,
    origins     text NOT NULL,
    rate        double precision,
    revoked_at  double precision
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE consents (
    shopper         text COLLATE "C" PRIMARY KEY,
    personalisation text,
    analytics       text,
    experiments     text,
    updated_at      double precision NOT NULL,
    source          text NOT NULL
);
CREATE TABLE anonymous_counts (
    day     text NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    type    smallint NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (day, item_id, type)
);
CREATE TABLE forgotten (marker text PRIMARY KEY, at double precision NOT NULL);
CREATE INDEX forgotten_at ON forgotten (at);
CREATE TABLE erasure_receipts (receipt_id text PRIMARY KEY, created_at double precision NOT NULL, doc jsonb NOT NULL);
CREATE TABLE privacy_meta (key text PRIMARY KEY, value text NOT NULL);
"""),
    (3, "shopper preferences", """
CREATE TABLE shopper_preferences (
    shopper    text COLLATE "C" PRIMARY KEY,
    doc        jsonb NOT NULL,
    updated_at double precision NOT NULL
);
"""),
    # items stored before this migration keep an unknown (NULL) first-seen time rather than the migration's
    (4, "items first seen", """
ALTER TABLE items ADD COLUMN first_seen timestamptz;
ALTER TABLE items ALTER COLUMN first_seen SET DEFAULT now();
"""),
    # every replica polls the catalog's changes (Catalog.changes): upserts by time, deletions from tombstones
    (5, "catalog changes", """
CREATE INDEX items_updated ON items (updated);
CREATE TABLE item_deletions (
    id      text COLLATE "C" PRIMARY KEY,
    deleted timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX item_deletions_deleted ON item_deletions (deleted);
"""),
    (6, "model registry", """
CREATE TABLE model_versions (
    version    text COLLATE "C" PRIMARY KEY,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    status     text NOT NULL,
    doc        bytea NOT NULL
);
CREATE TABLE model_rollout (id int PRIMARY KEY CHECK (id = 1), revision bigint NOT NULL, doc bytea NOT NULL);
CREATE TABLE model_audit (ts double precision NOT NULL, action text NOT NULL, version text NOT NULL,
                          author text NOT NULL, detail text NOT NULL);
CREATE INDEX model_audit_ts ON model_audit (ts);
"""),
]
_LOCK_KEY = 0x5E1F_0001  # advisory lock serialising migrations across replicas

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS _sw_events (
    ord int, event_id text COLLATE "C", type smallint, shopper text COLLATE "C", user_id text, session_id text,
    item_id text COLLATE "C", order_id text, ts double precision, payload jsonb, unknown boolean
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS _sw_lines (
    ord int, event_id text COLLATE "C", item_id text COLLATE "C", quantity integer, price double precision, pos int
) ON COMMIT DELETE ROWS;
"""

_MOVE = """
WITH ins AS (
    INSERT INTO events (event_id, type, shopper, user_id, session_id, item_id, order_id, ts, payload, unknown)
    SELECT event_id, type, shopper, user_id, session_id, item_id, order_id, ts, payload, unknown
      FROM _sw_events ORDER BY ord
    ON CONFLICT (event_id) DO NOTHING
    RETURNING seq, event_id
), ln AS (
    INSERT INTO lines (seq, item_id, quantity, price, pos)
    SELECT ins.seq, l.item_id, l.quantity, l.price, l.pos FROM _sw_lines l JOIN ins USING (event_id)
     ORDER BY l.ord, l.pos
)
SELECT event_id FROM ins
"""

_INTERACTIONS = """
SELECT e.seq, e.shopper, coalesce(e.session_id, ''), e.item_id, e.type, e.ts, coalesce(e.order_id, ''), 1, NULL, 0
  FROM events e WHERE e.item_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM lines l WHERE l.seq = e.seq) {where}
UNION ALL
SELECT e.seq, e.shopper, coalesce(e.session_id, ''), l.item_id, e.type, e.ts, coalesce(e.order_id, ''),
       l.quantity, l.price, l.pos
  FROM lines l JOIN events e ON e.seq = l.seq {where_join}
"""


def migrate(conn: Connection) -> list[int]:
    """Apply pending migrations (idempotent, safe to run from several processes at once)."""
    return apply_migrations(conn, MIGRATIONS, "shelfwise_migrations", _LOCK_KEY, "database schema")


def apply_migrations(conn: Connection, migrations: list[tuple[int, str, str]], table: str, lock_key: int,
                     what: str) -> list[int]:
    """Apply a role's numbered migrations not yet recorded in ``table``, under the advisory lock ``lock_key`` (once,
    however many replicas start together); a database newer than this code is refused."""
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (version int PRIMARY KEY, name text NOT NULL, "
                             "applied_at timestamptz NOT NULL DEFAULT now())").format(sql.Identifier(table)))
        done = {r[0] for r in conn.execute(sql.SQL("SELECT version FROM {}").format(sql.Identifier(table)))}
        known = {v for v, _, _ in migrations}
        if done - known:
            raise RuntimeError(f"{what} version {max(done)} is newer than this Shelfwise ({max(known)}): "
                               "upgrade Shelfwise")
        for version, name, ddl in migrations:
            if version not in done:
                conn.execute(ddl)
                conn.execute(sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(sql.Identifier(table)),
                             (version, name))
                applied_now.append(version)
    return applied_now


POOL_OPTIONS = {"pool_min", "pool_max", "pool_timeout"}


def connection_pool(conninfo: str, opts: dict[str, str], name: str, min_size: int = 1, max_size: int = 4,
                    configure=None) -> ConnectionPool:
    """A connection pool as every PostgreSQL role opens it (DSN options ``pool_min``, ``pool_max``,
    ``pool_timeout``). A connection is checked before it is handed out (a server restart leaves broken ones in
    the pool), a caller waits at most ``pool_timeout`` seconds (default 5) for one, and connecting gives up after
    5 s: a PostgreSQL that is down fails fast, and the circuit breakers (``stores/breaker.py``) take over."""
    return ConnectionPool(conninfo, min_size=int(opts.get("pool_min", min_size)),
                          max_size=int(opts.get("pool_max", max_size)), open=True, configure=configure, name=name,
                          timeout=float(opts.get("pool_timeout", 5.0)), check=ConnectionPool.check_connection,
                          kwargs={"connect_timeout": 5})


class PostgresRole:
    """What a role with a small pool of its own on a PostgreSQL database shares (keys and consent, preferences): the
    pool (``connection_pool``), the schema migrated first (``postgres://`` accepted), the checkpoint note after an
    erasure, and closing."""

    def __init__(self, dsn: str, name: str) -> None:
        if dsn.startswith("postgres://"):
            dsn = with_scheme(dsn, "postgresql")
        conninfo, opts = split_options(dsn, POOL_OPTIONS)
        self.pool = connection_pool(conninfo, opts, name)
        with self.pool.connection() as conn:
            migrate(conn)
        self._closed = False

    def checkpoint(self) -> str:
        return ("PostgreSQL: deleted rows are invisible at once; their space is reclaimed by (auto)vacuum "
                "(see SECURITY.md)")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close()


class PostgresStore:
    """EventStore + Catalog on PostgreSQL. Thread-safe (a pool of connections); many processes may share it."""

    def __init__(self, dsn: str) -> None:
        if dsn.startswith("postgres://"):
            dsn = with_scheme(dsn, "postgresql")
        conninfo, opts = split_options(dsn, POOL_OPTIONS)
        self.dsn = conninfo
        self.pool = connection_pool(conninfo, opts, "shelfwise-events", max_size=8, configure=self._configure)
        self._closed = threading.Event()
        with self.pool.connection() as conn:
            self.applied_migrations = migrate(conn)

    @staticmethod
    def _configure(conn: Connection) -> None:
        conn.autocommit = True
        conn.execute(_STAGING)
        conn.autocommit = False

    # ---- event store -------------------------------------------------------------------------------
    def append(self, events: Sequence[Event], known_items: set[str] | None = None) -> AppendResult:
        duplicates: list[str] = []
        unknown: set[str] = set()
        seen: set[str] = set()
        rows: list[tuple] = []
        line_rows: list[tuple] = []
        order: list[str] = []
        for ev in events:
            if ev.event_id in seen:
                duplicates.append(ev.event_id)
                continue
            seen.add(ev.event_id)
            lines = ev.lines()
            flagged = known_items is not None and any(i not in known_items for i, _, _ in lines)
            if flagged:
                unknown.update(i for i, _, _ in lines if i not in known_items)  # type: ignore[operator]
            order_id = ev.order_id or (ev.event_id if ev.type == "purchase_completed" else None)
            payload = orjson.dumps({"context": ev.context.model_dump(exclude_none=True),
                                    "properties": ev.properties}).decode()
            ordinal = len(rows)
            rows.append((ordinal, ev.event_id, int(EventType[ev.type]), ev.shopper, ev.user_id, ev.session_id,
                         ev.item_id if not ev.items else None, order_id, ev.timestamp.timestamp(), payload, flagged))
            if ev.items:
                line_rows.extend((ordinal, ev.event_id, i, q, p, pos) for pos, (i, q, p) in enumerate(lines))
            order.append(ev.event_id)
        if not rows:
            return AppendResult(stored=[], duplicates=duplicates, unknown_items=[])
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            with cur.copy("COPY _sw_events (ord, event_id, type, shopper, user_id, session_id, item_id, order_id,"
                          " ts, payload, unknown) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            if line_rows:
                with cur.copy("COPY _sw_lines (ord, event_id, item_id, quantity, price, pos) FROM STDIN") as cp:
                    for r in line_rows:
                        cp.write_row(r)
            inserted = {r[0] for r in cur.execute(_MOVE).fetchall()}
        stored = [e for e in order if e in inserted]
        duplicates.extend(e for e in order if e not in inserted)
        return AppendResult(stored=stored, duplicates=duplicates, unknown_items=sorted(unknown))

    def _interactions(self, where: str, where_join: str, params: list, point: bool = False):
        query = _INTERACTIONS.format(where=where, where_join=where_join) + " ORDER BY 2, 6, 1, 10"
        with self.pool.connection() as conn:
            if point:  # a few shoppers, on the request path: starting parallel workers costs more than it saves
                conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            return conn.execute(query, params).fetchall()

    def scan(self, since: float | None = None, until: float | None = None) -> EventLog:
        conds, params = [], []
        if since is not None:
            conds.append("e.ts >= %s")
            params.append(since)
        if until is not None:
            conds.append("e.ts < %s")
            params.append(until)
        where = "".join(f" AND {c}" for c in conds)
        where_join = (" WHERE " + " AND ".join(conds)) if conds else ""
        rows = self._interactions(where, where_join, params * 2)
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

    def history(self, shoppers: Sequence[str], limit: int) -> dict[str, ShopperState]:
        out = {s: ShopperState(recent=[], purchased=set()) for s in shoppers}
        if not shoppers:
            return out
        for start in range(0, len(shoppers), 1000):
            chunk = list(shoppers[start:start + 1000])
            rows = self._interactions(" AND e.shopper = ANY(%s)", " WHERE e.shopper = ANY(%s)", [chunk, chunk],
                                      point=len(chunk) <= 50)
            recent: dict[str, list[Interaction]] = defaultdict(list)
            for _, shopper, _, item, kind, ts, *_ in rows:
                recent[shopper].append(Interaction(item, kind, ts))
                if kind == EventType.purchase_completed:
                    out[shopper].purchased.add(item)
            for shopper, lst in recent.items():
                out[shopper].recent = lst[-limit:]
        return out

    def wishlist(self, shopper: str) -> dict[str, WishlistEntry]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT type, item_id, ts, payload->'properties' FROM events WHERE shopper = %s "
                                "AND type IN (%s, %s) ORDER BY ts, seq",
                                (shopper, int(EventType.wishlist_added), int(EventType.wishlist_removed))).fetchall()
        return fold_wishlist(rows)

    def searches(self, since: float | None = None) -> list[LoggedSearch]:
        with self.pool.connection() as conn:
            after = "" if since is None else " AND ts >= %s"
            rows = conn.execute("SELECT shopper, session_id, ts, payload->'properties' FROM events WHERE type = %s"
                                + after + " ORDER BY ts, seq",
                                (int(EventType.search),) + (() if since is None else (since,))).fetchall()
        got = (logged_search(*row) for row in rows)
        return [g for g in got if g is not None]

    def entry_contexts(self) -> dict[str, EntryContext]:
        with self.pool.connection() as conn, conn.cursor(name="shelfwise_contexts") as cur:
            cur.itersize = 10_000
            cur.execute("SELECT shopper, payload->'context' FROM events ORDER BY shopper, ts, seq")
            return entry_contexts(cur)

    def count(self) -> int:
        with self.pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]

    def unknown_count(self) -> int:
        with self.pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM events WHERE unknown").fetchone()[0]

    def delete_shopper(self, shopper: str) -> int:
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM events WHERE shopper = %s", (shopper,)).rowcount

    # ---- catalog -----------------------------------------------------------------------------------
    def upsert(self, items: Sequence[Item]) -> int:
        latest = {it.id: orjson.dumps(it.model_dump(mode="json")).decode() for it in items}  # last one wins
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            cur.executemany("INSERT INTO items (id, doc) VALUES (%s, %s::jsonb) ON CONFLICT (id) DO UPDATE"
                            " SET doc = excluded.doc, updated = now()", list(latest.items()))
            cur.execute("DELETE FROM item_deletions WHERE id = ANY(%s)", (list(latest),))
        return len(items)

    def get(self, item_ids: Sequence[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT id, doc FROM items WHERE id = ANY(%s)", (list(item_ids),)).fetchall()
        return {i: Item.stored(doc) for i, doc in rows}

    def delete(self, item_id: str) -> bool:
        with self.pool.connection() as conn, conn.transaction():
            gone = conn.execute("DELETE FROM items WHERE id = %s", (item_id,)).rowcount > 0
            if gone:
                conn.execute("INSERT INTO item_deletions (id) VALUES (%s) ON CONFLICT (id) DO UPDATE "
                             "SET deleted = excluded.deleted", (item_id,))
                conn.execute("DELETE FROM item_deletions WHERE deleted < now() - make_interval(secs => %s)",
                             (TOMBSTONE_S,))
        return gone

    def all(self) -> list[Item]:
        with self.pool.connection() as conn:
            docs = conn.execute("SELECT doc FROM items ORDER BY id").fetchall()
        return [Item.stored(d) for (d,) in docs]

    def changed_since(self, ts: float) -> list[Item]:
        with self.pool.connection() as conn:
            docs = conn.execute("SELECT doc FROM items WHERE updated >= to_timestamp(%s) ORDER BY id",
                                (ts,)).fetchall()
        return [Item.stored(d) for (d,) in docs]

    def changes(self, since: float) -> CatalogChanges:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot for the three reads
            (as_of,) = conn.execute("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
            docs = conn.execute("SELECT doc FROM items WHERE updated >= to_timestamp(%s) ORDER BY id",
                                (since,)).fetchall()
            gone = conn.execute("SELECT id FROM item_deletions WHERE deleted >= to_timestamp(%s) ORDER BY id",
                                (since,)).fetchall()
        return CatalogChanges([Item.stored(d) for (d,) in docs], [i for (i,) in gone], as_of)

    def ids(self) -> set[str]:
        with self.pool.connection() as conn:
            return {r[0] for r in conn.execute("SELECT id FROM items")}

    def first_seen(self, item_ids: Sequence[str] | None = None,
                   since: float | None = None) -> dict[str, float]:
        sql = "SELECT id, extract(epoch FROM first_seen)::float8 FROM items WHERE first_seen IS NOT NULL"
        args: list = []
        if since is not None:
            sql += " AND first_seen >= to_timestamp(%s)"
            args.append(since)
        if item_ids is not None:
            sql += " AND id = ANY(%s)"
            args.append(list(item_ids))
        with self.pool.connection() as conn:
            return dict(conn.execute(sql, args).fetchall())

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.pool.close()


def drop_schema(dsn: str) -> None:
    """Remove every Shelfwise table from a database (tests and ``shelfwise`` admin use only)."""
    import psycopg

    conninfo, _ = split_options(with_scheme(dsn, "postgresql"), {"pool_min", "pool_max"})
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in ("lines", "events", "items", "api_keys", "consents", "anonymous_counts", "forgotten",
                      "erasure_receipts", "privacy_meta", "shopper_preferences", "item_deletions",
                      "model_versions", "model_rollout", "model_audit", "shelfwise_migrations"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
