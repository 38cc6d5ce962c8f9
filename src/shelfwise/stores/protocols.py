"""One small, batch-first protocol per storage role. Backends are picked by DSN scheme (see ``open_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from shelfwise.domain import Event, Item


@dataclass(frozen=True)
class AppendResult:
    """What an append did: stored events, ignored duplicates (by event_id), and unknown item ids seen."""

    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown_items: list[str] = field(default_factory=list)


@dataclass
class EventLog:
    """Item interactions in columnar form, ordered by (shopper, timestamp, arrival)."""

    shopper: np.ndarray  # object array of shopper keys
    session: np.ndarray  # object array of session ids ("" when absent)
    item: np.ndarray  # object array of item ids
    kind: np.ndarray  # int8 EventType codes
    ts: np.ndarray  # float64 unix seconds
    order: np.ndarray  # object array of order ids ("" when not a purchase)
    quantity: np.ndarray  # int32
    price: np.ndarray  # float64, nan when unknown

    def __len__(self) -> int:
        return len(self.item)

    def take(self, mask: np.ndarray) -> "EventLog":
        return EventLog(**{k: getattr(self, k)[mask] for k in self.__dataclass_fields__})

    @classmethod
    def empty(cls) -> "EventLog":
        obj = np.array([], dtype=object)
        return cls(obj, obj.copy(), obj.copy(), np.array([], np.int8), np.array([], float), obj.copy(),
                   np.array([], np.int32), np.array([], float))


@dataclass(frozen=True)
class Interaction:
    """One recent item interaction of a shopper, as online state keeps it."""

    item_id: str
    kind: int
    ts: float


@dataclass
class ShopperState:
    recent: list[Interaction]  # oldest first, at most history_length
    purchased: set[str]
    version: int = 0


@runtime_checkable
class EventStore(Protocol):
    def append(self, events: Sequence[Event], known_items: set[str] | None = None) -> AppendResult:
        """Durably store events (committed before returning); duplicates by event_id are ignored."""

    def scan(self, since: float | None = None, until: float | None = None) -> EventLog:
        """All item interactions (purchases expanded to one row a line), ordered per shopper by time."""

    def history(self, shoppers: Sequence[str], limit: int) -> dict[str, ShopperState]:
        """Last ``limit`` item interactions and every purchased item of each shopper."""

    def count(self) -> int: ...

    def delete_shopper(self, shopper: str) -> int:
        """Erase a shopper's events; returns how many were removed."""

    def close(self) -> None: ...


@runtime_checkable
class Catalog(Protocol):
    def upsert(self, items: Sequence[Item]) -> int: ...

    def get(self, item_ids: Sequence[str]) -> dict[str, Item]: ...

    def delete(self, item_id: str) -> bool: ...

    def all(self) -> list[Item]: ...

    def ids(self) -> set[str]: ...


@runtime_checkable
class OnlineState(Protocol):
    """Per-shopper recent events, kept current on every ingested event. A miss returns None (read-through)."""

    def get(self, shoppers: Sequence[str]) -> dict[str, ShopperState | None]: ...

    def put(self, states: dict[str, ShopperState], if_unchanged: dict[str, str] | None = None) -> set[str]:
        """Cache states; returns the shoppers installed.

        With ``if_unchanged`` (tokens from ``stamp``) a state is installed only when nothing was recorded for,
        forgotten of, or installed for that shopper since its stamp: a read-through load that raced an ingest is
        dropped instead of caching a snapshot that misses the racing event (the next read loads again)."""

    def stamp(self, shoppers: Sequence[str]) -> dict[str, str]:
        """Begin a read-through load: a token per shopper for ``put(..., if_unchanged=...)``. Take it *before*
        reading the event store."""

    def record(self, shopper: str, interactions: Iterable[Interaction], purchased: Iterable[str]) -> None:
        """Append to a cached shopper (no-op when the shopper is not cached; invalidates a pending stamp).

        An interaction equal (item, kind, ts) to one already cached is not added twice: a load may already hold
        an event whose record() arrives after it."""

    def record_many(self, updates: dict[str, tuple[list[Interaction], list[str]]]) -> None:
        """``record`` for many shoppers at once: {shopper: (interactions, purchased items)}."""

    def forget(self, shopper: str) -> None: ...

    def clear(self) -> None: ...


@runtime_checkable
class VectorIndex(Protocol):
    """Approximate nearest neighbours by inner product over integer-keyed vectors (e.g. item embeddings)."""

    def build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole contents (keys int64, vectors float32 of shape (n, dim))."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, scores) per query row, best first; keys -1 / scores -inf pad short answers."""

    def __len__(self) -> int: ...


@runtime_checkable
class EventProcessor(Protocol):
    """What consumes the bus: durable append to the event store, then online state (see ``stores.bus``)."""

    def process(self, events: Sequence[Event]) -> AppendResult: ...


@runtime_checkable
class BusConsumer(Protocol):
    def poll(self, timeout_s: float = 1.0) -> int:
        """Process at most one batch: deliveries are acknowledged only after the processor returned. Returns how
        many entries were handled (processed, dead-lettered or recovered), 0 when idle."""

    def close(self) -> None: ...


@runtime_checkable
class EventBus(Protocol):
    """Carries validated events from the API to the processing path (at-least-once; processing is idempotent by
    event_id). ``publish`` returns once the events are durable: in-process, committed to the event store; on a
    stream, appended to it (or committed by a worker when the bus acknowledges after the commit)."""

    def publish(self, events: Sequence[Event]) -> AppendResult: ...

    def consumer(self, processor: EventProcessor, name: str | None = None) -> BusConsumer: ...

    def close(self) -> None: ...
