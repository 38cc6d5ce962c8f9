"""Storage roles, each a protocol (``protocols``) with backends chosen by DSN scheme.

| role                     | embedded default     | scale-out                          |
| ------------------------ | -------------------- | ---------------------------------- |
| event store + catalog    | ``sqlite:///path``   | ``postgresql://`` (``postgres://``) |
| online state             | ``memory://``        | ``redis://`` (``rediss://``)        |
| vector index             | ``hnsw://``/``exact://`` (in-process) | ``pgvector://``   |
| event bus                | ``inprocess://``     | ``redis-stream://``, ``kafka://``   |
| keys, consent, erasures  | the event store's SQLite file | the event store's PostgreSQL |
| shopper preferences      | ``sqlite:///path`` (default: the event store's) | ``postgresql://`` |
| rate limiter             | ``memory://``        | ``redis://`` (the online state's)   |
| model registry           | ``sqlite:///path`` (default: ``registry.db`` in the model store) | ``postgresql://`` |

Backends are imported lazily, so the embedded default never imports a database driver.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from shelfwise.stores.protocols import (
    Catalog, ConsentStore, ErasureLedger, EventBus, EventStore, KeyStore, ModelRegistry, OnlineState, PreferenceStore,
    RateLimiter, VectorIndex,
)

if TYPE_CHECKING:
    from shelfwise.stores.bus import EventProcessor


class PrivacyStore(KeyStore, ConsentStore, ErasureLedger, Protocol):
    """What ``open_privacy_store`` returns: the three roles on one database connection (pool)."""

    def checkpoint(self) -> str: ...

    def close(self) -> None: ...


class UnsupportedDSN(ValueError):
    pass


def _scheme(dsn: str) -> str:
    return dsn.split("://", 1)[0] if "://" in dsn else ""


def _sql_role(dsn: str, role: str, sqlite: str, postgres: str, **sqlite_options: object):
    """A role kept in a SQL database, by the DSN's scheme: ``sqlite`` / ``postgres`` name the backend class as
    ``module.Class`` in this package (imported only when picked)."""
    scheme = _scheme(dsn)
    if scheme == "sqlite":
        name, options = sqlite, sqlite_options
    elif scheme in ("postgresql", "postgres"):
        name, options = postgres, {}
    else:
        raise UnsupportedDSN(f"no {role} backend for {dsn!r} (supported: sqlite:///path, postgresql://…)")
    module, cls = name.rsplit(".", 1)
    return getattr(importlib.import_module(f"shelfwise.stores.{module}"), cls)(dsn, **options)


def open_event_store(dsn: str, secure_delete: bool = True) -> EventStore:
    """Event store + catalog for a DSN (both live in the same database). ``secure_delete``: SQLite overwrites
    deleted rows with zeros."""
    return _sql_role(dsn, "event store", "sqlite.SQLiteStore", "postgres.PostgresStore", secure_delete=secure_delete)


def open_privacy_store(dsn: str, secure_delete: bool = True) -> "PrivacyStore":
    """Key store + consent store + erasure ledger, in the event store's database (picked by the events DSN)."""
    return _sql_role(dsn, "key/consent store", "sqlite_privacy.SQLitePrivacyStore",
                     "postgres_privacy.PostgresPrivacyStore", secure_delete=secure_delete)


def open_preference_store(dsn: str, secure_delete: bool = True) -> PreferenceStore:
    """Shoppers' explicit preferences (``stores.preferences``; by default the event store's database)."""
    return _sql_role(dsn, "preference store", "sqlite_preferences.SQLitePreferenceStore",
                     "postgres_preferences.PostgresPreferenceStore", secure_delete=secure_delete)


def open_model_registry(dsn: str) -> ModelRegistry:
    """The model registry (``stores.registry``; by default a SQLite file beside the model store, or the event store's
    PostgreSQL database: ``Settings.registry_dsn``)."""
    return _sql_role(dsn, "model registry", "registry.SQLiteModelRegistry", "registry.PostgresModelRegistry")


def open_rate_limiter(dsn: str, max_entries: int = 100_000, max_lease: int = 16) -> RateLimiter:
    """``memory://`` (one process) or ``redis://…`` (shared by every replica; ``max_lease``: cells a process may
    take from Redis at once, ``stores/ratelimit.py``)."""
    scheme = _scheme(dsn)
    if scheme == "memory":
        from shelfwise.stores.ratelimit import MemoryRateLimiter

        return MemoryRateLimiter(max_entries=max_entries)
    if scheme in ("redis", "rediss"):
        from shelfwise.stores.ratelimit import RedisRateLimiter

        return RedisRateLimiter(dsn, max_lease=max_lease, max_entries=max_entries)
    raise UnsupportedDSN(f"no rate limiter backend for {dsn!r} (supported: memory://, redis://…)")


def open_catalog(store: EventStore) -> Catalog:
    if isinstance(store, Catalog):
        return store
    raise UnsupportedDSN("this event store does not hold a catalog")


def open_online_state(dsn: str, history_length: int, caps: Any = None) -> OnlineState:
    """``caps``: the frequency caps' settings (``CapsSettings``): which events reset impressions, how long and how
    many impressions are kept."""
    scheme = _scheme(dsn)
    opts: dict[str, Any] = {}
    if caps is not None:
        from shelfwise.domain import EventType

        opts = {"reset_kinds": [int(EventType[k]) for k in caps.reset_on], "seen_keep_s": caps.keep_days * 86400.0,
                "seen_max_items": caps.max_items, "seen_max_shown": caps.max_shown}
    if scheme == "memory":
        from shelfwise.stores.memory import MemoryOnlineState

        return MemoryOnlineState(history_length=history_length, **opts)
    if scheme in ("redis", "rediss"):
        from shelfwise.stores.redis_state import RedisOnlineState

        return RedisOnlineState(dsn, history_length=history_length, **opts)
    raise UnsupportedDSN(f"no online state backend for {dsn!r} (supported: memory://, redis://…)")


def open_vector_index(dsn: str) -> VectorIndex:
    """An empty (or, for pgvector, the last built) vector index. ``hnsw://?m=16&ef_construction=128``."""
    from urllib.parse import parse_qsl, urlsplit

    scheme = _scheme(dsn)
    if scheme == "hnsw":
        from shelfwise.stores.vectors import HNSWIndex

        return HNSWIndex(**{k: int(v) for k, v in parse_qsl(urlsplit(dsn).query)})
    if scheme == "exact":
        from shelfwise.stores.vectors import ExactIndex

        return ExactIndex()
    if scheme == "pgvector":
        from shelfwise.stores.pgvector import PgVectorIndex

        return PgVectorIndex(dsn)
    raise UnsupportedDSN(f"no vector index backend for {dsn!r} (supported: hnsw://, exact://, pgvector://…)")


def vector_index_factory(dsn: str, model_dir: Path | None = None, version: str = ""
                         ) -> Callable[[str, np.ndarray], VectorIndex]:
    """What builds the vector index of an embedding source's item vectors (keys 0..n-1) for one model version.

    ``hnsw://``: an in-process HNSW graph, saved beside the model version (``<name>.hnsw``) the first time and
    loaded from there afterwards (every replica and restart skips the build). ``exact://``: brute force.
    ``pgvector://``: one table per (source, model version) in PostgreSQL, built by the first replica to ask and
    shared by all."""
    import hashlib
    from urllib.parse import parse_qsl, urlsplit

    scheme = _scheme(dsn)

    def make(name: str, vectors: np.ndarray) -> VectorIndex:
        keys = np.arange(len(vectors), dtype=np.int64)
        if scheme == "hnsw":
            from shelfwise.stores.vectors import HNSWIndex

            params = {k: int(v) for k, v in parse_qsl(urlsplit(dsn).query)}
            saved = model_dir / f"{name}.hnsw" if model_dir is not None else None
            if saved is not None and saved.exists():
                idx = HNSWIndex.load(saved, dim=vectors.shape[1], **params)
                if len(idx) == len(vectors):
                    return idx
            idx = HNSWIndex(**params)
            idx.build(keys, vectors)
            if saved is not None:
                try:  # best effort: a read-only shared model directory just means a build per process
                    tmp = saved.with_name(f".{saved.name}.{os.getpid()}.tmp")
                    idx.save(tmp)
                    tmp.replace(saved)
                except OSError:
                    pass
            return idx
        if scheme == "exact":
            from shelfwise.stores.vectors import ExactIndex

            idx = ExactIndex()
            idx.build(keys, vectors)
            return idx
        if scheme == "pgvector":
            from shelfwise.stores.pgvector import PgVectorIndex

            tag = hashlib.blake2b(f"{version}/{name}".encode(), digest_size=5).hexdigest()
            sep = "&" if "?" in dsn else "?"
            base = dict(parse_qsl(urlsplit(dsn).query)).get("table", "shelfwise_vectors")
            idx = PgVectorIndex(f"{dsn}{sep}table={base}_{tag}")
            if len(idx) != len(vectors):
                idx.build(keys, vectors)
            return idx
        raise UnsupportedDSN(f"no vector index backend for {dsn!r} (supported: hnsw://, exact://, pgvector://…)")

    if scheme not in ("hnsw", "exact", "pgvector"):
        raise UnsupportedDSN(f"no vector index backend for {dsn!r} (supported: hnsw://, exact://, pgvector://…)")
    return make


def open_event_bus(dsn: str, processor: "EventProcessor", ack: str = "stream", ack_timeout_s: float = 10.0,
                   known_items: Callable[[], set[str] | None] = lambda: None) -> EventBus:
    """The bus the API publishes to. ``processor`` is what the in-process bus runs on publish."""
    scheme = _scheme(dsn)
    if scheme == "inprocess":
        from shelfwise.stores.bus import InProcessBus

        return InProcessBus(processor)
    if scheme in ("redis-stream", "rediss-stream"):
        from shelfwise.stores.redis_stream import RedisStreamBus

        if scheme == "rediss-stream":
            dsn = "rediss" + dsn[len("rediss-stream"):]
        return RedisStreamBus(dsn, ack=ack, ack_timeout_s=ack_timeout_s, known_items=known_items)
    if scheme == "kafka":
        from shelfwise.stores.kafka_bus import KafkaBus

        return KafkaBus(dsn, ack=ack, ack_timeout_s=ack_timeout_s, known_items=known_items)
    raise UnsupportedDSN(f"no event bus backend for {dsn!r} (supported: inprocess://, redis-stream://…, kafka://…)")
