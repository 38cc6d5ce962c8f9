"""Releasing model versions: the registry's offline metrics, the gates, promotion, the staged rollout, rollback.

Every version trained through ``Releases.after_training`` (``shelfwise train``, ``train --every``) is stored in
the model store and registered with its offline metrics on the held-out slice (``evaluation.holdout``), its data
window and its settings, then judged by the **gates** (``gate_result``; settings ``registry.*``):

* ``held_out_requests`` — the metrics rest on at least ``min_requests`` held-out requests;
* ``coverage@12`` — at least ``min_coverage``;
* ``NDCG@12`` — at most ``max_ndcg_drop`` (relative) below the live version's (passes when the live version has
  no stored metrics: it was published before the registry).

A version that fails is stored but not promoted (status ``rejected``, its note naming the gate). One that passes
goes live at once when no model is live or ``registry.rollout = "immediate"``; else a **staged rollout** starts:
an experiment in the layer ``registry.rollout_layer`` with two arms of equal share — ``live`` (the running
configuration) and ``candidate`` (``model_version`` = the candidate) — whose exposure share (``traffic``) is twice
the stage's share, so the candidate serves 10 %, then 50 % of shoppers by the experiments' sticky hashing (a
shopper who got the candidate keeps it at the next stage), the other arm being an equally large live group to
compare with. The experiment carries the CTR guardrail (``max_ctr_drop``, ``min_units``): the experiments'
anytime-valid comparison decides, in ``check`` (every ``check_interval_s`` in each API process) or in the
experiments' own guardrail monitor — either stops the experiment serving ``live``, and the rollout is rolled back.
A stage that lasted ``stage_minutes`` with the guardrail ok (enough shoppers in both arms, not breached) moves to
the next; the last stage (100 %) promotes the candidate (the model store's CURRENT, which every replica watches)
and ends the experiment. The rollout's state is in the registry, written by compare-and-set, so replicas racing to
advance it do it once.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from typing import Any

from shelfwise.experiments.guardrails import check_experiment
from shelfwise.experiments.log import ExperimentLog
from shelfwise.experiments.schema import ExperimentSpec, Guardrail, Variant, VariantConfig
from shelfwise.experiments.store import Conflict as ExperimentConflict, ExperimentStore, NotFound
from shelfwise.settings import Settings
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import EventLog, ModelRegistry, ModelVersion, Rollout

log = logging.getLogger(__name__)
K = 12


class UnknownVersion(KeyError):
    def __str__(self) -> str:
        return f"unknown model version {self.args[0]!r}: not in the model registry"


class GateBlocked(ValueError):
    """A version failed its gates (HTTP 409): ``result`` is the gate evaluation."""

    def __init__(self, version: str, result: dict) -> None:
        self.version, self.result = version, result
        super().__init__(f"model version {version} blocked by its gates: {result['reason']}")


class ReleaseConflict(ValueError):
    """The request contradicts the release state (another rollout running, nothing to roll back)."""


def gate_result(candidate: ModelVersion, live: ModelVersion | None, conf: Any) -> dict:
    """The gates of ``candidate`` against the live version (``conf``: ``registry`` settings)."""
    m = candidate.metrics
    checks = []
    n = int(m.get("requests", 0))
    checks.append({"gate": "held_out_requests", "passed": n >= conf.min_requests, "value": n,
                   "threshold": conf.min_requests,
                   "reason": f"{n} held-out requests (needs {conf.min_requests})"})
    cov = m.get(f"coverage@{K}")
    checks.append({"gate": f"coverage@{K}", "passed": cov is not None and cov >= conf.min_coverage, "value": cov,
                   "threshold": conf.min_coverage,
                   "reason": f"coverage@{K} {cov if cov is None else round(cov, 4)} (floor {conf.min_coverage})"})
    ndcg = m.get(f"NDCG@{K}")
    base = live.metrics.get(f"NDCG@{K}") if live is not None else None
    if base is None:
        checks.append({"gate": f"NDCG@{K}", "passed": ndcg is not None, "value": ndcg, "threshold": None,
                       "reason": "no live version with stored metrics to compare with" if ndcg is not None else
                       "no held-out NDCG"})
    else:
        floor = base * (1 - conf.max_ndcg_drop)
        ok = ndcg is not None and ndcg >= floor
        checks.append({"gate": f"NDCG@{K}", "passed": ok, "value": ndcg, "threshold": round(floor, 6),
                       "reason": f"NDCG@{K} {ndcg if ndcg is None else round(ndcg, 4)} vs live {live.version} "
                                 f"{round(base, 4)} (at most {conf.max_ndcg_drop:.0%} below: {round(floor, 4)})"})
    failed = [c for c in checks if not c["passed"]]
    return {"passed": not failed, "baseline": live.version if live is not None else None, "at": time.time(),
            "checks": checks, "reason": "; ".join(c["reason"] for c in failed) if failed else "every gate passed"}


def data_window(log_: EventLog) -> dict:
    if not len(log_):
        return {"events": 0}
    return {"from": float(log_.ts.min()), "until": float(log_.ts.max()), "events": len(log_),
            "shoppers": len(set(log_.shopper.tolist())), "items": len(set(log_.item.tolist()))}


class Releases:
    """The release state of one deployment: model store + registry + the experiments that split shoppers."""

    def __init__(self, settings: Settings, models: DirectoryModelStore, registry: ModelRegistry,
                 experiments: ExperimentStore, xlog: ExperimentLog | None, changed: Any = None) -> None:
        self.settings, self.conf = settings, settings.registry
        self.models, self.registry, self.experiments, self.xlog = models, registry, experiments, xlog
        self.changed = changed or (lambda: None)  # the serving process reloads its experiments at once

    # ---- reading (the CLI, /v1/models, the console) -------------------------------------------------------
    def live(self) -> str | None:
        return self.models.current()

    def status(self, limit: int = 50) -> dict:
        """The live version, the rollout (or the last one) and the versions, newest first."""
        rollout = self.registry.rollout()
        return {"live": self.live(), "rollout": rollout.view() if rollout else None,
                "versions": [v.view() for v in self.registry.list(limit)]}

    def version(self, version: str) -> ModelVersion:
        got = self.registry.get(version)
        if got is None:
            raise UnknownVersion(version)
        return got

    def running(self) -> Rollout | None:
        r = self.registry.rollout()
        return r if r is not None and r.state == "running" else None

    # ---- after training ---------------------------------------------------------------------------------------
    def after_training(self, version: str, metrics: dict, log_: EventLog, author: str = "training") -> dict:
        """Register a version just stored by training with its held-out metrics (``evaluation.holdout.released``
        computes them: ``training.train``'s ``release`` hook), then release it through the gates."""
        self.registry.register(ModelVersion(version, time.time(), metrics=metrics, window=data_window(log_),
                                            settings=self.settings.models.model_dump(mode="json")))
        self.registry.audit("register", version, author, f"held-out: {metrics}")
        return self.release(version, author)

    def release(self, version: str, author: str) -> dict:
        """Judge a registered version and release it: rejected, live at once, or a staged rollout."""
        live_version = self.live()
        candidate = self.version(version)
        live = self.registry.get(live_version) if live_version else None
        gates = gate_result(candidate, live, self.conf)
        self.registry.update(version, gates=gates)
        if live_version is None:  # nothing serves yet: the first version goes live whatever its gates say
            self._promote_now(version, author, "first model version" + ("" if gates["passed"] else
                                                                        f" (gates: {gates['reason']})"))
            return {"version": version, "action": "promoted", "gates": gates}
        if not gates["passed"]:
            self.registry.update(version, status="rejected", note=f"gates: {gates['reason']}")
            self.registry.audit("reject", version, author, gates["reason"])
            log.warning("model version %s stored, not promoted: %s", version, gates["reason"])
            return {"version": version, "action": "rejected", "gates": gates}
        if self.conf.rollout == "immediate" or self.running() is not None:
            if self.running() is not None:  # one rollout at a time: this one waits for an operator
                self.registry.update(version, note="gates passed; not promoted: another rollout is running")
                return {"version": version, "action": "registered", "gates": gates}
            self._promote_now(version, author, "gates passed (registry.rollout = immediate)")
            return {"version": version, "action": "promoted", "gates": gates}
        rollout = self._start_rollout(version, live_version, author)
        return {"version": version, "action": "rollout", "gates": gates, "rollout": rollout.view()}

    # ---- operator actions -------------------------------------------------------------------------------------
    def promote(self, version: str, author: str, immediate: bool = False) -> dict:
        """Promote a version through its gates: start its staged rollout (or, ``immediate``, every shopper at
        once). The candidate of the running rollout moves to its next stage (``immediate``: straight to 100 %)."""
        candidate = self.version(version)
        live_version = self.live()
        if version == live_version:
            raise ReleaseConflict(f"model version {version} is already live")
        if not self.models.path(version).is_dir():
            raise ReleaseConflict(f"model version {version} is registered but its files are no longer in the model "
                                  "store (pruned: registry.keep_versions)")
        running = self.running()
        if running is not None and running.candidate != version:
            raise ReleaseConflict(f"a rollout of {running.candidate} is running (at {running.share:.0%}); roll it "
                                  "back or let it finish first")
        live = self.registry.get(live_version) if live_version else None
        gates = gate_result(candidate, live, self.conf)
        self.registry.update(version, gates=gates)
        if not gates["passed"] and live_version is not None:
            raise GateBlocked(version, gates)
        if running is not None:
            return {"version": version, "action": "advanced",
                    "rollout": self._advance(running, author, final=immediate).view()}
        if immediate or live_version is None or self.conf.rollout == "immediate":
            self._promote_now(version, author, "promoted by " + author)
            return {"version": version, "action": "promoted", "gates": gates}
        return {"version": version, "action": "rollout", "gates": gates,
                "rollout": self._start_rollout(version, live_version, author).view()}

    def rollback(self, author: str, reason: str = "") -> dict:
        """Stop the running rollout (its shoppers go back to the live version), or, without one, go back to the
        version that was live before the live one."""
        running = self.running()
        why = reason or f"rolled back by {author}"
        if running is not None:
            try:
                self.experiments.stop(running.experiment, author, reason=why, serve="live")
            except (ExperimentConflict, NotFound):
                pass  # stopped already (the guardrail, an operator)
            done = self._finish(running, "rolled_back", why, author)
            return {"action": "rolled_back", "version": running.candidate, "rollout": done.view() if done else None}
        live = self.live()
        previous = next((v for v in self.registry.list(1000) if v.status == "retired" and v.version != live
                         and self.models.path(v.version).is_dir()), None)
        if previous is None:
            raise ReleaseConflict("nothing to roll back: no rollout is running and no earlier live version is "
                                  "kept in the model store")
        self.models.publish(previous.version)
        self.registry.update(previous.version, status="live", note=f"live again: {why}")
        if live is not None and self.registry.get(live) is not None:
            self.registry.update(live, status="rolled_back", note=why)
        self.registry.audit("rollback", live or "", author, f"back to {previous.version}: {why}")
        self.changed()
        return {"action": "rolled_back", "version": live, "live": previous.version}

    # ---- the rollout's heartbeat --------------------------------------------------------------------------------
    def check(self, now: float | None = None, author: str = "registry") -> dict:
        """Advance or roll back the running rollout once: rolled back when its experiment was stopped (the CTR
        guardrail, an operator) or its guardrail is breached now; moved to the next stage when the stage lasted
        ``stage_minutes`` and every guardrail is ok."""
        now = time.time() if now is None else now
        r = self.running()
        if r is None:
            return {"action": "none"}
        try:
            e = self.experiments.get(r.experiment)
        except NotFound:
            done = self._finish(r, "aborted", f"its experiment {r.experiment} is gone", author)
            return {"action": "aborted", "rollout": done.view() if done else None}
        if e.status == "stopped":
            done = self._finish(r, "rolled_back", e.stop_reason or "its experiment was stopped", author)
            return {"action": "rolled_back", "rollout": done.view() if done else None}
        if self.xlog is None:
            return {"action": "waiting", "detail": "no exposure log (experiments.exposure_log): the guardrail "
                                                   "cannot judge, the rollout does not advance"}
        conf = self.settings.experiments
        action, results = check_experiment(self.experiments, self.xlog, e, conf.attribution_window_hours * 3600.0,
                                           conf.alpha, conf.planned_units, now)
        if action["stopped"]:
            self.changed()
            done = self._finish(r, "rolled_back", self.experiments.get(r.experiment).stop_reason, "guardrail")
            return {"action": "rolled_back", "rollout": done.view() if done else None,
                    "guardrails": action["guardrails"]}
        waited = now - r.stage_started_at
        if waited < self.conf.stage_minutes * 60.0 or any(x.status != "ok" for x in results):
            return {"action": "waiting", "rollout": r.view(), "guardrails": action["guardrails"],
                    "stage_s": round(waited, 1)}
        return {"action": "advanced", "rollout": self._advance(r, author, now=now).view(),
                "guardrails": action["guardrails"]}

    # ---- internals ----------------------------------------------------------------------------------------------
    def _promote_now(self, version: str, author: str, why: str) -> None:
        previous = self.live()
        self.models.publish(version)
        self.registry.update(version, status="live", note=why)
        if previous is not None and previous != version and self.registry.get(previous) is not None:
            self.registry.update(previous, status="retired", note=f"replaced by {version}")
        self.registry.audit("promote", version, author, why)
        self._prune()
        self.changed()

    def _prune(self) -> None:
        r = self.registry.rollout()
        keep = [v.version for v in self.registry.list(1000) if v.status == "retired"][:1]  # the rollback target
        if r is not None and r.state == "running":
            keep.append(r.candidate)
        self.models.prune(self.conf.keep_versions, protect=tuple(keep))

    def _start_rollout(self, version: str, baseline: str, author: str) -> Rollout:
        now = time.time()
        share = self.conf.stages[0]
        eid = f"rollout-{re.sub(r'[^a-z0-9_.-]', '-', version.lower())}-{int(now)}"[:64]
        spec = ExperimentSpec(
            id=eid, name=f"staged rollout of model {version}", owner=author, layer=self.conf.rollout_layer,
            description=f"candidate {version} against the live model {baseline}; stages {self.conf.stages}",
            variants=[Variant(name="live", share=0.5, description=f"the live model ({baseline} at the start)"),
                      Variant(name="candidate", share=0.5, config=VariantConfig(model_version=version))],
            control="live", traffic=min(1.0, 2 * share), primary_metric="ctr",
            guardrails=[Guardrail(metric="ctr", max_drop=self.conf.max_ctr_drop, min_units=self.conf.min_units)])
        got = self.registry.rollout()
        rollout = self.registry.save_rollout(Rollout(version, baseline, eid, share, started_at=now,
                                                     stage_started_at=now), got.revision if got else 0)
        if rollout is None:
            raise ReleaseConflict("another process changed the rollout meanwhile; try again")
        self.experiments.create(spec, author, comment="model rollout")
        self.experiments.start(eid, author, comment=f"stage {share:.0%}")
        self.registry.update(version, status="rolling_out", note=f"serving {share:.0%} of shoppers")
        self.registry.audit("rollout", version, author, f"stage {share:.0%} (experiment {eid})")
        self.changed()
        return rollout

    def _advance(self, r: Rollout, author: str, final: bool = False, now: float | None = None) -> Rollout:
        now = time.time() if now is None else now
        stages = self.conf.stages
        share = 1.0 if final else next((s for s in stages if s > r.share + 1e-9), 1.0)
        if share >= 1.0:
            done = self.registry.save_rollout(replace(r, share=1.0, state="done", finished_at=now,
                                                      reason="every stage passed" if not final else
                                                      f"promoted to every shopper by {author}"), r.revision)
            if done is None:
                return self.registry.rollout() or r  # another replica did it
            self._promote_now(r.candidate, author, "staged rollout passed every stage")
            try:
                self.experiments.stop(r.experiment, author, reason=f"model {r.candidate} promoted to every shopper")
            except (ExperimentConflict, NotFound):
                pass
            self.changed()
            return done
        nxt = self.registry.save_rollout(replace(r, share=share, stage_started_at=now), r.revision)
        if nxt is None:
            return self.registry.rollout() or r
        self.experiments.ramp(r.experiment, min(1.0, 2 * share), author, comment=f"stage {share:.0%}")
        self.registry.update(r.candidate, note=f"serving {share:.0%} of shoppers")
        self.registry.audit("advance", r.candidate, author, f"stage {share:.0%}")
        self.changed()
        return nxt

    def _finish(self, r: Rollout, state: str, reason: str, author: str) -> Rollout | None:
        done = self.registry.save_rollout(replace(r, state=state, finished_at=time.time(), reason=reason),
                                          r.revision)
        if done is None:
            return self.registry.rollout()
        self.registry.update(r.candidate, status="rolled_back" if state == "rolled_back" else "registered",
                             note=reason)
        self.registry.audit("rollback" if state == "rolled_back" else "abort", r.candidate, author, reason)
        log.warning("model rollout of %s %s: %s", r.candidate, state.replace("_", " "), reason)
        self.changed()
        return done
