"""Two samples of one quantity, a reference and a current one → the numbers and a verdict (ok, drift, insufficient).

Every check gets every number: a test (Kolmogorov-Smirnov for numbers, chi-square for categories) and effect sizes
(the Wasserstein distance of values standardised by the reference's standard deviation, and the population
stability index over reference-quantile bins, or over the categories). Which one decides depends on the sample
size (``MonitorSettings``): a test while the smaller window has at most ``ks_max_samples`` values, then an effect
size against its threshold, since with enough data a test flags shifts too small to matter. The tests of one report
are corrected together (Holm), so ``ks_alpha`` is the chance that an unshifted report flags anything by a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from shelfwise.settings import MonitorSettings

EPS = 1e-4  # floor of a bin's share in the PSI (an empty bin would make it infinite)


@dataclass
class Check:
    """One monitored quantity in both windows: its numbers and, once ``decide`` ran, its verdict."""

    feature: str  # e.g. "ranker.pop_log", "scores.homepage", "items.new_share", "events.type"
    group: str  # ranker | scores | items | events
    kind: str  # numeric | categorical
    n_reference: int  # values (numeric: finite ones) in each window
    n_current: int
    p_value: float  # KS (numeric) or chi-square (categorical)
    statistic: float  # the KS distance D, or the chi-square statistic
    psi: float
    wasserstein: float | None = None  # numeric only, in reference standard deviations
    missing_reference: float = 0.0  # numeric: share of values that are missing (nan, inf)
    missing_current: float = 0.0
    mean_reference: float | None = None
    mean_current: float | None = None
    shares_reference: dict[str, float] | None = None  # categorical
    shares_current: dict[str, float] | None = None
    total_reference: int = 0  # values, missing ones included
    total_current: int = 0
    test: str = ""  # what decided: ks | chi2 | wasserstein | psi ("" when nothing could)
    p_adjusted: float | None = None  # Holm-adjusted p-value, when the test decided
    verdict: str = "insufficient"
    reasons: list[str] = field(default_factory=list)
    samples: tuple[Any, Any] | None = field(default=None, repr=False)  # the values themselves (for plots)

    def distance(self, settings: MonitorSettings) -> float:
        """The effect size that decides a large sample (the gauge's value)."""
        if self.kind == "numeric" and settings.distance == "wasserstein" and self.wasserstein is not None:
            return self.wasserstein
        return self.psi

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "samples"}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _finite(x: np.ndarray) -> tuple[np.ndarray, float]:
    x = np.asarray(x, np.float64).ravel()
    ok = np.isfinite(x)
    return x[ok], (1.0 - ok.mean()) if len(x) else 0.0


def psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    r = np.maximum(ref_share, EPS)
    c = np.maximum(cur_share, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _quantile_bins(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Shares of both samples in the bins cut at the reference's quantiles (ties merge bins: a feature with a few
    distinct values gets a bin per value)."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    return r / max(r.sum(), 1), c / max(c.sum(), 1)


def numeric(feature: str, group: str, reference: Sequence[float] | np.ndarray,
            current: Sequence[float] | np.ndarray, settings: MonitorSettings) -> Check:
    ref_all, cur_all = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    ref, miss_r = _finite(ref_all)
    cur, miss_c = _finite(cur_all)
    check = Check(feature, group, "numeric", len(ref), len(cur), p_value=float("nan"), statistic=float("nan"),
                  psi=float("nan"), missing_reference=float(miss_r), missing_current=float(miss_c),
                  total_reference=int(ref_all.size), total_current=int(cur_all.size), samples=(ref, cur))
    if len(ref) and len(cur):
        check.mean_reference, check.mean_current = float(ref.mean()), float(cur.mean())
        ks = stats.ks_2samp(ref, cur)
        check.statistic, check.p_value = float(ks.statistic), float(ks.pvalue)
        scale = float(ref.std())
        if not scale > 0:
            scale = float(np.concatenate([ref, cur]).std())
        scale = scale if scale > 0 else 1.0
        check.wasserstein = float(stats.wasserstein_distance(ref / scale, cur / scale))
        check.psi = psi(*_quantile_bins(ref, cur, settings.psi_bins))
    return check


def categorical(feature: str, group: str, reference: dict[str, int], current: dict[str, int],
                settings: MonitorSettings) -> Check:
    cats = sorted(k for k in set(reference) | set(current) if reference.get(k, 0) + current.get(k, 0) > 0)
    r = np.array([reference.get(k, 0) for k in cats], np.float64)
    c = np.array([current.get(k, 0) for k in cats], np.float64)
    nr, nc = int(r.sum()), int(c.sum())
    rs, cs = r / max(nr, 1), c / max(nc, 1)
    check = Check(feature, group, "categorical", nr, nc, p_value=float("nan"), statistic=float("nan"),
                  psi=float("nan"), shares_reference=dict(zip(cats, rs.round(6).tolist())),
                  shares_current=dict(zip(cats, cs.round(6).tolist())), total_reference=nr, total_current=nc,
                  samples=(dict(zip(cats, rs.tolist())), dict(zip(cats, cs.tolist()))))
    if nr and nc:
        if len(cats) > 1:
            chi = stats.chi2_contingency(np.vstack([r, c]), correction=False)
            check.statistic, check.p_value = float(chi.statistic), float(chi.pvalue)
        else:
            check.statistic, check.p_value = 0.0, 1.0
        check.psi = psi(rs, cs)
    return check


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control, any dependence between the tests)."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if not m:
        return p
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return out


def decide(checks: Sequence[Check], settings: MonitorSettings) -> None:
    """Set each check's test, verdict and reasons; the tests of all the checks are one Holm family."""
    tested: list[Check] = []
    for ch in checks:
        ch.test, ch.p_adjusted, ch.reasons = "", None, []
        if min(ch.total_reference, ch.total_current) < settings.min_samples:
            ch.verdict = "insufficient"
            ch.reasons.append(f"fewer than {settings.min_samples} values in a window "
                              f"({ch.total_reference} reference, {ch.total_current} current)")
            continue
        if abs(ch.missing_current - ch.missing_reference) > settings.max_missing_delta:
            ch.reasons.append(f"missing values {ch.missing_reference:.1%} → {ch.missing_current:.1%} "
                              f"(more than {settings.max_missing_delta:.0%} apart)")
        n = min(ch.n_reference, ch.n_current)
        if n < settings.min_samples:
            ch.verdict = "drift" if ch.reasons else "insufficient"
            if not ch.reasons:
                ch.reasons.append(f"fewer than {settings.min_samples} known values in a window "
                                  f"({ch.n_reference} reference, {ch.n_current} current)")
            continue
        if n <= settings.ks_max_samples:
            ch.test = "ks" if ch.kind == "numeric" else "chi2"
            tested.append(ch)
        else:
            ch.test = settings.distance if ch.kind == "numeric" else "psi"
            value = ch.distance(settings)
            limit = settings.wasserstein_threshold if ch.test == "wasserstein" else settings.psi_threshold
            if value > limit:
                ch.reasons.append(f"{ch.test} {value:.3f} > {limit}")
        ch.verdict = "drift" if ch.reasons else "ok"
    for ch, p in zip(tested, holm([c.p_value for c in tested])):
        ch.p_adjusted = float(p)
        if p < settings.ks_alpha:
            family = f"Holm-adjusted over {len(tested)} tests" if len(tested) > 1 else "one test"
            ch.reasons.append(f"{ch.test} p = {p:.2g} < {settings.ks_alpha} ({family})")
            ch.verdict = "drift"
