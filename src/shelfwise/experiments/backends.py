"""Opening the experiment store and log for a DSN (``experiments.dsn``, else the event store's): SQLite file,
PostgreSQL database, or (the log only) ``memory://``. Backends are imported lazily."""

from __future__ import annotations

from typing import Any

from shelfwise.experiments.log import ExperimentLog
from shelfwise.experiments.sql import scheme, sqlite_path
from shelfwise.experiments.store import ExperimentStore


def open_experiment_store(dsn: str) -> ExperimentStore:
    """The experiment store in the database of ``dsn``."""
    kind = scheme(dsn)
    if kind == "sqlite":
        from shelfwise.experiments.store import SQLiteExperimentStore

        return SQLiteExperimentStore(sqlite_path(dsn))
    if kind in ("postgresql", "postgres"):
        from shelfwise.experiments.pg import PostgresExperimentStore

        return PostgresExperimentStore(dsn)
    raise ValueError(f"no experiment store backend for {dsn!r} (supported: sqlite:///path, postgresql://…)")


def open_experiment_log(dsn: str, retention_days: float = 180.0, max_queue: int = 200_000) -> ExperimentLog:
    """The exposure & outcome log in the database of ``dsn`` (``memory://``: in process)."""
    kind = scheme(dsn)
    if kind == "sqlite":
        from shelfwise.experiments.log import SQLiteExperimentLog

        return SQLiteExperimentLog(sqlite_path(dsn), retention_days, max_queue)
    if kind in ("postgresql", "postgres"):
        from shelfwise.experiments.pg import PostgresExperimentLog

        return PostgresExperimentLog(dsn, retention_days, max_queue)
    if kind == "memory":
        from shelfwise.experiments.memlog import MemoryExperimentLog

        return MemoryExperimentLog()
    raise ValueError(f"no experiment log backend for {dsn!r} (supported: sqlite:///path, postgresql://…, memory://)")


def experiments_dsn(settings: Any) -> str:
    return settings.experiments.dsn or settings.events_dsn
