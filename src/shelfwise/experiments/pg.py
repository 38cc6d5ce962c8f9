"""PostgreSQL backends of the experiment store and the experiment log (psycopg 3 + a connection pool).

Tables live in the event store's database beside ``events`` and ``items``; their migrations are numbered and
recorded in ``shelfwise_experiment_migrations`` (applied on start under an advisory lock, once, however many
replicas start together). Experiment writes take a transaction-scoped advisory lock, so the overlap and
lifecycle checks of two replicas writing at once are serialised exactly like SQLite's ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from psycopg import Connection, sql
from psycopg_pool import ConnectionPool

from shelfwise.experiments import log as xlog
from shelfwise.experiments.sql import _Exec
from shelfwise.experiments.store import SQLExperimentStore
from shelfwise.stores._dsn import split_options, with_scheme
from shelfwise.stores.postgres import POOL_OPTIONS, connection_pool

_MIGRATION_LOCK = 0x5E1F_0015
_WRITE_LOCK = 0x5E1F_0016

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "experiments, audit, identities", """
CREATE TABLE experiments (
    id          text COLLATE "C" PRIMARY KEY,
    spec        text NOT NULL,
    layer       text COLLATE "C" NOT NULL,
    lo          double precision NOT NULL,
    hi          double precision NOT NULL,
    status      text NOT NULL CHECK (status IN ('draft', 'running', 'stopped')),
    traffic     double precision NOT NULL,
    serve       text,
    created     double precision NOT NULL,
    updated     double precision NOT NULL,
    started     double precision,
    stopped     double precision,
    stop_reason text NOT NULL DEFAULT '',
    revision    integer NOT NULL
);
CREATE INDEX experiments_layer ON experiments (layer, status);
CREATE TABLE experiment_audit (
    seq           bigserial PRIMARY KEY,
    experiment_id text COLLATE "C" NOT NULL,
    action        text NOT NULL,
    author        text NOT NULL,
    comment       text NOT NULL,
    detail        text NOT NULL,
    ts            double precision NOT NULL
);
CREATE INDEX experiment_audit_id ON experiment_audit (experiment_id, seq);
CREATE TABLE experiment_identities (
    user_id text COLLATE "C" PRIMARY KEY,
    unit    text NOT NULL,
    created double precision NOT NULL
);
CREATE TABLE experiment_meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO experiment_meta (key, value) VALUES ('generation', 0);
"""),
    (2, "experiment exposure and outcome log", """
CREATE TABLE xp_requests (
    request_id    text COLLATE "C" PRIMARY KEY,
    ts            double precision NOT NULL,
    placement     text NOT NULL,
    unit          text COLLATE "C",
    shopper       text COLLATE "C",
    visit         text COLLATE "C",
    items         text NOT NULL,
    propensities  text,
    teams         text,
    latency_ms    double precision,
    error         integer NOT NULL DEFAULT 0,
    model_version text NOT NULL DEFAULT '',
    segment       text NOT NULL DEFAULT ''
);
CREATE INDEX xp_requests_ts ON xp_requests (ts);
CREATE TABLE xp_exposures (
    seq           bigserial PRIMARY KEY,
    experiment_id text COLLATE "C" NOT NULL,
    request_id    text COLLATE "C" NOT NULL,
    variant       text COLLATE "C" NOT NULL,
    propensity    double precision NOT NULL DEFAULT 1,
    unit          text COLLATE "C" NOT NULL,
    shopper       text COLLATE "C",
    visit         text COLLATE "C",
    ts            double precision NOT NULL,
    n_items       integer NOT NULL,
    latency_ms    double precision,
    error         integer NOT NULL DEFAULT 0,
    UNIQUE (experiment_id, request_id)
);
CREATE INDEX xp_exposures_visit ON xp_exposures (experiment_id, visit, ts);
CREATE INDEX xp_exposures_request ON xp_exposures (request_id);
CREATE INDEX xp_exposures_ts ON xp_exposures (experiment_id, ts);
CREATE TABLE xp_outcomes (
    event_id   text COLLATE "C" PRIMARY KEY,
    type       text NOT NULL,
    ts         double precision NOT NULL,
    shopper    text COLLATE "C",
    visit      text COLLATE "C",
    request_id text COLLATE "C",
    item_id    text,
    position   integer,
    revenue    double precision NOT NULL DEFAULT 0,
    quantity   integer NOT NULL DEFAULT 0
);
CREATE INDEX xp_outcomes_visit ON xp_outcomes (visit, ts);
CREATE INDEX xp_outcomes_request ON xp_outcomes (request_id);
CREATE INDEX xp_outcomes_shopper ON xp_outcomes (shopper, ts);
CREATE INDEX xp_outcomes_ts ON xp_outcomes (ts);
"""),
]
TABLES = ("xp_outcomes", "xp_exposures", "xp_requests", "experiment_meta", "experiment_identities",
          "experiment_audit", "experiments", "shelfwise_experiment_migrations")


def migrate(conn: Connection) -> list[int]:
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS shelfwise_experiment_migrations (version int PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r[0] for r in conn.execute("SELECT version FROM shelfwise_experiment_migrations")}
        known = {v for v, _, _ in MIGRATIONS}
        if done - known:
            raise RuntimeError(f"experiment schema version {max(done)} is newer than this Shelfwise "
                               f"({max(known)}): upgrade Shelfwise")
        for version, name, ddl in MIGRATIONS:
            if version not in done:
                conn.execute(ddl)
                conn.execute("INSERT INTO shelfwise_experiment_migrations (version, name) VALUES (%s, %s)",
                             (version, name))
                applied.append(version)
    return applied


def open_pool(dsn: str, name: str) -> ConnectionPool:
    if dsn.startswith("postgres://"):
        dsn = with_scheme(dsn, "postgresql")
    conninfo, opts = split_options(dsn, POOL_OPTIONS)
    pool = connection_pool(conninfo, opts, name)
    with pool.connection() as conn:
        migrate(conn)
    return pool


class PostgresExperimentStore(SQLExperimentStore):
    def __init__(self, dsn: str) -> None:
        self.pool = open_pool(dsn, "shelfwise-experiments")
        self._closed = threading.Event()

    @contextmanager
    def _write(self) -> Iterator[_Exec]:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
            yield _Exec(conn.cursor(), pg=True)

    @contextmanager
    def _read(self) -> Iterator[_Exec]:
        with self.pool.connection() as conn:
            yield _Exec(conn.cursor(), pg=True)

    def link_identity(self, user_id: str, unit: str) -> str:
        # no need to serialise with experiment writes: ON CONFLICT makes the first link win atomically
        with self.pool.connection() as conn, conn.transaction():
            x = _Exec(conn.cursor(), pg=True)
            x.run("INSERT INTO experiment_identities (user_id, unit, created) VALUES (?, ?, "
                  "extract(epoch from clock_timestamp())) ON CONFLICT (user_id) DO NOTHING", (user_id, unit))
            return x.one("SELECT unit FROM experiment_identities WHERE user_id = ?", (user_id,))[0]

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self.pool.close()


def drop_schema(dsn: str) -> None:
    """Remove every experiment table (tests only)."""
    import psycopg

    conninfo, _ = split_options(with_scheme(dsn, "postgresql"), {"pool_min", "pool_max"})
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))


class PostgresExperimentLog(xlog.QueuedLog):
    """The experiment log on PostgreSQL: the shared queue + writer thread of ``log.QueuedLog``; the writer takes a
    pooled connection per batch (one transaction), readers their own."""

    def __init__(self, dsn: str, retention_days: float = 180.0, max_queue: int = 200_000, batch: int = 2000) -> None:
        self.pool = open_pool(dsn, "shelfwise-experiment-log")
        super().__init__(retention_days, max_queue, batch)

    def _connect_writer(self) -> None:
        return None

    def _write(self, _conn: None, exposures: list[xlog.ExposureRecord], outcomes: list[xlog.OutcomeRecord],
               prune_before: float | None) -> None:
        requests, rows = xlog.exposure_rows(exposures)
        out = xlog.outcome_rows(outcomes)
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            if requests:
                cur.executemany(xlog._INSERT_REQUEST.replace("?", "%s"), requests)
            if rows:
                cur.executemany(xlog._INSERT_EXPOSURE.replace("?", "%s"), rows)
            if out:
                cur.executemany(xlog._INSERT_OUTCOME.replace("?", "%s"), out)
            if prune_before is not None:
                for q in xlog._PRUNE:
                    cur.execute(q.replace("?", "%s"), (prune_before,))

    def _close_writer(self, _conn: None) -> None:
        pass

    @contextmanager
    def _exec(self) -> Iterator[_Exec]:
        with self.pool.connection() as conn:
            yield _Exec(conn.cursor(), pg=True)

    def unit_table(self, experiment_id: str, window_s: float, since: float | None = None, until: float | None = None,
                   pre_since: float | None = None, pre_until: float | None = None) -> xlog.UnitTable:
        with self._exec() as x:
            return xlog.sql_unit_table(x, experiment_id, window_s, since, until, pre_since, pre_until)

    def request_metrics(self, experiment_id: str, since: float | None = None, until: float | None = None):
        with self._exec() as x:
            return xlog.sql_request_metrics(x, experiment_id, since, until)

    def requests(self, since: float | None = None, until: float | None = None, experiment_id: str | None = None,
                 placement: str | None = None, window_s: float = 86400.0,
                 limit: int = 1_000_000) -> list[xlog.LoggedRequest]:
        with self._exec() as x:
            return xlog.sql_requests(x, since, until, experiment_id, placement, window_s, limit)

    def forget(self, shopper: str) -> int:
        self.flush()
        with self.pool.connection() as conn, conn.transaction():
            return xlog.sql_forget(_Exec(conn.cursor(), pg=True), shopper)

    def close(self) -> None:
        if self._closed:
            return
        self._stop_writer()
        self.pool.close()
