"""Vector index on PostgreSQL + pgvector: an HNSW index over inner product, shared by every API replica.

``build`` loads the vectors with ``COPY`` into a fresh table, creates the HNSW index (``vector_ip_ops``, m=16,
ef_construction=128 by default) and swaps it in with a rename inside one transaction, so searches see the old or
the new contents, never a mix. ``search`` runs one ``ORDER BY v <#> q LIMIT k`` per query (pipelined), with
``hnsw.ef_search`` at least k (pgvector never returns more than ef_search rows from the index).

The in-process HNSW index (``stores.vectors``) stays available in scale-out — it is faster per query — and is
rebuilt in each replica when the model version changes; pgvector spares every replica the build and the memory.

DSN: ``pgvector://user@host:5432/db?table=shelfwise_vectors&m=16&ef_construction=128&ef_search=100`` (any libpq
parameter may follow, e.g. ``host=/path/to/socket/dir``).
"""

from __future__ import annotations

import re

import numpy as np
import psycopg
from psycopg import sql

from shelfwise.stores._dsn import split_options, with_scheme
from shelfwise.stores.postgres import POOL_OPTIONS, connection_pool

_OPTIONS = {"table", "m", "ef_construction", "ef_search"} | POOL_OPTIONS


def _literal(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


class PgVectorIndex:
    def __init__(self, dsn: str) -> None:
        conninfo, opts = split_options(with_scheme(dsn, "postgresql"), _OPTIONS)
        self.table = opts.get("table", "shelfwise_vectors")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,50}", self.table):
            raise ValueError(f"invalid pgvector table name {self.table!r} (lower-case letters, digits, _)")
        self.m = int(opts.get("m", 16))
        self.ef_construction = int(opts.get("ef_construction", 128))
        self.ef_search = int(opts.get("ef_search", 100))
        self.pool = connection_pool(conninfo, opts, "shelfwise-vectors")
        with self.pool.connection() as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.errors.FeatureNotSupported as exc:  # pragma: no cover - depends on the server
                raise RuntimeError("this PostgreSQL server has no pgvector extension") from exc
            except psycopg.errors.UniqueViolation:  # another replica created it at the same moment
                conn.rollback()
        self._dim = self._stored_dim()

    def _stored_dim(self) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'v'",
                (self.table,)).fetchone()
        return int(row[0]) if row else None

    def build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        keys = np.asarray(keys, np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(keys) != len(vectors):
            raise ValueError("build needs keys of shape (n,) and vectors of shape (n, dim)")
        if len(np.unique(keys)) != len(keys):
            raise ValueError("keys must be unique")
        dim = int(vectors.shape[1]) if vectors.size else (self._dim or 1)
        new, old = sql.Identifier(self.table + "_new"), sql.Identifier(self.table + "_old")
        table = sql.Identifier(self.table)
        with self.pool.connection() as conn:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(new))
                conn.execute(sql.SQL("CREATE TABLE {} (key bigint PRIMARY KEY, v vector({}) NOT NULL)")
                             .format(new, sql.Literal(dim)))
                with conn.cursor().copy(sql.SQL("COPY {} (key, v) FROM STDIN").format(new)) as cp:
                    for key, vec in zip(keys.tolist(), vectors):
                        cp.write_row((key, _literal(vec)))
                conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = '256MB'"))
                conn.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (v vector_ip_ops) WITH (m = {}, "
                                     "ef_construction = {})").format(new, sql.Literal(self.m),
                                                                     sql.Literal(self.ef_construction)))
                conn.execute(sql.SQL("ALTER TABLE IF EXISTS {} RENAME TO {}").format(table, old))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(new, table))
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(old))
        self._dim = dim

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        out_k = np.full((len(q), k), -1, np.int64)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        if self._dim is None:
            self._dim = self._stored_dim()  # another replica may have built it meanwhile
        if self._dim is None or len(q) == 0 or k <= 0:
            return out_k, out_s
        query = sql.SQL("SELECT key, -(v <#> %s::vector) FROM {} ORDER BY v <#> %s::vector LIMIT %s").format(
            sql.Identifier(self.table))
        with self.pool.connection() as conn:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(
                    sql.Literal(min(1000, max(self.ef_search, k)))))
                cur = conn.cursor()
                literals = [_literal(row) for row in q]
                cur.executemany(query, [(lit, lit, k) for lit in literals], returning=True)
                row = 0
                while True:
                    res = cur.fetchall()
                    if res:
                        out_k[row, :len(res)] = [r[0] for r in res]
                        out_s[row, :len(res)] = [r[1] for r in res]
                    row += 1
                    if not cur.nextset():
                        break
        return out_k, out_s

    def __len__(self) -> int:
        if self._dim is None and self._stored_dim() is None:
            return 0
        with self.pool.connection() as conn:
            return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.table))).fetchone()[0]

    def drop(self) -> None:
        with self.pool.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table)))
        self._dim = None

    def close(self) -> None:
        self.pool.close()
