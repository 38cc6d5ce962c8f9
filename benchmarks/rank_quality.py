"""Learning to rank on the Amazon S3-Rec files: pipeline with ranker vs the best blend, in one run.

Protocol (leave-one-out, full ranking, as /work/shared/tools/seqbench.py): per shopper the last item is the test
target, models see ``seq[:-1]``, every catalog item is ranked, the shopper's history is excluded; HR@10 and
NDCG@10 over all shoppers (the seqbench ranking conventions, positions 0-based, ties by item index).

Stages (no stage sees the item it is scored on):
1. validation stage — sources fit on ``seq[:-2]`` (exactly ``ranking.labels.split_history(split="last")``'s
   prefix); blend weights tuned by coordinate ascent on NDCG@10 of ``seq[-2]`` (a sample of shoppers);
2. ranker rows — the same prefix-fit sources, candidates = top-120 of the tuned blend, labelled by ``seq[-2]``
   (``ranking.train.fit_ranker`` with this prefix, so the sources are not fit twice); early stopping on 20% of
   the shoppers;
3. test — sources refit on ``seq[:-1]``; every shopper's request goes through ``Pipeline.recommend`` with the
   tuned blend alone ("best blend") and with the ranker, scored on ``seq[-1]``.

Interactions are events like the S3-Rec importer stores them: ``purchase_completed``, one minute apart, one
session per shopper; item attributes (``*_item2attributes.json``) become catalog tags ``attr:<id>``.

    .venv/bin/python benchmarks/rank_quality.py beauty [--sources trending,covisit,copurchase,als,ease]
        [--json benchmarks/results/rank_beauty.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from shelfwise.domain import EventType, Item
from shelfwise.request import RecRequest
from shelfwise.ranking.labels import split_history
from shelfwise.ranking.train import _ListCatalog, fit_ranker, without_ranker
from shelfwise.settings import ModelSettings, PlacementSettings, RankerSettings
from shelfwise.stores.protocols import EventLog, Interaction, ShopperState
from shelfwise.training import fit_pipeline

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = {"beauty": ("amazon-beauty-s3rec", "Beauty"), "sports": ("amazon-sports-s3rec", "Sports_and_Outdoors")}
PUBLISHED = {"beauty": {"NDCG@10": 0.0611, "HR@10": 0.1008}, "sports": {"NDCG@10": 0.0335, "HR@10": 0.0565}}
EPOCH = 1_577_836_800.0  # 2020-01-01, the importer's synthetic clock
GRID = {"trending": [0, 0.01, 0.03, 0.1], "covisit": [0, 0.1, 0.3, 0.6, 1.0], "copurchase": [0, 0.1, 0.3, 0.6, 1.0],
        "als": [0, 0.05, 0.1, 0.2, 0.4], "ease": [0, 0.3, 0.6, 1.0], "sequence": [0, 0.3, 0.6, 1.0]}


def load(name: str) -> tuple[list[str], list[list[str]], dict[str, Item]]:
    folder, stem = DATASETS[name]
    users, seqs = [], []
    with gzip.open(SHARED / "datasets" / folder / f"{stem}.txt.gz", "rt") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                users.append(parts[0])
                seqs.append(parts[1:])
    items: dict[str, Item] = {}
    attr = SHARED / "datasets" / folder / f"{stem}_item2attributes.json.gz"
    if attr.exists():
        with gzip.open(attr, "rt") as f:
            for key, vals in json.load(f).items():
                items[key] = Item(id=key, tags=[f"attr:{a}" for a in vals])
    for s in seqs:
        for it in s:
            if it not in items:
                items[it] = Item(id=it)
    return users, seqs, items


def event_log(users: list[str], seqs: list[list[str]]) -> EventLog:
    lens = np.array([len(s) for s in seqs])
    shopper = np.repeat(np.array(users, dtype=object), lens)
    item = np.array([i for s in seqs for i in s], dtype=object)
    ts = EPOCH + np.concatenate([np.arange(n) * 60.0 for n in lens])
    n = len(item)
    return EventLog(shopper, shopper.copy(), item, np.full(n, int(EventType.purchase_completed), np.int8), ts,
                    np.full(n, "", dtype=object), np.ones(n, np.int32), np.full(n, np.nan))


def requests_for(users: list[str], hists: list[list[str]], k: int = 20) -> list[RecRequest]:
    out = []
    for u, h in zip(users, hists):
        recent = [Interaction(it, int(EventType.purchase_completed), EPOCH + 60.0 * j) for j, it in enumerate(h)]
        out.append(RecRequest("homepage", shopper=u, k=k, state=ShopperState(recent, set(h)),
                              now=EPOCH + 60.0 * len(h)))
    return out


def metrics(ranks: np.ndarray) -> dict[str, float]:
    hit = ranks < 10
    return {"HR@10": round(float(hit.mean()), 4),
            "NDCG@10": round(float(np.where(hit, 1 / np.log2(ranks + 2), 0).mean()), 4),
            "HR@20": round(float((ranks < 20).mean()), 4)}


def evaluate(pipe, reqs: list[RecRequest], targets: list[str], batch: int = 512) -> np.ndarray:
    ranks = np.full(len(reqs), np.inf)
    for start in range(0, len(reqs), batch):
        answers = pipe.recommend(reqs[start:start + batch])
        for r, ans in enumerate(answers):
            ids = [x.item_id for x in ans.items]
            t = targets[start + r]
            if t in ids:
                ranks[start + r] = ids.index(t)
    return ranks


def tune_blend(pipe, reqs: list[RecRequest], targets: list[str], names: list[str], sample: int,
               seed: int) -> tuple[dict[str, float], float]:
    """Coordinate ascent on the blend weights, NDCG@10 of the validation targets on a sample of shoppers."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(reqs), min(sample, len(reqs)), replace=False))
    reqs = [reqs[i] for i in pick]
    tgt = np.array([pipe.items.index[targets[i]] for i in pick])
    queries = [pipe.query(r) for r in reqs]
    conf = pipe.placement("homepage")
    banned = np.stack([pipe.exclusion_mask(r, q, conf) for r, q in zip(reqs, queries)])
    parts = {}
    for n in names:
        s = pipe.retrievers[n].score(queries)
        m = s.max(axis=1, keepdims=True)
        parts[n] = np.divide(s, m, out=np.zeros_like(s), where=m > 0)
    rows = np.arange(len(reqs))

    def ndcg(w: dict[str, float]) -> float:
        total = sum(v * parts[n] for n, v in w.items() if v)
        if isinstance(total, int):
            return 0.0
        total = np.where(banned, -np.inf, total)
        t = total[rows, tgt]
        rank = (total > t[:, None]).sum(1)
        rank = np.where(np.isfinite(t), rank, 10**9)
        return float(np.where(rank < 10, 1 / np.log2(rank + 2), 0).mean())

    w = {n: (1.0 if n == names[0] else 0.0) for n in names}
    best = ndcg(w)
    for n in names:  # start from the best single source
        single = {m: float(m == n) for m in names}
        v = ndcg(single)
        if v > best:
            best, w = v, single
    for _ in range(3):
        improved = False
        for n in names:
            for v in GRID.get(n, [0, 0.3, 1.0]) + [2.0, 3.0]:
                cand = dict(w, **{n: v})
                if not any(cand.values()):
                    continue
                score = ndcg(cand)
                if score > best + 1e-6:
                    best, w, improved = score, cand, True
        if not improved:
            break
    return {n: v for n, v in w.items() if v}, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--sources", default="trending,covisit,copurchase,als,ease")
    ap.add_argument("--tune-sample", type=int, default=6000)
    ap.add_argument("--set", action="append", default=[], help="RankerSettings override key=value")
    ap.add_argument("--seq", action="append", default=[], help="SequenceSettings override key=value")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    t_start = time.perf_counter()
    names = a.sources.split(",")
    users, seqs, items = load(a.dataset)
    over = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    seq_over = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.seq)}
    base = ModelSettings()
    ranker_settings = RankerSettings(**({"enabled": True, "split": "last", "max_requests": 10**6} | over))
    settings = base.model_copy(update={
        "ranker": ranker_settings, "history_length": 50,
        "sequence": base.sequence.model_copy(update={"progress": False, **seq_over}),
        "placements": {**base.placements, "homepage": PlacementSettings(weights={n: 1.0 for n in names})}})
    log_test = event_log(users, [s[:-1] for s in seqs])
    catalog = _ListCatalog(list(items.values()))
    out: dict = {"dataset": a.dataset, "users": len(users), "items": len(items),
                 "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
                 "sources": names, "ranker_settings": ranker_settings.model_dump(mode="json"), "seconds": {}}
    print(f"{a.dataset}: {len(users)} users, {len(items)} items", file=sys.stderr)

    # 1. validation stage: sources on seq[:-2] (= the ranker's prefix), blend weights tuned on seq[-2]
    split = split_history(log_test, ranker_settings, settings.history_length)
    t = time.perf_counter()
    prefix = fit_pipeline(split.prefix, catalog, without_ranker(settings), tuple(names))
    out["seconds"]["fit_sources_prefix"] = round(time.perf_counter() - t, 1)
    print("prefix sources", prefix.seconds, file=sys.stderr)
    t = time.perf_counter()
    val_reqs = requests_for(users, [s[:-2] for s in seqs])
    weights, val_ndcg = tune_blend(prefix.pipeline, val_reqs, [s[-2] for s in seqs], names, a.tune_sample, 0)
    out["seconds"]["tune_blend"] = round(time.perf_counter() - t, 1)
    out["blend_weights"] = weights
    out["blend_valid_ndcg10_sample"] = round(val_ndcg, 4)
    print("tuned blend", weights, round(val_ndcg, 4), file=sys.stderr)
    settings = settings.model_copy(update={"placements": {**settings.placements,
                                                          "homepage": PlacementSettings(weights=weights)}})
    prefix.pipeline.settings = without_ranker(settings)

    # 3a. final sources on seq[:-1]
    t = time.perf_counter()
    final = fit_pipeline(log_test, catalog, without_ranker(settings), tuple(names))
    out["seconds"]["fit_sources_final"] = round(time.perf_counter() - t, 1)
    # 2. ranker: rows from the prefix-fit sources labelled by seq[-2]
    t = time.perf_counter()
    ranker = fit_ranker(log_test, items, settings, final.data, tuple(names), prefix=prefix)
    out["seconds"]["fit_ranker"] = round(time.perf_counter() - t, 1)
    out["ranker_report"] = ranker.report
    out["importance_gain"] = ranker.importances("gain")
    print("ranker", ranker.report, file=sys.stderr)

    # 3b. test: the same requests through Pipeline.recommend, without and with the ranker
    reqs = requests_for(users, [s[:-1] for s in seqs])
    targets = [s[-1] for s in seqs]
    pipe = final.pipeline
    pipe.settings = settings
    res = {}
    for label, rk in (("best blend", None), ("blend + ranker", ranker)):
        pipe.ranker = rk
        t = time.perf_counter()
        res[label] = metrics(evaluate(pipe, reqs, targets))
        res[label]["eval_s"] = round(time.perf_counter() - t, 1)
        print(label, res[label], file=sys.stderr)
    pipe.ranker = None
    for n in names:  # each source alone (context)
        pipe.settings = settings.model_copy(update={"placements": {**settings.placements,
                                                                   "homepage": PlacementSettings(weights={n: 1.0})}})
        res[f"{n} alone"] = metrics(evaluate(pipe, reqs, targets))
    out["test"] = res
    b, r = res["best blend"]["NDCG@10"], res["blend + ranker"]["NDCG@10"]
    out["ndcg_gain_pct"] = round(100 * (r / b - 1), 1) if b else None
    out["vs_published"] = {k: {"published": v, "ours": res["blend + ranker"][k],
                               "gap_pct": round(100 * (res["blend + ranker"][k] / v - 1), 1)}
                           for k, v in PUBLISHED[a.dataset].items()}
    out["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("dataset", "blend_weights", "test", "ndcg_gain_pct", "vs_published",
                                          "seconds")}, indent=1))


if __name__ == "__main__":
    main()
