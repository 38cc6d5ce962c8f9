"""In-process online state: a bounded LRU of shopper states, updated on every ingested event.

Memory per shopper is bounded: at most ``history_length`` recent interactions and ``max_purchased`` purchased
items (the most recent purchases are kept); at most ``max_shoppers`` shoppers (least recently used evicted).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Iterable, Sequence

from shelfwise.stores.protocols import Interaction, Seen, SeenItem, ShopperState


SeenRows = dict[str, tuple[float, tuple[tuple[float, str], ...]]]  # item -> (reset, shown): a plain tuple per item


def add_shown(seen: SeenRows, pairs: Iterable[tuple[str, str]], at: float, keep_s: float, max_items: int,
              max_shown: int) -> SeenRows:
    """``seen`` with impressions of (item, placement) at ``at`` added, older than ``keep_s`` dropped, at most
    ``max_shown`` per item and ``max_items`` items (the least recently shown go first). Items in insertion order =
    least recently shown first. Plain tuples only (``SeenItem``: the garbage collector stops tracking them)."""
    out = dict(seen)
    for item, placement in pairs:
        old = out.pop(item, None)
        shown = (old[1] if old is not None else ()) + ((at, placement),)
        if len(shown) > 1 and shown[-2][0] > at:  # a request answered late: keep them in time order
            shown = tuple(sorted(shown, key=lambda x: x[0]))
        out[item] = (old[0] if old is not None else 0.0, shown[-max_shown:])
    cutoff = at - keep_s
    for item in [i for i, s in out.items() if not s[1] or s[1][-1][0] <= cutoff]:
        del out[item]
    if len(out) > max_items:
        ranked = sorted(out, key=lambda i: out[i][1][-1][0])
        for item in ranked[:len(out) - max_items]:
            del out[item]
    return out


def reset_seen(seen: SeenRows, resets: dict[str, float]) -> SeenRows:
    """``seen`` with each reset item's impressions up to its time dropped (the time kept for late arrivals)."""
    out = dict(seen)
    for item, ts in resets.items():
        old = out.get(item)
        if old is not None and ts > old[0]:
            out[item] = (ts, tuple(x for x in old[1] if x[0] > ts))
    return out


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
    def __init__(self, history_length: int = 50, max_shoppers: int = 1_000_000, max_purchased: int = 500,
                 reset_kinds: Iterable[int] = (), seen_keep_s: float = 30 * 86400.0, seen_max_items: int = 200,
                 seen_max_shown: int = 5) -> None:
        self.history_length = history_length
        self.max_shoppers = max_shoppers
        self.max_purchased = max_purchased
        self.reset_kinds = frozenset(int(k) for k in reset_kinds)
        self.seen_keep_s, self.seen_max_items, self.seen_max_shown = seen_keep_s, seen_max_items, seen_max_shown
        self._seen: OrderedDict[str, SeenRows] = OrderedDict()  # shopper -> impressions (not read through: kept apart)
        self._states: OrderedDict[str, tuple[list[Interaction], list[str], int]] = OrderedDict()
        self._loading: OrderedDict[str, str] = OrderedDict()  # shopper -> stamp of a read-through load
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()

    def get(self, shoppers: Sequence[str]) -> dict[str, ShopperState | None]:
        return self.read(shoppers)[0]

    def read(self, shoppers: Sequence[str]) -> tuple[dict[str, ShopperState | None], dict[str, Seen]]:
        with self._lock:
            out: dict[str, ShopperState | None] = {}
            seen: dict[str, Seen] = {}
            for s in shoppers:
                got = self._seen.get(s)
                seen[s] = {i: SeenItem._make(t) for i, t in got.items()} if got else {}
                st = self._states.get(s)
                if st is None:
                    out[s] = None
                    continue
                self._states.move_to_end(s)
                out[s] = ShopperState(recent=list(st[0]), purchased=set(st[1]), version=st[2], seen=seen[s])
            return out, seen

    def show(self, shown: dict[str, list[tuple[str, str]]], at: float) -> None:
        with self._lock:
            for shopper, pairs in shown.items():
                if not pairs:
                    continue
                self._seen[shopper] = add_shown(self._seen.get(shopper) or {}, pairs, at, self.seen_keep_s,
                                                self.seen_max_items, self.seen_max_shown)
                self._seen.move_to_end(shopper)
            while len(self._seen) > self.max_shoppers:
                self._seen.popitem(last=False)

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
                got = self._seen.get(shopper)
                if got and self.reset_kinds:
                    resets: dict[str, float] = {}
                    for it in interactions:
                        if it.kind in self.reset_kinds and it.ts > resets.get(it.item_id, 0.0):
                            resets[it.item_id] = it.ts
                    if resets:
                        self._seen[shopper] = reset_seen(got, resets)
                st = self._states.get(shopper)
                if st is None:
                    continue
                self._states[shopper] = (merge_interactions(st[0], interactions, self.history_length),
                                         merge_purchased(st[1], purchased, self.max_purchased), st[2] + 1)

    def forget(self, shopper: str) -> None:
        with self._lock:
            self._states.pop(shopper, None)
            self._loading.pop(shopper, None)
            self._seen.pop(shopper, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._loading.clear()
            self._seen.clear()
