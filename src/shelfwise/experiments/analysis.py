"""Experiment analysis: what a statistician needs to sign a result.

Every metric is a ratio of per-unit sums, ``Σ num / Σ den`` over the units (shoppers) of a variant — a plain mean
when the denominator is 1 — and the unit is what was randomised, so every interval is clustered by unit:

| metric | per-unit numerator / denominator |
| --- | --- |
| ``ctr`` | clicks / impressions (slots shown) |
| ``add_to_cart_rate`` | visits with an attributed add-to-cart / visits |
| ``conversion`` | 1 if the unit made an attributed purchase / 1 |
| ``revenue_per_shopper`` | attributed revenue / 1 |
| ``revenue_per_session`` | attributed revenue / visits |

* **Fixed-horizon intervals**: delta method for the ratio (``var ≈ (var(n) − 2R cov(n,d) + R² var(d)) / (k d̄²)``),
  difference of two variants with Welch–Satterthwaite degrees of freedom, relative lift by the delta method;
  Holm-adjusted p-values when several treatments share a control.
* **CUPED** (Deng et al. 2013), generalised to several covariates and to ratio metrics: each unit's linearised
  metric ``ψ = R + (num − R·den)/d̄`` is regressed (pooled within-variant OLS) on its pre-period clicks, carts,
  orders and revenue; the adjusted difference subtracts the covariates' chance imbalance. Reported with the
  variance reduction ``1 − Var(Δ̂_cuped)/Var(Δ̂)``, overall and on returning shoppers (units with pre-period
  activity).
* **Bayesian readout**: conversion with a Beta(1, 1) prior per variant (Beta-Binomial); revenue per shopper as a
  hurdle model — P(purchase) from the same Beta posterior times the mean revenue of purchasers from a Bayesian
  bootstrap (Rubin 1981: Dirichlet(1, …, 1) weights over the purchasers' revenues, no distributional assumption;
  above ``bootstrap_max`` purchaser×draw pairs its normal large-sample limit). Probability to beat control and
  expected loss ``E[max(control − variant, 0)]`` (what choosing the variant costs if it is in fact worse), from
  Monte-Carlo draws with a fixed seed (deterministic output).
* **Anytime-valid confidence sequences** for the difference (Gaussian mixture / asymptotic CS of Waudby-Smith,
  Pace, Ramdas et al. 2023, the two-sample form of Johari et al.'s mSPRT): with Δ̂ and its variance V,
  ``Δ̂ ± sqrt(V · (1 + 1/s) · (log(1 + s) + 2 log(1/α)))`` where ``s = s* · n/n*`` grows with the effective
  number of units n and is tuned to be tightest at the planned size n* (``s* = −2 log α + log(1 − 2 log α)``).
  Valid simultaneously over all times, so results may be read every day (or every minute) without inflating the
  false-positive rate; the price is a wider interval than the fixed-horizon one at the same n. The always-valid
  p-value is ``min(1, 1/Λ)`` with the mixture likelihood ratio Λ.
* **Group-sequential repeated confidence intervals** (Jennison & Turnbull): when the experiment has a planned
  size, the looks are the end of every day since the start (plus now) and α is spent over them with an
  O'Brien–Fleming-type Lan–DeMets function; boundaries by exact recursive integration. The false-positive rate
  over all daily reads is α itself (the confidence sequence, valid for unlimited and continuous looks, pays for
  that generality: read daily it is conservative — see ``BENCHMARKS.md``). Information is measured in units.
* **Sample-ratio mismatch**: chi-squared goodness of fit of the units per variant against the configured
  shares; an alarm below ``p < 0.001`` (the result should not be trusted: something drops or duplicates units).
* **Power / sample size** for proportions and means (two-sided, unequal allocation, optional CUPED variance
  reduction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from shelfwise.experiments.log import UnitTable

RATIO_METRICS = ("ctr", "add_to_cart_rate", "conversion", "revenue_per_shopper", "revenue_per_session")
COVARIATES = ("pre_clicks", "pre_carts", "pre_orders", "pre_revenue")
SRM_ALARM_P = 0.001


def metric_columns(table: UnitTable, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per unit."""
    if metric == "ctr":
        return table.clicks.astype(float), table.impressions.astype(float)
    if metric == "add_to_cart_rate":
        return table.cart_visits.astype(float), table.visits.astype(float)
    if metric == "conversion":
        return (table.orders > 0).astype(float), np.ones(len(table))
    if metric == "revenue_per_shopper":
        return table.revenue.astype(float), np.ones(len(table))
    if metric == "revenue_per_session":
        return table.revenue.astype(float), table.visits.astype(float)
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(RATIO_METRICS)}")


@dataclass
class ArmStat:
    """A variant's ratio estimate, its variance, units, and the linearised per-unit values (for CUPED)."""

    n: int
    value: float
    var: float  # variance of the estimate
    psi: np.ndarray

    @property
    def se(self) -> float:
        return math.sqrt(self.var) if self.var > 0 else 0.0


def arm_stat(num: np.ndarray, den: np.ndarray) -> ArmStat | None:
    n = len(num)
    dbar = float(den.mean()) if n else 0.0
    if n < 2 or dbar <= 0:
        return None
    r = float(num.sum() / den.sum())
    psi = r + (num - r * den) / dbar  # influence-function linearisation: mean(psi) == r
    return ArmStat(n=n, value=r, var=float(psi.var(ddof=1) / n), psi=psi)


def _interval(value: float, se: float, q: float) -> list[float]:
    return [value - q * se, value + q * se]


def welch_df(v1: float, n1: int, v2: float, n2: int) -> float:
    num = (v1 + v2) ** 2
    den = (v1 ** 2) / max(n1 - 1, 1) + (v2 ** 2) / max(n2 - 1, 1)
    return num / den if den > 0 else float(n1 + n2 - 2)


def compare(t: ArmStat, c: ArmStat, alpha: float) -> dict[str, Any]:
    diff = t.value - c.value
    var = t.var + c.var
    se = math.sqrt(var) if var > 0 else 0.0
    df = welch_df(t.var, t.n, c.var, c.n)
    q = float(stats.t.ppf(1 - alpha / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else (1.0 if diff == 0 else 0.0)
    out: dict[str, Any] = {"diff": diff, "se": se, "ci": _interval(diff, se, q), "p_value": p, "df": df,
                           "relative": None, "relative_ci": None}
    if c.value != 0:
        rel = t.value / c.value - 1
        rel_se = math.sqrt(t.var / c.value ** 2 + t.value ** 2 * c.var / c.value ** 4)
        out["relative"], out["relative_ci"] = rel, _interval(rel, rel_se, q)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order)."""
    m = len(pvalues)
    order = np.argsort(pvalues)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj.tolist()


# ---- CUPED -----------------------------------------------------------------------------------------------------
def covariate_matrix(table: UnitTable) -> np.ndarray:
    cols = [getattr(table, c).astype(float) for c in COVARIATES]
    return np.column_stack(cols) if cols else np.zeros((len(table), 0))


def cuped(arms: dict[str, ArmStat], covariates: dict[str, np.ndarray]) -> tuple[dict[str, ArmStat], np.ndarray]:
    """Regression-adjusted arms (pooled within-arm OLS of psi on the covariates) and the coefficients."""
    xs = [covariates[v] for v in arms]
    allx = np.vstack(xs)
    keep = allx.std(axis=0) > 0
    if not keep.any():
        return arms, np.zeros(allx.shape[1])
    xtx = np.zeros((keep.sum(), keep.sum()))
    xty = np.zeros(keep.sum())
    for v, a in arms.items():
        xc = covariates[v][:, keep] - covariates[v][:, keep].mean(axis=0)
        yc = a.psi - a.psi.mean()
        xtx += xc.T @ xc
        xty += xc.T @ yc
    theta = np.linalg.lstsq(xtx, xty, rcond=None)[0]
    xbar = allx[:, keep].mean(axis=0)
    out = {}
    for v, a in arms.items():
        x = covariates[v][:, keep]
        adj = a.psi - (x - xbar) @ theta
        out[v] = ArmStat(n=a.n, value=float(adj.mean()), var=float(adj.var(ddof=1) / a.n), psi=adj)
    full = np.zeros(allx.shape[1])
    full[keep] = theta
    return out, full


# ---- confidence sequences ---------------------------------------------------------------------------------------
def cs_tuning(alpha: float) -> float:
    """s* making the Gaussian-mixture boundary tightest at the planned size (Waudby-Smith et al. 2023, eq. 13)."""
    la = -2 * math.log(alpha)
    return la + math.log(1 + la)


def cs_halfwidth(var: float, s: float, alpha: float) -> float:
    if var <= 0 or s <= 0:
        return float("inf") if var > 0 else 0.0
    return math.sqrt(var * (1 + 1 / s) * (math.log1p(s) + 2 * math.log(1 / alpha)))


def confidence_sequence(diff: float, var: float, n_eff: float, planned: float, alpha: float) -> dict[str, Any]:
    """Anytime-valid interval for a difference with variance ``var`` after ``n_eff`` units per arm (planned
    ``planned``), and the always-valid p-value."""
    s = cs_tuning(alpha) * n_eff / planned
    half = cs_halfwidth(var, s, alpha)
    if var > 0 and s > 0:
        z2 = diff * diff / var
        log_lr = -0.5 * math.log1p(s) + z2 * s / (2 * (1 + s))
        p = min(1.0, math.exp(-log_lr))
    else:
        p = 1.0
    return {"ci": [diff - half, diff + half], "p_value": p, "excludes_zero": bool(half < abs(diff)),
            "s": s, "n_eff": n_eff, "planned_units": planned}


def n_effective(n1: int, n2: int) -> float:
    """Balanced-equivalent units per arm (harmonic mean of the arm sizes)."""
    return 2.0 / (1.0 / n1 + 1.0 / n2) if n1 and n2 else 0.0


# ---- group-sequential repeated confidence intervals -----------------------------------------------------------
def obf_spending(t: np.ndarray, alpha: float) -> np.ndarray:
    """Lan–DeMets O'Brien–Fleming-type spending: α(t) = 2 − 2Φ(z_{1−α/2} / √t) (two-sided)."""
    t = np.clip(np.asarray(t, float), 1e-12, 1.0)
    return 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / np.sqrt(t))


def gst_boundaries(fractions: Sequence[float], alpha: float = 0.05, grid: int = 301) -> np.ndarray:
    """Two-sided z boundaries of a group-sequential test with O'Brien–Fleming-type α spending at looks with the
    given information fractions (non-decreasing; capped at 1, where all α is spent). Exact recursive numerical
    integration (Armitage, McPherson & Rowe 1969) of the Brownian score process S_k ~ N(0, t_k) under the null:
    the probability of first crossing at look k equals α(t_k) − α(t_{k−1}), so the false-positive rate over all
    the looks is α, however many there are and wherever they fall. Looks after the one that reaches t = 1 keep
    the final boundary. (Spending α(t) = 2 − 2Φ(z_{1−α/2}/√t), the two-sided form of DeMets & Lan 1994; gsDesign's
    ``sfLDOF`` spends α/2 per side and is slightly more conservative early.) A boundary of ``inf`` means no α
    is available at that look yet."""
    t = np.minimum(np.asarray(fractions, float), 1.0)
    if len(t) == 0:
        return np.zeros(0)
    if np.any(np.diff(t) < 0) or t[0] <= 0:
        raise ValueError("information fractions must be positive and non-decreasing")
    spent = obf_spending(t, alpha)
    out = np.empty(len(t))
    span = 12.0  # the continuation region never needs to reach beyond 12 standard deviations

    def support(bb: float, tk: float) -> np.ndarray:
        lim = min(bb, span * math.sqrt(tk))
        return np.linspace(-lim, lim, grid)

    def weights(x: np.ndarray) -> np.ndarray:
        w = np.full(grid, x[1] - x[0])
        w[0] = w[-1] = w[0] / 2
        return w

    p1 = spent[0]
    c1 = float(stats.norm.isf(p1 / 2)) if p1 > 1e-300 else float("inf")
    out[0] = c1
    x = support(c1 * math.sqrt(t[0]), t[0])
    w = weights(x)
    f = stats.norm.pdf(x, scale=math.sqrt(t[0]))
    last, final = t[0], t[0] >= 1.0
    for k in range(1, len(t)):
        if final or t[k] <= last:
            out[k] = out[k - 1]
            continue
        sd = math.sqrt(t[k] - last)
        target = spent[k] - spent[k - 1]
        wf = w * f

        def cross(bb: float) -> float:
            return float(wf @ (stats.norm.cdf((-bb - x) / sd) + stats.norm.sf((bb - x) / sd)))

        hi = span * math.sqrt(t[k])
        if target <= 0 or cross(hi) >= target:
            bb = float("inf")
        else:
            bb = float(_brentq(lambda v: cross(v) - target, 0.0, hi))
        out[k] = bb / math.sqrt(t[k])
        y = support(bb, t[k])
        f = (stats.norm.pdf((y[:, None] - x[None, :]) / sd) / sd) @ wf
        x, w = y, weights(y)
        last, final = t[k], t[k] >= 1.0
    return out


def _brentq(fn: Any, lo: float, hi: float) -> float:
    from scipy.optimize import brentq

    return brentq(fn, lo, hi, xtol=1e-9)


def repeated_ci(diff: float, var: float, fractions: Sequence[float], alpha: float) -> dict[str, Any]:
    """The group-sequential repeated confidence interval at the last of ``fractions`` (earlier looks included
    so their α is accounted for)."""
    c = float(gst_boundaries(fractions, alpha)[-1])
    half = c * math.sqrt(var) if var > 0 else 0.0
    return {"ci": [diff - half, diff + half], "boundary_z": c, "excludes_zero": bool(var > 0 and abs(diff) > half),
            "information_fraction": float(min(fractions[-1], 1.0)), "looks": len(fractions)}


def daily_fractions(first_ts: np.ndarray, variant: np.ndarray, treatment: str, control: str, start: float,
                    now: float, planned: float) -> list[float]:
    """Information fractions of the daily looks (end of every whole day since ``start``, then now): effective
    units per arm seen by then over the planned units per arm."""
    cuts = [start + d * 86400.0 for d in range(1, int((now - start) // 86400.0) + 1)] + [now]
    ft, fc = np.sort(first_ts[variant == treatment]), np.sort(first_ts[variant == control])
    out = []
    for c in cuts:
        n_t, n_c = np.searchsorted(ft, c, side="right"), np.searchsorted(fc, c, side="right")
        if n_t and n_c:
            frac = n_effective(int(n_t), int(n_c)) / planned
            if not out or frac > out[-1]:
                out.append(frac)
    return out


# ---- sample-ratio mismatch -------------------------------------------------------------------------------------
def srm(counts: dict[str, int], shares: dict[str, float], alarm_p: float = SRM_ALARM_P) -> dict[str, Any]:
    names = list(shares)
    observed = np.array([counts.get(v, 0) for v in names], float)
    total = observed.sum()
    if total == 0:
        return {"chi2": 0.0, "p_value": 1.0, "alarm": False, "observed": counts, "expected": {}}
    expected = np.array([shares[v] for v in names]) * total
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    p = float(stats.chi2.sf(chi2, len(names) - 1))
    return {"chi2": chi2, "p_value": p, "alarm": p < alarm_p,
            "observed": {v: int(o) for v, o in zip(names, observed)},
            "expected": {v: float(e) for v, e in zip(names, expected)}}


# ---- Bayesian readout --------------------------------------------------------------------------------------------
def _beat_and_loss(draws: dict[str, np.ndarray], control: str) -> dict[str, dict[str, float]]:
    out = {}
    c = draws[control]
    for v, d in draws.items():
        lift = d / c - 1 if np.all(c > 0) else np.full_like(d, np.nan)
        out[v] = {"mean": float(d.mean()), "ci": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))],
                  "prob_beat_control": float((d > c).mean()) if v != control else None,
                  "expected_loss": float(np.maximum(c - d, 0).mean()) if v != control else None,
                  "expected_loss_of_control": float(np.maximum(d - c, 0).mean()) if v != control else None,
                  "relative_lift_ci": ([float(np.nanquantile(lift, 0.025)), float(np.nanquantile(lift, 0.975))]
                                       if v != control and not np.isnan(lift).all() else None)}
    return out


def bayes_conversion(conversions: dict[str, tuple[int, int]], control: str, draws: int = 40_000,
                     seed: int = 0) -> dict[str, Any]:
    """Beta(1, 1) prior; ``conversions``: variant -> (converted units, units)."""
    rng = np.random.default_rng(seed)
    post = {v: rng.beta(1 + k, 1 + n - k, draws) for v, (k, n) in conversions.items()}
    return {"model": "Beta-Binomial, Beta(1,1) prior", "variants": _beat_and_loss(post, control)}


def bayes_revenue(revenue: dict[str, np.ndarray], control: str, draws: int = 4_000, seed: int = 0,
                  bootstrap_max: int = 20_000_000) -> dict[str, Any]:
    """Revenue per shopper = P(purchase) × mean revenue of purchasers (hurdle model); see the module docs."""
    rng = np.random.default_rng(seed)
    post, how = {}, set()
    for v, rev in revenue.items():
        n = len(rev)
        buyers = rev[rev > 0]
        k = len(buyers)
        p = rng.beta(1 + k, 1 + n - k, draws)
        if k == 0:
            m = np.zeros(draws)
        elif k * draws <= bootstrap_max:
            w = rng.gamma(1.0, size=(draws, k))
            m = (w @ buyers) / w.sum(axis=1)
            how.add("Bayesian bootstrap")
        else:
            m = rng.normal(buyers.mean(), buyers.std(ddof=1) / math.sqrt(k) if k > 1 else 0.0, draws)
            how.add("normal limit of the Bayesian bootstrap")
        post[v] = p * m
    return {"model": "hurdle: Beta(1,1) P(purchase) × mean purchaser revenue by "
                     + (" / ".join(sorted(how)) or "Bayesian bootstrap"),
            "variants": _beat_and_loss(post, control)}


# ---- power ----------------------------------------------------------------------------------------------------------
def _z(alpha: float, two_sided: bool) -> float:
    return float(stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha))


def sample_size_proportion(baseline: float, mde_relative: float, alpha: float = 0.05, power: float = 0.8,
                           ratio: float = 1.0, two_sided: bool = True, variance_reduction: float = 0.0) -> dict:
    """Units per arm to detect a relative lift ``mde_relative`` of a proportion ``baseline`` (control n, treatment
    ``ratio`` × n), with unpooled variances; ``variance_reduction`` (e.g. from CUPED) shrinks the variance."""
    _check_unit(baseline, "baseline")
    if mde_relative == 0:
        raise ValueError("mde must be a non-zero relative change (e.g. 0.05)")
    p1 = baseline * (1 + mde_relative)
    if not 0 < p1 < 1:
        raise ValueError(f"baseline × (1 + mde) = {p1:g} is not a proportion in (0, 1)")
    delta = p1 - baseline
    var = (baseline * (1 - baseline) + p1 * (1 - p1) / ratio) * (1 - variance_reduction)
    z = _z(alpha, two_sided) + float(stats.norm.ppf(power))
    n_c = _units(z * z * var / delta ** 2)
    return {"control": n_c, "treatment": math.ceil(n_c * ratio), "total": n_c + math.ceil(n_c * ratio),
            "baseline": baseline, "target": p1, "alpha": alpha, "power": power}


def power_proportion(baseline: float, mde_relative: float, n_control: int, n_treatment: int | None = None,
                     alpha: float = 0.05, two_sided: bool = True, variance_reduction: float = 0.0) -> float:
    _check_unit(baseline, "baseline")
    n_t = n_control if n_treatment is None else n_treatment
    p1 = baseline * (1 + mde_relative)
    se = math.sqrt((baseline * (1 - baseline) / n_control + p1 * (1 - p1) / n_t) * (1 - variance_reduction))
    return _power(abs(p1 - baseline) / se, alpha, two_sided)


def sample_size_mean(sd: float, mde_absolute: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                     two_sided: bool = True, variance_reduction: float = 0.0) -> dict:
    if sd <= 0 or mde_absolute == 0:
        raise ValueError("sd must be > 0 and mde_absolute non-zero")
    z = _z(alpha, two_sided) + float(stats.norm.ppf(power))
    n_c = _units(z * z * sd * sd * (1 + 1 / ratio) * (1 - variance_reduction) / mde_absolute ** 2)
    return {"control": n_c, "treatment": math.ceil(n_c * ratio), "total": n_c + math.ceil(n_c * ratio),
            "alpha": alpha, "power": power}


def power_mean(sd: float, mde_absolute: float, n_control: int, n_treatment: int | None = None, alpha: float = 0.05,
               two_sided: bool = True, variance_reduction: float = 0.0) -> float:
    n_t = n_control if n_treatment is None else n_treatment
    se = sd * math.sqrt((1 / n_control + 1 / n_t) * (1 - variance_reduction))
    return _power(abs(mde_absolute) / se, alpha, two_sided)


def mde_proportion(baseline: float, n_per_arm: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest relative lift detectable with ``power`` at ``n_per_arm`` (solved numerically)."""
    from scipy.optimize import brentq

    hi = min(1 / baseline - 1 - 1e-9, 100.0)
    if power_proportion(baseline, hi, n_per_arm, alpha=alpha) < power:
        return float("inf")
    return float(brentq(lambda m: power_proportion(baseline, m, n_per_arm, alpha=alpha) - power, 1e-9, hi))


MAX_UNITS = 10**15


def _units(n: float) -> int:
    if not math.isfinite(n) or n > MAX_UNITS:
        raise ValueError(f"the effect is too small to detect: it needs more than {MAX_UNITS:.0e} units per variant")
    return max(2, math.ceil(n))


def _power(effect_z: float, alpha: float, two_sided: bool) -> float:
    z = _z(alpha, two_sided)
    p = float(stats.norm.sf(z - effect_z))
    if two_sided:
        p += float(stats.norm.cdf(-z - effect_z))
    return p


def _check_unit(x: float, name: str) -> None:
    if not 0 < x < 1:
        raise ValueError(f"{name} must be a proportion in (0, 1), got {x:g}")


# ---- the whole readout -------------------------------------------------------------------------------------------
def analyze(table: UnitTable, control: str, shares: dict[str, float], alpha: float = 0.05,
            metrics: Sequence[str] = RATIO_METRICS, planned_units: int | None = None, seed: int = 0,
            bayes: bool = True, start: float | None = None, now: float | None = None) -> dict[str, Any]:
    """Everything above for one experiment's unit table. JSON-ready (floats, lists, dicts). With ``start`` and
    ``now`` (and ``planned_units``) the comparisons also carry the group-sequential repeated interval for daily
    looks since ``start``."""
    variants = [v for v in shares]
    masks = {v: table.variant == v for v in variants}
    counts = {v: int(m.sum()) for v, m in masks.items()}
    treatments = [v for v in variants if v != control]
    out: dict[str, Any] = {"control": control, "alpha": alpha, "units": counts, "mixed_units": table.mixed_units,
                           "srm": srm(counts, shares), "totals": {}, "metrics": {}}
    for v in variants:
        m = masks[v]
        out["totals"][v] = {k: float(getattr(table, k)[m].sum()) for k in
                            ("visits", "rails", "impressions", "clicks", "carts", "orders", "revenue", "errors")}
    covariates = covariate_matrix(table)
    returning = covariates.sum(axis=1) > 0
    out["returning_share"] = float(returning.mean()) if len(table) else 0.0
    planned = float(planned_units) if planned_units else None
    n_c = counts.get(control, 0)
    for metric in metrics:
        num, den = metric_columns(table, metric)
        arms = {v: arm_stat(num[masks[v]], den[masks[v]]) for v in variants}
        entry: dict[str, Any] = {"variants": {}, "comparisons": {}}
        for v, a in arms.items():
            entry["variants"][v] = None if a is None else {
                "value": a.value, "se": a.se, "ci": _interval(a.value, a.se, float(stats.norm.ppf(1 - alpha / 2))),
                "units": a.n}
        ok = {v: a for v, a in arms.items() if a is not None}
        if control in ok:
            adjusted, theta = cuped(ok, {v: covariates[masks[v]] for v in ok})
            ret_arms = {v: arm_stat(num[masks[v] & returning], den[masks[v] & returning]) for v in ok}
            ret_ok = {v: a for v, a in ret_arms.items() if a is not None}
            ret_adj = cuped(ret_ok, {v: covariates[masks[v] & returning] for v in ret_ok})[0] if \
                control in ret_ok else {}
            for v in treatments:
                if v not in ok:
                    continue
                cmp_ = compare(ok[v], ok[control], alpha)
                cc = compare(adjusted[v], adjusted[control], alpha)
                base_var = ok[v].var + ok[control].var
                vr = 1 - (adjusted[v].var + adjusted[control].var) / base_var if base_var > 0 else 0.0
                vr_ret = None
                if v in ret_adj and control in ret_adj:
                    rb = ret_ok[v].var + ret_ok[control].var
                    vr_ret = 1 - (ret_adj[v].var + ret_adj[control].var) / rb if rb > 0 else None
                cmp_["cuped"] = {"diff": cc["diff"], "ci": cc["ci"], "p_value": cc["p_value"],
                                 "relative": cc["relative"], "relative_ci": cc["relative_ci"],
                                 "variance_reduction": vr, "variance_reduction_returning": vr_ret,
                                 "theta": dict(zip(COVARIATES, theta.tolist()))}
                n_eff = n_effective(ok[v].n, ok[control].n)
                cmp_["sequential"] = confidence_sequence(cmp_["diff"], base_var, n_eff,
                                                         planned or max(n_eff, 1.0), alpha)
                if planned and start is not None and now is not None:
                    fr = daily_fractions(table.first_ts, table.variant, v, control, start, now, planned)
                    if fr:
                        cmp_["group_sequential"] = repeated_ci(cmp_["diff"], base_var, fr, alpha)
                entry["comparisons"][v] = cmp_
            adj = holm([entry["comparisons"][v]["p_value"] for v in entry["comparisons"]])
            for v, p in zip(entry["comparisons"], adj):
                entry["comparisons"][v]["p_holm"] = p
                entry["comparisons"][v]["significant"] = p < alpha
        out["metrics"][metric] = entry
    if bayes and n_c > 0 and all(counts[v] > 0 for v in variants):
        conv = {v: (int((table.orders[masks[v]] > 0).sum()), counts[v]) for v in variants}
        out["bayesian"] = {"conversion": bayes_conversion(conv, control, seed=seed),
                           "revenue_per_shopper": bayes_revenue({v: table.revenue[masks[v]].astype(float)
                                                                 for v in variants}, control, seed=seed)}
    return out
