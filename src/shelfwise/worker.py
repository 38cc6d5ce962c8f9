"""``shelfwise worker``: consume the event bus into the event store and the online state.

Each consumer is a process with its own connections (one Python process saturates about one core). A consumer
takes a batch from the bus, appends it to the event store in one transaction, updates the online state, and only
then acknowledges it; a consumer killed at any point leaves its batch pending, and another consumer takes it over
(Redis Streams: ``XAUTOCLAIM`` after ``claim_idle_ms``; Kafka: the group rebalances to uncommitted offsets). The
event store ignores events it already holds, so every acknowledged event is stored exactly once.

SIGTERM or SIGINT stops after the batch in hand. With several consumers, a supervisor restarts a consumer that
died (with back-off) until it is told to stop.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from typing import Any

from shelfwise.settings import Settings

log = logging.getLogger("shelfwise.worker")


class Worker:
    """One consumer: its own store, online state and bus connections."""

    catalog_refresh_s = 30.0

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        from shelfwise.stores import (
            open_catalog, open_event_bus, open_event_store, open_online_state, open_privacy_store,
        )
        from shelfwise.experiments.backends import experiments_dsn, open_experiment_log
        from shelfwise.stores.bus import EventProcessor

        self.settings = settings
        secure = settings.privacy.sqlite_secure_delete
        self.store = open_event_store(settings.events_dsn, secure_delete=secure)
        self.ledger = open_privacy_store(settings.events_dsn, secure_delete=secure)  # erasure markers
        self.catalog = open_catalog(self.store)
        self.online = open_online_state(settings.stores.online, settings.models.history_length,
                                        settings.models.caps)
        self._known = self.catalog.ids()
        self._known_at = time.monotonic()
        self.outcomes = (open_experiment_log(experiments_dsn(settings), settings.experiments.retention_days)
                         if settings.experiments.exposure_log else None)  # experiments: outcomes for attribution
        self.processor = EventProcessor(self.store, self.online, known_items=self.known_items,
                                        forgotten=self.ledger.forgotten,
                                        on_stored=self.outcomes.record_events if self.outcomes else None)
        self.bus = open_event_bus(settings.stores.bus, self.processor, ack=settings.stores.ack,
                                  ack_timeout_s=settings.stores.ack_timeout_s)
        self.consumer = self.bus.consumer(self.processor, name)
        self.stop = threading.Event()
        self.handled = 0

    def known_items(self) -> set[str]:
        if time.monotonic() - self._known_at > self.catalog_refresh_s:
            self._known = self.catalog.ids()
            self._known_at = time.monotonic()
        return self._known

    def run(self, max_idle_s: float | None = None) -> int:
        """Poll until stopped (or idle for ``max_idle_s``); returns the number of entries handled."""
        backoff = 0.1
        idle_since = time.monotonic()
        while not self.stop.is_set():
            try:
                n = self.consumer.poll(timeout_s=0.5)
                backoff = 0.1
            except Exception:  # noqa: BLE001 - a worker keeps going: the batch stays pending and is retried
                log.exception("processing failed; retrying in %.1f s", backoff)
                self.stop.wait(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            self.handled += n
            if n:
                idle_since = time.monotonic()
            elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                break
        return self.handled

    def close(self) -> None:
        self.consumer.close()
        self.bus.close()
        if self.outcomes is not None:
            self.outcomes.close()
        self.ledger.close()
        self.store.close()
        close = getattr(self.online, "close", None)
        if close:
            close()


def _consume(settings_doc: dict[str, Any], index: int) -> None:
    from shelfwise.observability.logs import configure_logging
    from shelfwise.stores.bus import consumer_name

    settings = Settings(**settings_doc)
    configure_logging(settings.observability)
    worker = Worker(settings, consumer_name(index))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    try:
        worker.run()
    finally:
        worker.close()


def run_workers(settings: Settings, consumers: int = 1) -> None:
    """Run ``consumers`` consumer processes until SIGTERM/SIGINT; restart any that dies."""
    from shelfwise.observability.logs import configure_logging

    configure_logging(settings.observability)
    doc = settings.model_dump(mode="json")
    if consumers == 1:
        _consume(doc, 0)
        return
    ctx = mp.get_context("spawn")
    stopping = threading.Event()
    procs: dict[int, mp.process.BaseProcess] = {}
    restarts: dict[int, float] = {}

    def start(i: int) -> None:
        p = ctx.Process(target=_consume, args=(doc, i), name=f"shelfwise-consumer-{i}", daemon=False)
        p.start()
        procs[i] = p

    def on_signal(*_: object) -> None:
        stopping.set()
        for p in procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: the consumer finishes its batch and exits

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    for i in range(consumers):
        start(i)
    while not stopping.is_set():
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping.is_set():
                delay = min(30.0, 2 * restarts.get(i, 0.5))
                log.warning("consumer %d exited with %s; restarting in %.0f s", i, p.exitcode, delay)
                restarts[i] = delay
                stopping.wait(delay)
                if not stopping.is_set():
                    start(i)
        stopping.wait(0.5)
    for p in procs.values():
        p.join(timeout=30)
