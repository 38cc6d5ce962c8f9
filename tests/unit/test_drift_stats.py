"""Drift statistics and windows (``monitor/stats.py``, ``monitor/windows.py``): which statistic decides, the
thresholds, Holm's correction, and the windows a report compares."""

from __future__ import annotations

import numpy as np
import pytest

from shelfwise.monitor.stats import categorical, decide, holm, numeric
from shelfwise.monitor.windows import DAY, Window, WindowError, parse_duration, parse_time, resolve
from shelfwise.settings import MonitorSettings

S = MonitorSettings()


def decided(*checks, settings: MonitorSettings = S):
    decide(list(checks), settings)
    return checks


def test_small_samples_are_decided_by_kolmogorov_smirnov():
    rng = np.random.default_rng(0)
    same, shifted = decided(numeric("same", "g", rng.normal(size=300), rng.normal(size=300), S),
                            numeric("shifted", "g", rng.normal(size=300), rng.normal(0.5, 1, size=300), S))
    assert (same.test, same.verdict) == ("ks", "ok") and same.p_adjusted > 0.05
    assert (shifted.test, shifted.verdict) == ("ks", "drift") and shifted.p_adjusted < S.ks_alpha
    assert "ks p =" in shifted.reasons[0]
    assert shifted.wasserstein == pytest.approx(0.5, abs=0.15) and shifted.psi > 0.1  # every number is there


def test_a_trivial_shift_in_a_large_sample_is_flagged_by_ks_but_not_by_the_effect_size():
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=200_000), rng.normal(0.03, 1, size=200_000)
    trivial, = decided(numeric("trivial", "g", ref, cur, S))
    assert trivial.p_value < 1e-6  # KS alone would flag it
    assert (trivial.test, trivial.verdict) == ("wasserstein", "ok") and trivial.wasserstein < S.wasserstein_threshold
    real, = decided(numeric("real", "g", ref, rng.normal(0.3, 1, size=200_000), S))
    assert (real.test, real.verdict) == ("wasserstein", "drift") and real.reasons == [
        f"wasserstein {real.wasserstein:.3f} > {S.wasserstein_threshold}"]
    # the same with PSI deciding
    psi = MonitorSettings(distance="psi")
    trivial, real = decided(numeric("t", "g", ref, cur, psi), numeric("r", "g", ref, ref * 1.6 + 0.5, psi),
                            settings=psi)
    assert (trivial.test, trivial.verdict, real.test, real.verdict) == ("psi", "ok", "psi", "drift")


def test_the_sample_size_rule_and_the_thresholds_are_settings():
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(size=3000), rng.normal(0.15, 1, size=3000)  # 0.15 sd: KS sees it; W 0.15 > 0.1
    assert decided(numeric("x", "g", ref, cur, S))[0].test == "wasserstein"
    loose = MonitorSettings(wasserstein_threshold=0.5)
    assert decided(numeric("x", "g", ref, cur, loose), settings=loose)[0].verdict == "ok"
    tests_only = MonitorSettings(ks_max_samples=10_000)
    check, = decided(numeric("x", "g", ref, cur, tests_only), settings=tests_only)
    assert (check.test, check.verdict) == ("ks", "drift")


def test_holm_keeps_an_unshifted_report_quiet_and_adjusts_like_the_textbook():
    assert holm([0.01, 0.04, 0.03, 0.5]).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    rng = np.random.default_rng(3)
    checks = [numeric(f"f{i}", "g", rng.normal(size=400), rng.normal(size=400), S) for i in range(60)]
    decide(checks, S)
    raw = sum(c.p_value < S.ks_alpha for c in checks)
    assert sum(c.verdict == "drift" for c in checks) == 0
    assert all(c.p_adjusted >= c.p_value for c in checks)
    assert raw <= 3  # uncorrected, about 1 % of 60 would be flagged by chance; Holm flags none


def test_categories_use_chi_square_then_psi():
    small_same, small_moved = decided(categorical("a", "g", {"x": 300, "y": 200}, {"x": 290, "y": 210}, S),
                                      categorical("b", "g", {"x": 300, "y": 200}, {"x": 150, "y": 350}, S))
    assert (small_same.test, small_same.verdict, small_moved.test, small_moved.verdict) == \
        ("chi2", "ok", "chi2", "drift")
    big_trivial, big_moved = decided(
        categorical("c", "g", {"x": 60_000, "y": 40_000}, {"x": 58_500, "y": 41_500}, S),
        categorical("d", "g", {"x": 60_000, "y": 40_000, "z": 10}, {"x": 30_000, "y": 40_000, "z": 30_000}, S))
    assert big_trivial.p_value < 1e-6 and (big_trivial.test, big_trivial.verdict) == ("psi", "ok")
    assert (big_moved.test, big_moved.verdict) == ("psi", "drift")
    assert big_moved.shares_current["z"] == pytest.approx(0.3) and big_moved.shares_reference["z"] < 1e-3


def test_missing_values_and_too_few_values():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=500)
    cur = np.where(rng.random(500) < 0.3, np.nan, rng.normal(size=500))
    moved, few, none_known = decided(numeric("m", "g", ref, cur, S), numeric("f", "g", ref[:20], cur[:20], S),
                                     numeric("n", "g", ref, np.full(200, np.nan), S))
    assert moved.verdict == "drift" and moved.missing_current == pytest.approx(0.3, abs=0.06)
    assert any(r.startswith("missing values") for r in moved.reasons)
    assert few.verdict == "insufficient" and few.test == "" and "fewer than 50" in few.reasons[0]
    assert none_known.verdict == "drift" and none_known.n_current == 0  # a feature gone missing is drift
    assert numeric("e", "g", [], [], S).to_dict()["p_value"] is None  # JSON-ready: no NaN


def test_discrete_and_constant_features():
    rng = np.random.default_rng(5)
    flag_ref, flag_cur = (rng.random(5000) < 0.1).astype(float), (rng.random(5000) < 0.1).astype(float)
    same, = decided(numeric("b", "g", flag_ref, flag_cur, S))
    assert same.verdict == "ok" and np.isfinite(same.psi)
    moved, = decided(numeric("b", "g", flag_ref, (rng.random(5000) < 0.4).astype(float), S))
    assert moved.verdict == "drift"
    const, = decided(numeric("c", "g", np.zeros(3000), np.zeros(3000), S))
    assert const.verdict == "ok" and const.wasserstein == 0.0


# ---- windows ---------------------------------------------------------------------------------------------------
def test_durations_and_times():
    assert [parse_duration(x) for x in ("90", "90s", "30m", "1h", "1.5h", "7d", "2w")] == \
        [90, 90, 1800, 3600, 5400, 7 * DAY, 14 * DAY]
    assert parse_time("2026-11-24T10:00:00Z") == parse_time("2026-11-24T10:00:00") == 1795514400.0
    for bad in ("", "0h", "-1h", "1y", "soon"):
        with pytest.raises(WindowError, match="positive number with a unit"):
            parse_duration(bad, "--every")
    for bad in ("tomorrow", "1e30", "-5"):
        with pytest.raises(WindowError):
            parse_time(bad)


def test_reference_windows():
    now, trained = 1_800_000_000.0, 1_800_000_000.0 - 3 * DAY
    ref, cur = resolve(S, trained, until=now)
    assert (cur.start, cur.end) == (now - DAY, now)
    assert (ref.start, ref.end) == (trained - 7 * DAY, trained) and "training event" in ref.label
    ref, _ = resolve(S, now - 3600, until=now)  # trained an hour ago: cut where the current window starts
    assert ref.end == now - DAY and "cut" in ref.label
    ref, cur = resolve(S, None, "previous", reference_days=2, current_hours=6, until=now)
    assert (ref.start, ref.end, cur.start) == (now - 6 * 3600 - 2 * DAY, now - 6 * 3600, now - 6 * 3600)
    ref, _ = resolve(S, None, "2026-11-01..2026-11-08", until=now)
    assert ref.hours == 7 * 24 and ref.label == "given"
    with pytest.raises(WindowError, match="no model is trained yet"):
        resolve(S, None, until=now)
    with pytest.raises(WindowError, match="ends before it starts"):
        resolve(S, None, "2026-11-08..2026-11-01", until=now)
    with pytest.raises(WindowError, match="'training', 'previous' or START..END"):
        resolve(S, trained, "yesterday", until=now)


def test_long_windows_are_read_in_evenly_spaced_slices():
    week = Window(0.0, 7 * DAY, "")
    assert week.slices(24 * 7) == [(0.0, 7 * DAY)]
    parts = week.slices(24)
    assert len(parts) == 24 and sum(b - a for a, b in parts) == pytest.approx(DAY)
    assert parts[0][0] == 0.0 and parts[-1][1] <= 7 * DAY
    assert len({int(a % DAY // 3600) for a, _ in parts}) == 24  # every hour of the day is read once


def test_the_shipped_alert_rules_query_the_drift_gauges():
    import re
    from pathlib import Path

    import yaml

    from shelfwise.monitor import drift

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "prometheus" /
                          "drift-alerts.yml").read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"shelfwise_[a-z_]+", e)}
    exported = {g._name for g in drift.GAUGES}
    assert used and used <= exported, used - exported
    root = Path(__file__).resolve().parents[2]
    assert "/etc/prometheus/drift-alerts.yml" in yaml.safe_load(
        (root / "deploy" / "prometheus" / "prometheus.yml").read_text())["rule_files"]
    assert "./deploy/prometheus/drift-alerts.yml:/etc/prometheus/drift-alerts.yml:ro" in yaml.safe_load(
        (root / "docker-compose.yml").read_text())["services"]["prometheus"]["volumes"]
