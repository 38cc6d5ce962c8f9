"""Item exploration on the simulator: cumulative regret of Thompson sampling vs uniform exploration and ε-greedy,
and off-policy evaluation of a new policy from the exploration log.

20,000 shoppers of the synthetic storefront's generator (3,000 items) with known preferences. The exploration
problem: 300 new items (a random servable sample) whose *appeal* nobody knows yet — each has a hidden N(0, 1)
utility offset on top of what taste predicts (``BehaviourModel.item_appeal_sd``). Each round a shopper arrives
(drawn in proportion to their visit rate) and one exploration slot (position 3 of the homepage rail) is filled
from that shopper's candidate pool: the top 30 of the new items by a retrieval that knows the shopper's taste
but not the items' appeal (taste utility + N(0, 1) noise). The item is clicked with probability examination(3) ×
the shopper's true attraction (taste and appeal). The caller's ``allowed`` mask is honoured every round
(asserted): items under a 10 % margin floor are never allowed, and a random 10 % of the pool is out of stock in
that round. Regret of a round = the best allowed pool item's click probability for that shopper − the chosen
one's (an oracle knowing every shopper and item; a non-contextual item bandit cannot reach zero, it learns which
items are better than taste alone says). Policies: ``bandits.ItemBandit`` (Thompson sampling with the default
empirical-Bayes prior of 30 pseudo-impressions, global per item), uniform among the allowed, ε-greedy (ε = 0.1,
per-item means shrunk by one pseudo-impression). 300,000 decisions, five seeds.

Off-policy evaluation: from the uniform policy's log (propensity 1 / number of allowed items), IPS and
self-normalised IPS estimate the click rate of a new policy — ε-greedy (ε = 0.3) on the Thompson sampler's final
posterior means — against its true value.

Run:  .venv/bin/python benchmarks/experiments_bandits.py [--rounds 300000 --seeds 5]
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

from shelfwise.experiments.bandits import EpsilonGreedy, ItemBandit, evaluate_policy
from shelfwise.experiments.simulator import BehaviourModel, Population

RESULTS = Path(__file__).resolve().parent / "results"
SLOT = 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--new-items", type=int, default=300)
    ap.add_argument("--pool", type=int, default=30)
    ap.add_argument("--appeal", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=300_000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    t0 = time.time()
    load0 = os.getloadavg()
    pop = Population(n_shoppers=args.shoppers, n_items=args.items, seed=5,
                     model=BehaviourModel(buy_mean=0.08, visits_per_day=0.3, attract_base=-2.5,
                                          item_appeal_sd=args.appeal))
    everyone = np.arange(len(pop.shoppers))
    new = np.sort(np.random.default_rng(0).choice(np.flatnonzero(pop.servable), args.new_items, replace=False))
    known = np.vstack([pop.utility_block(everyone[i:i + 2048], known=True)[:, new]
                       for i in range(0, len(everyone), 2048)])
    score = known + np.random.default_rng(21).standard_normal(known.shape)  # the retrieval: taste, not appeal
    order = np.argsort(-score, axis=1)[:, :args.pool]
    pools = new[order]
    util = np.take_along_axis(known + pop.appeal[new][None, :], order, 1)  # what the shopper really feels
    exam = pop.examine(SLOT + 1)[SLOT]
    click = exam / (1 + np.exp(-(pop.model.attract_base + pop.model.attract_slope * util)))  # (shoppers, pool)
    items = {it.id: it for it in pop.shop.items}
    margin_ok = np.array([(items[i].margin or 0.0) >= 0.10 for i in pop.item_ids])
    names_all = pop.item_ids
    weights = pop.visit_rate / pop.visit_rate.sum()
    curves: dict[str, list[np.ndarray]] = {"thompson": [], "epsilon_greedy": [], "uniform": []}
    ope = []
    allowed_share = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        arrivals = rng.choice(len(everyone), args.rounds, p=weights)
        stock = rng.random((args.rounds, args.pool)) >= 0.10
        uniforms = rng.random((3, args.rounds))
        ts, eg = ItemBandit(prior_alpha=1.0, prior_beta=30.0, prior_strength=30.0), EpsilonGreedy(0.1)
        prng = {k: np.random.default_rng([seed, i]) for i, k in enumerate(curves)}
        regret = {k: np.zeros(args.rounds) for k in curves}
        log_rewards, log_props, log_choice, log_rounds = [], [], [], []
        for t in range(args.rounds):
            u = arrivals[t]
            pool = pools[u]
            allowed = margin_ok[pool] & stock[t]
            if not allowed.any():
                continue
            allowed_share.append(allowed.mean())
            names = names_all[pool].tolist()
            p = click[u]
            best = p[allowed].max()
            (pick, _), = ts.choose(names, allowed, 1, prng["thompson"], propensities=False)
            j = names.index(pick)
            assert allowed[j]  # the caller's mask is always honoured
            ts.update([pick], [uniforms[0, t] < p[j]])
            regret["thompson"][t] = best - p[j]
            pick = eg.choose(names, allowed, prng["epsilon_greedy"])
            j = names.index(pick)
            assert allowed[j]
            eg.update(pick, bool(uniforms[1, t] < p[j]))
            regret["epsilon_greedy"][t] = best - p[j]
            ok = np.flatnonzero(allowed)
            j = int(ok[prng["uniform"].integers(len(ok))])
            regret["uniform"][t] = best - p[j]
            log_rewards.append(float(uniforms[2, t] < p[j]))
            log_props.append(1.0 / len(ok))
            log_choice.append(j)
            log_rounds.append(t)
        for k in curves:
            curves[k].append(np.cumsum(regret[k]))
        # OPE: a new policy — ε-greedy (ε = 0.3) on the Thompson sampler's final posterior means, among each
        # round's allowed candidates — evaluated from the uniform policy's log, against its true value
        a, b = ts.posterior(names_all.tolist())
        post = a / (a + b)
        target, truth = [], []
        for t, j in zip(log_rounds, log_choice):
            u = arrivals[t]
            pool = pools[u]
            allowed = margin_ok[pool] & stock[t]
            ok = np.flatnonzero(allowed)
            g = int(ok[post[pool[ok]].argmax()])
            target.append(0.3 / len(ok) + 0.7 * (j == g))
            truth.append(0.7 * click[u, g] + 0.3 * click[u, ok].mean())
        est = evaluate_policy(np.array(log_rewards), np.array(log_props), np.array(target))
        ope.append({"seed": seed, "true_value": float(np.mean(truth)), "logging_value": float(np.mean(log_rewards)),
                    "ips": est["ips"], "snips": est["snips"], "effective_sample_size": est["effective_sample_size"]})
    final = {k: {"mean": float(np.mean([c[-1] for c in v])), "min": float(np.min([c[-1] for c in v])),
                 "max": float(np.max([c[-1] for c in v])), "per_seed": [float(c[-1]) for c in v]}
             for k, v in curves.items()}
    late = {k: float(np.mean([(c[-1] - c[int(0.8 * len(c))]) / (len(c) - int(0.8 * len(c))) for c in v]))
            for k, v in curves.items()}
    result = {"rounds": args.rounds, "seeds": args.seeds, "new_items": args.new_items, "pool": args.pool,
              "appeal_sd": args.appeal, "slot": SLOT, "regret_per_decision_last_20pct": late,
              "allowed_share": float(np.mean(allowed_share)), "mean_click_rate": float(click.mean()),
              "final_cumulative_regret": final, "ope": ope,
              "ope_covered": {est: sum(o[est]["ci"][0] <= o["true_value"] <= o[est]["ci"][1] for o in ope)
                              for est in ("ips", "snips")},
              "wall_s": time.time() - t0, "loadavg": [load0, os.getloadavg()],
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip()}
    print(json.dumps(result, indent=1))
    (RESULTS / "experiments_bandits.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=90)
    x = np.arange(1, args.rounds + 1)
    labels = {"thompson": "Thompson sampling", "epsilon_greedy": "ε-greedy (ε = 0.1)", "uniform": "uniform"}
    for k, v in curves.items():
        ax.plot(x, np.mean(v, axis=0), label=labels[k])
        ax.fill_between(x, np.min(v, axis=0), np.max(v, axis=0), alpha=0.15)
    ax.set_xlabel("exploration decisions")
    ax.set_ylabel("cumulative regret (expected clicks lost)")
    ax.set_title(f"exploration slot: {args.new_items} new items, each shopper's top {args.pool}, {args.seeds} seeds",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "experiments_bandits.png")
    print(f"written: {RESULTS / 'experiments_bandits.json'}, experiments_bandits.png")


if __name__ == "__main__":
    sys.exit(main())
