"""PostgreSQL backends of the rule store and the exposure / shadow log (psycopg 3 + a connection pool).

With the event store on PostgreSQL, every API replica reads and writes the same rule sets: a rule set published
through one replica is served by all of them once their generation check sees it (``generation()`` is read at
most every ``refresh_s``, 1 s by default: a DSN option; a write through this process is seen at once). Tables
live in the event store's database; their migrations are numbered and recorded in ``shelfwise_rules_migrations``
(applied on start under an advisory lock, once, however many replicas start together). Rule writes take a
transaction-scoped advisory lock, so two replicas saving a rule set at once get consecutive versions.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from psycopg import Connection, sql
from psycopg_pool import ConnectionPool

from shelfwise.experiments.sql import _Exec
from shelfwise.rules.log import Batch, QueuedExposureLog
from shelfwise.rules.store import SQLRuleStore
from shelfwise.stores._dsn import split_options, with_scheme
from shelfwise.stores.postgres import POOL_OPTIONS, apply_migrations, connection_pool

_MIGRATION_LOCK = 0x5E1F_0021
_WRITE_LOCK = 0x5E1F_0022

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "rule sets, versions, audit", """
CREATE TABLE rulesets (
    id             text COLLATE "C" PRIMARY KEY,
    live_version   integer,
    shadow_version integer,
    shadow_share   double precision,
    created        double precision NOT NULL,
    updated        double precision NOT NULL
);
CREATE TABLE ruleset_versions (
    ruleset_id   text COLLATE "C" NOT NULL REFERENCES rulesets(id),
    version      integer NOT NULL,
    document     bytea NOT NULL,
    author       text NOT NULL,
    comment      text NOT NULL,
    created      double precision NOT NULL,
    published_at double precision,
    based_on     integer,
    PRIMARY KEY (ruleset_id, version)
);
CREATE TABLE ruleset_audit (
    seq        bigserial PRIMARY KEY,
    ruleset_id text COLLATE "C" NOT NULL,
    version    integer,
    action     text NOT NULL,
    author     text NOT NULL,
    comment    text NOT NULL,
    ts         double precision NOT NULL
);
CREATE INDEX ruleset_audit_id ON ruleset_audit (ruleset_id, seq);
CREATE TABLE rules_meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO rules_meta (key, value) VALUES ('generation', 0);
"""),
    (2, "exposure and shadow log", """
CREATE TABLE exposures (
    request_id    text COLLATE "C" NOT NULL,
    ts            double precision NOT NULL,
    shopper       text COLLATE "C",
    placement     text NOT NULL,
    position      integer NOT NULL,
    item_id       text COLLATE "C" NOT NULL,
    score         double precision,
    model_version text,
    rules         text,
    propensity    double precision
);
CREATE INDEX exposures_ts ON exposures (ts);
CREATE INDEX exposures_request ON exposures (request_id);
CREATE INDEX exposures_shopper ON exposures (shopper) WHERE shopper IS NOT NULL;
CREATE TABLE item_impressions (
    item_id     text COLLATE "C" PRIMARY KEY,
    first_ts    double precision NOT NULL,
    last_ts     double precision NOT NULL,
    impressions bigint NOT NULL
);
CREATE INDEX item_impressions_last ON item_impressions (last_ts);
CREATE TABLE shadow_log (
    seq            bigserial PRIMARY KEY,
    ts             double precision NOT NULL,
    request_id     text,
    shopper        text COLLATE "C",
    placement      text NOT NULL,
    ruleset_id     text COLLATE "C" NOT NULL,
    live_version   integer,
    shadow_version integer NOT NULL,
    record         bytea NOT NULL
);
CREATE INDEX shadow_log_ruleset ON shadow_log (ruleset_id, shadow_version, ts);
CREATE INDEX shadow_log_shopper ON shadow_log (shopper) WHERE shopper IS NOT NULL;
CREATE TABLE exposure_meta (key text PRIMARY KEY, value double precision NOT NULL);
"""),
    (3, "exposure log: one row per answer", """
CREATE TABLE exposure_answers (
    request_id    text COLLATE "C" NOT NULL,
    ts            double precision NOT NULL,
    shopper       text COLLATE "C",
    placement     text NOT NULL,
    items         text NOT NULL,
    scores        text,
    model_version text,
    rules         text,
    propensities  text
);
INSERT INTO exposure_answers
SELECT request_id, ts, min(shopper), placement, json_agg(item_id ORDER BY position)::text,
       json_agg(score ORDER BY position)::text, min(model_version), min(rules),
       CASE WHEN bool_or(propensity < 1.0) THEN
           json_agg(CASE WHEN propensity < 1.0 THEN propensity END ORDER BY position)::text END
FROM exposures GROUP BY request_id, ts, placement;
DROP TABLE exposures;
ALTER TABLE exposure_answers RENAME TO exposures;
CREATE INDEX exposures_ts ON exposures (ts);
CREATE INDEX exposures_request ON exposures (request_id);
CREATE INDEX exposures_shopper ON exposures (shopper) WHERE shopper IS NOT NULL;
"""),
]
TABLES = ("shadow_log", "item_impressions", "exposures", "exposure_meta", "ruleset_audit", "ruleset_versions",
          "rulesets", "rules_meta", "shelfwise_rules_migrations")
OPTIONS = POOL_OPTIONS | {"refresh_s"}


def migrate(conn: Connection) -> list[int]:
    return apply_migrations(conn, MIGRATIONS, "shelfwise_rules_migrations", _MIGRATION_LOCK, "rules schema")


def open_pool(dsn: str, name: str) -> tuple[ConnectionPool, dict[str, str]]:
    if dsn.startswith("postgres://"):
        dsn = with_scheme(dsn, "postgresql")
    conninfo, opts = split_options(dsn, OPTIONS)
    pool = connection_pool(conninfo, opts, name)
    try:
        with pool.connection() as conn:
            migrate(conn)
    except BaseException:
        pool.close()
        raise
    return pool, opts


class PostgresRuleStore(SQLRuleStore):
    """Rule sets in the PostgreSQL database every replica shares."""

    def __init__(self, dsn: str) -> None:
        self.pool, opts = open_pool(dsn, "shelfwise-rules")
        self.refresh_s = float(opts.get("refresh_s", 1.0))
        self._generation: tuple[float, int] | None = None  # (read at, monotonic; value)
        self._closed = False

    @contextmanager
    def _write(self) -> Iterator[_Exec]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                yield _Exec(conn.cursor(), pg=True)
        finally:
            self._generation = None  # our own write: the next check reads the counter

    @contextmanager
    def _read(self) -> Iterator[_Exec]:
        with self.pool.connection() as conn:
            yield _Exec(conn.cursor(), pg=True)

    def generation(self) -> int:
        """The counter, read at most every ``refresh_s`` (the serving path asks on every request)."""
        got = self._generation
        now = time.monotonic()
        if got is not None and now - got[0] < self.refresh_s:
            return got[1]
        value = super().generation()
        self._generation = (now, value)
        return value

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close()


class PostgresExposureLog(QueuedExposureLog):
    """The exposure and shadow log in the PostgreSQL database every replica shares: the shared queue + writer thread
    of ``QueuedExposureLog``; the writer takes a pooled connection per batch (one transaction), readers theirs."""

    pg = True

    def __init__(self, dsn: str, retention_days: float = 30.0, max_queue: int = 200_000, batch: int = 2000,
                 linger_s: float = 0.25, counts_refresh_s: float = 10.0) -> None:
        super().__init__(retention_days, max_queue, batch, linger_s, counts_refresh_s)
        self.pool, _ = open_pool(dsn, "shelfwise-exposure-log")
        self._writer.start()

    def _connect_writer(self) -> None:
        return None

    def _close_writer(self, conn: None) -> None:
        pass

    def _commit(self, conn: None, batch: Batch) -> None:
        with self.pool.connection() as c, c.transaction():
            self._statements(_Exec(c.cursor(), pg=True), batch)

    def _totals(self, conn: None, item_ids: list[str]) -> dict[str, int]:
        with self.pool.connection() as c:
            return dict(c.execute("SELECT item_id, impressions FROM item_impressions WHERE item_id = ANY(%s)",
                                  (item_ids,)).fetchall())

    @contextmanager
    def _reading(self) -> Iterator[_Exec]:
        with self.pool.connection() as conn:
            yield _Exec(conn.cursor(), pg=True)

    def _erase(self, shopper: str) -> tuple[int, int]:
        with self.pool.connection() as conn, conn.transaction():
            x = _Exec(conn.cursor(), pg=True)
            return (x.run("DELETE FROM exposures WHERE shopper = ?", (shopper,)),
                    x.run("DELETE FROM shadow_log WHERE shopper = ?", (shopper,)))

    def _close_readers(self) -> None:
        self.pool.close()


def drop_schema(dsn: str) -> None:
    """Remove every rules and exposure-log table (tests only)."""
    import psycopg

    conninfo, _ = split_options(with_scheme(dsn, "postgresql"), OPTIONS)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
