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

    def put(self, states: dict[str, ShopperState]) -> None: ...

    def record(self, shopper: str, interactions: Iterable[Interaction], purchased: Iterable[str]) -> None:
        """Append to a cached shopper (no-op when the shopper is not cached)."""

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
