"""In-process online state: a bounded LRU of shopper states, updated on every ingested event."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Sequence

from shelfwise.stores.protocols import Interaction, ShopperState


class MemoryOnlineState:
    def __init__(self, history_length: int = 50, max_shoppers: int = 1_000_000) -> None:
        self.history_length = history_length
        self.max_shoppers = max_shoppers
        self._states: OrderedDict[str, ShopperState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, shoppers: Sequence[str]) -> dict[str, ShopperState | None]:
        with self._lock:
            out: dict[str, ShopperState | None] = {}
            for s in shoppers:
                st = self._states.get(s)
                if st is not None:
                    self._states.move_to_end(s)
                    st = ShopperState(recent=list(st.recent), purchased=set(st.purchased), version=st.version)
                out[s] = st
            return out

    def put(self, states: dict[str, ShopperState]) -> None:
        with self._lock:
            for s, st in states.items():
                self._states[s] = ShopperState(
                    recent=list(st.recent[-self.history_length:]), purchased=set(st.purchased), version=st.version
                )
                self._states.move_to_end(s)
            while len(self._states) > self.max_shoppers:
                self._states.popitem(last=False)

    def record(self, shopper: str, interactions: Iterable[Interaction], purchased: Iterable[str]) -> None:
        with self._lock:
            st = self._states.get(shopper)
            if st is None:
                return
            st.recent.extend(interactions)
            st.recent.sort(key=lambda x: x.ts)
            del st.recent[: max(0, len(st.recent) - self.history_length)]
            st.purchased.update(purchased)
            st.version += 1

    def forget(self, shopper: str) -> None:
        with self._lock:
            self._states.pop(shopper, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
