"""Merchandising report on the synthetic storefront: what diversity and a margin slot rule do to the rails.

For each configuration, on a held-out time split (train on everything before the last ``--holdout-days``):

* NDCG@12 / HR@12 of the homepage rail against each returning shopper's *next* new item after the split (the
  evaluation protocol: the shopper's training history is excluded from the list);
* the rails a storefront would serve those shoppers (homepage, "similar" on the last viewed product, cart upsell
  on the last carted or viewed product; k=12 each): share of impressions going to high-margin accessories and
  replacement parts (synthetic kind accessory/replacement-part with margin >= 55%; devices have 5-15%), the share
  of replacement parts alone and of all accessories/parts, catalog coverage (distinct SKUs shown / servable SKUs),
  and the mean margin of shown items.

Run:  .venv/bin/python benchmarks/merch_report.py [--items 4000 --shoppers 5000 --events 200000 --seed 42]
Writes benchmarks/results/merch_report.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from shelfwise.evaluation.metrics import per_user
from shelfwise.evaluation.runner import shopper_views
from shelfwise.evaluation.splits import temporal
from shelfwise.request import RecRequest
from shelfwise.rules import RulesStage, StaticRules
from shelfwise.settings import DiversitySettings, ModelSettings, ScoreWeights
from shelfwise.synthetic import ACCESSORY, PART
from shelfwise.training import fit_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shop_common import sqlite_storefront  # noqa: E402

K = 12
HIGH_MARGIN = 0.55  # "high-margin": the upper half of the synthetic accessory margin range (40-70%); devices 5-15%
PLACEMENTS = ("homepage", "pdp_similar", "cart_upsell")

MARGIN_SLOT = {"description": "one slot for a high-margin accessory or replacement part", "rules": [
    {"id": "margin-slot", "priority": 10,
     "when": {"placements": list(PLACEMENTS)},
     "match": {"categories": ["Accessories", "Replacement Parts"], "margin": {"min": HIGH_MARGIN}},
     "action": {"type": "slot", "position": 4}},
]}
PARTS_SLOT = {"description": "one slot for a replacement part", "rules": [
    {"id": "parts-slot", "priority": 10, "when": {"placements": list(PLACEMENTS)},
     "match": {"categories": ["Replacement Parts"]}, "action": {"type": "slot", "position": 4}},
]}
DIVERSITY = DiversitySettings(mmr_lambda=0.8)
BUSINESS = ScoreWeights(relevance=1.0, trend=0.05, margin=0.02, freshness=0.01)
CONFIGS = {
    "baseline (defaults: relevance only, no diversity, no rules)": dict(diversity=None, rules=None, score=None),
    "diversity (MMR λ=0.8)": dict(diversity=DIVERSITY, rules=None, score=None),
    "margin slot rule": dict(diversity=None, rules=MARGIN_SLOT, score=None),
    "diversity + margin slot rule": dict(diversity=DIVERSITY, rules=MARGIN_SLOT, score=None),
    "diversity + replacement-part slot rule": dict(diversity=DIVERSITY, rules=PARTS_SLOT, score=None),
    "business score 1/.05 trend/.02 margin/.01 fresh": dict(diversity=None, rules=None, score=BUSINESS),
    "business score + diversity + margin slot rule": dict(diversity=DIVERSITY, rules=MARGIN_SLOT, score=BUSINESS),
}

SWEEP = {f"MMR λ={lam}": dict(diversity=DiversitySettings(mmr_lambda=lam), score=None) for lam in (0.5, 0.7, 0.9)}
SWEEP |= {
    "trend 0.05 alone": dict(diversity=None, score=ScoreWeights(trend=0.05)),
    "margin 0.03 alone": dict(diversity=None, score=ScoreWeights(margin=0.03)),
    "margin 0.05 alone": dict(diversity=None, score=ScoreWeights(margin=0.05)),
    "stock 0.02 alone": dict(diversity=None, score=ScoreWeights(stock=0.02)),
    "freshness 0.02 alone": dict(diversity=None, score=ScoreWeights(freshness=0.02)),
}


def configure(pipe, catalog, diversity, rules, score) -> None:
    for conf in pipe.settings.placements.values():
        conf.diversity = diversity or DiversitySettings()
        conf.score = score or ScoreWeights()
    pipe._reranker = None
    pipe.rules = RulesStage(StaticRules({"report": rules}), catalog) if rules else None


def serve(pipe, reqs: list[RecRequest]) -> tuple[list[list[str]], float]:
    out: list[list[str]] = []
    t0 = time.perf_counter()
    for start in range(0, len(reqs), 512):
        out += [[r.item_id for r in a.items] for a in pipe.recommend(reqs[start:start + 512])]
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--shoppers", type=int, default=5000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--holdout-days", type=float, default=7.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "merch_report.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    shop, store, tmp = sqlite_storefront(args.items, args.shoppers, args.events, args.seed)
    log = store.scan()
    split_time = shop.end.timestamp() - args.holdout_days * 86400
    split = temporal(log, split_time=split_time)
    ms = ModelSettings()
    fitted = fit_pipeline(split.train, store, ms)
    pipe = fitted.pipeline
    catalog = {it.id: it for it in shop.items}
    views = shopper_views(split, ms.history_length)
    targets = [[t[0]] for t in split.targets]  # the next new item
    print(f"storefront {args.items} items / {args.shoppers} shoppers / {len(log)} interactions; "
          f"{len(split.users)} returning shoppers evaluated; setup {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    idx = pipe.items.index
    kind = {iid: shop.kinds.get(iid, "") for iid in idx}
    margin = {iid: float(pipe.items.margin[j]) for iid, j in idx.items()}
    price = {iid: float(pipe.items.price[j]) for iid, j in idx.items()}
    high = {iid for iid in idx if kind[iid] in (ACCESSORY, PART) and margin[iid] >= HIGH_MARGIN}
    servable = int(pipe.items.servable.sum())
    catalog_high_share = len(high & {str(x) for x in pipe.items.ids[pipe.items.servable]}) / max(servable, 1)

    ndcg_reqs = [RecRequest("homepage", shopper=u, k=K, exclude=views.exclude[i], state=views.states[i],
                            now=split.now) for i, u in enumerate(split.users)]
    rail_reqs: list[RecRequest] = []
    for i, u in enumerate(split.users):
        st = views.states[i]
        rail_reqs.append(RecRequest("homepage", shopper=u, k=K, state=st, now=split.now))
        viewed = [x.item_id for x in st.recent if x.kind == 0]
        carted = [x.item_id for x in st.recent if x.kind == 1] or viewed
        if viewed:
            rail_reqs.append(RecRequest("pdp_similar", shopper=u, item_id=viewed[-1], k=K, state=st, now=split.now))
        if carted:
            rail_reqs.append(RecRequest("cart_upsell", shopper=u, cart=[carted[-1]], k=K, state=st, now=split.now))

    results = {}
    base_ndcg = None
    for name, conf in CONFIGS.items():
        configure(pipe, catalog, **conf)
        lists, t_ndcg = serve(pipe, ndcg_reqs)
        m = per_user(lists, targets, ks=(K,))
        ndcg = m[f"NDCG@{K}"]
        base_ndcg = ndcg if base_ndcg is None else base_ndcg
        diff = ndcg - base_ndcg
        rails, t_rails = serve(pipe, rail_reqs)
        shown = [it for lst in rails for it in lst]

        def share(pred, items=shown) -> float:
            return round(sum(pred(it) for it in items) / max(len(items), 1), 4)

        by_placement = {pl: share(lambda it: it in high, [it for r, lst in zip(rail_reqs, rails)
                                                          if r.placement == pl for it in lst]) for pl in PLACEMENTS}
        exp_margin = sum(price[it] * margin[it] / math.log2(p + 2) for lst in rails for p, it in enumerate(lst)
                         if np.isfinite(margin[it]) and np.isfinite(price[it])) / max(len(rails), 1)
        results[name] = {
            "ndcg@12": round(float(ndcg.mean()), 4),
            "ndcg@12_vs_baseline": round(float(diff.mean()), 4),
            "ndcg@12_vs_baseline_se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 4),
            "hr@12": round(float(m[f"HR@{K}"].mean()), 4),
            "high_margin_acc_part_share": share(lambda it: it in high),
            "high_margin_share_by_placement": by_placement,
            "replacement_part_share": share(lambda it: kind[it] == PART),
            "all_acc_part_share": share(lambda it: kind[it] in (ACCESSORY, PART)),
            "coverage": round(len(set(shown)) / max(servable, 1), 4),
            "mean_margin_shown": round(float(np.nanmean([margin[it] for it in shown])), 4),
            "position_discounted_margin_per_rail": round(exp_margin, 2),
            "impressions": len(shown),
            "ms_per_request_batched": round(1000 * (t_ndcg + t_rails) / (len(ndcg_reqs) + len(rail_reqs)), 3),
        }
        print(f"{name}: {results[name]}", file=sys.stderr)

    sweep = {}  # NDCG only: how the diversity and business weights were chosen
    for label, conf in SWEEP.items():
        configure(pipe, catalog, rules=None, **conf)
        ndcg = per_user(serve(pipe, ndcg_reqs)[0], targets, ks=(K,))[f"NDCG@{K}"]
        diff = ndcg - base_ndcg
        sweep[label] = {"ndcg@12": round(float(ndcg.mean()), 4), "vs_baseline": round(float(diff.mean()), 4),
                        "se": round(float(diff.std(ddof=1) / math.sqrt(len(diff))), 4)}
        print(f"sweep {label}: {sweep[label]}", file=sys.stderr)

    report = {
        "storefront": {"items": args.items, "shoppers": args.shoppers, "events_requested": args.events,
                       "interactions": len(log), "seed": args.seed, "holdout_days": args.holdout_days,
                       "evaluated_shoppers": len(split.users), "rail_requests": len(rail_reqs),
                       "servable_items": servable, "high_margin_acc_part_catalog_share": round(catalog_high_share, 4)},
        "high_margin": f"synthetic kind accessory or replacement-part with margin >= {HIGH_MARGIN}",
        "rules": {"margin_slot": MARGIN_SLOT, "parts_slot": PARTS_SLOT}, "diversity": DIVERSITY.model_dump(),
        "business": BUSINESS.model_dump(),
        "results": results,
        "sweep": sweep,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("| configuration | NDCG@12 (± paired s.e. vs baseline) | HR@12 | high-margin acc./parts share | "
          "replacement parts share | all acc./parts share | coverage | mean margin shown |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ndcg@12']:.4f} ({r['ndcg@12_vs_baseline']:+.4f} ± {r['ndcg@12_vs_baseline_se']:.4f}) | "
              f"{r['hr@12']:.4f} | {r['high_margin_acc_part_share']:.1%} | {r['replacement_part_share']:.1%} | "
              f"{r['all_acc_part_share']:.1%} | {r['coverage']:.1%} | {r['mean_margin_shown']:.1%} |")
    store.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
