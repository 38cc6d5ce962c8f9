"""Interleaving vs A/B: how many sessions each needs to tell the better of two rankers apart (simulator).

Shoppers: 20,000 of the synthetic storefront's generator (3,000 items) with known preferences. A session is one
homepage rail of 12 slots for a shopper drawn in proportion to their visit rate. Clicks follow the dependent
click model: the shopper scans the rail top-down, looks at slot p with probability 1/(p+1)^0.8, clicks a looked-at
item with probability sigmoid(−2.5 + true utility) × click-happiness, and after a click keeps scanning with
probability 0.5. Click-happiness varies between shoppers (Gamma shape 0.3, mean 1) and between visits (Gamma
shape 0.5): most sessions click nothing, a few click a lot — as on a real storefront.

Three pairs of rankers, B better than A (``SCENARIOS``): re-ordering the same 12 candidates (two ranking models
over one candidate set — what comparing ranker versions looks like), re-ranking the top 30 of one retrieval, and
ranking the whole catalog (mostly different items).

* **A/B**: each session randomised to A or B independently (the most favourable A/B design: no clustering of
  sessions by shopper); metric clicks per session; Welch's t-test (α = 0.05, two-sided). Power at n sessions from
  each ranker's per-session click mean and variance measured on 400,000 simulated sessions (normal
  approximation), checked by simulating whole A/B tests at the 80 %-power size.
* **Interleaving**: every session shows the team-draft interleaving of A and B (``experiments.interleaving``); a
  session is won by the ranker whose items got more clicks; sign test (exact binomial) on the decided sessions.
  Power at n sessions by simulating the test 4,000 times from the per-session win / loss / tie probabilities
  measured on 200,000 interleaved sessions, checked by simulating whole interleaving tests (fresh sessions, real
  team drafts) at the 80 %-power size.

Result: sessions for 80 % power with each design and their ratio per scenario; plot of power against sessions.

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
from shelfwise.experiments.simulator import BehaviourModel, Population, PreferencePolicy, RerankPolicy, scan_clicks

RESULTS = Path(__file__).resolve().parent / "results"
K, ALPHA = 12, 0.05


def rails(pop: Population, policy: PreferencePolicy) -> tuple[np.ndarray, np.ndarray]:
    return policy.batch(np.arange(len(pop.shoppers)), K)


def engagement(pop, shoppers, rng) -> np.ndarray:
    """Click-happiness of each session: the shopper's × the visit's (Gamma, mean 1)."""
    return pop.engagement[shoppers] * rng.gamma(pop.model.session_shape, 1 / pop.model.session_shape, len(shoppers))


def ab_clicks(pop, items, util, shoppers, rng) -> np.ndarray:
    """Clicks per session for sessions of ``shoppers`` under a ranker's rails."""
    att = 1 / (1 + np.exp(-(pop.model.attract_base + pop.model.attract_slope * util[shoppers])))
    p = np.clip(att * pop.examine(K)[None, :] * engagement(pop, shoppers, rng)[:, None], 0, 1)
    return scan_clicks(p, pop.model.continue_after_click, rng).sum(axis=1)


def interleaved_outcomes(pop, a, b, shoppers, rng, seed0: int) -> np.ndarray:
    """+1 B wins, -1 A wins, 0 tie, per session (real team drafts, clicks on the interleaved rail)."""
    (ia, ua), (ib, ub) = a, b
    exam = pop.examine(K)
    happy = engagement(pop, shoppers, rng)
    drafts, probs = [], np.zeros((len(shoppers), K))
    for s, u in enumerate(shoppers.tolist()):
        la, lb = ia[u].tolist(), ib[u].tolist()
        items, teams = team_draft(la, lb, K, seed0 + s)
        ut = dict(zip(la, ua[u].tolist())) | dict(zip(lb, ub[u].tolist()))
        util = np.array([ut[i] for i in items])
        probs[s, : len(items)] = np.clip(happy[s] * exam[: len(items)] / (
            1 + np.exp(-(pop.model.attract_base + pop.model.attract_slope * util))), 0, 1)
        drafts.append((items, teams))
    hits = scan_clicks(probs, pop.model.continue_after_click, rng)
    out = np.zeros(len(shoppers), np.int8)
    for s, (items, teams) in enumerate(drafts):
        clicked = [it for it, hit in zip(items, hits[s]) if hit]
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


SCENARIOS = {
    # name: (description, builder(pop) -> (ranker A, ranker B))
    "reorder": "A and B re-order the same 12 candidates (utility + N(0, 1.5²) vs N(0, 0.5²)): two ranking models "
               "over one candidate set",
    "rerank-30": "A and B re-rank the top 30 of one retrieval (N(0, 1²) vs N(0, 0.7²)) and show their top 12",
    "retrieval": "A and B rank the whole catalog with different noise (N(0, 1.3²) vs N(0, 1²)): different items",
}


def build(pop: Population, name: str):
    base = PreferencePolicy(pop, 1.0, seed=10)
    if name == "reorder":
        return RerankPolicy(base, 12, 1.5, seed=11), RerankPolicy(base, 12, 0.5, seed=12)
    if name == "rerank-30":
        return RerankPolicy(base, 30, 1.0, seed=11), RerankPolicy(base, 30, 0.7, seed=12)
    return PreferencePolicy(pop, 1.3, seed=11), PreferencePolicy(pop, 1.0, seed=12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--engagement", type=float, default=0.3, help="Gamma shape of shoppers' click-happiness")
    ap.add_argument("--session", type=float, default=0.5, help="Gamma shape of a visit's click-happiness")
    ap.add_argument("--continue-after-click", type=float, default=0.5,
                    help="dependent click model: probability to keep scanning after a click (1 = independent)")
    ap.add_argument("--attract-base", type=float, default=-2.5)
    ap.add_argument("--scenarios", default="reorder,rerank-30,retrieval")
    ap.add_argument("--check", default="reorder", help="scenario whose 80 %% sizes are checked by whole tests")
    ap.add_argument("--json", type=Path, default=RESULTS / "experiments_interleaving.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "experiments_interleaving.png")
    args = ap.parse_args()
    t0 = time.time()
    load0 = os.getloadavg()
    model = BehaviourModel(buy_mean=0.08, visits_per_day=0.3, engagement_shape=args.engagement,
                           session_shape=args.session, continue_after_click=args.continue_after_click,
                           attract_base=args.attract_base)
    pop = Population(n_shoppers=args.shoppers, n_items=args.items, seed=args.seed, model=model)
    weights = pop.visit_rate / pop.visit_rate.sum()
    everyone = np.arange(len(pop.shoppers))
    results = {}
    for name in args.scenarios.split(","):
        rng = np.random.default_rng([args.seed, len(name)])

        def sessions(n: int) -> np.ndarray:
            return rng.choice(len(pop.shoppers), n, p=weights)

        ra, rb = build(pop, name)
        a, b = ra.batch(everyone, K), rb.batch(everyone, K)
        ca = ab_clicks(pop, *a, sessions(400_000), rng)
        cb = ab_clicks(pop, *b, sessions(400_000), rng)
        mu_a, mu_b, sd = ca.mean(), cb.mean(), np.sqrt((ca.var(ddof=1) + cb.var(ddof=1)) / 2)

        def ab_power(n_total: int) -> float:
            return power_mean(sd, mu_b - mu_a, n_total // 2, alpha=ALPHA)

        out = interleaved_outcomes(pop, a, b, sessions(200_000), rng, seed0=10_000_000)
        p_b, p_a = float((out > 0).mean()), float((out < 0).mean())

        def il_power(n: int) -> float:
            return sign_test_power(p_b, p_a, n, np.random.default_rng(n))

        n80_ab, n80_il = n_for_power(ab_power), n_for_power(il_power, lo=10, hi=5_000_000)
        res = {"description": SCENARIOS[name],
               "clicks_per_session": {"a": float(mu_a), "b": float(mu_b), "relative": float(mu_b / mu_a - 1),
                                      "sd": float(sd)},
               "interleaving_outcomes": {"b_wins": p_b, "a_wins": p_a, "ties": 1 - p_a - p_b},
               "sessions_for_80pct_power": {"ab": int(n80_ab), "interleaving": int(n80_il)},
               "ratio": n80_ab / n80_il}
        grid = np.unique(np.geomspace(50, 3 * n80_ab, 40).astype(int))
        res["curve"] = {"sessions": grid.tolist(), "ab": [ab_power(int(n)) for n in grid],
                        "interleaving": [il_power(int(n)) for n in grid]}
        if name == args.check:  # whole tests simulated from fresh sessions at the 80 % sizes
            reps_ab, hits_ab = 60, 0
            for _ in range(reps_ab):
                x = ab_clicks(pop, *a, sessions(n80_ab // 2), rng)
                y = ab_clicks(pop, *b, sessions(n80_ab // 2), rng)
                hits_ab += stats.ttest_ind(y, x, equal_var=False).pvalue < ALPHA
            reps_il, hits_il = 300, 0
            for r in range(reps_il):
                o = interleaved_outcomes(pop, a, b, sessions(n80_il), rng, seed0=r * 1_000_003)
                wb, wa = int((o > 0).sum()), int((o < 0).sum())
                hits_il += wb + wa > 0 and stats.binomtest(wb, wb + wa, 0.5).pvalue < ALPHA
            res["direct_check"] = {"ab": {"sessions": int(n80_ab), "reps": reps_ab, "power": hits_ab / reps_ab},
                                   "interleaving": {"sessions": int(n80_il), "reps": reps_il,
                                                    "power": hits_il / reps_il}}
        results[name] = res
        print(name, json.dumps({k: v for k, v in res.items() if k != "curve"}), flush=True)
    result = {"click_model": {"continue_after_click": args.continue_after_click, "engagement_shape": args.engagement,
                              "session_shape": args.session, "attract_base": args.attract_base,
                              "position_decay": model.position_decay, "k": K},
              "scenarios": results, "wall_s": time.time() - t0, "loadavg": [load0, os.getloadavg()],
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip()}
    args.json.write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), dpi=90, gridspec_kw={"width_ratios": [3, 2]})
    head = results.get(args.check) or next(iter(results.values()))
    curve = head["curve"]
    ax.plot(curve["sessions"], curve["interleaving"], label="team-draft interleaving (sign test)")
    ax.plot(curve["sessions"], curve["ab"], label="A/B test (clicks per session, Welch)")
    if "direct_check" in head:
        dc = head["direct_check"]
        ax.plot([dc["interleaving"]["sessions"]], [dc["interleaving"]["power"]], "o", color="tab:blue",
                label="whole tests simulated")
        ax.plot([dc["ab"]["sessions"]], [dc["ab"]["power"]], "o", color="tab:orange")
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("sessions")
    ax.set_ylabel("power (α = 0.05)")
    ax.set_title(f"{args.check}: interleaving needs {head['ratio']:.1f}× fewer sessions", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    names = list(results)
    xs = np.arange(len(names))
    bx.bar(xs - 0.2, [results[n]["sessions_for_80pct_power"]["ab"] for n in names], 0.4, label="A/B")
    bx.bar(xs + 0.2, [results[n]["sessions_for_80pct_power"]["interleaving"] for n in names], 0.4,
           label="interleaving")
    for i, n in enumerate(names):
        bx.text(i, results[n]["sessions_for_80pct_power"]["ab"] * 1.15, f"{results[n]['ratio']:.1f}×",
                ha="center", fontsize=8)
    bx.set_yscale("log")
    bx.set_xticks(xs, names, fontsize=8)
    bx.set_ylabel("sessions for 80 % power")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"written: {args.json}, {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
