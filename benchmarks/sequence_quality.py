"""Leave-one-out full-ranking quality of the sequence model (alone) and of the blended homepage pipeline.

Protocol (as /work/shared/tools/seqbench.py, whose ranking code is used for the reported numbers): every
shopper's last item is the target, the models are trained on ``sequence[:-1]``, every catalog item is ranked
and the shopper's own history is excluded; HR@10 / NDCG@10 averaged over shoppers.
``--target valid`` drops the test item first (trains on ``sequence[:-2]``, targets ``sequence[-2]``): the
validation target on which the blend weights are tuned (``--grid``) without touching the test items.

Interactions are indexed like the S3-Rec importer stores them: each is a ``purchase_completed``, one minute
apart, a shopper's whole sequence one session.

    .venv/bin/python benchmarks/sequence_quality.py beauty [--sources sequence,covisit,als,trending]
        [--blend] [--grid] [--target test|valid] [--set dim=64 --set dropout=0.5 ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from shelfwise.domain import EventType
from shelfwise.pipeline import Pipeline
from shelfwise.request import Query
from shelfwise.retrieval import TrainData, build_retrievers, load_retriever
from shelfwise.items import ItemTable
from shelfwise.settings import ModelSettings, SequenceSettings

DATASETS = {
    "beauty": "amazon-beauty-s3rec/Beauty.txt.gz",
    "sports": "amazon-sports-s3rec/Sports_and_Outdoors.txt.gz",
}
SHARED = Path(__file__).resolve().parents[2] / "shared"
RESULTS = Path(__file__).resolve().parent / "results"


def seqbench():
    spec = importlib.util.spec_from_file_location("seqbench", SHARED / "tools" / "seqbench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def build_data(users: list[str], seqs: list[list[int]], weights) -> tuple[TrainData, list[np.ndarray]]:
    """TrainData of the given sequences; the vocabulary is every item of the file (the catalog)."""
    vocab = sorted({i for s in seqs for i in s})
    table = ItemTable.build([str(i) for i in vocab], {})
    pos = {v: j for j, v in enumerate(vocab)}
    idx = [np.array([pos[i] for i in s], np.int32) for s in seqs]
    return table, idx


def train_data(table: ItemTable, users: list[str], hist: list[np.ndarray], weights) -> TrainData:
    lens = np.array([len(h) for h in hist])
    user = np.repeat(np.arange(len(hist)), lens).astype(np.int32)
    item = np.concatenate(hist).astype(np.int32)
    kind = np.full(len(item), int(EventType.purchase_completed), np.int8)
    ts = np.concatenate([np.arange(n, dtype=np.float64) * 60.0 for n in lens])
    w = np.full(len(item), weights.purchase_completed, np.float32)
    return TrainData(table, np.array(users, dtype=object), user, item, kind, ts, user.astype(np.int64),
                     np.arange(len(item), dtype=np.int64), w)


def queries_of(hist: list[np.ndarray]) -> list[Query]:
    return [Query(user=u, history=h, history_kind=np.full(len(h), int(EventType.purchase_completed), np.int8),
                  history_ts=np.arange(len(h), dtype=np.float64) * 60.0) for u, h in enumerate(hist)]


def fast_ranks(scores: np.ndarray, hist: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target with the history excluded (count of strictly better items)."""
    r = np.arange(len(scores))
    t = scores[r, targets]
    rows = np.repeat(r, [len(h) for h in hist])
    cols = np.concatenate(hist)
    better_in_hist = np.bincount(rows, weights=scores[rows, cols] > t[rows], minlength=len(scores))
    rank = (scores > t[:, None]).sum(1) - better_in_hist
    in_hist = np.zeros(len(scores), bool)
    in_hist[rows[cols == targets[rows]]] = True
    return np.where(in_hist, np.inf, rank.astype(float))


def seqbench_ranks(sb, scores: np.ndarray, hist: list[np.ndarray], targets: np.ndarray) -> list:
    """seqbench.topk_ranks on our 0-based vocabulary (seqbench masks column 0: its item ids start at 1)."""
    return list(sb.topk_ranks(np.pad(scores, ((0, 0), (1, 0))), [h + 1 for h in hist], targets + 1))


def metrics(ranks: np.ndarray) -> dict[str, float]:
    ranks = np.asarray(ranks, float)
    hit = ranks < 10
    return {"HR@10": round(float(hit.mean()), 4),
            "NDCG@10": round(float(np.where(hit, 1 / np.log2(ranks + 2), 0).mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="beauty, sports or a path to an S3-Rec file")
    ap.add_argument("--sources", default="sequence", help="comma-separated sources to fit and score alone")
    ap.add_argument("--blend", action="store_true", help="also score the homepage blend of the sources")
    ap.add_argument("--grid", action="store_true", help="search homepage blend weights (use with --target valid)")
    ap.add_argument("--weights", default="", help="homepage weights, e.g. sequence=1,covisit=0.3")
    ap.add_argument("--target", choices=("test", "valid"), default="test")
    ap.add_argument("--split-users", action="store_true",
                    help="with --grid: choose weights on even-numbered shoppers, report on odd-numbered ones")
    ap.add_argument("--set", action="append", default=[], help="SequenceSettings override key=value")
    ap.add_argument("--json", default="")
    ap.add_argument("--save", default="", help="directory to save the fitted sequence model in (for ann_recall.py)")
    ap.add_argument("--load", default="", help="directory of a sequence model saved by --save on the same data "
                                               "and target: reused instead of fitting again")
    a = ap.parse_args()

    sb = seqbench()
    path = Path(a.dataset) if os.path.exists(a.dataset) else SHARED / "datasets" / DATASETS[a.dataset]
    users, seqs = sb.load(str(path))
    if a.target == "valid":
        seqs = [s[:-1] for s in seqs]
    seq_over = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        seq_over[k] = json.loads(v) if v[:1] in "0123456789-[{tf" else v
    base = ModelSettings()
    settings = base.model_copy(update={"sequence": SequenceSettings(**(base.sequence.model_dump() | seq_over))})
    if a.weights:
        w = {k: float(v) for k, v in (p.split("=") for p in a.weights.split(","))}
        settings.placements["homepage"].weights = w
    table, idx = build_data(users, seqs, settings.event_weights)
    hist = [h[:-1] for h in idx]
    targets = np.array([h[-1] for h in idx])
    data = train_data(table, users, hist, settings.event_weights)
    print(f"{path.name} target={a.target}: users={data.n_users} items={data.n_items} events={len(data.item)}",
          file=sys.stderr)

    names = tuple(a.sources.split(","))
    retrievers = build_retrievers(settings, names)
    out: dict = {"dataset": path.name, "target": a.target, "machine": f"{platform.machine()} {os.cpu_count()} cores",
                 "settings": {"sequence": settings.sequence.model_dump()}, "sources": {}}
    for name, r in list(retrievers.items()):
        t0 = time.perf_counter()
        if name == "sequence" and a.load:
            saved = json.loads((Path(a.load) / "histories.json").read_text())
            if saved != [h.tolist() for h in hist]:
                raise SystemExit(f"{a.load} was fitted on other data or another target")
            r = retrievers[name] = load_retriever("sequence", Path(a.load))
        else:
            r.fit(data)
        out["sources"][name] = {"fit_s": round(time.perf_counter() - t0, 1)}
        if name == "sequence":
            out["sources"][name]["report"] = r.report
            if a.save and not a.load:
                Path(a.save).mkdir(parents=True, exist_ok=True)
                r.save(Path(a.save))
                (Path(a.save) / "histories.json").write_text(json.dumps([h.tolist() for h in hist]))
        print(name, "fit", out["sources"][name], file=sys.stderr)
    pipe = Pipeline(settings, data.items, retrievers, data.shopper_index)
    queries = queries_of(hist)
    hist_cols = [h for h in hist]
    ranks: dict[str, list] = {n: [] for n in names}
    blend_ranks: list = []
    grid_w = None
    if a.grid:
        steps = {"sequence": [0, 1.0], "covisit": [0, 0.1, 0.2, 0.4, 1.0], "als": [0, 0.05, 0.1, 0.3],
                 "trending": [0, 0.02, 0.05], "copurchase": [0, 0.1, 0.3]}
        combos = list(itertools.product(*[steps.get(n, [0, 0.3, 1.0]) for n in names]))
        grid_w = {c: [] for c in combos}
    t0 = time.perf_counter()
    for start in range(0, len(queries), 1024):
        sl = slice(start, start + 1024)
        qs, hs, ts = queries[sl], hist_cols[sl], targets[sl]
        parts = {}
        for name, r in retrievers.items():
            s = r.score(qs)
            ranks[name] += seqbench_ranks(sb, s, hs, ts)
            m = s.max(axis=1, keepdims=True)
            parts[name] = np.divide(s, m, out=np.zeros_like(s), where=m > 0)
        if a.blend:
            total, _ = pipe.blend(qs, "homepage")
            blend_ranks += seqbench_ranks(sb, total, hs, ts)
        if grid_w is not None:
            for c in grid_w:
                total = sum(w * parts[n] for n, w in zip(names, c) if w)
                if isinstance(total, int):
                    continue
                grid_w[c] += list(fast_ranks(total, hs, ts))
    out["score_s"] = round(time.perf_counter() - t0, 1)
    for name in names:
        out["sources"][name].update(metrics(ranks[name]))
        print(name, out["sources"][name].get("HR@10"), out["sources"][name].get("NDCG@10"), file=sys.stderr)
    if a.blend:
        out["blend"] = {"weights": settings.placements["homepage"].weights, **metrics(blend_ranks)}
        print("blend", out["blend"], file=sys.stderr)
    if grid_w is not None:
        # --split-users: weights chosen on the even-numbered shoppers, reported on the odd-numbered ones (the
        # test items of the shoppers a setting is reported on never chose it)
        even = np.arange(len(targets)) % 2 == 0
        pick = even if a.split_users else np.ones(len(targets), bool)
        table_g = sorted(((metrics(np.array(r)[pick])["NDCG@10"], metrics(np.array(r)[pick])["HR@10"],
                           dict(zip(names, c)), c) for c, r in grid_w.items() if r), key=lambda x: -x[0])
        out["grid_top"] = [{"NDCG@10": n, "HR@10": h, "weights": w} for n, h, w, _ in table_g[:15]]
        for row in table_g[:15]:
            print("grid", row[:3], file=sys.stderr)
        if a.split_users:
            odd = ~even
            best = table_g[0]
            out["split_users"] = {
                "chosen_on_even": best[2],
                "odd_shoppers": {"blend": metrics(np.array(grid_w[best[3]])[odd]),
                                 **{n: metrics(np.array(ranks[n])[odd]) for n in names}},
            }
            print("split_users", out["split_users"], file=sys.stderr)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "settings"}))


if __name__ == "__main__":
    main()
