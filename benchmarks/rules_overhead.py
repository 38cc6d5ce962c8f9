"""What a 50-rule merchandising set adds to a request, measured against no rules in the same run.

A model is trained on the synthetic storefront; then single requests (homepage and product page, random shoppers
with their online state, random device and segments) are answered by ``Pipeline.recommend`` alternately without
rules and with a published 50-rule set using every action and condition (pins with campaign windows, boosts,
buries, blocks, filters, margin floors, caps, reserved slots; placement, device, segment, time, attribute,
price, stock and margin conditions). The same request is timed both ways, interleaved, so drift cancels; the
added latency is reported as percentiles of the per-request difference and as the ratio of percentiles.

Run:  .venv/bin/python benchmarks/rules_overhead.py [--items 12000 --shoppers 10000 --events 300000 --requests 4000]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shelfwise.request import RecRequest
from shelfwise.rules import CompiledRules, ItemFacts, RulesStage, StaticRules, parse_ruleset
from shelfwise.settings import DiversitySettings, ModelSettings
from shelfwise.training import fit_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shop_common import single_requests, sqlite_storefront  # noqa: E402

SEGMENTS = ["vip", "new", "b2b", "student", "returning"]
DEVICES = ["mobile", "desktop", "tablet"]


def fifty_rules(shop, now: float) -> dict:
    """A realistic 50-rule set over the synthetic catalog (every action and condition)."""
    rng = random.Random(7)
    items = shop.items
    brands = sorted({it.brand for it in items if it.brand})
    leaves = sorted({" > ".join(it.category) for it in items})
    roots = sorted({it.category[0] for it in items})
    ids = [it.id for it in items]
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    live = {"start": iso(now - 86400), "end": iso(now + 7 * 86400)}
    past = {"start": iso(now - 30 * 86400), "end": iso(now - 20 * 86400)}
    rules = []

    def add(action, match=None, when=None, priority=0):
        r = {"id": f"r{len(rules):02d}", "priority": priority, "action": action}
        if match:
            r["match"] = match
        if when:
            r["when"] = when
        rules.append(r)

    for i in range(8):
        add({"type": "boost", "multiply": round(1.1 + 0.1 * i, 2)}, {"brands": rng.sample(brands, 2)})
    for i in range(4):
        add({"type": "boost", "add": 0.05}, {"categories": [rng.choice(leaves)], "price": {"max": 100}},
            when={"devices": [DEVICES[i % 3]]})
    for i in range(4):
        add({"type": "boost", "multiply": 1.5}, {"attributes": {"color": rng.choice(["Black", "White", "Blue"])},
                                                 "stock": {"min": 5}}, when={"segments": [SEGMENTS[i]]})
    for i in range(6):
        add({"type": "bury", "multiply": 0.7}, {"categories": [rng.choice(leaves)], "margin": {"max": 0.1}})
    add({"type": "bury", "subtract": 0.1}, {"tags": ["new"], "not": {"brands": brands[:3]}})
    add({"type": "bury", "multiply": 0.5}, {"stock": {"max": 3}})
    for i in range(3):
        add({"type": "block"}, {"ids": rng.sample(ids, 20)})
    add({"type": "block"}, {"brands": [brands[-1]]}, when={"placements": ["pdp_similar"]})
    add({"type": "block"}, {"categories": [leaves[-1]]}, when={"segments": ["b2b"]})
    add({"type": "block"}, {"attributes": {"color": "Gold"}, "price": {"min": 2000}})
    add({"type": "filter"}, {"price": {"max": 500}}, when={"segments": ["student"]})
    add({"type": "filter"}, {"categories": roots[:4]}, when={"segments": ["b2b"], "placements": ["homepage"]})
    add({"type": "margin_floor", "min_margin": 0.05})
    add({"type": "margin_floor", "min_margin": 0.1, "mode": "bury", "multiply": 0.8}, {"categories": roots[:2]})
    add({"type": "margin_floor", "min_margin": 0.5, "mode": "bury", "multiply": 0.9},
        {"categories": ["Accessories"]}, when={"devices": ["mobile"]})
    add({"type": "margin_floor", "min_margin": 0.02, "unknown": "drop"}, when={"placements": ["homepage"]})
    add({"type": "cap", "by": "brand", "max": 3})
    add({"type": "cap", "by": "category", "max": 4})
    add({"type": "cap", "by": "top_category", "max": 6}, when={"placements": ["homepage"]})
    add({"type": "cap", "by": "brand", "max": 1, "strict": True}, {"categories": ["Accessories"]},
        when={"devices": ["mobile"]})
    add({"type": "slot", "position": 4}, {"categories": ["Accessories", "Replacement Parts"], "margin": {"min": 0.4}},
        priority=5)
    add({"type": "slot", "position": 8}, {"new_within_days": 30}, when={"placements": ["homepage"]})
    add({"type": "slot", "position": 2, "count": 2}, {"brands": brands[:2]}, when=live)
    add({"type": "slot", "position": 6}, {"categories": ["Replacement Parts"]}, when={"segments": ["returning"]})
    add({"type": "pin", "items": rng.sample(ids, 2), "slot": 1}, when=live, priority=20)
    add({"type": "pin", "items": rng.sample(ids, 1), "slot": 3}, when={**past}, priority=20)
    add({"type": "pin", "items": rng.sample(ids, 1), "slot": 1}, when={"devices": ["tablet"]}, priority=30)
    add({"type": "pin", "items": rng.sample(ids, 3), "slot": 5}, when={"segments": ["vip"], **live}, priority=10)
    add({"type": "pin", "items": rng.sample(ids, 1), "slot": 2}, when={"placements": ["pdp_similar"]})
    while len(rules) < 50:
        add({"type": "boost", "multiply": 1.05}, {"ids": rng.sample(ids, 30)})
    kinds = sorted({r["action"]["type"] for r in rules})
    assert len(rules) == 50 and len(kinds) == 8, kinds
    return {"description": "benchmark: 50 rules, every action and condition", "rules": rules}


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rules_overhead.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    shop, store, tmp = sqlite_storefront(args.items, args.shoppers, args.events, args.seed)
    pipe = fit_pipeline(store.scan(), store, ModelSettings()).pipeline
    now = (shop.end + timedelta(hours=1)).timestamp()
    catalog = {it.id: it for it in shop.items}
    doc = fifty_rules(shop, now)
    rs = parse_ruleset(doc, ModelSettings().placements)
    tc = time.perf_counter()
    CompiledRules([("bench", rs)], pipe.items, ItemFacts.build(pipe.items, catalog))
    compile_s = time.perf_counter() - tc
    stage = RulesStage(StaticRules({"bench": rs}), catalog)
    print(f"setup {time.perf_counter() - t0:.0f}s; compile 50 rules over {len(pipe.items)} items: "
          f"{compile_s * 1000:.1f} ms", file=sys.stderr)
    reqs = single_requests(shop, pipe, store, args.requests, now, ModelSettings().history_length,
                           lambda rng: {"device": rng.choice(DEVICES),
                                        "segments": rng.sample(SEGMENTS, rng.randint(0, 2))})

    confs = list(pipe.settings.placements.values())
    plain, diverse = DiversitySettings(), DiversitySettings(mmr_lambda=0.8)

    def timed(rules, kw, mmr: bool = False) -> tuple[float, float]:
        pipe.rules = rules
        for conf in confs:
            conf.diversity = diverse if mmr else plain
        req = RecRequest(**kw)
        c, t = time.thread_time(), time.perf_counter()
        pipe.recommend([req])
        return time.perf_counter() - t, time.thread_time() - c

    with threadpool_limits(1, "blas"):  # as the API serves (one BLAS thread per request)
        world = stage.live(pipe.items)
        sigs = {world.signature(RecRequest(**kw), kw["placement"]) for kw in reqs}
        tc = time.perf_counter()
        for sig in sigs:  # what a request with a new combination of active rules pays once (then cached)
            world._combine(sig)
        combine_ms = (time.perf_counter() - tc) * 1000 / len(sigs)
        for kw in reqs:  # warm-up: steady state (compiled rule set, cached effects per combination)
            pipe.rules = stage
            pipe.recommend([RecRequest(**kw)])
            pipe.rules = None
            pipe.recommend([RecRequest(**kw)])
        for kw in reqs[:300]:
            timed(stage, kw, True)
        base, rules_t, mmr_t, both_t = [], [], [], []
        gc.disable()
        for i, kw in enumerate(reqs):
            if i % 2:
                rules_t.append(timed(stage, kw))
                base.append(timed(None, kw))
            else:
                base.append(timed(None, kw))
                rules_t.append(timed(stage, kw))
            if i % 4 == 0:  # diversity, for information (a quarter of the requests)
                mmr_t.append(timed(None, kw, True))
                both_t.append(timed(stage, kw, True))
        gc.enable()
        timed(None, reqs[0])
        pipe.rules = stage
        active = [len(stage.live(pipe.items).signature(RecRequest(**kw), kw["placement"])[0]) for kw in reqs]
        pipe.rules = None
    def summary(b: np.ndarray, r: np.ndarray) -> dict:
        d = r - b
        return {
            "no_rules_ms": {"p50": round(pct(b, 50), 3), "p99": round(pct(b, 99), 3)},
            "with_rules_ms": {"p50": round(pct(r, 50), 3), "p99": round(pct(r, 99), 3)},
            "added_ms": {"p50": round(pct(r, 50) - pct(b, 50), 3), "p99": round(pct(r, 99) - pct(b, 99), 3),
                         "per_request_difference_p50": round(pct(d, 50), 3),
                         "per_request_difference_p99": round(pct(d, 99), 3)},
            "ratio": {"p50": round(pct(r, 50) / pct(b, 50), 3), "p99": round(pct(r, 99) / pct(b, 99), 3)},
        }

    base_a, rules_a = np.array(base) * 1000, np.array(rules_t) * 1000
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else []
    result = {
        "storefront": {"items": args.items, "shoppers": args.shoppers, "events": args.events, "seed": args.seed},
        "requests": len(reqs), "rules": 50, "compile_ms": round(compile_s * 1000, 2),
        "active_rule_combinations": len(sigs), "new_combination_ms": round(combine_ms, 3),
        "active_rules_per_request": {"mean": round(float(np.mean(active)), 1), "min": int(min(active)),
                                     "max": int(max(active))},
        "wall": summary(base_a[:, 0], rules_a[:, 0]),
        "cpu": summary(base_a[:, 1], rules_a[:, 1]),
        "mmr_0.8_cpu": {"no_rules_ms": {q: round(pct(np.array(mmr_t)[:, 1] * 1000, v), 3)
                                        for q, v in (("p50", 50), ("p99", 99))},
                        "50_rules_ms": {q: round(pct(np.array(both_t)[:, 1] * 1000, v), 3)
                                        for q, v in (("p50", 50), ("p99", 99))}},
        "load_average": load,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    store.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
