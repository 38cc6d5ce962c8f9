"""The running engine: stores, online state and the current pipeline behind a few plain methods.

The HTTP API and the CLI both talk to a ``Shelfwise`` instance; nothing here knows about HTTP.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import logging

from shelfwise.assemble import assemble
from shelfwise.cache import AnswerCache, request_key
from shelfwise.domain import Event, Item
from shelfwise.pipeline import Model, Pipeline
from shelfwise.request import Answer, RecRequest, new_request_id
from shelfwise.rules.engine import Merchandising
from shelfwise.settings import Settings
from shelfwise.stores import (open_catalog, open_event_bus, open_event_store, open_online_state,
                              vector_index_factory)
from shelfwise.stores.bus import EventProcessor
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import AppendResult, EventLog, ShopperState
from shelfwise.training import fit_pipeline

log = logging.getLogger(__name__)


class Shelfwise:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_event_store(settings.events_dsn)
        self.catalog = open_catalog(self.store)
        self.online = open_online_state(settings.stores.online, settings.models.history_length)
        self.models = DirectoryModelStore(settings.models_dir)
        self._catalog_ids = self.catalog.ids()
        self.processor = EventProcessor(self.store, self.online, known_items=lambda: self._catalog_ids)
        self.bus = open_event_bus(settings.stores.bus, self.processor, ack=settings.stores.ack,
                                  ack_timeout_s=settings.stores.ack_timeout_s, known_items=lambda: self._catalog_ids)
        self._lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._checked_at = 0.0
        self.merch = Merchandising(settings, self.catalog)  # rule store, exposure log, rules stage
        self.cache = AnswerCache(settings.api.cache_ttl_s, settings.api.cache_max_entries)
        self.pipeline = self._load_pipeline()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def watch_models(self, interval_s: float = 2.0) -> None:
        """Check for new model versions on a background thread (the API does): requests never wait for a load."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_models, args=(interval_s,), daemon=True,
                                             name="shelfwise-model-watch")
            self._watcher.start()

    # ---- models --------------------------------------------------------------------------------------
    def _load_pipeline(self) -> Pipeline:
        version = self.models.current()
        if version is not None:
            path = self.models.path(version)
            model = Model.load(path, self.settings.models)
            model.items.sync(self.catalog.all())  # stock, prices and availability changed since training
            factory = vector_index_factory(self.settings.stores.vectors, path, version)
        else:  # not trained yet: serve the catalog by (empty) popularity so no rail is ever empty
            model = fit_pipeline(EventLog.empty(), self.catalog, self.settings.models, sources=("trending",)).model
            factory = None
        pipeline = assemble(model, self.merch.stage, factory)
        self.merch.attach(pipeline.items)
        return pipeline

    @property
    def trained(self) -> bool:
        return self.pipeline.version != "untrained"

    def refresh_model(self, min_interval_s: float = 2.0) -> bool:
        """Swap in a newly published model version (checked at most every ``min_interval_s``). The new version is
        loaded and assembled while requests keep being answered by the current one."""
        now = time.monotonic()
        if now - self._checked_at < min_interval_s:
            return False
        self._checked_at = now
        version = self.models.current()
        if version is None or version == self.pipeline.version:
            return False
        with self._swap_lock:
            if version == self.pipeline.version:
                return False
            self.pipeline = self._load_pipeline()
        return True

    def _watch_models(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.refresh_model(0.0)
            except Exception:  # a broken version on disk: keep serving the current one, say so
                log.exception("loading the new model version failed; still serving %s", self.pipeline.version)

    # ---- events --------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> AppendResult:
        """Hand events to the bus; returns once they are durable.

        In-process (the default): durably appended to the event store, then the online state of their shoppers is
        updated. On a stream bus: appended to the stream (``stored`` lists the accepted events), and a worker does
        the rest — or, with ``stores.ack = "commit"``, once a worker committed them."""
        return self.bus.publish(events)

    def shopper_state(self, shopper: str) -> ShopperState:
        """Recent events of a shopper: online state, read through to the event store on a miss."""
        return self.shopper_states([shopper])[shopper]

    def shopper_states(self, shoppers: Sequence[str]) -> dict[str, ShopperState]:
        """Recent events of shoppers: one online-state read, one event-store read for the misses."""
        got = self.online.get(list(shoppers))
        missing = [s for s in shoppers if got.get(s) is None]
        if missing:
            # Stamp before reading: if an event of a shopper is recorded meanwhile, its snapshot is not cached.
            token = self.online.stamp(missing)
            fresh = self.store.history(missing, self.settings.models.history_length)
            self.online.put(fresh, if_unchanged=token)
            got.update(fresh)
        return {s: got[s] for s in shoppers}

    def forget_shopper(self, shopper: str) -> int:
        """Erase a shopper's data (events, online state, cached answers)."""
        removed = self.store.delete_shopper(shopper)
        self.online.forget(shopper)
        self.cache.forget(shopper)
        return removed

    # ---- catalog -------------------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[Item]) -> int:
        n = self.catalog.upsert(items)
        with self._lock:
            new = {it.id for it in items} - self._catalog_ids
            self._catalog_ids |= new
        if new and not self.trained:
            self.pipeline = self._load_pipeline()
        pipeline = self.pipeline
        for it in items:
            pipeline.items.update(it)
        pipeline.catalog_changed()
        self.merch.catalog_changed(pipeline.items, items)
        return n

    def delete_item(self, item_id: str) -> bool:
        ok = self.catalog.delete(item_id)
        with self._lock:
            self._catalog_ids.discard(item_id)
        pipeline = self.pipeline
        pipeline.items.remove(item_id)
        pipeline.catalog_changed()
        self.merch.catalog_changed(pipeline.items)
        return ok

    def get_item(self, item_id: str) -> Item | None:
        return self.catalog.get([item_id]).get(item_id)

    # ---- recommendations -----------------------------------------------------------------------------
    def recommend(self, req: RecRequest) -> Answer:
        return self.recommend_many([req])[0]

    def recommend_many(self, reqs: Sequence[RecRequest]) -> list[Answer]:
        """Answer a batch of requests with one pipeline call (the API's micro-batcher sends concurrent ones)."""
        if self._watcher is None:
            self.refresh_model()
        need = list(dict.fromkeys(r.shopper for r in reqs if r.shopper is not None and r.state is None))
        states = self.shopper_states(need) if need else {}
        now = time.time()
        for req in reqs:
            if req.shopper is not None and req.state is None:
                req.state = states[req.shopper]
            if not req.now:
                req.now = now
            if req.request_id is None:
                req.request_id = new_request_id()
        pipeline = self.pipeline
        answers: list[Answer | None] = [None] * len(reqs)
        keys: list[tuple] = []
        if self.cache.enabled:
            label = self.merch.stage.label()
            keys = [request_key(r, pipeline.version, label, pipeline.items.version) for r in reqs]
            answers = [self.cache.get(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        if todo:
            for i, ans in zip(todo, pipeline.recommend([reqs[i] for i in todo])):
                answers[i] = ans
                if keys:
                    self.cache.put(keys[i], ans)
        for req, answer in zip(reqs, answers):
            self.merch.record(req, answer)  # exposure log (queued, off the hot path)
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
        self.bus.close()
        self.merch.close()
        self.store.close()
        close_online = getattr(self.online, "close", None)
        if close_online is not None:
            close_online()
