"""Shared by the benchmarks: a synthetic storefront loaded into a temporary SQLite store, event batches."""

from __future__ import annotations

import itertools
import random
import tempfile
from typing import Any, Callable, Iterable, Iterator

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


def single_requests(shop, pipe, store, n: int, now: float, history_length: int,
                    extra: Callable[[random.Random], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``RecRequest`` keywords of ``n`` single requests: a known shopper (one of 2,000 drawn) with their stored
    history; two homepages, then a product page of the shopper's last item. ``extra`` adds keywords per request
    (drawn from the same generator, after the shopper)."""
    shoppers = random.Random(1).sample(sorted(pipe.shopper_index), min(2000, len(pipe.shopper_index)))
    states = store.history(shoppers, history_length)
    rng = random.Random(3)
    reqs = []
    for i in range(n):
        s = rng.choice(shoppers)
        st = states[s]
        placement = "homepage" if i % 3 else "pdp_similar"
        item = st.recent[-1].item_id if st.recent else shop.items[0].id
        reqs.append(dict(placement=placement, shopper=s, state=st, k=12, now=now, **(extra(rng) if extra else {}),
                         item_id=item if placement == "pdp_similar" else None, request_id=f"r{i}"))
    return reqs
