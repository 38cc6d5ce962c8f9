"""Managing experiments: the operations the HTTP API and the CLI share (create, edit, start, ramp, stop, read,
results, power, guardrail check). Nothing here knows about HTTP or the terminal; errors are ``ExperimentInvalid``
(422: a document problem with JSON paths), ``NotFound`` (404) and ``Conflict`` (409: the state forbids it)."""

from __future__ import annotations

import math
import time
from typing import Any

from shelfwise.experiments import analysis
from shelfwise.experiments.guardrails import check_once, evaluate
from shelfwise.experiments.interleaving import analyze_interleaving, outcomes_from_requests
from shelfwise.experiments.backends import experiments_dsn, open_experiment_log, open_experiment_store
from shelfwise.experiments.config import validate_spec
from shelfwise.experiments.log import ExperimentLog
from shelfwise.experiments.runtime import HOLDOUT_EXPERIMENT
from shelfwise.experiments.schema import Experiment, ExperimentInvalid, parse_spec
from shelfwise.experiments.store import Conflict, ExperimentStore, NotFound

__all__ = ["Conflict", "ExperimentInvalid", "ExperimentService", "NotFound"]


class ExperimentService:
    def __init__(self, settings: Any, store: ExperimentStore | None = None, xlog: ExperimentLog | None = None):
        self.settings = settings
        self.conf = settings.experiments
        dsn = experiments_dsn(settings)
        self._own = (store is None, xlog is None)
        self.store = store or open_experiment_store(dsn)
        self.log = xlog or open_experiment_log(dsn, self.conf.retention_days)

    # ---- documents ----------------------------------------------------------------------------------------------
    def _check(self, document: Any, experiment_id: str | None = None) -> tuple[Any, list[dict[str, str]]]:
        if experiment_id is not None and isinstance(document, dict):
            if document.get("id") not in (None, experiment_id):
                raise Conflict(f"the document's id {document.get('id')!r} differs from the URL's {experiment_id!r}")
            document = {"id": experiment_id} | document
        spec = parse_spec(document)
        return spec, validate_spec(spec, self.settings.models, self.settings.api.max_k)

    def validate(self, document: Any) -> dict[str, Any]:
        spec, warnings = self._check(document)
        return {"valid": True, "id": spec.id, "warnings": warnings}

    def create(self, document: Any, author: str, comment: str = "", experiment_id: str | None = None,
               start: bool = False) -> dict[str, Any]:
        spec, warnings = self._check(document, experiment_id)
        e = self.store.create(spec, author, comment)
        if start:
            e = self.store.start(spec.id, author, comment)
        return e.view() | {"warnings": warnings}

    def update(self, experiment_id: str, document: Any, author: str, comment: str = "") -> dict[str, Any]:
        spec, warnings = self._check(document, experiment_id)
        return self.store.update(spec, author, comment).view() | {"warnings": warnings}

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def start(self, experiment_id: str, author: str, comment: str = "") -> dict[str, Any]:
        return self.store.start(experiment_id, author, comment).view()

    def ramp(self, experiment_id: str, traffic: float, author: str, comment: str = "") -> dict[str, Any]:
        return self.store.ramp(experiment_id, traffic, author, comment).view()

    def stop(self, experiment_id: str, author: str, reason: str = "", serve: str | None = None) -> dict[str, Any]:
        return self.store.stop(experiment_id, author, reason, serve).view()

    def serve(self, experiment_id: str, variant: str | None, author: str, comment: str = "") -> dict[str, Any]:
        return self.store.set_serve(experiment_id, variant, author, comment).view()

    # ---- reads --------------------------------------------------------------------------------------------------
    def get(self, experiment_id: str) -> dict[str, Any]:
        e = self.store.get(experiment_id)
        return e.view() | {"history": [h.__dict__ for h in self.store.history(experiment_id)]}

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        if status is not None and status not in ("draft", "running", "stopped"):
            raise ExperimentInvalid([{"path": "status", "reason": f"unknown status {status!r}; known: draft, "
                                                                  "running, stopped"}])
        return [e.view() for e in self.store.list(status)]

    def experiment(self, experiment_id: str, since: float | None = None) -> Experiment:
        if experiment_id == HOLDOUT_EXPERIMENT:
            return self.holdout_experiment(since)
        return self.store.get(experiment_id)

    def holdout_experiment(self, since: float | None = None) -> Experiment:
        """The global holdout as an experiment: "holdout" (control) vs "exposed" to everything running."""
        h = self.conf.holdout_share
        if h <= 0:
            raise NotFound("there is no global holdout (experiments.holdout_share = 0)")
        now = time.time()
        start = since if since is not None else now - 28 * 86400.0
        spec = parse_spec({"id": "holdout", "name": "global holdout", "guardrails": [],
                           "variants": [{"name": "holdout", "share": h}, {"name": "exposed", "share": 1 - h}]})
        spec = spec.model_copy(update={"id": HOLDOUT_EXPERIMENT})
        return Experiment(spec=spec, status="running", traffic=1.0, created_at=start, updated_at=now,
                          started_at=start)

    # ---- results ------------------------------------------------------------------------------------------------
    def results(self, experiment_id: str, until: float | None = None, since: float | None = None,
                bayes: bool = True) -> dict[str, Any]:
        e = self.experiment(experiment_id, since)
        out: dict[str, Any] = {"experiment": e.view()}
        if e.status == "draft" or e.started_at is None:
            out["detail"] = "not started: no results yet"
            return out
        self.log.flush()
        start = e.started_at if since is None else since
        end = until if until is not None else (e.stopped_at or time.time()) + 1e-6
        window = self.conf.attribution_window_hours * 3600.0
        pre = self.conf.pre_period_days * 86400.0
        table = self.log.unit_table(e.spec.id, window, since=start, until=end,
                                    pre_since=start - pre if pre > 0 else None, pre_until=start if pre > 0 else None)
        shares = {v.name: v.share for v in e.spec.variants}
        out["window"] = {"since": start, "until": end, "attribution_window_s": window, "pre_period_s": pre}
        planned = e.spec.planned_units or self.conf.planned_units
        if e.spec.kind == "ab" or experiment_id == HOLDOUT_EXPERIMENT:
            out["analysis"] = analysis.analyze(table, e.spec.control_name, shares, self.conf.alpha,
                                               planned_units=planned, bayes=bayes, start=start, now=end)
        metrics = self.log.request_metrics(e.spec.id, since=start, until=end)
        out["requests"] = {v: _latency_view(m) for v, m in metrics.items()}
        if e.spec.kind == "interleave":
            reqs = self.log.requests(since=start, until=end, experiment_id=e.spec.id, window_s=window)
            outcomes = outcomes_from_requests(reqs)
            out["interleaving"] = {
                "a": e.spec.variants[0].name, "b": e.spec.variants[1].name,
                "by_unit": analyze_interleaving(outcomes, by="unit", alpha=self.conf.alpha).view(),
                "by_impression": analyze_interleaving(outcomes, by="impression", alpha=self.conf.alpha).view()}
        if e.spec.kind == "bandit":
            out["bandit"] = self._bandit_view(e, start, end)
        if e.spec.guardrails and e.spec.kind == "ab" and experiment_id != HOLDOUT_EXPERIMENT:
            out["guardrails"] = [r.view() for r in evaluate(
                e, table, metrics, self.conf.alpha, planned,
                recent_metrics=lambda w: self.log.request_metrics(e.spec.id, since=end - w, until=end))]
        return out

    def _bandit_view(self, e: Experiment, start: float, end: float) -> dict[str, Any]:
        reqs = self.log.requests(since=start, until=end, experiment_id=e.spec.id,
                                 window_s=self.conf.bandit_reward_window_s)
        arms: dict[str, dict[str, float]] = {}
        for r in reqs:
            v, p = r.experiments[e.spec.id]
            a = arms.setdefault(v, {"requests": 0, "clicked": 0, "mean_propensity": 0.0})
            a["requests"] += 1
            a["clicked"] += 1 if r.clicks else 0
            a["mean_propensity"] += p
        for a in arms.values():
            a["click_rate"] = a["clicked"] / a["requests"]
            a["mean_propensity"] /= a["requests"]
        return {"arms": arms, "requests": len(reqs)}

    def check_guardrails(self) -> list[dict[str, Any]]:
        return check_once(self.store, self.log, self.conf.attribution_window_hours * 3600.0, self.conf.alpha,
                          self.conf.planned_units)

    # ---- power ----------------------------------------------------------------------------------------------------
    def power(self, baseline: float, mde: float, alpha: float | None = None, power: float = 0.8,
              units_per_variant: int | None = None, variants: int = 2, variance_reduction: float = 0.0,
              metric: str = "proportion", sd: float | None = None) -> dict[str, Any]:
        """Sample size (or, given ``units_per_variant``, the power) for a relative lift ``mde`` of a proportion
        ``baseline``; for a mean, ``sd`` and ``baseline`` (its mean) with ``metric="mean"``."""
        alpha = self.conf.alpha if alpha is None else alpha
        try:
            if metric == "proportion":
                out: dict[str, Any] = analysis.sample_size_proportion(baseline, mde, alpha, power,
                                                                      variance_reduction=variance_reduction)
                if units_per_variant:
                    out["power_at_units"] = analysis.power_proportion(baseline, mde, units_per_variant, alpha=alpha,
                                                                      variance_reduction=variance_reduction)
                    mde_at = analysis.mde_proportion(baseline, units_per_variant, alpha, power)
                    out["mde_at_units"] = mde_at if math.isfinite(mde_at) else None
            elif metric == "mean":
                if sd is None:
                    raise ValueError("sd is required for metric=mean")
                out = analysis.sample_size_mean(sd, baseline * mde, alpha, power,
                                                variance_reduction=variance_reduction)
                if units_per_variant:
                    out["power_at_units"] = analysis.power_mean(sd, baseline * mde, units_per_variant, alpha=alpha,
                                                                variance_reduction=variance_reduction)
            else:
                raise ValueError(f"unknown metric {metric!r}; known: proportion, mean")
        except (ValueError, ArithmeticError) as e:  # incl. overflow on absurd inputs: a 422, never a 500
            raise ExperimentInvalid([{"path": "power", "reason": str(e) or type(e).__name__}]) from None
        out["units_total"] = out["control"] * variants
        out["variants"] = variants
        return out

    def close(self) -> None:
        if self._own[1]:
            self.log.close()
        if self._own[0]:
            self.store.close()


def _latency_view(m: tuple[Any, int, int]) -> dict[str, Any]:
    import numpy as np

    lat, errors, n = m
    return {"requests": n, "errors": errors, "error_rate": errors / n if n else None,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None}
