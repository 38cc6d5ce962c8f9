"""Event buses: the processing path every bus feeds, and the in-process bus (the embedded default).

Redis Streams live in ``stores.redis_stream``, Kafka in ``stores.kafka_bus`` (imported only when configured).

Whatever the bus, events end in ``EventProcessor.process``: a durable, idempotent append to the event store, then
the online state of the shoppers whose events were new. Delivery is at-least-once; processing the same event
twice stores it once (``event_id`` is unique in the event store), and a redelivered event whose first processing
died between the commit and the online-state update makes its shopper reload from the event store.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from shelfwise.domain import Event, EventType
from shelfwise.stores.protocols import AppendResult, EventStore, Interaction, OnlineState

log = logging.getLogger("shelfwise.bus")


@dataclass(frozen=True)
class Backlog:
    """What waits on a bus, as a metrics scrape reads it (None: this bus cannot tell)."""

    waiting: int | None  # not yet delivered to a consumer (Redis: in the stream, not pending; Kafka: consumer lag)
    pending: int | None  # delivered to a consumer, not yet acknowledged (Redis Streams)
    oldest_age_s: float | None  # how long the oldest unprocessed entry has waited (0 when none waits)
    dead_letters: int | None  # entries in the dead-letter stream or topic


class BusTimeout(TimeoutError):
    """Events were appended to the bus but not committed within the acknowledgement timeout (retry: idempotent)."""


class EventProcessor:
    """Durable append, then online state. Shared by the API (in-process bus) and ``shelfwise worker``."""

    def __init__(self, store: EventStore, online: OnlineState,
                 known_items: Callable[[], set[str] | None] = lambda: None,
                 forgotten: Callable[[Sequence[str]], dict[str, float]] | None = None,
                 on_stored: Callable[[Sequence[Event]], None] | None = None) -> None:
        self.store = store
        self.online = online
        self.known_items = known_items
        self.forgotten = forgotten  # erasure markers (ErasureLedger.forgotten): queued events of erased shoppers
        self.on_stored = on_stored  # e.g. the experiments' outcome log: the events just stored (not duplicates)

    def process(self, events: Sequence[Event], enqueued_at: Sequence[float] | None = None) -> AppendResult:
        dropped: list[str] = []
        if events and enqueued_at is not None and self.forgotten is not None:
            erased = self.forgotten(list({ev.shopper for ev in events}))
            if erased:  # queued before their shopper was erased: never stored
                keep = [erased.get(ev.shopper, -1.0) < t for ev, t in zip(events, enqueued_at)]
                dropped = [ev.event_id for ev, k in zip(events, keep) if not k]
                events = [ev for ev, k in zip(events, keep) if k]
                enqueued_at = [t for t, k in zip(enqueued_at, keep) if k]
                log.info("dropped %d queued event(s) of erased shoppers", len(dropped))
        if not events:
            return AppendResult(withheld=dropped)
        result = self.store.append(events, known_items=self.known_items())
        stored = set(result.stored)
        if stored and enqueued_at is not None and self.forgotten is not None:
            late = self._erased_meanwhile([(ev, t) for ev, t in zip(events, enqueued_at) if ev.event_id in stored])
            if late:
                gone = [ev.event_id for ev in events if ev.shopper in late and ev.event_id in stored]
                events = [ev for ev in events if ev.shopper not in late]
                stored -= set(gone)
                result = replace(result, stored=[e for e in result.stored if e in stored],
                                 withheld=result.withheld + gone)
        updates: dict[str, tuple[list[Interaction], list[str]]] = {}
        stale: set[str] = set()
        for ev in events:
            if ev.event_id not in stored:
                # A duplicate: either a client retry or a redelivery after a crash between commit and the
                # online-state update; forgetting the shopper makes the next read reload from the event store.
                stale.add(ev.shopper)
                continue
            kind = int(EventType[ev.type])
            ts = ev.timestamp.timestamp()
            lines = ev.lines()
            interactions, purchased = updates.setdefault(ev.shopper, ([], []))
            interactions.extend(Interaction(item, kind, ts) for item, _, _ in lines)
            if kind == EventType.purchase_completed:
                purchased.extend(item for item, _, _ in lines)
        self.online.record_many(updates)
        for shopper in stale - set(updates):
            self.online.forget(shopper)
        if self.on_stored is not None and stored:
            self.on_stored([ev for ev in events if ev.event_id in stored])
        if dropped:
            result = replace(result, withheld=result.withheld + dropped)
        return result

    def _erased_meanwhile(self, stored: list[tuple[Event, float]]) -> set[str]:
        """Shoppers erased while this batch was being stored (their marker written after the check before the
        append, their events deleted before the append committed): the erasure wins, their events just stored
        go again (all of the shopper's events: any stored after the marker came within this same moment) and
        so does their online state. Returns those shoppers."""
        erased = self.forgotten(list({ev.shopper for ev, _ in stored}))
        late = {ev.shopper for ev, t in stored if erased.get(ev.shopper, -1.0) >= t}
        for shopper in late:
            n = self.store.delete_shopper(shopper)
            self.online.forget(shopper)
            log.info("a shopper was erased while their queued events were stored: %d event(s) removed again", n)
        return late


def dedupe(events: Sequence[Event]) -> tuple[list[Event], list[str]]:
    """First occurrence of each event_id in a batch, and the repeated ids."""
    seen: set[str] = set()
    first, repeated = [], []
    for ev in events:
        if ev.event_id in seen:
            repeated.append(ev.event_id)
        else:
            seen.add(ev.event_id)
            first.append(ev)
    return first, repeated


def unknown_items(events: Sequence[Event], known: set[str] | None) -> list[str]:
    if known is None:
        return []
    return sorted({i for ev in events for i, _, _ in ev.lines() if i not in known})


# ---- in-process ------------------------------------------------------------------------------------------
class _IdleConsumer:
    def poll(self, timeout_s: float = 1.0) -> int:
        return 0

    def close(self) -> None:
        pass


class InProcessBus:
    """The embedded path: ``publish`` processes right away and returns after the event-store commit."""

    def __init__(self, processor: EventProcessor) -> None:
        self.processor = processor

    def publish(self, events: Sequence[Event]) -> AppendResult:
        return self.processor.process(events)

    def backlog(self) -> Backlog:
        """Nothing ever waits: ``publish`` returns after processing, and invalid events are refused, not queued."""
        return Backlog(waiting=0, pending=0, oldest_age_s=0.0, dead_letters=0)

    def consumer(self, processor: EventProcessor, name: str | None = None) -> _IdleConsumer:
        return _IdleConsumer()

    def close(self) -> None:
        pass


def consumer_name(index: int = 0) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{index}"
