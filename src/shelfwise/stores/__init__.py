"""Storage roles, each a protocol (``protocols``) with backends chosen by DSN scheme."""

from __future__ import annotations

from shelfwise.stores.protocols import Catalog, EventStore, OnlineState


class UnsupportedDSN(ValueError):
    pass


def _scheme(dsn: str) -> str:
    return dsn.split("://", 1)[0] if "://" in dsn else ""


def open_event_store(dsn: str) -> EventStore:
    """Event store + catalog for a DSN (both live in the same database)."""
    scheme = _scheme(dsn)
    if scheme == "sqlite":
        from shelfwise.stores.sqlite import SQLiteStore

        return SQLiteStore(dsn)
    raise UnsupportedDSN(f"no event store backend for {dsn!r} (supported: sqlite:///path)")


def open_catalog(store: EventStore) -> Catalog:
    if isinstance(store, Catalog):
        return store
    raise UnsupportedDSN("this event store does not hold a catalog")


def open_online_state(dsn: str, history_length: int) -> OnlineState:
    scheme = _scheme(dsn)
    if scheme == "memory":
        from shelfwise.stores.memory import MemoryOnlineState

        return MemoryOnlineState(history_length=history_length)
    raise UnsupportedDSN(f"no online state backend for {dsn!r} (supported: memory://)")
