"""Guardrails: evaluated on an interval; a breach stops the experiment and routes its shoppers to control.

``evaluate`` judges one running experiment's guardrails (``schema.Guardrail`` documents each rule); the
``GuardrailMonitor`` thread runs ``check_once`` every ``experiments.guardrail_interval_s``: for every running
experiment with guardrails it reads the unit table since the start and the recent request metrics, and on a
breach stops it with ``serve = control`` (author "guardrail", the reason naming metric, variant and numbers).
Every replica compiles the stopped experiment within ``experiments.reload_interval_s`` and from then on serves
control to every shopper the experiment had exposed — so traffic is back on control within one evaluation
interval plus one reload interval. Several replicas may run monitors: a stop is a serialised write, the second
one finds the experiment stopped and does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from shelfwise.experiments.analysis import arm_stat, confidence_sequence, metric_columns, n_effective
from shelfwise.experiments.log import ExperimentLog, UnitTable
from shelfwise.experiments.schema import Experiment, Guardrail
from shelfwise.experiments.store import Conflict, ExperimentStore

log = logging.getLogger(__name__)


@dataclass
class GuardrailResult:
    metric: str
    variant: str
    status: str  # ok | breached | insufficient_data
    value: float | None = None
    control_value: float | None = None
    change: float | None = None  # relative (ratio metrics, latency) or absolute (error rate)
    threshold: str = ""
    detail: str = ""

    def view(self) -> dict[str, Any]:
        return asdict(self)


def _ratio_guardrail(g: Guardrail, table: UnitTable, variant: str, control: str, alpha: float,
                     planned: float) -> GuardrailResult:
    num, den = metric_columns(table, g.metric)
    mt, mc = table.variant == variant, table.variant == control
    res = GuardrailResult(g.metric, variant, "insufficient_data", threshold=f"drop > {g.max_drop:.1%}")
    if mt.sum() < g.min_units or mc.sum() < g.min_units:
        res.detail = f"{int(mt.sum())} / {int(mc.sum())} units (treatment / control); needs {g.min_units} each"
        return res
    t, c = arm_stat(num[mt], den[mt]), arm_stat(num[mc], den[mc])
    if t is None or c is None or c.value == 0:
        res.detail = "no data for the metric yet"
        return res
    rel = t.value / c.value - 1
    cs = confidence_sequence(t.value - c.value, t.var + c.var, n_effective(t.n, c.n), planned, alpha)
    res.value, res.control_value, res.change = t.value, c.value, rel
    harmful = cs["ci"][1] < 0  # anytime-valid: the variant is worse, whenever we look
    breached = rel < -g.max_drop and harmful
    res.status = "breached" if breached else "ok"
    res.detail = (f"{g.metric} {t.value:.4g} vs control {c.value:.4g} ({rel:+.2%}); anytime-valid interval of the "
                  f"difference [{cs['ci'][0]:.4g}, {cs['ci'][1]:.4g}]")
    return res


def _latency_guardrail(g: Guardrail, metrics: dict[str, tuple[np.ndarray, int, int]], variant: str,
                       control: str) -> GuardrailResult:
    thr = " or ".join(x for x in ((f"p95 > {g.max_value:g} ms" if g.max_value else ""),
                                  (f"p95 > control × {1 + g.max_increase:g}" if g.max_increase else "")) if x)
    res = GuardrailResult(g.metric, variant, "insufficient_data", threshold=thr)
    lat_t = metrics.get(variant, (np.zeros(0), 0, 0))[0]
    lat_c = metrics.get(control, (np.zeros(0), 0, 0))[0]
    if len(lat_t) < g.min_units or (g.max_increase and len(lat_c) < g.min_units):
        res.detail = f"{len(lat_t)} / {len(lat_c)} timed requests in the last {g.window_minutes:g} min; needs " \
                     f"{g.min_units}"
        return res
    p95 = float(np.percentile(lat_t, 95))
    res.value = p95
    breached = g.max_value is not None and p95 > g.max_value
    if len(lat_c):
        c95 = float(np.percentile(lat_c, 95))
        res.control_value = c95
        res.change = p95 / c95 - 1 if c95 > 0 else None
        if g.max_increase is not None and c95 > 0 and p95 > c95 * (1 + g.max_increase):
            breached = True
    res.status = "breached" if breached else "ok"
    res.detail = f"p95 {p95:.1f} ms" + (f" vs control {res.control_value:.1f} ms" if res.control_value else "")
    return res


def _error_guardrail(g: Guardrail, metrics: dict[str, tuple[np.ndarray, int, int]], variant: str, control: str,
                     alpha: float, planned: float) -> GuardrailResult:
    thr = " or ".join(x for x in ((f"rate > {g.max_value:g}" if g.max_value else ""),
                                  (f"rate > control + {g.max_increase:g}" if g.max_increase else "")) if x)
    res = GuardrailResult(g.metric, variant, "insufficient_data", threshold=thr)
    _, et, nt = metrics.get(variant, (None, 0, 0))
    _, ec, nc = metrics.get(control, (None, 0, 0))
    if nt < g.min_units or (g.max_increase and nc < g.min_units):
        res.detail = f"{nt} / {nc} requests in the last {g.window_minutes:g} min; needs {g.min_units}"
        return res
    rt = et / nt
    res.value = rt
    breached = g.max_value is not None and rt > g.max_value
    if nc:
        rc = ec / nc
        res.control_value, res.change = rc, rt - rc
        if g.max_increase is not None and rt - rc > g.max_increase:
            var = rt * (1 - rt) / nt + rc * (1 - rc) / nc
            cs = confidence_sequence(rt - rc, var, n_effective(nt, nc), planned, alpha)
            breached = breached or cs["ci"][0] > 0
    res.status = "breached" if breached else "ok"
    res.detail = f"error rate {rt:.4%}" + (f" vs control {res.control_value:.4%}" if nc else "")
    return res


def evaluate(experiment: Experiment, table: UnitTable, request_metrics: dict[str, tuple[np.ndarray, int, int]],
             alpha: float = 0.05, planned_units: int = 10_000,
             recent_metrics: Callable[[float], dict[str, tuple[np.ndarray, int, int]]] | None = None
             ) -> list[GuardrailResult]:
    """Every guardrail of ``experiment`` for every treatment. ``recent_metrics(window_s)`` returns the request
    metrics of a recent window (per guardrail); without it ``request_metrics`` is used."""
    spec = experiment.spec
    control = spec.control_name
    planned = float(spec.planned_units or planned_units)
    out = []
    for g in spec.guardrails:
        metrics = request_metrics
        if g.metric in ("p95_latency_ms", "error_rate") and recent_metrics is not None:
            metrics = recent_metrics(g.window_minutes * 60.0)
        for v in spec.variants:
            if v.name == control:
                continue
            if g.metric == "p95_latency_ms":
                out.append(_latency_guardrail(g, metrics, v.name, control))
            elif g.metric == "error_rate":
                out.append(_error_guardrail(g, metrics, v.name, control, alpha, planned))
            else:
                out.append(_ratio_guardrail(g, table, v.name, control, alpha, planned))
    return out


def check_once(store: ExperimentStore, xlog: ExperimentLog, window_s: float, alpha: float = 0.05,
               planned_units: int = 10_000, now: float | None = None,
               on_breach: Callable[[Experiment, list[GuardrailResult]], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate every running experiment once; stop (serve control) the breached ones. Returns what was done."""
    now = time.time() if now is None else now
    actions = []
    xlog.flush()
    for e in store.list("running"):
        if not e.spec.guardrails or e.spec.kind != "ab":  # bandit arms and interleaved rails have no control group
            continue
        actions.append(check_experiment(store, xlog, e, window_s, alpha, planned_units, now, on_breach,
                                        flush=False)[0])
    return actions


def check_experiment(store: ExperimentStore, xlog: ExperimentLog, e: Experiment, window_s: float,
                     alpha: float = 0.05, planned_units: int = 10_000, now: float | None = None,
                     on_breach: Callable[[Experiment, list[GuardrailResult]], None] | None = None,
                     flush: bool = True) -> tuple[dict[str, Any], list[GuardrailResult]]:
    """Evaluate one running experiment's guardrails; on a breach stop it, serving control. Returns what was done
    and the results (a model rollout, ``release.py``, advances only when they are all ok)."""
    now = time.time() if now is None else now
    if flush:
        xlog.flush()
    table = xlog.unit_table(e.id, window_s, since=e.started_at, until=now + 1e-6)
    results = evaluate(e, table, {}, alpha, planned_units,
                       recent_metrics=lambda w, eid=e.id: xlog.request_metrics(eid, since=now - w,
                                                                               until=now + 1e-6))
    breached = [r for r in results if r.status == "breached"]
    action = {"experiment": e.id, "guardrails": [r.view() for r in results], "stopped": False}
    if breached:
        reason = "guardrail breached: " + "; ".join(f"{r.metric} of {r.variant}: {r.detail}" for r in breached)
        try:
            store.stop(e.id, "guardrail", reason=reason, serve=e.spec.control_name)
            action["stopped"] = True
            log.warning("experiment %s stopped, traffic routed to control %r: %s", e.id, e.spec.control_name,
                        reason)
            if on_breach is not None:
                on_breach(e, breached)
        except Conflict:  # another replica stopped it first
            pass
    return action, results


class GuardrailMonitor:
    """Runs ``check_once`` every ``interval_s`` on a daemon thread."""

    def __init__(self, store: ExperimentStore, xlog: ExperimentLog, interval_s: float, window_s: float,
                 alpha: float = 0.05, planned_units: int = 10_000,
                 on_breach: Callable[[Experiment, list[GuardrailResult]], None] | None = None) -> None:
        self.store, self.log, self.interval_s, self.window_s = store, xlog, interval_s, window_s
        self.alpha, self.planned_units, self.on_breach = alpha, planned_units, on_breach
        self.last: list[dict[str, Any]] = []
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shelfwise-guardrails", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.last = check_once(self.store, self.log, self.window_s, self.alpha, self.planned_units,
                                       on_breach=self.on_breach)
            except Exception:  # a database hiccup must not kill the monitor
                log.exception("guardrail evaluation failed")
            self.runs += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
