"""A short-lived cache of computed answers, in process.

An answer is keyed by everything that decides it: the placement and request parameters, the model version, the
live rule set versions, the catalog version of the item table (every price, stock or availability change bumps it,
so such a change reaches every cached answer at once), a fingerprint of the shopper's recent events (their next
event changes it, so a shopper's own event always changes their next answer) and when their preferences were last
stored (new preferences make a new answer at once), and the items capped for the shopper now (frequency caps).
Entries expire after ``ttl_s``
(time-dependent scores: freshness, seasons) and the least recently used go when ``max_entries`` is reached.
Each API process has its own cache; replicas never serve each other's entries.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Hashable

from shelfwise.request import Answer, RecRequest
from shelfwise.rerank.caps import capped
from shelfwise.settings import CapSettings
from shelfwise.stores.protocols import ShopperState


def state_fingerprint(state: ShopperState | None) -> tuple:
    """Changes with every event of the shopper (the newest interaction, the counts)."""
    if state is None or (not state.recent and not state.purchased):
        return ()
    last = state.recent[-1] if state.recent else None
    return (len(state.recent), len(state.purchased), last.item_id if last else "", last.kind if last else -1,
            last.ts if last else 0.0)


def capped_now(req: RecRequest, conf: CapSettings | None) -> frozenset[str]:
    """The items the request's placement may not show its shopper now (frequency caps, ``rerank.caps``)."""
    if conf is None or req.state is None or not req.state.seen:
        return frozenset()
    return frozenset(capped(req.state.seen, req.now or time.time(), req.placement, conf))


def request_key(req: RecRequest, model: str, rulesets: str, catalog: int,
                capped: frozenset[str] = frozenset()) -> tuple:
    """Everything that decides an answer; the shopper's preferences by the time they were stored (a change made
    through any replica makes a new key there at once); the items capped for the shopper now (an item reaching its
    cap makes a new answer at once; the soft fatigue penalty may be ``ttl_s`` stale)."""
    return (req.placement, req.shopper, req.item_id, tuple(req.cart), req.k, tuple(req.exclude), req.category,
            req.device, tuple(req.segments), req.explain, req.variant, model, rulesets, catalog,
            state_fingerprint(req.state), req.preferences.updated_at if req.preferences is not None else None,
            req.filters, tuple(req.given) if req.given is not None else None, req.query, req.impact, capped)


class AnswerCache:
    def __init__(self, ttl_s: float = 30.0, max_entries: int = 50_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[Hashable, tuple[float, Answer]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries > 0

    def get(self, key: Hashable) -> Answer | None:
        now = time.monotonic()
        with self._lock:
            got = self._entries.get(key)
            if got is None or got[0] < now:
                if got is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return got[1]

    def put(self, key: Hashable, answer: Answer) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl_s, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget(self, shopper: str) -> int:
        """Drop every answer computed for a shopper (erasure); returns how many."""
        with self._lock:
            keys = [k for k in self._entries if isinstance(k, tuple) and len(k) > 1 and k[1] == shopper]
            for k in keys:
                del self._entries[k]
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
