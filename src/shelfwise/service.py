"""The running engine: stores, online state and the current pipeline behind a few plain methods.

The HTTP API and the CLI both talk to a ``Shelfwise`` instance; nothing here knows about HTTP.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfwise.assemble import assemble, with_items
from shelfwise.cache import AnswerCache, capped_now, request_key
from shelfwise.content.tower import BackgroundEncoder
from shelfwise.experiments.admin import ExperimentService
from shelfwise.experiments.config import apply_config, effective_k
from shelfwise.experiments.interleaving import team_draft
from shelfwise.experiments.runtime import Assignments, ExperimentRuntime
from shelfwise.domain import ConsentUpdate, Event, Item, Preferences
from shelfwise.pipeline import Exploration, Model, Observer, Pipeline
from shelfwise.privacy.erasure import erase, scrub_model_dir
from shelfwise.privacy.guard import ConsentRequired, PrivacyGuard
from shelfwise.privacy.pseudonym import Pseudonymizer
from shelfwise.request import Answer, RecRequest, Recommendation, new_request_id
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.rules.engine import Merchandising
from shelfwise.rules.stage import OverrideRules, RulesStage
from shelfwise.rules.store import NotFound
from shelfwise.settings import WISHLIST_ALERTS, Settings
from shelfwise.release import Releases
from shelfwise.stores import (open_catalog, open_event_bus, open_event_store, open_model_registry, open_online_state,
                              open_preference_store, open_privacy_store, vector_index_factory)
from shelfwise.stages.budget import StageGuard
from shelfwise.stores.breaker import Breakers, Unavailable, unavailable
from shelfwise.stores.catalog_feed import CatalogFeed
from shelfwise.stores.bus import BusTimeout, EventProcessor
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import AppendResult, Consent, EventLog, ShopperPreferences, ShopperState
from shelfwise.training import SCAN_FILE, fit_pipeline

log = logging.getLogger(__name__)


def shown_part(answer: Answer, depth: int | None) -> Answer:
    """The slots of an answer that count as shown (its placement's ``shown``): all of them unless it has more."""
    return answer if depth is None or len(answer.items) <= depth else replace(answer, items=answer.items[:depth])


def propensities(answer: Answer, got: Assignments | None) -> list[float] | None:
    """Per slot, the probability it holds its item, for the exposure log (None: every slot ranked): an experiment's
    exploration slot's, else a new item's exploration slot's (``stages.explore``), else 1."""
    own = [r.propensity for r in answer.items]
    theirs = got.propensities if got is not None else None
    if theirs is None:
        return own if any(p < 1.0 for p in own) else None
    return [t if t < 1.0 else (own[i] if i < len(own) else 1.0) for i, t in enumerate(theirs[:len(own)])]


class Shelfwise:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secure = settings.privacy.sqlite_secure_delete
        self.store = open_event_store(settings.events_dsn, secure_delete=secure)
        self.catalog = open_catalog(self.store)
        self.online = open_online_state(settings.stores.online, settings.models.history_length,
                                        settings.models.caps)
        self.models = DirectoryModelStore(settings.models_dir)
        # keys, consent and the erasure ledger live in the event store's database (privacy/, security/)
        self.privacy_store = open_privacy_store(settings.events_dsn, secure_delete=secure)
        self.pseudonyms = Pseudonymizer(settings.privacy.pseudonym_key if settings.privacy.pseudonymize else None)
        self.guard = PrivacyGuard(settings.privacy, self.privacy_store, self.privacy_store, self.pseudonyms)
        self.preference_store = open_preference_store(settings.preferences_dsn, secure_delete=secure)
        self.catalog_feed = CatalogFeed(self.catalog)  # before reading the catalog: changes from here on follow
        self._catalog_ids = self.catalog.ids()
        # online experiments: assignment, variants, exposure and outcome log, guardrails (experiments/)
        self.experiments = ExperimentRuntime(settings, monitor=True)
        self.processor = EventProcessor(self.store, self.online, known_items=lambda: self._catalog_ids,
                                        forgotten=self.privacy_store.forgotten,
                                        on_stored=self.experiments.record_events)  # outcomes for attribution
        self.bus = open_event_bus(settings.stores.bus, self.processor, ack=settings.stores.ack,
                                  ack_timeout_s=settings.stores.ack_timeout_s, known_items=lambda: self._catalog_ids)
        self._lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._checked_at = 0.0
        self.merch = Merchandising(settings, self.catalog)  # rule store, exposure log, rules stage
        self.merch.log.redact = self.guard.log_identity  # logs keep an id only with the shopper's consent
        self.cache = AnswerCache(settings.api.cache_ttl_s, settings.api.cache_max_entries)
        # in-process caches holding shopper ids register here, so an erasure clears them: (name, fn(shopper) -> n)
        self.erasure_hooks: list[tuple[str, Callable[[str], int]]] = [("answer cache", self.cache.forget)]
        self._scanned_at = 0.0  # when the current model's training read the event store
        self._forget_applied = 0.0  # erasure markers up to this time are applied to the current model's index
        self.experiments_admin = ExperimentService(settings, store=self.experiments.store, xlog=self.experiments.log)
        # model registry and releases: gates, staged rollout (an experiment of the rollout layer), rollback
        self.registry = open_model_registry(settings.registry_dsn)
        self.releases = Releases(settings, self.models, self.registry, self.experiments.store, self.experiments.log,
                                 changed=self.experiments.reload)
        self._releaser: threading.Thread | None = None
        self.erasure_hooks.append(("experiment log", self.experiments.forget))
        self._variants: dict[tuple, Pipeline] = {}  # (model version, rule set) -> the pipeline serving a variant
        self.encoder: BackgroundEncoder | None = None  # content vectors of items added or changed after training
        # graceful degradation: breakers around the backends and the request path's optional parts, the model
        # served before the current one, and a best-seller list in memory (README "Graceful degradation")
        res = settings.resilience
        self.breakers = Breakers(res.breaker_failures, res.breaker_reset_s)
        self.stage_guard = StageGuard(res, self.breakers)
        self.merch.source.breaker = self.breakers["rule_store"]  # down: the rules last loaded keep serving
        self.last_good: Pipeline | None = None
        self.bestsellers: list[str] = []
        self.observer: Observer | None = None  # told each stage's time by every pipeline (the API's metrics)
        self.pipeline = self._load_pipeline()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._catalog_watcher: threading.Thread | None = None
        self._catalog_synced = 0.0

    def watch_models(self, interval_s: float = 2.0) -> None:
        """Check for new model versions on a background thread (the API does): requests never wait for a load."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_models, args=(interval_s,), daemon=True,
                                             name="shelfwise-model-watch")
            self._watcher.start()
        if self._catalog_watcher is None and self.settings.api.catalog_sync_s > 0:
            self._catalog_watcher = threading.Thread(target=self._watch_catalog, daemon=True,
                                                     args=(self.settings.api.catalog_sync_s,),
                                                     name="shelfwise-catalog-sync")
            self._catalog_watcher.start()
        if self._releaser is None and self.settings.registry.check_interval_s > 0:
            self._releaser = threading.Thread(target=self._check_releases, daemon=True, name="shelfwise-releases")
            self._releaser.start()

    def _check_releases(self) -> None:
        """Advance or roll back the staged rollout every ``registry.check_interval_s`` (each replica may: the
        registry's compare-and-set makes one of them do each step)."""
        while not self._stop.wait(self.settings.registry.check_interval_s):
            try:
                got = self.releases.check()
                if got["action"] not in ("none", "waiting"):
                    log.warning("model rollout: %s", got["action"])
            except Exception:  # a database hiccup must not end the checks
                log.exception("checking the model rollout failed")

    def observe_stages(self, observer: Observer | None) -> None:
        """Report each stage's time of every pipeline call (this pipeline, the variants', the ones to come)."""
        self.observer = observer
        self.pipeline.observer = observer
        for variant in list(self._variants.values()):
            variant.observer = observer

    # ---- models --------------------------------------------------------------------------------------
    def _load_pipeline(self) -> Pipeline:
        version = self.models.current()
        changed: list[Item] = []
        if version is not None:
            path = self.models.path(version)
            model, changed = self._loaded(path)
            factory = vector_index_factory(self.settings.stores.vectors, path, version)
        else:  # not trained yet: serve the catalog by (empty) popularity so no rail is ever empty
            self._scanned_at = self._forget_applied = float("inf")
            model = fit_pipeline(EventLog.empty(), self.catalog, self.settings.models, sources=("trending",)).model
            model.items.seen(self._recently_seen())
            factory = None
        pipeline = assemble(model, self.merch.stage, factory, self.observer, guard=self.stage_guard,
                            explore=self._exploration())
        self.bestsellers = bestsellers(pipeline, self.settings.resilience.bestsellers)
        self.merch.attach(pipeline.items)
        try:  # the live rules compiled for the new item table before it serves (1.1 s at 12k items, ~30 s at
            self.merch.prepare()  # 1M): not on the first requests after the swap
        except Exception:  # noqa: BLE001 - the requests compile them then
            log.exception("compiling the live rules for model %s ahead of serving failed", pipeline.version)
        self._start_encoder(pipeline, changed)
        return pipeline

    def _exploration(self) -> Exploration:
        """Exploration slots for new items in every serving pipeline, their impressions counted by the exposure
        log's writer (when the log is on)."""
        return Exploration(self.merch.log.counts if self.settings.rules.exposure_log else None)

    def _recently_seen(self) -> dict[str, float]:
        """When the catalog first stored the items it stored within ``models.explore.max_age_days``: what decides
        which items are new (older times do not matter)."""
        return self.catalog.first_seen(since=time.time() - self.settings.models.explore.max_age_days * 86400.0)

    def _loaded(self, path: Path) -> tuple[Model, list[Item]]:
        """Load the model version to serve (see ``_loaded_model``) and note when its training read the data."""
        model, scanned_at, latest, changed = self._loaded_model(path)
        self._scanned_at, self._forget_applied = scanned_at, max(latest, scanned_at)
        return model, changed

    def _loaded_model(self, path: Path) -> tuple[Model, float, float, list[Item]]:
        """Load a model version; shoppers erased after its training read the event store lose their rows (a
        training that raced an erasure), in the files and in memory; catalog changes since training apply (items
        added since get rows). Returns (model, when its training read the event store, the newest erasure marker
        applied, the items changed since)."""
        scan = path / SCAN_FILE
        scanned_at = json.loads(scan.read_text())["scanned_at"] if scan.is_file() else 0.0
        model = Model.load(path, self.settings.models)
        # stock, prices and availability changed since training read the catalog (a minute of slack for clocks)
        changed = self.catalog.changed_since(scanned_at - 60.0) if scanned_at else self.catalog.all()
        model.items.sync(changed)
        first_seen = self._recently_seen()
        model.items = model.items.with_items(changed, first_seen)
        model.items.seen(first_seen)
        latest = self.privacy_store.latest_forget()
        if latest > 0 and latest >= scanned_at:
            erased = self.privacy_store.forgotten([s for s in model.shopper_index if s is not None])
            late = {s for s, at in erased.items() if at >= scanned_at}
            if late:
                scrub_model_dir(path, late)
                for s in late:
                    model.shopper_index.pop(s, None)
        return model, scanned_at, latest, changed

    def _start_encoder(self, pipeline: Pipeline, changed: Sequence[Item]) -> None:
        """Content vectors for the pipeline's content source (if its model has one), off the request path: a
        background encoder (the text encoder loads on it), fed by catalog upserts and, now, the items changed
        since training read the catalog."""
        old, self.encoder = self.encoder, None
        if old is not None:
            old.close(timeout=0)
        content = pipeline.retrievers.get("content")
        if not isinstance(content, ContentRetriever) or content.tower is None:
            return
        content.use_cache_dir(self.settings.content_cache_dir)
        self.encoder = BackgroundEncoder(content.tower, partial(self._content_encoded, content), space=content.space)
        self.encoder.submit(changed)

    def _content_encoded(self, content: ContentRetriever, ids: list[str], vectors: np.ndarray) -> None:
        """The background encoder's sink: vectors of items added or changed join the content source, by row of the
        serving item table (whose rows only ever grow), and cached answers become stale."""
        pipeline = self.pipeline
        if pipeline.retrievers.get("content") is not content:
            return  # another model version serves now
        content.add_encoded(pipeline.items.index, ids, vectors)
        pipeline.items.touch()

    def content_status(self) -> dict | None:
        """The content source's background encoder (``/readyz``); None when the model has no content source."""
        enc = self.encoder
        if enc is None:
            return None
        return {"encoded": enc.encoded, "pending": enc.pending, "errors": enc.errors,
                "last_error": enc.last_error or None}

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
            previous = self.pipeline
            self.pipeline = self._load_pipeline()
            self.last_good = previous  # answers when the new one fails on a request
        return True

    def settle_heap(self, everything: bool = True) -> None:
        """Freeze every surviving object out of the cyclic collector's reach (``gc.freeze``).

        The collector's passes otherwise walk every long-lived object — the model, imported libraries, the online
        state's shopper histories, the answer cache — stalling every request in flight each time (measured at 12k
        items: p99 140 ms without this, 34-37 ms with it; BENCHMARKS.md, Serving). Frozen objects are still freed by
        reference counting; only a reference cycle that dies while frozen waits for the next ``everything`` pass.

        ``everything`` (start-up, and every ``api.full_collect_s``): unfreeze, a full pass, freeze — 235 ms of CPU at
        12k items, every request waiting. Otherwise (after each model swap and every ``api.freeze_heap_s``): only
        the freeze, which walks nothing. What a request leaves behind is then frozen before a young pass (every
        ``api.gc_young_threshold`` allocations that live on) comes round to walk it: under the rails' load no pass
        at all runs between the full ones (BENCHMARKS.md, Serving, stop 27), where a full pass every 2 s used to
        walk the 30-60k objects the last 2 s left (cached answers, shoppers' states), 10-20 ms each, and find no
        garbage. The request path leaves no reference cycles (``tests/unit/test_model_swap_memory.py``); the few
        other cycles (about 10 objects a second under the load benchmark, from ingestion and HTTP) wait frozen for
        the full pass. A swapped-out model needs no full pass: nothing in it is part of a reference cycle, so
        reference counting frees it, frozen or not."""
        if self.settings.api.freeze_heap_s <= 0:
            return
        if everything:
            gc.unfreeze()
            # fewer young collections (each also ages survivors towards the full pass): api.gc_young_threshold
            # allocations between them instead of 700
            gc.set_threshold(self.settings.api.gc_young_threshold, 20, 20)
            gc.collect()
        gc.freeze()

    def _watch_models(self, interval_s: float) -> None:
        """Every ``interval_s`` a look for a new model version; every ``api.freeze_heap_s`` (also when shorter than
        that) the heap settled (``settle_heap``), with a full pass every ``api.full_collect_s``."""
        freeze, full = self.settings.api.freeze_heap_s, self.settings.api.full_collect_s
        tick = min(interval_s, freeze) if freeze > 0 else interval_s
        settled = checked = collected = time.monotonic()
        while not self._stop.wait(tick):
            now = time.monotonic()
            if now - checked >= interval_s - tick / 2:
                checked = now
                if self.refresh_model_safely():
                    self.settle_heap(everything=False)
                    settled = time.monotonic()
                    continue
            if freeze > 0 and time.monotonic() - settled >= freeze - tick / 2:
                everything = full > 0 and time.monotonic() - collected >= full
                self.settle_heap(everything=everything)
                settled = time.monotonic()
                if everything:
                    collected = settled

    def _watch_catalog(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sync_catalog()
            except Exception as exc:  # the store is down: try again at the next tick (the breakers say so)
                log.warning("following the catalog's changes failed: %s: %s", type(exc).__name__, str(exc)[:200])

    def refresh_model_safely(self) -> bool:
        """``refresh_model`` for the watcher: a version that cannot be read (corrupt or unreadable files) leaves the
        current model serving; the ``model_store`` breaker says why (``/readyz``) until a version loads."""
        try:
            swapped = self.refresh_model(0.0)
        except Exception as exc:
            log.exception("loading the new model version failed; still serving %s", self.pipeline.version)
            self.breakers["model_store"].failure(f"{self.models.current()}: {type(exc).__name__}: {str(exc)[:200]}")
            return False
        self.breakers["model_store"].success()
        return swapped

    # ---- events --------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> AppendResult:
        """Hand events to the bus; returns once they are durable.

        In-process (the default): durably appended to the event store, then the online state of their shoppers is
        updated. On a stream bus: appended to the stream (``stored`` lists the accepted events), and a worker does
        the rest — or, with ``stores.ack = "commit"``, once a worker committed them.

        Before that, shopper ids are pseudonymised (``privacy.pseudonymize``), the consent the events carry is
        stored, and events of shoppers without personalisation consent are withheld (``withheld``)."""
        breaker = self.breakers["event_store"]
        if not breaker.allow():  # down a moment ago: refuse at once (503), do not make the client wait on it
            raise Unavailable(f"event store unavailable ({breaker.last_error}); nothing was stored",
                              self.settings.resilience.retry_after_s)
        events = self._wishlist_facts(events)
        try:
            admitted, withheld, withdrawn = self.guard.admit(events)
            for shopper in withdrawn:
                if self.settings.privacy.erase_on_withdrawal:
                    erase(self, shopper, "user" if not shopper.startswith("session:") else "session",
                          keep_consent=True, reason="personalisation consent withdrawn")
            result = self.bus.publish(admitted) if admitted else AppendResult()
        except BusTimeout:  # queued, not committed in time (503 + Retry-After): the worker lags, the store is up
            raise
        except Exception as exc:
            if not unavailable(exc):
                raise
            breaker.failure(f"{type(exc).__name__}: {str(exc)[:200]}")
            # nothing is acknowledged: the batch is one transaction, and a retry of stored events is a duplicate
            raise Unavailable(f"event store unavailable ({type(exc).__name__}); resend the events (a retry of "
                              "events already stored counts as a duplicate)",
                              self.settings.resilience.retry_after_s) from exc
        breaker.success()
        return replace(result, withheld=result.withheld + withheld) if withheld else result

    def _wishlist_facts(self, events: Sequence[Event]) -> Sequence[Event]:
        """A ``wishlist_added`` event without the price and stock the shopper saw gets the catalog's now
        (``properties.price``, ``properties.in_stock``): the wishlist rail compares them with later ones."""
        todo = [ev for ev in events if ev.type == "wishlist_added" and ev.item_id
                and ("price" not in ev.properties or "in_stock" not in ev.properties)]
        if not todo:
            return events
        known = self.catalog.get(list({ev.item_id for ev in todo if ev.item_id}))
        for ev in todo:
            it = known.get(ev.item_id or "")
            if it is not None:
                if "price" not in ev.properties and it.price is not None:
                    ev.properties["price"] = it.price
                ev.properties.setdefault("in_stock", bool(it.available and (it.stock is None or it.stock > 0)))
        return events

    def wishlist_alerts(self, req: RecRequest) -> Answer:
        """"Back in stock / price drop from your wishlist": the shopper's wishlisted items that can be sold now and
        were out of stock when wishlisted, or cost less now than then; the biggest price drops first, then the
        items back in stock, the most recently wishlisted first."""
        if req.shopper is None:
            return Answer([], req.placement, model_version=self.pipeline.version)
        wished = self.store.wishlist(req.shopper)
        now = self.catalog.get(list(wished)) if wished else {}
        skip = set(req.exclude)
        found = []
        for x, w in wished.items():
            it = now.get(x)
            if x in skip or it is None or not it.available or (it.stock is not None and it.stock <= 0):
                continue
            drop = (w.price - it.price) / w.price if w.price and it.price is not None and it.price < w.price else 0.0
            back = w.in_stock is False
            if drop > 0 or back:
                why = (f"price dropped from {w.price:g} to {it.price:g}" if drop > 0 else "") + \
                    (" and " if drop > 0 and back else "") + ("back in stock" if back else "")
                found.append((drop, w.added_at, x, why))
        found.sort(key=lambda f: (-f[0], -f[1], f[2]))
        recs = [Recommendation(x, round(drop, 6), ["wishlist"], reason="evidence",
                               explanation={"reason": why} if req.explain else None)
                for drop, _, x, why in found[:req.k]]
        return Answer(recs, req.placement, explanation={"wishlisted": len(wished)} if req.explain else None,
                      model_version=self.pipeline.version)

    def shopper_state(self, shopper: str) -> ShopperState:
        """Recent events of a shopper: online state, read through to the event store on a miss."""
        return self.shopper_states([shopper])[shopper]

    def shopper_states(self, shoppers: Sequence[str]) -> dict[str, ShopperState]:
        """Recent events of shoppers: one online-state read, one event-store read for the misses."""
        got, seen = self.online.read(list(shoppers))  # the impressions (caps) come in the same round trip
        missing = [s for s in shoppers if got.get(s) is None]
        if missing:
            # Stamp before reading: if an event of a shopper is recorded meanwhile, its snapshot is not cached.
            token = self.online.stamp(missing)
            fresh = self.store.history(missing, self.settings.models.history_length)
            self.online.put(fresh, if_unchanged=token)
            for s, st in fresh.items():
                st.seen = seen.get(s) or {}
            got.update(fresh)
        return {s: got[s] for s in shoppers}  # type: ignore[misc]

    def _shown_depth(self, req: RecRequest) -> int | None:
        conf = req.conf or self.settings.models.placements.get(req.placement)
        return conf.shown if conf is not None else None

    def record_shown(self, reqs: Sequence[RecRequest], answers: Sequence[Answer]) -> None:
        """Count what each known shopper was shown (frequency caps; ``models.caps.record``): one online-state write
        for the batch, before the answers go out, so the shopper's next request sees it."""
        if not self.settings.models.caps.record:
            return
        shown: dict[float, dict[str, list[tuple[str, str]]]] = {}
        for req, ans in zip(reqs, answers):
            if req.shopper is None or not ans.items:
                continue
            shown.setdefault(req.now or time.time(), {}).setdefault(req.shopper, []).extend(
                (r.item_id, req.placement) for r in shown_part(ans, self._shown_depth(req)).items)
        for at, batch in shown.items():
            self.online.show(batch, at)

    def forget_shopper(self, shopper: str, subject: str | None = None) -> dict:
        """Erase a shopper (a user id, or ``session:<id>``) everywhere; returns the deletion receipt."""
        subject = subject or ("session" if shopper.startswith("session:") else "user")
        return erase(self, self.pseudonyms.shopper(shopper), subject)

    def erasure_receipt(self, receipt_id: str) -> dict | None:
        return self.privacy_store.receipt(receipt_id)

    # ---- consent -------------------------------------------------------------------------------------
    def consent(self, shopper: str) -> dict:
        key = self.pseudonyms.shopper(shopper)
        record = self.privacy_store.consents([key]).get(key)
        return {"purposes": self.guard.effective(record), "decided": sorted(record.purposes) if record else [],
                "updated_at": record.updated_at if record else None, "source": record.source if record else "default"}

    def set_consent(self, shopper: str, update: ConsentUpdate, at: float | None = None) -> dict:
        """Record a shopper's consent decision (purposes left out keep their value)."""
        key = self.pseudonyms.shopper(shopper)
        decided = update.decided()
        _, withdrawn = self.guard.set([Consent(key, decided, at or time.time(), "api")] if decided else [])
        if withdrawn and self.settings.privacy.erase_on_withdrawal:
            erase(self, key, "session" if key.startswith("session:") else "user", keep_consent=True,
                  reason="personalisation consent withdrawn")
        return self.consent(shopper)

    # ---- explicit preferences ------------------------------------------------------------------------
    def preferences(self, shopper: str) -> ShopperPreferences | None:
        """A shopper's stored preferences (a user id, or ``session:<id>``)."""
        key = self.pseudonyms.shopper(shopper)
        return self.preference_store.preferences([key]).get(key)

    def set_preferences(self, shopper: str, preferences: Preferences, at: float | None = None) -> ShopperPreferences:
        """Store a shopper's preferences, replacing what was stored; their cached answers go at once (other
        replicas key answers by the preferences' time, so they follow with their next request). Personal data:
        only with personalisation consent (``ConsentRequired`` otherwise, nothing stored)."""
        key = self.pseudonyms.shopper(shopper)
        if self.guard.consents([key])[key]["personalisation"] != "granted":
            raise ConsentRequired("personalisation")
        record = ShopperPreferences(key, preferences, at or time.time())
        self.preference_store.set_preferences(record)
        self.cache.forget(key)
        return record

    def delete_preferences(self, shopper: str) -> bool:
        key = self.pseudonyms.shopper(shopper)
        removed = self.preference_store.delete_preferences(key) > 0
        self.cache.forget(key)
        return removed

    # ---- catalog -------------------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[Item]) -> int:
        """Store items; the serving model sees them at once: changes apply to its item table, items it does not
        know get a row (a new table, swapped in), and their content vectors are computed in the background
        (they join the content source within a second or so; until then no source has evidence about them).
        Other replicas apply them within ``api.catalog_sync_s`` (``sync_catalog``)."""
        n = self.catalog.upsert(items)
        self.catalog_feed.applied(items)
        self._apply_items(items)
        return n

    def delete_item(self, item_id: str) -> bool:
        ok = self.catalog.delete(item_id)
        self.catalog_feed.deleted([item_id])
        self._apply_deletions([item_id])
        return ok

    def sync_catalog(self, min_interval_s: float = 0.0) -> int:
        """Apply the catalog changes made elsewhere (another replica, the CLI) since the last call: prices, stock,
        availability, new and deleted items, exactly as if upserted here; the changed item table's version keys
        this process's cached answers, so none of them is served stale. Returns how many changes applied."""
        now = time.monotonic()
        if now - self._catalog_synced < min_interval_s:
            return 0
        self._catalog_synced = now
        items, gone = self.catalog_feed.poll(self._catalog_ids)
        if items:
            self._apply_items(items)
        if gone:
            self._apply_deletions(gone)
        return len(items) + len(gone)

    def _apply_items(self, items: Sequence[Item]) -> None:
        with self._lock:
            new = {it.id for it in items} - self._catalog_ids
            self._catalog_ids |= new
        if new and not self.trained:
            self.pipeline = self._load_pipeline()
        elif any(it.id not in self.pipeline.items.index for it in items):
            with self._swap_lock:
                fresh = [it.id for it in items if it.id not in self.pipeline.items.index]
                self.pipeline = with_items(self.pipeline, items, self.merch.stage, self.catalog.first_seen(fresh))
        pipeline = self.pipeline
        for it in items:
            pipeline.items.update(it)
        pipeline.catalog_changed()
        self.merch.attach(pipeline.items)
        self.merch.catalog_changed(pipeline.items, items)
        if self.encoder is not None:
            self.encoder.submit(items)

    def _apply_deletions(self, item_ids: Sequence[str]) -> None:
        with self._lock:
            self._catalog_ids.difference_update(item_ids)
        pipeline = self.pipeline
        for item_id in item_ids:
            pipeline.items.remove(item_id)
        pipeline.catalog_changed()
        self.merch.catalog_changed(pipeline.items)

    def get_item(self, item_id: str) -> Item | None:
        return self.catalog.get([item_id]).get(item_id)

    # ---- recommendations -----------------------------------------------------------------------------
    def anchors_known(self, req: RecRequest) -> bool:
        """A product page's item, or one item of the cart, is in the model (in memory, no catalog read)."""
        index = self.pipeline.items.index
        kind = self.kind(req.placement)
        if kind == "item" and req.item_id is not None:
            return req.item_id in index
        return kind != "cart" or not req.cart or any(c in index for c in req.cart)

    def unknown_anchor(self, req: RecRequest) -> str | None:
        """For a request whose page or cart items the model does not know (``anchors_known`` is false): the field
        whose ids are unknown to the catalog too (``item_id``, or ``cart`` when every cart item is), else None.

        A product page's item in the catalog but not in the model (added after training) gets its category's best
        sellers: the request's category filter becomes the longest prefix of the item's category path the model
        knows (unless the request has a filter of its own); the answer is a fallback (popularity only)."""
        kind = self.kind(req.placement)
        if kind == "item" and req.item_id is not None:
            item = self.catalog.get([req.item_id]).get(req.item_id)
            if item is None:
                return "item_id"
            path = list(item.category)
            while path and req.category is None:
                prefix = " > ".join(path)
                if len(self.pipeline.items.category_codes(prefix)):
                    req.category = prefix
                path.pop()
            return None
        if kind == "cart" and req.cart and not self.catalog.get(list(dict.fromkeys(req.cart))):
            return "cart"
        return None

    def kind(self, placement: str) -> str:
        """A configured placement's kind (``homepage``, ``item``, ``cart``, ``rerank``); ``ValueError`` naming the
        known placements when there is no such placement."""
        return self.pipeline.placement(placement).kind

    def unknown_ids(self, ids: Sequence[str]) -> list[str]:
        """The ids of a rerank list that neither the serving item table nor the catalog knows (in memory: the
        table holds every catalog item)."""
        index = self.pipeline.items.index
        return [x for x in ids if x not in index]

    def recommend(self, req: RecRequest) -> Answer:
        return self.recommend_many([req])[0]

    def admit_requests(self, reqs: Sequence[RecRequest]) -> None:
        """Privacy before the pipeline: shopper ids in their stored (pseudonymised) form; a shopper without
        personalisation consent becomes an anonymous visitor; a shopper erased after the model was trained loses
        the model's row."""
        self.guard.prepare(reqs, self.pipeline.shopper_index, self._forget_applied, self._scanned_at)

    def recommend_many(self, reqs: Sequence[RecRequest], log: bool = True) -> list[Answer]:
        """Answer a batch of requests with one pipeline call (the API's micro-batcher sends concurrent ones)."""
        if self._watcher is None:
            self.refresh_model()
            try:
                self.sync_catalog(self.settings.api.catalog_sync_s or float("inf"))
            except Exception as exc:  # the catalog's store is down: answer from the catalog as last applied
                if not unavailable(exc):
                    raise
                log.warning("following the catalog's changes failed: %s", type(exc).__name__)
        for req in reqs:  # a bad request is an error, not a fault for the fallbacks to hide
            self.pipeline.placement(req.placement)
        notes: list[str] = []  # what this batch's answers go without (README "Graceful degradation")
        try:
            self.admit_requests(reqs)
        except Exception as exc:
            if not unavailable(exc):
                raise
            notes.append(f"consent: store unavailable ({type(exc).__name__}), answered without personalisation")
            for req in reqs:  # without the shopper's consent at hand, nothing personal is used
                req.shopper, req.state = None, ShopperState(recent=[], purchased=set())
        need = list(dict.fromkeys(r.shopper for r in reqs if r.shopper is not None and r.state is None))
        states = self._states(need, notes) if need else {}
        shoppers = list(dict.fromkeys(r.shopper for r in reqs if r.shopper is not None))
        stated = self._stated(shoppers, notes) if shoppers else {}
        now = time.time()
        for req in reqs:
            if req.shopper is not None and req.state is None:
                req.state = states.get(req.shopper) or ShopperState(recent=[], purchased=set())
            if req.shopper is not None and req.preferences is None:
                req.preferences = stated.get(req.shopper)
            if not req.now:
                req.now = now
            if req.request_id is None:
                req.request_id = new_request_id()
        try:
            assigned = self._assign(reqs)
        except Exception as exc:
            if not unavailable(exc):
                raise
            notes.append(f"experiments: store unavailable ({type(exc).__name__}), no variant assigned")
            assigned = [None] * len(reqs)
        pipeline = self.pipeline
        answers: list[Answer | None] = [None] * len(reqs)
        keys: list[tuple | None] = []
        if self.cache.enabled:
            label = self.merch.stage.label()
            # an explored rail is drawn afresh each time (its propensities are logged): never cached
            caps = self.settings.models.caps.placements
            keys = [request_key(r, pipeline.version, label, pipeline.items.version,
                                capped_now(r, caps.get(r.placement)))
                    if got is None or not got.shown_k else None for r, got in zip(reqs, assigned)]
            answers = [self.cache.get(k) if k is not None else None for k in keys]
        for i, req in enumerate(reqs):  # the wishlist rail is read from the wishlist, not ranked by the sources
            if req.placement == WISHLIST_ALERTS and answers[i] is None:
                answers[i] = self._optional_answer(req, notes)
        todo = [i for i, a in enumerate(answers) if a is None]
        for i, ans in zip(todo, self._answer([reqs[i] for i in todo], [assigned[i] for i in todo])):
            if notes:
                ans = replace(ans, degraded=notes + ans.degraded)
            answers[i] = ans
            if keys and keys[i] is not None and not ans.degraded:  # a degraded answer is never reused
                self.cache.put(keys[i], ans)
        if log:
            self._optional("online_state", "impressions", "counting this showing",
                           lambda: self.record_shown(reqs, answers) or {}, notes)  # type: ignore[arg-type]
        for req, answer, got in zip(reqs, answers, assigned):
            if not log:  # a simulation asks for rails whose exposures it logs itself
                break
            # exposure log (queued, off the hot path), with the slots' propensities when the rail explored
            seen = shown_part(answer, self._shown_depth(req))
            self.merch.record(req, seen, propensities(seen, got))
            if got is not None:
                self.experiments.record(got, req.request_id or "", req.placement, [r.item_id for r in answer.items],
                                        teams=got.teams, propensities=got.propensities,
                                        model_version=answer.model_version)
        return answers  # type: ignore[return-value]

    # ---- experiments ---------------------------------------------------------------------------------
    def _assign(self, reqs: Sequence[RecRequest]) -> list[Assignments | None]:
        """Each request's experiment variants (shoppers consenting to experiments only), applied to the request:
        the variant's placement settings, k, ranker switch and a label that keys its cached answers."""
        out: list[Assignments | None] = []
        models = self.settings.models
        for req in reqs:
            got = None
            if req.shopper is not None and self.guard.allows(req.shopper, "experiments"):
                user, session = (None, req.shopper[8:]) if req.shopper.startswith("session:") else (req.shopper, None)
                got = self.experiments.assign(user, session, req.placement, req.segments)
                if not got.items and not got.holdout:
                    got = None
            if got is not None:
                cfg = got.config
                variant = apply_config(models, cfg)
                if variant is not models:
                    req.conf = variant.placements[req.placement]
                req.k = effective_k(req.k, req.placement, cfg)
                req.ranker = cfg.ranker is not False
                share = cfg.exploration if cfg.exploration is not None else self.settings.experiments.explore_share
                if share > 0:  # item exploration: a few more candidates to explore among (see _explored)
                    got.shown_k, req.k = req.k, req.k + max(4, 4 * math.ceil(share * req.k))
                req.variant = ",".join(f"{x['experiment']}={x['variant']}" for x in got.labels())
            out.append(got)
        return out

    def _variant_pipeline(self, model_version: str | None, ruleset: str | None) -> Pipeline:
        """The pipeline a variant needs: another published model version and/or a rule set at another version."""
        live = self.pipeline
        if not model_version and not ruleset:
            return live
        key = (model_version or live.version, ruleset, (live.version, len(live.items)))  # rows added: rebuilt
        got = self._variants.get(key)
        if got is None:
            with self._swap_lock:
                got = self._variants.get(key)
                if got is None:
                    if model_version and model_version != live.version:
                        path = self.models.path(model_version)
                        if not path.is_dir():
                            raise ValueError(f"an experiment asks for model version {model_version!r}, which is not "
                                             "in the model store")
                        model = self._loaded_model(path)[0]
                        factory = vector_index_factory(self.settings.stores.vectors, path, model_version)
                    else:
                        model, factory = live.model, None
                    rules = (RulesStage(OverrideRules.parse(self.merch.source, ruleset), self.catalog.all)
                             if ruleset else self.merch.stage)
                    got = assemble(model, rules, factory, self.observer, guard=self.stage_guard,
                                   explore=self._exploration())
                    self._variants = {k: v for k, v in self._variants.items() if k[2] == key[2]}
                    self._variants[key] = got
        return got

    def _answer(self, reqs: list[RecRequest], assigned: list[Assignments | None]) -> list[Answer]:
        """Run the requests through their pipelines (the live one, or a variant's); interleaved experiments run
        both variants and merge them by team draft."""
        jobs: list[tuple[int, RecRequest, Pipeline]] = []
        interleaved: dict[int, tuple[int, int]] = {}
        for i, (req, got) in enumerate(zip(reqs, assigned)):
            pipe = self.pipeline
            if got is not None:
                try:
                    pipe = self._variant_pipeline(got.config.model_version, got.config.ruleset)
                except (ValueError, KeyError, NotFound) as exc:  # a variant that cannot be served: the live one
                    log.error("experiment variant not served (%s): %s", got.labels(), exc)
            if got is not None and got.interleave is not None:
                pair = []
                for cfg in got.interleave:
                    side = replace(req, variant=req.variant + "|" + str(id(cfg)))
                    variant = apply_config(self.settings.models, cfg)
                    side.conf = variant.placements[req.placement] if variant is not self.settings.models else None
                    side.ranker = cfg.ranker is not False
                    pair.append(len(jobs))
                    jobs.append((i, side, self._variant_pipeline(cfg.model_version, cfg.ruleset)))
                interleaved[i] = (pair[0], pair[1])
            else:
                jobs.append((i, req, pipe))
        results: list[Answer | None] = [None] * len(jobs)
        by_pipe: dict[int, list[int]] = {}
        for j, (_, _, pipe) in enumerate(jobs):
            by_pipe.setdefault(id(pipe), []).append(j)
        for js in by_pipe.values():
            pipe = jobs[js[0]][2]
            for j, ans in zip(js, self._recommend(pipe, [jobs[j][1] for j in js])):
                results[j] = ans
        first_job: dict[int, int] = {}
        for j, job in enumerate(jobs):
            first_job.setdefault(job[0], j)
        out: list[Answer] = []
        for i, (req, got) in enumerate(zip(reqs, assigned)):
            if i in interleaved:
                a, b = (results[j] for j in interleaved[i])
                ids, teams = team_draft([r.item_id for r in a.items], [r.item_id for r in b.items], req.k,
                                        seed=req.request_id)
                side = {"a": {r.item_id: r for r in a.items}, "b": {r.item_id: r for r in b.items}}
                ans = replace(a, items=[side[t][x] for x, t in zip(ids, teams)])
                got.teams = teams
            else:
                ans = results[first_job[i]]
            if got is not None:
                ans = self._explored(got, ans) if got.shown_k else ans
                ans = replace(ans, experiments=got.labels())
            out.append(ans)
        return out

    def _optional_answer(self, req: RecRequest, notes: list[str]) -> Answer:
        """The wishlist rail; empty (and a note) while the event store cannot say."""
        got = self._optional("event_store", "wishlist", "the wishlist", lambda: {"a": self.wishlist_alerts(req)},
                             notes)
        return got.get("a") or Answer([], req.placement, model_version=self.pipeline.version,
                                      degraded=list(notes))

    def _optional(self, breaker: str, what: str, without: str, call: Callable[[], dict], notes: list[str]) -> dict:
        """``call()``; {} (and a note: the answers go ``without`` it) while the backend behind ``breaker`` cannot
        answer."""
        b = self.breakers[breaker]
        if not b.allow():
            notes.append(f"{what}: skipped ({b.last_error}), answered without {without}")
            return {}
        try:
            got = call()
        except Exception as exc:
            if not unavailable(exc):
                raise
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            b.failure(reason)
            log.warning("%s unavailable: %s", what, reason)
            notes.append(f"{what}: unavailable ({type(exc).__name__}), answered without {without}")
            return {}
        b.success()
        return got

    def _states(self, shoppers: list[str], notes: list[str]) -> dict[str, ShopperState]:
        """The shoppers' recent events; {} (and a note) while the online state and the event store cannot say."""
        return self._optional("online_state", "shopper state", "recent events",
                              lambda: self.shopper_states(shoppers), notes)

    def _stated(self, shoppers: list[str], notes: list[str]) -> dict[str, ShopperPreferences]:
        """The shoppers' explicit preferences; {} (and a note) while the preference store cannot say."""
        return self._optional("preference_store", "preferences", "stated preferences",
                              lambda: self.preference_store.preferences(shoppers), notes)

    def _recommend(self, pipe: Pipeline, reqs: list[RecRequest]) -> list[Answer]:
        """``pipe``'s answers; when it fails, the model served before it, then the best sellers kept in memory —
        never an error for what a fallback can answer, never an empty rail."""
        try:
            return pipe.recommend(reqs)
        except Exception as exc:
            log.exception("model %s failed on %d request(s); answering from the fallbacks", pipe.version, len(reqs))
            why = f"model {pipe.version}: failed ({type(exc).__name__})"
        last = self.last_good
        if last is not None and last is not pipe:
            try:
                return [replace(a, degraded=[why + f", answered by the previous model {last.version}"] + a.degraded)
                        for a in last.recommend(reqs)]
            except Exception:
                log.exception("the previous model %s failed too", last.version)
        return [self._bestseller_answer(r, why + ", answered with the best sellers") for r in reqs]

    def _bestseller_answer(self, req: RecRequest, why: str) -> Answer:
        """The last fallback: the in-memory best sellers that are in stock and not the page's or cart's items."""
        items = self.pipeline.items
        skip = set(req.exclude) | set(req.cart) | ({req.item_id} if req.item_id else set())
        row, ok = items.index, items.servable
        out = []
        for x in self.bestsellers:
            i = row.get(x)
            if x in skip or i is None or not ok[i]:
                continue
            out.append(Recommendation(x, 0.0, [], reason="popular", fallback=True))
            if len(out) == req.k:
                break
        return Answer(out, req.placement, model_version=self.pipeline.version, degraded=[why])

    def _explored(self, got: Assignments, ans: Answer) -> Answer:
        """Thompson-sampled exploration: about the variant's share of the ``shown_k`` slots goes to items drawn from
        the answer's further candidates (they passed stock, exclusions, rules and diversity like the rest); the
        propensity of each slot is logged for unbiased learning and off-policy evaluation."""
        k = got.shown_k
        ids = [r.item_id for r in ans.items]
        items, props = self.experiments.explore(got, ids[:k], ids[k:], None, k)
        got.propensities = props
        recs = {r.item_id: r for r in ans.items}
        return replace(ans, items=[recs[x] for x in items])

    def close(self) -> None:
        self._stop.set()
        for watcher in (self._watcher, self._catalog_watcher, self._releaser):
            if watcher is not None:
                watcher.join(10)
        if self.encoder is not None:
            self.encoder.close()
        self.bus.close()
        self.experiments_admin.close()
        self.experiments.close()
        self.merch.close()
        self.privacy_store.close()
        self.preference_store.close()
        self.registry.close()
        self.store.close()
        close_online = getattr(self.online, "close", None)
        if close_online is not None:
            close_online()


def bestsellers(pipeline: Pipeline, n: int) -> list[str]:
    """The ``n`` most popular items of the pipeline's model (its trending source), else the catalog's first: the
    list the service keeps in memory for when no model can answer."""
    items = pipeline.items
    trending = pipeline.retrievers.get("trending")
    score = getattr(trending, "global_score", None)
    if score is None or not len(score):
        return [str(x) for x in items.ids[:n]]
    order = np.argsort(-score, kind="stable")[:n]
    return [str(items.ids[i]) for i in order]
