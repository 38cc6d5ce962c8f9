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
from shelfwise.cache import AnswerCache, request_key
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
from shelfwise.request import ITEM_PAGES, Answer, RecRequest, Recommendation, new_request_id
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.rules.engine import Merchandising
from shelfwise.rules.stage import OverrideRules, RulesStage
from shelfwise.rules.store import NotFound
from shelfwise.settings import Settings
from shelfwise.stores import (open_catalog, open_event_bus, open_event_store, open_online_state,
                              open_preference_store, open_privacy_store, vector_index_factory)
from shelfwise.stages.budget import StageGuard
from shelfwise.stores.breaker import Breakers, Unavailable, unavailable
from shelfwise.stores.bus import EventProcessor
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import AppendResult, Consent, EventLog, ShopperPreferences, ShopperState
from shelfwise.training import SCAN_FILE, fit_pipeline

log = logging.getLogger(__name__)


def propensities(answer: Answer, got: Assignments | None) -> list[float] | None:
    """Per slot, the probability it holds its item, for the exposure log (None: every slot ranked): an experiment's
    exploration slot's, else a new item's exploration slot's (``stages.explore``), else 1."""
    own = [r.propensity for r in answer.items]
    theirs = got.propensities if got is not None else None
    if theirs is None:
        return own if any(p < 1.0 for p in own) else None
    return [t if t < 1.0 else (own[i] if i < len(own) else 1.0) for i, t in enumerate(theirs)]


class Shelfwise:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secure = settings.privacy.sqlite_secure_delete
        self.store = open_event_store(settings.events_dsn, secure_delete=secure)
        self.catalog = open_catalog(self.store)
        self.online = open_online_state(settings.stores.online, settings.models.history_length)
        self.models = DirectoryModelStore(settings.models_dir)
        # keys, consent and the erasure ledger live in the event store's database (privacy/, security/)
        self.privacy_store = open_privacy_store(settings.events_dsn, secure_delete=secure)
        self.pseudonyms = Pseudonymizer(settings.privacy.pseudonym_key if settings.privacy.pseudonymize else None)
        self.guard = PrivacyGuard(settings.privacy, self.privacy_store, self.privacy_store, self.pseudonyms)
        self.preference_store = open_preference_store(settings.preferences_dsn, secure_delete=secure)
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
        self.erasure_hooks.append(("experiment log", self.experiments.forget))
        self._variants: dict[tuple, Pipeline] = {}  # (model version, rule set) -> the pipeline serving a variant
        self.encoder: BackgroundEncoder | None = None  # content vectors of items added or changed after training
        # graceful degradation: breakers around the backends and the request path's optional parts, the model
        # served before the current one, and a best-seller list in memory (README "Graceful degradation")
        res = settings.resilience
        self.breakers = Breakers(res.breaker_failures, res.breaker_reset_s)
        self.stage_guard = StageGuard(res, self.breakers)
        self.last_good: Pipeline | None = None
        self.bestsellers: list[str] = []
        self.observer: Observer | None = None  # told each stage's time by every pipeline (the API's metrics)
        self.pipeline = self._load_pipeline()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def watch_models(self, interval_s: float = 2.0) -> None:
        """Check for new model versions on a background thread (the API does): requests never wait for a load."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_models, args=(interval_s,), daemon=True,
                                             name="shelfwise-model-watch")
            self._watcher.start()

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
        index = pipeline.items.index
        keep = [r for r, i in enumerate(ids) if i in index]
        content.add(np.array([index[ids[r]] for r in keep], np.int64), vectors[keep])
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
        """Collect garbage, then freeze every surviving object out of the cyclic collector's reach.

        The collector's full passes otherwise walk every long-lived object — the model, imported libraries, the
        online state's shopper histories, the answer cache — stalling a request each time (measured at 12k items:
        p99 140 ms without this, 34-37 ms with it; BENCHMARKS.md, Serving). Frozen objects are still freed by reference counting; only a reference
        cycle that dies while frozen waits for the next ``everything`` pass. The API calls this with
        ``everything`` at start-up only, and without it after each model swap and every ``api.freeze_heap_s``
        seconds (only what is new since the last pass is walked: the new model's objects after a swap, 65 ms of
        CPU at 12k items against 235 ms for a full pass). A swapped-out model needs no full pass: nothing in it is
        part of a reference cycle, so reference counting frees it, frozen or not
        (``tests/unit/test_model_swap_memory.py`` keeps it so)."""
        if self.settings.api.freeze_heap_s <= 0:
            return
        if everything:
            gc.unfreeze()
            # fewer young collections (each also ages survivors towards the full pass): 20,000 allocations
            # between them instead of 700 (a small gain within the runs' noise)
            gc.set_threshold(max(gc.get_threshold()[0], 20_000), 20, 20)
        gc.collect()
        gc.freeze()

    def _watch_models(self, interval_s: float) -> None:
        settled = time.monotonic()
        while not self._stop.wait(interval_s):
            if self.refresh_model_safely():
                self.settle_heap(everything=False)
                settled = time.monotonic()
            elif time.monotonic() - settled >= self.settings.api.freeze_heap_s:
                self.settle_heap(everything=False)
                settled = time.monotonic()

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
        try:
            admitted, withheld, withdrawn = self.guard.admit(events)
            for shopper in withdrawn:
                if self.settings.privacy.erase_on_withdrawal:
                    erase(self, shopper, "user" if not shopper.startswith("session:") else "session",
                          keep_consent=True, reason="personalisation consent withdrawn")
            result = self.bus.publish(admitted) if admitted else AppendResult()
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
        (they join the content source within a second or so; until then no source has evidence about them)."""
        n = self.catalog.upsert(items)
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
    def anchors_known(self, req: RecRequest) -> bool:
        """A product page's item, or one item of the cart, is in the model (in memory, no catalog read)."""
        index = self.pipeline.items.index
        if req.placement in ITEM_PAGES and req.item_id is not None:
            return req.item_id in index
        return req.placement != "cart_upsell" or not req.cart or any(c in index for c in req.cart)

    def unknown_anchor(self, req: RecRequest) -> str | None:
        """For a request whose page or cart items the model does not know (``anchors_known`` is false): the field
        whose ids are unknown to the catalog too (``item_id``, or ``cart`` when every cart item is), else None.

        A product page's item in the catalog but not in the model (added after training) gets its category's best
        sellers: the request's category filter becomes the longest prefix of the item's category path the model
        knows (unless the request has a filter of its own); the answer is a fallback (popularity only)."""
        if req.placement in ITEM_PAGES and req.item_id is not None:
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
        if req.placement == "cart_upsell" and req.cart and not self.catalog.get(list(dict.fromkeys(req.cart))):
            return "cart"
        return None

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
            keys = [request_key(r, pipeline.version, label, pipeline.items.version)
                    if got is None or not got.shown_k else None for r, got in zip(reqs, assigned)]
            answers = [self.cache.get(k) if k is not None else None for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        for i, ans in zip(todo, self._answer([reqs[i] for i in todo], [assigned[i] for i in todo])):
            if notes:
                ans = replace(ans, degraded=notes + ans.degraded)
            answers[i] = ans
            if keys and keys[i] is not None and not ans.degraded:  # a degraded answer is never reused
                self.cache.put(keys[i], ans)
        for req, answer, got in zip(reqs, answers, assigned):
            if not log:  # a simulation asks for rails whose exposures it logs itself
                break
            # exposure log (queued, off the hot path), with the slots' propensities when the rail explored
            self.merch.record(req, answer, propensities(answer, got))
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
                ans = next(results[j] for j, job in enumerate(jobs) if job[0] == i)
            if got is not None:
                ans = self._explored(got, ans) if got.shown_k else ans
                ans = replace(ans, experiments=got.labels())
            out.append(ans)
        return out

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
        if self._watcher is not None:
            self._watcher.join(10)
        if self.encoder is not None:
            self.encoder.close()
        self.bus.close()
        self.experiments_admin.close()
        self.experiments.close()
        self.merch.close()
        self.privacy_store.close()
        self.preference_store.close()
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
