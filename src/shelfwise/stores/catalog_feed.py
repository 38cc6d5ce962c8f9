"""Following the shared catalog: what another replica (or the CLI) changed, for this process to apply.

Every replica polls ``Catalog.changes`` (``api.catalog_sync_s``, every second by default) from a cursor on the
database's clock. A write that was still committing when a poll read is stamped earlier than that poll (PostgreSQL
stamps a row with its transaction's start), so each poll starts ``slack_s`` before the previous one's time and the
feed drops what it already applied: an item whose stored document equals the one applied last (by this process's
own upsert or an earlier poll), a deletion of an item it no longer holds. What it remembers is forgotten once it
has left every poll's window, so memory stays proportional to the catalog's recent changes.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import orjson

from shelfwise.domain import Item
from shelfwise.stores.protocols import Catalog

SLACK_S = 10.0  # longest a catalog write may take to commit and still be seen by every replica


def _doc(item: Item) -> bytes:
    return orjson.dumps(item.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


class CatalogFeed:
    def __init__(self, catalog: Catalog, slack_s: float = SLACK_S) -> None:
        self.catalog, self.slack_s = catalog, slack_s
        self._lock = threading.Lock()
        self._cursor = catalog.changes(float(2**40)).as_of  # now, by the database's clock: nothing to read yet
        self._applied: dict[str, tuple[bytes, float]] = {}  # item id -> (document applied, when: monotonic)

    def applied(self, items: Sequence[Item]) -> None:
        """This process applied these items (its own upsert): a poll that reads them back skips them."""
        now = time.monotonic()
        with self._lock:
            for it in items:
                self._applied[it.id] = (_doc(it), now)

    def deleted(self, item_ids: Sequence[str]) -> None:
        """This process removed these items: stored again later, even with the same document, they apply anew."""
        with self._lock:
            for i in item_ids:
                self._applied.pop(i, None)

    def poll(self, held: Sequence[str] | set[str]) -> tuple[list[Item], list[str]]:
        """Changes since the last poll not applied yet: (items to apply, ids to remove among ``held``)."""
        got = self.catalog.changes(self._cursor - self.slack_s)
        now = time.monotonic()
        fresh: list[Item] = []
        with self._lock:
            for it in got.upserted:
                doc = _doc(it)
                seen = self._applied.get(it.id)
                if seen is None or seen[0] != doc:
                    fresh.append(it)
                self._applied[it.id] = (doc, now if seen is None or seen[0] != doc else seen[1])
            gone = [i for i in got.deleted if i in held]
            for i in got.deleted:
                self._applied.pop(i, None)
            horizon = now - 3 * self.slack_s - 60.0  # left every poll's window long ago
            if len(self._applied) > 1024:
                for i in [i for i, (_, t) in self._applied.items() if t < horizon]:
                    del self._applied[i]
            self._cursor = max(self._cursor, got.as_of)
        return fresh, gone
