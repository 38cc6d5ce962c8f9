"""Analysis: intervals agree with textbook tests and resampling, CUPED removes the predicted variance, confidence
sequences stay valid under continuous peeking (and naive peeking does not), SRM fires on a skewed split, the
Bayesian readout matches exact integrals, and the power calculator matches simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from shelfwise.experiments import analysis as A
from shelfwise.experiments.log import UnitTable


def table(variant, clicks=None, impressions=None, orders=None, revenue=None, visits=None, cart_visits=None,
          pre_orders=None, pre_revenue=None) -> UnitTable:
    n = len(variant)
    z = np.zeros(n)

    def f(x):
        return z.copy() if x is None else np.asarray(x, float)

    return UnitTable(unit=np.arange(n).astype(object), variant=np.asarray(variant, dtype=object), first_ts=z.copy(),
                     rails=np.ones(n), impressions=f(impressions) if impressions is not None else np.ones(n),
                     visits=f(visits) if visits is not None else np.ones(n), errors=z.copy(), clicks=f(clicks),
                     carts=z.copy(), cart_visits=f(cart_visits), orders=f(orders), revenue=f(revenue),
                     pre_clicks=z.copy(), pre_carts=z.copy(), pre_orders=f(pre_orders), pre_revenue=f(pre_revenue))


def test_mean_comparison_is_welch():
    rng = np.random.default_rng(1)
    y_t, y_c = rng.lognormal(1, 1, 900), rng.lognormal(1.1, 1.3, 1400)
    got = A.compare(A.arm_stat(y_t, np.ones(900)), A.arm_stat(y_c, np.ones(1400)), 0.05)
    ref = stats.ttest_ind(y_t, y_c, equal_var=False)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert got["ci"] == pytest.approx([ci.low, ci.high], rel=1e-9)


def test_ratio_metric_delta_method_matches_the_unit_bootstrap():
    rng = np.random.default_rng(2)
    n = 3000
    imps = rng.integers(1, 60, n).astype(float)
    ctr_u = rng.beta(2, 30, n)  # units differ: clicks are clustered within a unit
    clicks = rng.binomial(imps.astype(int), ctr_u).astype(float)
    a = A.arm_stat(clicks, imps)
    assert a.value == pytest.approx(clicks.sum() / imps.sum())
    boots = []
    for _ in range(600):
        i = rng.integers(0, n, n)
        boots.append(clicks[i].sum() / imps[i].sum())
    assert a.se == pytest.approx(np.std(boots), rel=0.1)
    naive = math.sqrt(a.value * (1 - a.value) / imps.sum())  # treats impressions as independent
    assert a.se > 1.3 * naive


def test_fixed_horizon_false_positive_rate_is_alpha():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(600):
        v = np.where(rng.random(2000) < 0.5, "control", "treatment")
        t = table(v, orders=rng.random(2000) < 0.1, revenue=rng.exponential(20, 2000) * (rng.random(2000) < 0.1))
        got = A.analyze(t, "control", {"control": 0.5, "treatment": 0.5}, metrics=["conversion"], bayes=False,
                        planned_units=1000)
        hits += got["metrics"]["conversion"]["comparisons"]["treatment"]["p_value"] < 0.05
    assert 0.03 <= hits / 600 <= 0.07


def test_cuped_removes_the_variance_the_covariate_explains():
    rng = np.random.default_rng(4)
    n = 40_000
    x = rng.gamma(2.0, 10.0, n)
    rho = 0.6
    noise = rng.normal(0, x.std() * math.sqrt(1 - rho ** 2) / rho, n)
    v = np.where(rng.random(n) < 0.5, "control", "treatment")
    y = x + noise + np.where(v == "treatment", 1.0, 0.0)  # true effect +1
    got = A.analyze(table(v, revenue=y, pre_revenue=x), "control", {"control": 0.5, "treatment": 0.5},
                    metrics=["revenue_per_shopper"], bayes=False, planned_units=20_000)
    c = got["metrics"]["revenue_per_shopper"]["comparisons"]["treatment"]
    assert c["cuped"]["variance_reduction"] == pytest.approx(rho ** 2, abs=0.02)
    lo, hi = c["cuped"]["ci"]
    assert lo < 1.0 < hi and (hi - lo) < 0.85 * (c["ci"][1] - c["ci"][0])
    assert c["cuped"]["theta"]["pre_revenue"] == pytest.approx(1.0, abs=0.03)
    assert got["returning_share"] == 1.0


def _stream_paths(reps: int, looks: int, per_look: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A/A: cumulative (diff, var, n per arm) at every look of ``reps`` experiments on Bernoulli(0.1) data."""
    rng = np.random.default_rng(seed)
    a = rng.random((reps, looks, per_look)) < 0.1
    b = rng.random((reps, looks, per_look)) < 0.1
    n = per_look * np.arange(1, looks + 1)
    pa, pb = a.sum(2).cumsum(1) / n, b.sum(2).cumsum(1) / n
    var = (pa * (1 - pa) + pb * (1 - pb)) / n
    return pa - pb, var, np.broadcast_to(n, pa.shape)


def test_confidence_sequence_survives_continuous_peeking_and_naive_peeking_does_not():
    diff, var, n = _stream_paths(reps=400, looks=50, per_look=200, seed=5)
    planned = 5000
    cs_hits = naive_hits = 0
    for r in range(diff.shape[0]):
        ever_cs = ever_naive = False
        for t in range(diff.shape[1]):
            cs = A.confidence_sequence(diff[r, t], var[r, t], n[r, t], planned, 0.05)
            assert cs["excludes_zero"] == (cs["p_value"] < 0.05)
            half = 1.96 * math.sqrt(var[r, t])
            assert cs["ci"][1] - cs["ci"][0] > 2 * half  # wider than the fixed-horizon interval
            ever_cs |= cs["excludes_zero"]
            ever_naive |= abs(diff[r, t]) > half
        cs_hits += ever_cs
        naive_hits += ever_naive
    assert cs_hits / 400 <= 0.05
    assert naive_hits / 400 > 0.15  # peeking at a fixed-horizon test 50 times inflates false positives


def test_confidence_sequence_detects_a_real_effect():
    cs = A.confidence_sequence(0.01, 0.002 ** 2, 20_000, 20_000, 0.05)
    assert cs["excludes_zero"] and cs["ci"][0] > 0 and cs["p_value"] < 0.05
    assert A.cs_tuning(0.05) == pytest.approx(-2 * math.log(0.05) + math.log(1 - 2 * math.log(0.05)))


def test_srm_fires_on_a_skewed_split_only():
    assert A.srm({"a": 10_000, "b": 10_100}, {"a": 0.5, "b": 0.5})["alarm"] is False
    skewed = A.srm({"a": 10_000, "b": 9_400}, {"a": 0.5, "b": 0.5})
    assert skewed["alarm"] and skewed["p_value"] < 0.001
    assert A.srm({"a": 2_000, "b": 8_000}, {"a": 0.2, "b": 0.8})["alarm"] is False
    assert A.srm({"a": 0}, {"a": 0.5, "b": 0.5})["alarm"] is False


def test_bayesian_conversion_matches_the_exact_integral():
    got = A.bayes_conversion({"c": (120, 1000), "t": (145, 1000)}, "c", draws=200_000, seed=1)["variants"]["t"]
    fa, fb = stats.beta(121, 881), stats.beta(146, 856)
    exact = integrate.quad(lambda x: fb.pdf(x) * fa.cdf(x), 0, 1)[0]  # P(c < t)
    assert got["prob_beat_control"] == pytest.approx(exact, abs=0.005)
    loss = integrate.dblquad(lambda y, x: max(x - y, 0) * fa.pdf(x) * fb.pdf(y), 0.05, 0.25, 0.05, 0.25)[0]
    assert got["expected_loss"] == pytest.approx(loss, abs=2e-4)
    same = A.bayes_conversion({"c": (100, 1000), "t": (100, 1000)}, "c", seed=2)["variants"]["t"]
    assert same["prob_beat_control"] == pytest.approx(0.5, abs=0.01)


def test_bayesian_revenue_bootstrap_and_its_normal_limit_agree():
    rng = np.random.default_rng(6)
    rev = {v: np.where(rng.random(20_000) < 0.08, rng.lognormal(3.5 + (0.08 if v == "t" else 0), 1, 20_000), 0)
           for v in ("c", "t")}
    boot = A.bayes_revenue(rev, "c", draws=2000, seed=1)
    normal = A.bayes_revenue(rev, "c", draws=2000, seed=1, bootstrap_max=1)
    assert "Bayesian bootstrap" in boot["model"] and "normal limit" in normal["model"]
    pb, pn = boot["variants"]["t"]["prob_beat_control"], normal["variants"]["t"]["prob_beat_control"]
    assert abs(pb - pn) < 0.04 and 0.6 < pb < 0.999


def test_power_calculator_matches_known_values_and_simulation():
    ss = A.sample_size_proportion(0.10, 0.10)
    assert ss["control"] == 14_749 and ss["treatment"] == 14_749  # (1.96+0.8416)² (.09+.0979)/.01²
    assert A.power_proportion(0.10, 0.10, 14_749) == pytest.approx(0.80, abs=0.002)
    assert A.sample_size_proportion(0.10, 0.10, variance_reduction=0.3)["control"] == math.ceil(14_748.1 * 0.7)
    rng = np.random.default_rng(7)
    n = 6000
    pw = A.power_proportion(0.10, 0.10, n)
    c = rng.binomial(n, 0.10, 4000) / n
    t = rng.binomial(n, 0.11, 4000) / n
    se = np.sqrt(c * (1 - c) / n + t * (1 - t) / n)
    assert (np.abs(t - c) / se > 1.96).mean() == pytest.approx(pw, abs=0.025)
    m = A.mde_proportion(0.10, 14_749)
    assert m == pytest.approx(0.10, abs=0.002)
    sm = A.sample_size_mean(sd=30, mde_absolute=1.0)
    assert A.power_mean(30, 1.0, sm["control"]) == pytest.approx(0.8, abs=0.002)
    with pytest.raises(ValueError, match="baseline must be a proportion"):
        A.sample_size_proportion(1.5, 0.1)
    with pytest.raises(ValueError, match="is not a proportion"):
        A.sample_size_proportion(0.9, 0.2)


def test_holm():
    assert A.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_analyze_handles_empty_and_one_sided_tables():
    got = A.analyze(UnitTable.empty(), "c", {"c": 0.5, "t": 0.5})
    assert got["units"] == {"c": 0, "t": 0} and got["metrics"]["ctr"]["comparisons"] == {}
    only_control = table(["c"] * 50, orders=np.ones(50))
    got = A.analyze(only_control, "c", {"c": 0.5, "t": 0.5})
    assert got["metrics"]["conversion"]["variants"]["t"] is None and "bayesian" not in got


def test_group_sequential_boundaries_spend_exactly_alpha():
    assert A.gst_boundaries([1.0])[0] == pytest.approx(1.959964, abs=1e-5)  # one look: the fixed-horizon test
    rng = np.random.default_rng(8)
    for fractions in (np.arange(1, 15) / 14, np.array([0.05, 0.3, 0.31, 0.7, 1.0]), np.arange(1, 41) / 40):
        b = A.gst_boundaries(fractions)
        if np.allclose(np.diff(fractions), fractions[0]):  # equal spacing: strict early, ~fixed-horizon at the end
            assert np.all(np.diff(b[np.isfinite(b)]) <= 1e-9) and b[-1] < 2.25
        inc = np.diff(np.r_[0.0, fractions])
        w = np.cumsum(rng.normal(size=(60_000, len(fractions))) * np.sqrt(inc), axis=1)
        fpr = (np.abs(w / np.sqrt(fractions)) > b).any(axis=1).mean()
        assert fpr == pytest.approx(0.05, abs=0.004)
    with pytest.raises(ValueError, match="non-decreasing"):
        A.gst_boundaries([0.5, 0.4])


def test_repeated_ci_and_daily_fractions():
    first = np.r_[np.linspace(0, 86400 * 3, 300), np.linspace(0, 86400 * 3, 300)]
    variant = np.array(["c"] * 300 + ["t"] * 300, dtype=object)
    fr = A.daily_fractions(first, variant, "t", "c", start=0.0, now=86400 * 3.5, planned=600)
    assert fr == pytest.approx([100 / 600, 200 / 600, 300 / 600])  # day 3's cut equals now's: one look
    r = A.repeated_ci(0.02, 0.005 ** 2, fr, 0.05)
    assert r["boundary_z"] > 1.96 and r["looks"] == 3 and r["excludes_zero"]
    assert r["ci"][1] - 0.02 == pytest.approx(r["boundary_z"] * 0.005)
