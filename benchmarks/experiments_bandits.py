"""Item exploration on the simulator: cumulative regret of Thompson sampling vs uniform exploration and ε-greedy,
and off-policy evaluation of a new policy from the exploration log.

An exploration slot (position 6 of the homepage rail) is filled from 200 candidate items of the synthetic
storefront (the generator's catalog; 20,000 shoppers with known preferences). Each round a shopper arrives (drawn
in proportion to their visit rate); the slot's item is clicked with probability examination(6) × the shopper's
true attraction to it. The caller's ``allowed`` mask is honoured every round: items under a 15 % margin floor are
never allowed, and a random 10 % of the rest are out of stock in that round. Regret of a round = the best
allowed item's expected click rate (over shoppers) − the chosen item's. Policies: ``bandits.ItemBandit``
(Thompson sampling, Beta(1, 30) prior), uniform random among the allowed items, ε-greedy (ε = 0.1). Five seeds.

Off-policy evaluation: from the uniform policy's log (its propensity is 1 / number of allowed items), IPS and
self-normalised IPS estimate the click rate the Thompson sampler's final greedy policy would have had, against
its true value.

Run:  .venv/bin/python benchmarks/experiments_bandits.py [--rounds 20000 --seeds 5]
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
SLOT = 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=3_000)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    t0 = time.time()
    load0 = os.getloadavg()
    pop = Population(n_shoppers=args.shoppers, n_items=args.items, seed=5,
                     model=BehaviourModel(buy_mean=0.08, visits_per_day=0.3))
    rng0 = np.random.default_rng(0)
    servable = np.flatnonzero(pop.servable)
    cand = np.sort(rng0.choice(servable, args.candidates, replace=False))
    names = pop.item_ids[cand].tolist()
    items = {it.id: it for it in pop.shop.items}
    margin_ok = np.array([(items[n].margin or 0.0) >= 0.15 for n in names])
    exam = pop.examine(SLOT + 1)[SLOT]
    weights = pop.visit_rate / pop.visit_rate.sum()
    shoppers = np.arange(len(pop.shoppers))
    att = np.zeros((len(shoppers), len(cand)))
    for start in range(0, len(shoppers), 1024):
        block = shoppers[start:start + 1024]
        ut = pop.utility_block(block)[:, cand]
        att[block] = 1 / (1 + np.exp(-(pop.model.attract_base + pop.model.attract_slope * ut)))
    click = att * exam
    mu = weights @ click  # expected click rate of each candidate at the slot
    curves: dict[str, list[np.ndarray]] = {"thompson": [], "epsilon_greedy": [], "uniform": []}
    ope = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        arrivals = rng.choice(len(shoppers), args.rounds, p=weights)
        masks = margin_ok[None, :] & (rng.random((args.rounds, len(cand))) >= 0.10)
        uniforms = rng.random((3, args.rounds))
        ts, eg = ItemBandit(prior_alpha=1.0, prior_beta=30.0), EpsilonGreedy(0.1)
        prng = {k: np.random.default_rng([seed, i]) for i, k in enumerate(curves)}
        regret = {k: np.zeros(args.rounds) for k in curves}
        log_rewards, log_props, log_choice, log_masks = [], [], [], []
        for t in range(args.rounds):
            u, allowed = arrivals[t], masks[t]
            best = mu[allowed].max()
            (pick, _), = ts.choose(names, allowed, 1, prng["thompson"], propensities=False)
            j = names.index(pick)
            ts.update([pick], [uniforms[0, t] < click[u, j]])
            regret["thompson"][t] = best - mu[j]
            pick = eg.choose(names, allowed, prng["epsilon_greedy"])
            j = names.index(pick)
            eg.update(pick, bool(uniforms[1, t] < click[u, j]))
            regret["epsilon_greedy"][t] = best - mu[j]
            ok = np.flatnonzero(allowed)
            j = int(ok[prng["uniform"].integers(len(ok))])
            regret["uniform"][t] = best - mu[j]
            log_rewards.append(float(uniforms[2, t] < click[u, j]))
            log_props.append(1.0 / len(ok))
            log_choice.append(j)
            assert allowed[names.index(pick)] and allowed[j]  # the mask is always honoured
        for k in curves:
            curves[k].append(np.cumsum(regret[k]))
        # OPE: the Thompson sampler's final greedy policy (highest posterior mean among the allowed items)
        a, b = ts.posterior(names)
        post_mean = a / (a + b)
        target_choice = np.array([int(np.flatnonzero(m)[post_mean[m].argmax()]) for m in masks])
        target_prob = (np.array(log_choice) == target_choice).astype(float)
        est = evaluate_policy(np.array(log_rewards), np.array(log_props), target_prob)
        truth = float(mu[target_choice].mean())
        ope.append({"seed": seed, "true_value": truth, "ips": est["ips"], "snips": est["snips"],
                    "effective_sample_size": est["effective_sample_size"]})
    final = {k: {"mean": float(np.mean([c[-1] for c in v])), "min": float(np.min([c[-1] for c in v])),
                 "max": float(np.max([c[-1] for c in v]))} for k, v in curves.items()}
    result = {"rounds": args.rounds, "seeds": args.seeds, "candidates": args.candidates, "slot": SLOT,
              "allowed_share": float(margin_ok.mean() * 0.9), "best_click_rate": float(mu[margin_ok].max()),
              "mean_click_rate": float(mu[margin_ok].mean()), "final_cumulative_regret": final,
              "ope": ope, "ope_covered": {est: sum(o[est]["ci"][0] <= o["true_value"] <= o[est]["ci"][1]
                                                   for o in ope) for est in ("ips", "snips")},
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
        m = np.mean(v, axis=0)
        ax.plot(x, m, label=labels[k])
        ax.fill_between(x, np.min(v, axis=0), np.max(v, axis=0), alpha=0.15)
    ax.set_xlabel("exploration decisions")
    ax.set_ylabel("cumulative regret (expected clicks lost)")
    ax.set_title(f"{args.candidates} candidates, margin floor + stock mask, {args.seeds} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "experiments_bandits.png")
    print(f"written: {RESULTS / 'experiments_bandits.json'}, experiments_bandits.png")


if __name__ == "__main__":
    sys.exit(main())
