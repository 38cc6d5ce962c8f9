"""Interleaving vs A/B: how many sessions each needs to tell the better of two rankers apart (simulator).

Two rankers over the simulator's shoppers (20,000 shoppers of the synthetic storefront's generator, 3,000 items):
B scores items by each shopper's true utility plus N(0, 1) noise, A by the same plus N(0, 1.6) noise — B is
better. A session is one homepage rail of 12 slots for a shopper drawn in proportion to their visit rate; the
shopper examines slot p with probability 1/(p+1)^0.8 and clicks an examined item with its true attraction.

* **A/B**: each session is randomised to A or B (independently: the most favourable A/B design — no clustering
  of sessions by shopper); the metric is clicks per session, tested with Welch's t-test (α = 0.05, two-sided).
  Power at n sessions is computed from the per-session click mean and variance of each ranker, measured on
  400,000 simulated sessions each (the normal approximation is exact enough at these sizes), and checked by
  simulating whole A/B tests at the 80 %-power size.
* **Interleaving**: every session shows team-draft interleaving of A and B (``experiments.interleaving``); a
  session is won by the ranker whose items got more clicks; the sign test (exact binomial, α = 0.05) on the
  decided sessions. Power at n sessions by simulating the test 4,000 times from the measured per-session
  win / loss / tie probabilities (200,000 interleaved sessions), and checked by simulating whole interleaving
  tests (fresh sessions, real team drafts) at the 80 %-power size.

Result: sessions for 80 % power with each design, their ratio, and a plot of power against sessions.

Run:  .venv/bin/python benchmarks/experiments_interleaving.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from shelfwise.experiments.analysis import power_mean
from shelfwise.experiments.interleaving import credit, team_draft
from shelfwise.experiments.simulator import BehaviourModel, Population, PreferencePolicy

RESULTS = Path(__file__).resolve().parent / "results"
K, ALPHA = 12, 0.05


def rails(pop: Population, policy: PreferencePolicy) -> tuple[np.ndarray, np.ndarray]:
    return policy.batch(np.arange(len(pop.shoppers)), K)


def ab_clicks(pop, items, util, shoppers, rng) -> np.ndarray:
    """Clicks per session for sessions of ``shoppers`` under a ranker's rails."""
    att = 1 / (1 + np.exp(-(pop.model.attract_base + pop.model.attract_slope * util[shoppers])))
    p = att * pop.examine(K)[None, :]
    return (rng.random(p.shape) < p).sum(axis=1)


def interleaved_outcomes(pop, a, b, shoppers, rng, seed0: int) -> np.ndarray:
    """+1 B wins, -1 A wins, 0 tie, per session (real team drafts, clicks on the interleaved rail)."""
    (ia, ua), (ib, ub) = a, b
    exam = pop.examine(K)
    out = np.zeros(len(shoppers), np.int8)
    draws = rng.random((len(shoppers), K))
    for s, u in enumerate(shoppers.tolist()):
        la, lb = ia[u].tolist(), ib[u].tolist()
        items, teams = team_draft(la, lb, K, seed0 + s)
        ut = dict(zip(la, ua[u].tolist())) | dict(zip(lb, ub[u].tolist()))
        util = np.array([ut[i] for i in items])
        p = exam[: len(items)] / (1 + np.exp(-(pop.model.attract_base + pop.model.attract_slope * util)))
        clicked = [it for it, hit in zip(items, draws[s, : len(items)] < p) if hit]
        ca, cb = credit(teams, items, clicked)
        out[s] = (cb > ca) - (ca > cb)
    return out


def sign_test_power(p_b: float, p_a: float, n: int, rng, reps: int = 4000) -> float:
    counts = rng.multinomial(n, [p_b, p_a, 1 - p_a - p_b], size=reps)
    wins_b, decided = counts[:, 0], counts[:, 0] + counts[:, 1]
    # exact two-sided binomial test at p = 0.5, vectorised through the binomial distribution's tails
    lo = stats.binom.cdf(np.minimum(wins_b, decided - wins_b), decided, 0.5)
    pval = np.minimum(1.0, 2 * lo)
    pval[decided == 0] = 1.0
    return float((pval < ALPHA).mean())


def n_for_power(power_at, target: float = 0.8, lo: int = 10, hi: int = 10_000_000) -> int:
    while lo < hi:
        mid = (lo + hi) // 2
        if power_at(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--noise-a", type=float, default=1.6)
    ap.add_argument("--noise-b", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    t0 = time.time()
    load0 = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    pop = Population(n_shoppers=args.shoppers, n_items=args.items, seed=args.seed,
                     model=BehaviourModel(buy_mean=0.08, visits_per_day=0.3))
    a = rails(pop, PreferencePolicy(pop, args.noise_a, seed=11))
    b = rails(pop, PreferencePolicy(pop, args.noise_b, seed=12))
    weights = pop.visit_rate / pop.visit_rate.sum()

    def sessions(n: int) -> np.ndarray:
        return rng.choice(len(pop.shoppers), n, p=weights)

    # A/B: per-session click distribution of each ranker
    ca = ab_clicks(pop, *a, sessions(400_000), rng)
    cb = ab_clicks(pop, *b, sessions(400_000), rng)
    mu_a, mu_b, sd = ca.mean(), cb.mean(), np.sqrt((ca.var(ddof=1) + cb.var(ddof=1)) / 2)

    def ab_power(n_total: int) -> float:
        return power_mean(sd, mu_b - mu_a, n_total // 2, alpha=ALPHA)

    n80_ab = n_for_power(ab_power)
    # interleaving: per-session outcome probabilities
    out = interleaved_outcomes(pop, a, b, sessions(200_000), rng, seed0=10_000_000)
    p_b, p_a = float((out > 0).mean()), float((out < 0).mean())

    def il_power(n: int) -> float:
        return sign_test_power(p_b, p_a, n, np.random.default_rng(n))

    n80_il = n_for_power(il_power, lo=10, hi=1_000_000)
    # direct checks at the 80 % sizes: whole tests simulated from fresh sessions
    reps_ab, hits_ab = 60, 0
    for r in range(reps_ab):
        half = n80_ab // 2
        x, y = ab_clicks(pop, *a, sessions(half), rng), ab_clicks(pop, *b, sessions(half), rng)
        hits_ab += stats.ttest_ind(y, x, equal_var=False).pvalue < ALPHA
    reps_il, hits_il = 300, 0
    for r in range(reps_il):
        o = interleaved_outcomes(pop, a, b, sessions(n80_il), rng, seed0=r * 1_000_003)
        wb, wa = int((o > 0).sum()), int((o < 0).sum())
        hits_il += wb + wa > 0 and stats.binomtest(wb, wb + wa, 0.5).pvalue < ALPHA
    grid = np.unique(np.geomspace(50, 3 * n80_ab, 40).astype(int))
    curve = {"sessions": grid.tolist(), "ab": [ab_power(int(n)) for n in grid],
             "interleaving": [il_power(int(n)) for n in grid]}
    result = {
        "rankers": {"a_noise": args.noise_a, "b_noise": args.noise_b},
        "clicks_per_session": {"a": float(mu_a), "b": float(mu_b), "relative": float(mu_b / mu_a - 1)},
        "interleaving_outcomes": {"b_wins": p_b, "a_wins": p_a, "ties": 1 - p_a - p_b},
        "sessions_for_80pct_power": {"ab": int(n80_ab), "interleaving": int(n80_il)},
        "ratio": n80_ab / n80_il,
        "direct_check": {"ab": {"sessions": int(n80_ab), "reps": reps_ab, "power": hits_ab / reps_ab},
                         "interleaving": {"sessions": int(n80_il), "reps": reps_il, "power": hits_il / reps_il}},
        "curve": curve, "wall_s": time.time() - t0, "loadavg": [load0, os.getloadavg()],
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent).stdout.strip(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))
    (RESULTS / "experiments_interleaving.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=90)
    ax.plot(curve["sessions"], curve["interleaving"], label="team-draft interleaving (sign test)")
    ax.plot(curve["sessions"], curve["ab"], label="A/B test (clicks per session, Welch)")
    ax.plot([n80_il], [hits_il / reps_il], "o", color="tab:blue", label="whole tests simulated")
    ax.plot([n80_ab], [hits_ab / reps_ab], "o", color="tab:orange")
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("sessions")
    ax.set_ylabel("power (α = 0.05)")
    ax.set_title(f"ranker B vs A: interleaving needs {n80_ab / n80_il:.0f}× fewer sessions")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "experiments_interleaving.png")
    print(f"written: {RESULTS / 'experiments_interleaving.json'}, experiments_interleaving.png")


if __name__ == "__main__":
    sys.exit(main())
