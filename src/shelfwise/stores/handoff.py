"""Hand-off from the request path to a log's writer thread, in batches.

``put`` is a bounded deque append: no lock and no condition variable per item. ``queue.Queue`` paid both on every
put and every get (the writer took items one by one with a timeout); at 400 requests/s with events streaming in,
the two logs' queues alone took 8 % of the API process's CPU samples, all of it holding the GIL that requests need.
The writer ``take``s: it sleeps until the first item arrives, lets more gather for ``linger_s`` (cut short by a
control item such as a flush), then takes up to ``batch`` items at once.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class Handoff:
    def __init__(self, max_items: int, linger_s: float = 0.0) -> None:
        self.max_items = max_items
        self.linger_s = linger_s
        self.dropped = 0  # items lost: refused because the writer fell ``max_items`` behind, or reported by ``lost``
        self._items: deque = deque()
        self._wake = threading.Event()  # something to take
        self._urgent = threading.Event()  # a control item: take at once, without lingering

    def put(self, item: Any) -> bool:
        """Queue an item for the writer; False (and counted in ``dropped``) when the queue is full."""
        if len(self._items) >= self.max_items:
            self.dropped += 1
            return False
        self._items.append(item)
        if not self._wake.is_set():
            self._wake.set()
        return True

    def lost(self, n: int) -> None:
        """The writer could not commit ``n`` items it took: they count as dropped too."""
        self.dropped += n

    def put_control(self, item: Any) -> None:
        """Queue an item the writer must see now (a flush or stop marker); never refused."""
        self._items.append(item)
        self._urgent.set()
        self._wake.set()

    def take(self, batch: int) -> list[Any]:
        """Block until there are items; then, after lingering, up to ``batch`` of them in arrival order."""
        self._wake.wait()
        if self.linger_s > 0 and not self._urgent.is_set():
            self._urgent.wait(self.linger_s)
        self._urgent.clear()
        self._wake.clear()  # before draining: an item put after this sets them again
        out = []
        while self._items and len(out) < batch:
            out.append(self._items.popleft())
        if self._items:  # a backlog (maybe with a control item in it): the next take need not linger
            self._urgent.set()
            self._wake.set()
        return out

    def __len__(self) -> int:
        return len(self._items)
