"""Shared fixtures: isolated settings on a temporary data dir and a tiny hand-made storefront."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shelfwise.domain import Event, Item
from shelfwise.settings import Settings, load_settings

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def content_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of the text encoder's ONNX export for the whole run (exporting takes seconds)."""
    return tmp_path_factory.mktemp("content-cache")


def clear_settings_env(mp: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Unset every ``SHELFWISE_*`` variable (the ``SHELFWISE_TEST_*`` switches kept) for ``mp``'s lifetime: tests
    read their settings from their own data dir, never from the caller's environment."""
    for key in list(os.environ):
        if key.startswith("SHELFWISE_") and not key.startswith("SHELFWISE_TEST_"):
            mp.delenv(key, raising=False)
    return mp


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content_cache: Path) -> Settings:
    clear_settings_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    return load_settings(data_dir=tmp_path / "data", models={"content": {"cache_dir": str(content_cache)}})


def view(eid: str, shopper: str, item: str, minute: float, session: str | None = None) -> Event:
    return Event(event_id=eid, type="product_viewed", user_id=shopper, session_id=session or f"{shopper}-s",
                 item_id=item, timestamp=T0 + timedelta(minutes=minute))


def buy(eid: str, shopper: str, items: list[str], minute: float, session: str | None = None) -> Event:
    return Event(event_id=eid, type="purchase_completed", user_id=shopper, session_id=session or f"{shopper}-s",
                 items=[{"item_id": i, "quantity": 1, "price": 10.0} for i in items],
                 timestamp=T0 + timedelta(minutes=minute))


CATALOG_SINCE = T0 - timedelta(days=365)  # when the tiny shop's items came out: long before any new item


def tiny_catalog() -> list[Item]:
    """Phones p0..p3, cases c0..c3 (case ci fits phone pi), chargers h0..h1; none of them new."""
    items = []
    for i in range(4):
        items.append(Item(id=f"p{i}", title=f"Phone {i}", category=["Phones", "Smartphones"], brand="Nova",
                          price=500 + i, cost=450, stock=10, created_at=CATALOG_SINCE))
        items.append(Item(id=f"c{i}", title=f"Case for phone {i}", category=["Accessories", "Phone Cases"],
                          brand="Shield", price=20, cost=6, stock=50, created_at=CATALOG_SINCE))
    for i in range(2):
        items.append(Item(id=f"h{i}", title=f"Charger {i}", category=["Accessories", "Chargers"], brand="Volt",
                          price=30, cost=10, stock=40, created_at=CATALOG_SINCE))
    return items


def tiny_events() -> list[Event]:
    """Shoppers browse phone i then its case; some buy both; everybody views p0 a lot (popular)."""
    out: list[Event] = []
    n = 0
    for s in range(40):
        shopper = f"u{s}"
        phone = s % 4
        base = s * 120.0
        for step, item in enumerate([f"p{phone}", f"c{phone}", f"p{(phone + 1) % 4}", "p0"]):
            n += 1
            out.append(view(f"e{n}", shopper, item, base + step))
        if s % 2 == 0:
            n += 1
            out.append(buy(f"e{n}", shopper, [f"p{phone}", f"c{phone}"], base + 10))
    return out


@pytest.fixture
def trained_settings(settings: Settings) -> Settings:
    """Settings whose data dir holds the tiny storefront and a trained default model."""
    from shelfwise.service import Shelfwise
    from shelfwise.training import train

    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, settings.models)
    eng.close()
    return settings


def make_key(settings: Settings, scopes=("ingest", "read", "admin"), **kw) -> str:
    """A new API key in the settings' key store (returns the key itself)."""
    from shelfwise.security.keys import create_key
    from shelfwise.stores import open_privacy_store

    import time

    store = open_privacy_store(settings.events_dsn)
    try:
        name = kw.pop("name", None)
        if name:
            store.revoke_key(name, time.time())  # a second client of the same data dir replaces the key
        return create_key(store, name, list(scopes), **kw)[0]
    finally:
        store.close()


def api_client(settings: Settings, engine=None, scopes=("ingest", "read", "admin")):
    """A test client of the API that sends a key with the given scopes on every request (auth stays on)."""
    from fastapi.testclient import TestClient

    from shelfwise.api.app import create_app

    key = make_key(settings, scopes, name="tester")
    return TestClient(create_app(settings, engine=engine), headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def trained_engine(trained_settings):
    """A running engine (no API) on the tiny trained storefront."""
    from shelfwise.service import Shelfwise

    eng = Shelfwise(trained_settings)
    yield eng
    eng.close()


def ids(answer) -> list[str]:
    """The item ids of an answer, in order."""
    return [r.item_id for r in answer.items]
