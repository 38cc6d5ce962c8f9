"""A drift report: the reference and the current window compared on the ranker's features, the served scores,
the share of new items among impressions and the event mix (see ``samples.py`` for what is read, ``stats.py`` for
how each check is decided), and the Prometheus gauges that expose the last report of this process.

Check names: ``ranker.<feature>`` (the live ranker's most important features), ``scores.<placement>`` (the score
of a shown slot), ``items.new_share`` (impressions of items created less than ``new_item_days`` before),
``events.type``, ``events.category`` (root category of viewed items), ``events.log_price_paid`` and
``events.price_index`` (log of the price paid over the item's catalog price now: moves when prices change between
the windows, whatever is bought).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Gauge

from shelfwise.monitor import samples
from shelfwise.monitor.stats import Check, categorical, decide, numeric
from shelfwise.monitor.windows import DAY, Window, iso, resolve
from shelfwise.settings import MonitorSettings

STATISTIC = Gauge("shelfwise_drift_statistic", "effect size of the last drift report per check: Wasserstein "
                  "distance in reference standard deviations (or PSI: monitor.distance; PSI for categories)",
                  ["feature"], registry=REGISTRY)
FLAG = Gauge("shelfwise_drift_flag", "1 when the last drift report flagged the check, else 0", ["feature"],
             registry=REGISTRY)
P_VALUE = Gauge("shelfwise_drift_p_value", "Kolmogorov-Smirnov (numbers) or chi-square (categories) p-value of "
                "the last drift report per check (Holm-adjusted when the test decided)", ["feature"],
                registry=REGISTRY)
SAMPLES = Gauge("shelfwise_drift_samples", "values per window behind each check of the last drift report",
                ["feature", "window"], registry=REGISTRY)
LAST_RUN = Gauge("shelfwise_drift_last_run_timestamp_seconds", "when the last drift report was made",
                 registry=REGISTRY)
GAUGES = (STATISTIC, FLAG, P_VALUE, SAMPLES, LAST_RUN)


@dataclass
class DriftReport:
    reference: Window
    current: Window
    model_version: str
    checks: list[Check]
    settings: MonitorSettings
    notes: list[str] = field(default_factory=list)
    generated_at: float = field(default_factory=time.time)

    @property
    def drifted(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "drift"]

    @property
    def status(self) -> str:
        """drift when any check drifted; insufficient when no check could be decided; else ok."""
        if self.drifted:
            return "drift"
        return "ok" if any(c.verdict == "ok" for c in self.checks) else "insufficient"

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        counts = {v: sum(c.verdict == v for c in self.checks) for v in ("ok", "drift", "insufficient")}
        return {"status": self.status, "generated_at": iso(self.generated_at), "model_version": self.model_version,
                "reference": self.reference.to_dict(), "current": self.current.to_dict(),
                "drifted": [c.feature for c in self.drifted], "counts": counts,
                "rules": {"min_samples": s.min_samples, "ks_max_samples": s.ks_max_samples,
                          "ks_alpha": s.ks_alpha, "distance": s.distance,
                          "wasserstein_threshold": s.wasserstein_threshold, "psi_threshold": s.psi_threshold,
                          "max_missing_delta": s.max_missing_delta, "new_item_days": s.new_item_days},
                "checks": [c.to_dict() for c in self.checks], "notes": list(self.notes)}


def run_drift(engine: Any, reference: str | None = None, reference_days: float | None = None,
              current_hours: float | None = None, until: float | None = None) -> DriftReport:
    """Compare the windows on everything ``engine`` (a running ``Shelfwise``) holds; raises ``WindowError`` for
    windows that cannot be used."""
    s: MonitorSettings = engine.settings.monitor
    pipeline = engine.pipeline  # one model for the whole report, even if a new one is swapped in meanwhile
    trained = pipeline.trained_until if engine.trained else None
    ref, cur = resolve(s, trained, reference, reference_days, current_hours, until)
    notes: list[str] = []
    log = engine.merch.log
    log.flush()
    path = getattr(log, "path", None)
    if path is None:
        notes.append("the exposure log is not a SQLite file: no score, new-item or ranker-feature checks")
    if not engine.settings.rules.exposure_log:
        notes.append("rules.exposure_log is off: no exposures are logged, so no score, new-item or ranker-feature "
                     "checks")
    windows = (ref, cur)
    exposures = [samples.read_exposures(path, w, s.sample_rows, _rng(s, i)) if path else
                 samples.empty_exposures() for i, w in enumerate(windows)]
    checks = _ranker_checks(pipeline, engine.store, exposures, s, notes) + _score_checks(exposures, s)
    checks.append(_new_item_check(pipeline.items, path, exposures, s, notes))
    checks += _event_checks(pipeline, engine.store, windows, s)
    decide(checks, s)
    for w, e in zip(("reference", "current"), exposures):
        if e.rows_in_window > s.sample_rows:
            notes.append(f"{w}: {s.sample_rows} of about {e.rows_in_window} exposure rows sampled")
    return DriftReport(ref, cur, pipeline.version, checks, s, notes)


def _rng(s: MonitorSettings, window: int) -> np.random.Generator:
    return np.random.default_rng([s.seed, window])


def _ranker_checks(pipeline: Any, store: Any, exposures: list[samples.Exposures], s: MonitorSettings,
                   notes: list[str]) -> list[Check]:
    ranker = pipeline.ranker
    stage = next((st for st in pipeline.stages if st.name == "rank"), None)
    if ranker is None or ranker.booster is None or stage is None:
        notes.append("the live model has no learned ranker: no ranker-feature checks")
        return []
    gain = ranker.importances("gain")
    names = [n for n, g in gain.items() if n not in samples.UNMONITORED and (g > 0 or not s.max_features)]
    names = names[:s.max_features] if s.max_features else names
    values = []
    for i, exp in enumerate(exposures):
        mask = np.array([ranker.applies(p) for p in exp.placement.tolist()], bool)
        rows = np.flatnonzero(mask)
        rng = _rng(s, 10 + i)
        if len(rows) > s.sample_requests:
            rows = np.sort(rng.choice(rows, s.sample_requests, replace=False))
        values.append(samples.ranker_rows(pipeline, stage.ctx, store, _take(exp, rows),
                                          pipeline.settings.history_length, s.history_events, rng))
    return [numeric(f"ranker.{n}", "ranker", values[0][n], values[1][n], s) for n in names]


def _take(exp: samples.Exposures, rows: np.ndarray) -> samples.Exposures:
    return samples.Exposures(exp.request_id[rows], exp.ts[rows], exp.shopper[rows], exp.placement[rows],
                             exp.item[rows], exp.score[rows], exp.rows_in_window)


def _score_checks(exposures: list[samples.Exposures], s: MonitorSettings) -> list[Check]:
    placements = sorted({p for e in exposures for p in e.placement.tolist()})
    return [numeric(f"scores.{p}", "scores", *(e.score[e.placement == p] for e in exposures), s)
            for p in placements]


def _new_item_check(items: Any, path: Any, exposures: list[samples.Exposures], s: MonitorSettings,
                    notes: list[str]) -> Check:
    """Impressions of items created less than ``new_item_days`` before them, against the others."""
    index = items.index
    unknown = sorted({i for e in exposures for i in e.item.tolist()
                      if i not in index or not np.isfinite(items.created_at[index[i]])})
    shown = samples.first_shown(path, unknown) if path else {}
    counts, undated = [], 0
    for e in exposures:
        created = np.array([items.created_at[index[i]] if i in index and np.isfinite(items.created_at[index[i]])
                            else shown.get(i, np.nan) for i in e.item.tolist()], np.float64)
        known = np.isfinite(created)
        undated += int((~known).sum())
        new = int(((e.ts[known] - created[known]) < s.new_item_days * DAY).sum())
        counts.append({"new": new, "established": int(known.sum()) - new})
    if undated:
        notes.append(f"items.new_share: {undated} sampled impressions of items with no creation date and never "
                     "shown before were left out")
    return categorical("items.new_share", "items", counts[0], counts[1], s)


def _event_checks(pipeline: Any, store: Any, windows: tuple[Window, Window], s: MonitorSettings) -> list[Check]:
    ref, cur = (samples.event_mix(samples.read_events(store, w, s.scan_hours), pipeline.items,
                                  _rng(s, 20 + i)) for i, w in enumerate(windows))
    return [categorical("events.type", "events", ref.types, cur.types, s),
            categorical("events.category", "events", ref.categories, cur.categories, s),
            numeric("events.log_price_paid", "events", ref.log_price_paid, cur.log_price_paid, s),
            numeric("events.price_index", "events", ref.price_index, cur.price_index, s)]


# ---- Prometheus ----------------------------------------------------------------------------------------------
def publish(report: DriftReport) -> None:
    """The report's numbers into the gauges (series of checks no longer reported are removed)."""
    for g in (STATISTIC, FLAG, P_VALUE, SAMPLES):
        g.clear()
    for c in report.checks:
        d = c.distance(report.settings)
        STATISTIC.labels(c.feature).set(d if np.isfinite(d) else float("nan"))
        FLAG.labels(c.feature).set(1.0 if c.verdict == "drift" else 0.0)
        p = c.p_adjusted if c.p_adjusted is not None else c.p_value
        P_VALUE.labels(c.feature).set(p if np.isfinite(p) else float("nan"))
        SAMPLES.labels(c.feature, "reference").set(c.n_reference)
        SAMPLES.labels(c.feature, "current").set(c.n_current)
    LAST_RUN.set(report.generated_at)


def register(registry: CollectorRegistry) -> None:
    """Expose the drift gauges on another registry too (the API's ``/metrics``)."""
    for g in GAUGES:
        try:
            registry.register(g)
        except ValueError:  # already there
            pass
