"""In-process online state: a bounded LRU of shopper states, updated on every ingested event.

Memory per shopper is bounded: at most ``history_length`` recent interactions and ``max_purchased`` purchased
items (the most recent purchases are kept); at most ``max_shoppers`` shoppers (least recently used evicted).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Iterable, Sequence

from shelfwise.stores.protocols import Interaction, ShopperState


def merge_interactions(recent: list[Interaction], new: Iterable[Interaction], limit: int) -> list[Interaction]:
    """Insert ``new`` by time (stable), skipping ones equal to an interaction already held; keep the last ``limit``."""
    held = {(it.item_id, it.kind, it.ts) for it in recent}
    out = list(recent)
    for it in new:
        if (it.item_id, it.kind, it.ts) in held:
            continue
        pos = len(out)
        while pos > 0 and out[pos - 1].ts > it.ts:
            pos -= 1
        out.insert(pos, it)
    return out[max(0, len(out) - limit):]


def merge_purchased(purchased: list[str], new: Iterable[str], limit: int) -> list[str]:
    out = list(purchased)
    for item in new:
        if item in out:
            out.remove(item)
        out.append(item)
    return out[max(0, len(out) - limit):]


class MemoryOnlineState:
    def __init__(self, history_length: int = 50, max_shoppers: int = 1_000_000, max_purchased: int = 500) -> None:
        self.history_length = history_length
        self.max_shoppers = max_shoppers
        self.max_purchased = max_purchased
        self._states: OrderedDict[str, tuple[list[Interaction], list[str], int]] = OrderedDict()
        self._loading: OrderedDict[str, str] = OrderedDict()  # shopper -> stamp of a read-through load
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, shoppers: Sequence[str]) -> dict[str, ShopperState | None]:
        with self._lock:
            out: dict[str, ShopperState | None] = {}
            for s in shoppers:
                st = self._states.get(s)
                if st is None:
                    out[s] = None
                    continue
                self._states.move_to_end(s)
                out[s] = ShopperState(recent=list(st[0]), purchased=set(st[1]), version=st[2])
            return out

    def stamp(self, shoppers: Sequence[str]) -> dict[str, str]:
        with self._lock:
            out = {}
            for s in shoppers:
                out[s] = self._loading[s] = str(next(self._tokens))
                self._loading.move_to_end(s)
            while len(self._loading) > 100_000:  # an abandoned load only makes its put fail
                self._loading.popitem(last=False)
            return out

    def put(self, states: dict[str, ShopperState], if_unchanged: dict[str, str] | None = None) -> set[str]:
        done: set[str] = set()
        with self._lock:
            for s, st in states.items():
                if if_unchanged is not None:
                    token = self._loading.get(s)
                    if token is None or token != if_unchanged.get(s) or s in self._states:
                        continue
                    del self._loading[s]
                recent = sorted(st.recent, key=lambda x: x.ts)[-self.history_length:]
                self._states[s] = (recent, sorted(st.purchased)[-self.max_purchased:], st.version)
                self._states.move_to_end(s)
                done.add(s)
            while len(self._states) > self.max_shoppers:
                self._states.popitem(last=False)
        return done

    def record(self, shopper: str, interactions: Iterable[Interaction], purchased: Iterable[str]) -> None:
        self.record_many({shopper: (list(interactions), list(purchased))})

    def record_many(self, updates: dict[str, tuple[list[Interaction], list[str]]]) -> None:
        with self._lock:
            for shopper, (interactions, purchased) in updates.items():
                self._loading.pop(shopper, None)
                st = self._states.get(shopper)
                if st is None:
                    continue
                self._states[shopper] = (merge_interactions(st[0], interactions, self.history_length),
                                         merge_purchased(st[1], purchased, self.max_purchased), st[2] + 1)

    def forget(self, shopper: str) -> None:
        with self._lock:
            self._states.pop(shopper, None)
            self._loading.pop(shopper, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._loading.clear()
