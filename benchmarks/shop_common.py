"""Shared by the benchmarks: a synthetic storefront loaded into a temporary SQLite store, event batches."""

from __future__ import annotations

import itertools
import tempfile
from typing import Iterable, Iterator

from shelfwise.stores.sqlite import SQLiteStore
from shelfwise.synthetic import generate_storefront


def sqlite_storefront(items: int, shoppers: int, events: int, seed: int):
    """(storefront, SQLite store holding its catalog and events, the temporary directory to clean up)."""
    shop = generate_storefront(n_items=items, n_shoppers=shoppers, n_events=events, seed=seed)
    tmp = tempfile.TemporaryDirectory()
    store = SQLiteStore(f"sqlite:///{tmp.name}/shop.db")
    store.upsert(shop.items)
    for batch in batches(shop.events(), 20_000):
        store.append(batch)
    return shop, store, tmp


def batches(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of n items (the last one shorter)."""
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
