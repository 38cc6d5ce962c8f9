"""What a serving process holds for experiments, and the hooks the recommendation path calls.

    rt = ExperimentRuntime(settings, monitor=True)          # once per process (opens store + log; guardrails)
    got = rt.assign(user_id, session_id, placement, segments)   # per request, ~10 µs, no I/O on the hot path*
    models = apply_config(settings.models, got.config)      # the variant's pipeline settings (cached)
    k = effective_k(req.k, placement, got.config)
    ... run the pipeline (got.config.model_version / ruleset / ranker / exploration; got.interleave) ...
    rt.record(got, request_id, placement, items, propensities=..., teams=..., latency_ms=..., error=...)
    body["experiments"] = got.labels()                      # the answer names its variants
    rt.record_events(events)                                # after ingest: outcomes for attribution

(*) a snapshot of the store is reloaded when its generation changes, checked at most every
``experiments.reload_interval_s``; with ``identity = first_seen`` a shopper not seen by this process before costs
one identity lookup (then cached).

Wiring into the request path (what ``service.Shelfwise`` / ``api/app.py`` do once the new request path lands):

* ``Shelfwise.__init__``: ``self.experiments = ExperimentRuntime(settings, monitor=True)`` and
  ``self.experiments_admin = ExperimentService(settings, store=self.experiments.store, xlog=self.experiments.log)``
  (``api/experiments.service_of`` then uses it); close both in ``close()``. In ``create_app``:
  ``experiments_router(lambda: experiments_of(sw()), changed=lambda: sw().experiments.reload())``.
* Per request: ``got.config`` (a ``VariantConfig``) says what to change — ``apply_config`` gives the placement
  settings (blend weights, business score, diversity, exclude_history); requests with different configurations
  cannot share one pipeline call unless the pipeline takes per-request placement settings, so the micro-batcher
  groups by ``id(models)``; ``model_version`` names a published version to serve instead of CURRENT (load and
  cache it beside the current one); ``ruleset`` (``id`` or ``id@version``) the rule set the rules stage applies;
  ``ranker`` False skips the learned ranker; ``exploration`` is used by ``explore``. ``got.interleave`` = (config A,
  config B): run both, ``team_draft(a_ids, b_ids, k, seed=request_id)``, record with ``teams``.
* After the answer (or a failure: ``items=[]``, ``error=True``): ``rt.record(...)`` with the latency in ms.
* Ingestion: ``rt.record_events(events)`` after the durable append — in ``EventProcessor.process`` so the stream
  workers do it too.
* Privacy: pass ids in their stored form (``engine.pseudonyms.user(user_id)``, ``.session(session_id)`` when
  ``privacy.pseudonymize`` is on) and record events after pseudonymisation, so nothing raw is logged and the log's
  shoppers join the events'; register ``engine.erasure_hooks.append(("experiment log", rt.forget))``. (Bucketing
  then hashes the pseudonym: rotating the pseudonym key reshuffles running experiments, as it disconnects
  history.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from shelfwise.experiments.assignment import Assigner, Assignment, shopper_key
from shelfwise.experiments.bandits import ItemBandit, VariantBandit
from shelfwise.experiments.config import _EMPTY, merge_configs
from shelfwise.experiments.backends import experiments_dsn, open_experiment_log, open_experiment_store
from shelfwise.experiments.log import ExperimentLog, ExposureRecord, visit_key
from shelfwise.experiments.schema import Experiment, VariantConfig
from shelfwise.experiments.store import ExperimentStore

log = logging.getLogger(__name__)

HOLDOUT_EXPERIMENT = "_holdout"


@dataclass
class Assignments:
    """A request's experiments: the variants (at most one per layer), the merged configuration to serve, and what
    the exposure log needs."""

    unit: str | None
    shopper: str | None
    visit: str | None
    placement: str | None
    items: list[Assignment] = field(default_factory=list)
    holdout: bool = False
    config: VariantConfig = _EMPTY  # immutable: shared
    conflicts: list[str] = field(default_factory=list)
    interleave: tuple[VariantConfig, VariantConfig] | None = None  # (config A, config B) of an interleave experiment
    interleave_experiment: str | None = None
    teams: list[str] | None = None  # interleaving: the team ("a"/"b") of each slot of the served answer
    shown_k: int = 0  # item exploration: the slots shown (the pipeline is asked for a few more to explore among)
    propensities: list[float] | None = None  # item exploration: each shown slot's probability of being chosen
    segment: str = ""  # the first segment the request named: the contextual bandit's context with the placement

    def labels(self) -> list[dict[str, str]]:
        """What the answer names: [{"experiment": id, "variant": name}] (running experiments only)."""
        return [{"experiment": a.experiment, "variant": a.variant} for a in self.items if a.logged]

    @property
    def logged(self) -> list[Assignment]:
        return [a for a in self.items if a.logged]


@dataclass
class _Snapshot:
    generation: int
    experiments: dict[str, Experiment]
    assigner: Assigner
    bandits: dict[str, VariantBandit]


class ExperimentRuntime:
    def __init__(self, settings: Any, store: ExperimentStore | None = None, xlog: ExperimentLog | None = None,
                 monitor: bool = False, clock: Any = time.time, background: bool = True) -> None:
        """``monitor``: run the guardrail monitor in this process. ``background``: refresh bandit posteriors on a
        thread (else only when ``refresh_bandits`` is called)."""
        self.settings = settings
        self.conf = settings.experiments
        dsn = experiments_dsn(settings)
        self._own_store = store is None
        self.store = store or open_experiment_store(dsn)
        self._own_log = xlog is None
        self.log: ExperimentLog | None = xlog
        if xlog is None and self.conf.exposure_log:
            self.log = open_experiment_log(dsn, self.conf.retention_days)
        self.clock = clock
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None
        self._checked = 0.0
        self._identity: OrderedDict[str, str] = OrderedDict()
        self._identity_max = 100_000
        self._rng = np.random.default_rng()
        self.items = ItemBandit(prior_alpha=self.conf.bandit_prior[0], prior_beta=self.conf.bandit_prior[1],
                                draws=self.conf.bandit_draws, prior_strength=self.conf.bandit_prior_strength)
        self._marks: dict[str, float] = {}  # bandit -> log time up to which its posterior has the data
        self._explore_used = False
        self._refresher: threading.Thread | None = None
        self._background = background
        self._closing = threading.Event()
        self.monitor = None
        if monitor and self.conf.guardrail_interval_s > 0 and self.log is not None:
            self.start_monitor()

    # ---- store snapshot ------------------------------------------------------------------------------------
    def snapshot(self) -> _Snapshot:
        now = time.monotonic()
        snap = self._snap
        if snap is not None and now - self._checked < self.conf.reload_interval_s:
            return snap
        with self._lock:
            snap = self._snap
            if snap is not None and now - self._checked < self.conf.reload_interval_s:
                return snap
            self._checked = now
            gen = self.store.generation()
            if snap is None or gen != snap.generation:
                active = self.store.active()
                bandits = {e.id: (snap.bandits.get(e.id) if snap and e.id in snap.bandits else
                                  VariantBandit([v.name for v in e.spec.variants], draws=1000))
                           for e in active if e.spec.kind == "bandit" and e.status == "running"}
                snap = _Snapshot(gen, {e.id: e for e in active},
                                 Assigner(active, self.conf.holdout_share, self.conf.holdout_salt), bandits)
                self._snap = snap
            return snap

    def reload(self) -> None:
        """Force a reload on the next call (after a change made through this process)."""
        self._checked = 0.0

    # ---- identity --------------------------------------------------------------------------------------------
    def unit_for(self, user_id: str | None, session_id: str | None) -> str | None:
        """The bucketing unit (``experiments.identity``)."""
        anon = shopper_key(None, session_id)
        if not user_id:
            return anon
        if self.conf.identity == "user":
            return user_id
        unit = self._identity.get(user_id)
        if unit is not None:
            self._identity.move_to_end(user_id)
            return unit
        unit = self.store.identities([user_id]).get(user_id)
        if unit is None:
            unit = self.store.link_identity(user_id, anon or user_id)
        self._identity[user_id] = unit
        if len(self._identity) > self._identity_max:
            self._identity.popitem(last=False)
        return unit

    # ---- assignment --------------------------------------------------------------------------------------------
    def assign(self, user_id: str | None, session_id: str | None, placement: str | None = None,
               segments: Sequence[str] = ()) -> Assignments:
        snap = self.snapshot()
        unit = self.unit_for(user_id, session_id)
        out = Assignments(unit=unit, shopper=shopper_key(user_id, session_id), visit=visit_key(user_id, session_id),
                          placement=placement, segment=segments[0] if segments else "")
        if unit is None or snap.assigner.empty:
            return out
        items = snap.assigner.assign(unit, placement)
        if not items and snap.assigner.in_holdout(unit):
            out.holdout = True
            return out
        resolved = []
        for a in items:
            if a.kind == "bandit" and a.logged and a.experiment in snap.bandits:
                arm, p = snap.bandits[a.experiment].choose((placement, out.segment), self._rng)
                e = snap.experiments[a.experiment]
                a = Assignment(a.experiment, arm, a.layer, e.spec.variant(arm).config, "bandit", a.status, p, a.arms)
            elif a.kind == "interleave" and a.logged:
                e = snap.experiments[a.experiment]
                out.interleave = (e.spec.variants[0].config, e.spec.variants[1].config)
                out.interleave_experiment = a.experiment
                a = Assignment(a.experiment, "interleaved", a.layer, VariantConfig(), "interleave", a.status, 1.0,
                               a.arms)
            resolved.append(a)
        out.items = resolved
        out.config, out.conflicts = merge_configs([a.config for a in resolved])
        if snap.bandits:
            self._ensure_refresher()
        return out

    # ---- exposure log --------------------------------------------------------------------------------------------
    def exposure(self, got: Assignments, request_id: str, placement: str, items: Sequence[str], *,
                 ts: float | None = None, propensities: Sequence[float] | None = None,
                 teams: Sequence[str] | None = None, latency_ms: float | None = None, error: bool = False,
                 model_version: str = "") -> ExposureRecord | None:
        """The exposure record of an answer (None when nothing of it is analysed)."""
        assignments = [(a.experiment, a.variant, a.propensity) for a in got.logged]
        if self.conf.holdout_share > 0 and got.unit is not None:
            assignments.append((HOLDOUT_EXPERIMENT, "holdout" if got.holdout else "exposed",
                                self.conf.holdout_share if got.holdout else 1 - self.conf.holdout_share))
        if not assignments and propensities is None:
            return None
        return ExposureRecord(request_id=request_id, ts=self.clock() if ts is None else ts, placement=placement,
                              unit=got.unit, shopper=got.shopper, visit=got.visit, items=list(items),
                              assignments=assignments, propensities=None if propensities is None else
                              [float(p) for p in propensities], teams=None if teams is None else list(teams),
                              latency_ms=latency_ms, error=error, model_version=model_version, segment=got.segment)

    def record(self, got: Assignments, request_id: str, placement: str, items: Sequence[str], **kw: Any) -> None:
        """Enqueue the exposure of one answer (off the hot path; a no-op without logging or experiments)."""
        if self.log is None:
            return
        rec = self.exposure(got, request_id, placement, items, **kw)
        if rec is not None:
            self.log.record([rec])

    def record_events(self, events: Sequence[Any]) -> None:
        """Outcomes (clicks, carts, purchases) of ingested events, for attribution."""
        if self.log is not None:
            self.log.record_events(events)

    # ---- erasure --------------------------------------------------------------------------------------------------
    def forget(self, shopper: str) -> int:
        """Erase a shopper from the experiment log and the identity map (an ``erasure_hooks`` entry of the engine;
        ``shopper`` in its stored form). Assignment keeps no state, so nothing else remembers them."""
        n = self.log.forget(shopper) if self.log is not None else 0
        n += self.store.forget_identity(shopper)
        for user in [u for u, unit in self._identity.items() if shopper in (u, unit)]:
            del self._identity[user]
        return n

    # ---- item exploration ----------------------------------------------------------------------------------------
    def explore(self, got: Assignments, ranked: Sequence[str], candidates: Sequence[str], allowed: np.ndarray | None,
                k: int) -> tuple[list[str], list[float] | None]:
        """Replace about k × share slots of ``ranked`` by Thompson-sampled candidates (``allowed``: the caller's
        mask of showable candidates). Share: the variant's ``exploration``, else ``experiments.explore_share``.
        Returns the rail and its per-slot propensities (None when nothing was explored)."""
        share = got.config.exploration if got.config.exploration is not None else self.conf.explore_share
        if share <= 0:
            return list(ranked[:k]), None
        self._explore_used = True
        self._ensure_refresher()
        return self.items.fill(ranked, candidates, allowed, k, share, self._rng)

    def _ensure_refresher(self) -> None:
        if self._refresher is None and self.log is not None and self._background:
            with self._lock:
                if self._refresher is None:
                    self._refresher = threading.Thread(target=self._refresh_loop, name="shelfwise-bandits",
                                                       daemon=True)
                    self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._closing.is_set():
            try:
                self.refresh_bandits()
            except Exception:  # keep serving with the posteriors we have
                log.exception("refreshing bandit posteriors failed")
            self._closing.wait(self.conf.bandit_refresh_s)

    def refresh_bandits(self) -> int:
        """Feed the bandits the logged decisions whose reward window has closed since their watermark (every
        replica reads the same shared log, so every replica converges to the same posteriors)."""
        if self.log is None:
            return 0
        now = self.clock()
        until = now - self.conf.bandit_reward_window_s
        snap = self.snapshot()
        targets: list[tuple[str, Any, float]] = []
        if self._explore_used:
            targets.append(("items", self.items,
                            self._marks.get("items", until - self.conf.bandit_history_days * 86400.0)))
        for eid, bandit in snap.bandits.items():
            started = snap.experiments[eid].started_at or until
            targets.append((eid, bandit, self._marks.get(eid, started)))
        targets = [t for t in targets if t[2] < until]
        if not targets:
            return 0
        self.log.flush()
        reqs = self.log.requests(since=min(t[2] for t in targets), until=until,
                                 window_s=self.conf.bandit_reward_window_s)
        n = 0
        for name, bandit, mark in targets:
            fresh = [r for r in reqs if r.ts >= mark]
            if name == "items":
                n += bandit.refresh_from_requests(fresh)
            else:
                n += bandit.refresh_from_requests(name, fresh, lambda r: (r.placement, r.segment))
            self._marks[name] = until
        return n

    # ---- guardrails ----------------------------------------------------------------------------------------------
    def start_monitor(self) -> None:
        from shelfwise.experiments.guardrails import GuardrailMonitor

        if self.monitor is None and self.log is not None:
            self.monitor = GuardrailMonitor(self.store, self.log, self.conf.guardrail_interval_s,
                                            self.conf.attribution_window_hours * 3600.0, self.conf.alpha,
                                            self.conf.planned_units, on_breach=lambda e, r: self.reload())

    def close(self) -> None:
        self._closing.set()
        if self._refresher is not None:
            self._refresher.join(10)
        if self.monitor is not None:
            self.monitor.close()
        if self._own_log and self.log is not None:
            self.log.close()
        if self._own_store:
            self.store.close()
