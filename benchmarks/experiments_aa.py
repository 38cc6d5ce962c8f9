"""Does the experiment analysis hold up? A/A false positives, power against the calculator, CUPED.

The storefront simulator (``shelfwise.experiments.simulator``): 40,000 shoppers of the synthetic storefront's
generator (3,000 items) with known preferences, visiting at Gamma-distributed rates, clicking by position bias ×
attraction, carting, buying with a persistent per-shopper propensity; 20 % of visits anonymous. 14 days of
pre-period (the CUPED covariates), then 14 days of experiment. The policy is a scorer over each shopper's *true*
preferences plus noise (the real pipeline would cost ~30 ms a rail; 200 repetitions × ~60,000 shoppers' rails
would take hours — the analysis does not care where the rails come from). Every repetition re-randomises: a new
experiment salt through the real ``Assigner`` (50/50), a new behaviour seed; the population is fixed.

``--mode aa`` (A/A, both variants identical), per repetition:
* the fixed-horizon test of the primary metric (conversion: share of shoppers with an attributed purchase) and of
  CTR and revenue per shopper, as ``analysis.analyze`` reports them at the end (Welch, α = 0.05);
* the anytime-valid confidence sequence of the conversion difference read at the end of every day (a false
  positive when it excludes 0 on any of the 14 days), and the same sequence monitored every hour (its running
  intersection read daily); the group-sequential repeated confidence interval (O'Brien–Fleming-type α
  spending over the daily looks, planned size = the units of the first repetition) read daily; for contrast, the
  fixed-horizon test peeked at daily;
* the SRM check, the CUPED variance reduction (conversion and revenue; all shoppers and returning ones).

``--mode power``: the treatment's per-visit purchase probability is multiplied by the factor that raises
shopper-level conversion by exactly +5 % (calibrated with common random numbers); the share of repetitions where
the fixed-horizon test detects it (p < 0.05) against the calculator's prediction
``analysis.power_proportion(baseline, 0.05, n_control, n_treatment)`` with the A/A control conversion as
baseline and the mean units per arm — and the same with CUPED against the calculator given CUPED's measured
variance reduction.

Run:  .venv/bin/python benchmarks/experiments_aa.py --mode aa [--reps 200]
      .venv/bin/python benchmarks/experiments_aa.py --mode power [--reps 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from shelfwise.experiments import analysis as A
from shelfwise.experiments.assignment import Assigner
from shelfwise.experiments.schema import Experiment, parse_spec
from shelfwise.experiments.simulator import (BehaviourModel, Effect, Population, PreferencePolicy, Simulator,
                                             calibrate_purchase_multiplier, timestamp)

RESULTS = Path(__file__).resolve().parent / "results"
START = timestamp("2026-12-01")
DAYS, PRE_DAYS, ALPHA = 14, 14, 0.05
MODEL = BehaviourModel(buy_mean=0.08, visits_per_day=0.3)


def assigner(salt: str):
    e = Experiment(spec=parse_spec({"id": salt, "variants": [{"name": "control", "share": 0.5},
                                                             {"name": "treatment", "share": 0.5}]}),
                   status="running", traffic=1.0, created_at=0.0, updated_at=0.0)
    a = Assigner([e])

    def pick(unit: str) -> str | None:
        got = a.assign(unit)
        return got[0].variant if got else None

    return pick


def sequential_reads(traffic, planned: float, checkpoints: np.ndarray,
                     gst: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """At each checkpoint (days since start): does the confidence sequence of the conversion difference exclude 0,
    does the fixed-horizon z-test reject, and (``gst``) does the group-sequential repeated interval exclude 0?
    (Vectorised: a unit counts from its first exposure; it converts at its first attributed purchase, which
    always comes after that exposure.)"""
    variant, first_day, buy_day = traffic.daily_conversion(DAYS)
    treat = variant == traffic.variants.index("treatment")
    arms = []
    for m in (treat, ~treat):
        n = np.searchsorted(np.sort(first_day[m]), checkpoints, side="left").astype(float)
        k = np.searchsorted(np.sort(buy_day[m]), checkpoints, side="left").astype(float)
        arms.append((n, k))
    (n_t, k_t), (n_c, k_c) = arms
    ok = (n_t >= 2) & (n_c >= 2)
    n_t, n_c = np.maximum(n_t, 2), np.maximum(n_c, 2)
    p_t, p_c = k_t / n_t, k_c / n_c
    var = p_t * (1 - p_t) / (n_t - 1) + p_c * (1 - p_c) / (n_c - 1)
    diff = p_t - p_c
    n_eff = 2.0 / (1.0 / n_t + 1.0 / n_c)
    s = A.cs_tuning(ALPHA) * n_eff / planned
    half = np.sqrt(var * (1 + 1 / s) * (np.log1p(s) + 2 * np.log(1 / ALPHA)))
    cs = ok & (var > 0) & (np.abs(diff) > half)
    naive = ok & (var > 0) & (np.abs(diff) > stats.norm.ppf(1 - ALPHA / 2) * np.sqrt(np.maximum(var, 1e-300)))
    # the same formula as analysis.confidence_sequence (checked at the last checkpoint)
    last = A.confidence_sequence(diff[-1], var[-1], n_eff[-1], planned, ALPHA)
    assert math.isclose(last["ci"][1] - diff[-1], half[-1], rel_tol=1e-9)
    rci = None
    if gst:  # the daily looks' information fractions, as analysis.daily_fractions computes them
        frac = np.maximum.accumulate(n_eff / planned)
        bound = A.gst_boundaries(frac, ALPHA)
        rci = ok & (var > 0) & (np.abs(diff) > bound * np.sqrt(np.maximum(var, 1e-300)))
    return cs, naive, rci


def wilson(k: int, n: int) -> list[float]:
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "commit": commit,
            "loadavg_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("aa", "power"), required=True)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--shoppers", type=int, default=40_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--lift", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    info = machine()
    t0 = time.time()
    pop = Population(n_shoppers=args.shoppers, n_items=args.items, seed=args.seed, model=MODEL)
    policy = PreferencePolicy(pop, noise=1.0)
    effects = {}
    calib = None
    if args.mode == "power":
        sim0 = Simulator(pop, {"control": policy, "treatment": policy})
        mult, base = calibrate_purchase_multiplier(sim0, args.lift, DAYS, START, seeds=[10_001, 10_002, 10_003])
        effects = {"treatment": Effect(purchase=mult)}
        calib = {"purchase_multiplier": mult, "baseline_conversion": base}
        print(f"calibrated: per-visit purchase × {mult:.4f} raises conversion {base:.4f} by {args.lift:+.1%}",
              flush=True)
    sim = Simulator(pop, {"control": policy, "treatment": policy}, effects=effects)
    setup_s = time.time() - t0
    rows = []
    hourly = np.arange(1, DAYS * 24 + 1) / 24.0
    daily = np.arange(1, DAYS + 1, dtype=float)
    planned = None
    for rep in range(args.reps):
        tr = sim.run(assigner(f"{args.mode}-{args.seed}-{rep}"), DAYS, START, seed=args.seed * 100_000 + rep,
                     pre_days=PRE_DAYS)
        table = tr.unit_table(86400.0, pre_days=PRE_DAYS)
        counts = {v: int((table.variant == v).sum()) for v in ("control", "treatment")}
        if planned is None:
            planned = float(np.mean(list(counts.values())))  # fixed after the first repetition: the design
        res = A.analyze(table, "control", {"control": 0.5, "treatment": 0.5}, ALPHA,
                        metrics=["conversion", "ctr", "revenue_per_shopper"], planned_units=int(planned), bayes=False)
        conv = res["metrics"]["conversion"]
        c = conv["comparisons"]["treatment"]
        cs_daily, naive_daily, gst_daily = sequential_reads(tr, planned, daily, gst=True)
        cs_hourly, _, _ = sequential_reads(tr, planned, hourly)
        # the daily path's last read equals the log attribution's final conversion (consistency check)
        v, fd, bd = tr.daily_conversion(DAYS)
        assert int(np.isfinite(bd).sum()) == int((table.orders > 0).sum())
        rows.append({
            "rep": rep, "units": counts,
            "conversion": {v: conv["variants"][v]["value"] for v in counts},
            "p_conversion": c["p_value"], "diff": c["diff"], "p_cuped": c["cuped"]["p_value"],
            "p_ctr": res["metrics"]["ctr"]["comparisons"]["treatment"]["p_value"],
            "p_revenue": res["metrics"]["revenue_per_shopper"]["comparisons"]["treatment"]["p_value"],
            "cs_final_excludes_zero": c["sequential"]["excludes_zero"],
            "cs_daily_any": bool(any(cs_daily)), "cs_hourly_any": bool(any(cs_hourly)),
            "naive_daily_any": bool(any(naive_daily)), "gst_daily_any": bool(any(gst_daily)),
            "gst_final_fraction": float(min(1.0, np.max(A.n_effective(*[int(x) for x in counts.values()]) / planned))),
            "srm_p": res["srm"]["p_value"],
            "vr_conversion": c["cuped"]["variance_reduction"],
            "vr_conversion_returning": c["cuped"]["variance_reduction_returning"],
            "vr_revenue": res["metrics"]["revenue_per_shopper"]["comparisons"]["treatment"]["cuped"][
                "variance_reduction"],
            "vr_revenue_returning": res["metrics"]["revenue_per_shopper"]["comparisons"]["treatment"]["cuped"][
                "variance_reduction_returning"],
            "returning_share": res["returning_share"],
        })
        if (rep + 1) % 20 == 0:
            print(f"{rep + 1}/{args.reps} reps, {time.time() - t0:.0f} s", flush=True)
    n = len(rows)

    def rate(key: str, pred=lambda x: x) -> dict:
        k = int(sum(bool(pred(r[key])) for r in rows))
        return {"count": k, "rate": k / n, "ci95": wilson(k, n)}

    out = {"mode": args.mode, "reps": n, "shoppers": args.shoppers, "items": args.items, "days": DAYS,
           "pre_days": PRE_DAYS, "alpha": ALPHA, "model": MODEL.__dict__, "calibration": calib,
           "planned_units": planned, "setup_s": setup_s, "wall_s": time.time() - t0, "machine": info,
           "loadavg_end": os.getloadavg(),
           "units_per_arm": float(np.mean([np.mean(list(r["units"].values())) for r in rows])),
           "control_conversion": float(np.mean([r["conversion"]["control"] for r in rows])),
           "fixed_horizon_conversion": rate("p_conversion", lambda p: p < ALPHA),
           "fixed_horizon_cuped": rate("p_cuped", lambda p: p < ALPHA),
           "fixed_horizon_ctr": rate("p_ctr", lambda p: p < ALPHA),
           "fixed_horizon_revenue": rate("p_revenue", lambda p: p < ALPHA),
           "cs_read_daily": rate("cs_daily_any"), "cs_monitored_hourly": rate("cs_hourly_any"),
           "group_sequential_read_daily": rate("gst_daily_any"),
           "cs_final": rate("cs_final_excludes_zero"),
           "naive_daily_peeking": rate("naive_daily_any"),
           "srm_alarms": rate("srm_p", lambda p: p < A.SRM_ALARM_P),
           "cuped": {k: float(np.mean([r[k] for r in rows if r[k] is not None]))
                     for k in ("vr_conversion", "vr_conversion_returning", "vr_revenue", "vr_revenue_returning",
                               "returning_share")},
           "rows": rows}
    n_c = out["units_per_arm"]
    if args.mode == "power":
        base = calib["baseline_conversion"]
        out["predicted_power"] = A.power_proportion(base, args.lift, int(n_c), int(n_c), alpha=ALPHA)
        out["predicted_power_cuped"] = A.power_proportion(base, args.lift, int(n_c), int(n_c), alpha=ALPHA,
                                                          variance_reduction=out["cuped"]["vr_conversion"])
        out["detected"] = rate("p_conversion", lambda p: p < ALPHA)
        out["detected_positive"] = {"count": sum(1 for r in rows if r["p_conversion"] < ALPHA and r["diff"] > 0)}
        out["detected_cuped"] = rate("p_cuped", lambda p: p < ALPHA)
        out["detected_group_sequential"] = rate("gst_daily_any")
        out["detected_cs_daily"] = rate("cs_daily_any")
        out["observed_lift"] = float(np.mean([r["conversion"]["treatment"] / r["conversion"]["control"] - 1
                                              for r in rows]))
    summary = {k: v for k, v in out.items() if k != "rows"}
    print(json.dumps(summary, indent=1, default=str))
    path = args.json or RESULTS / f"experiments_{args.mode}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"written: {path}")


if __name__ == "__main__":
    sys.exit(main())
