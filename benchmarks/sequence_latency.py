"""Request-path latency of the sequence model at a 100k-item catalog, on one core.

Measures, per single-shopper request: encoding the shopper's last events (one torch forward pass, 1 thread)
plus the HNSW query for the top ``candidates`` items (1 thread), and the whole ``score()`` call (which also
scatters the candidates into the dense 100k-wide row the pipeline blends). The process is pinned to one core.
The model has the default architecture with seeded random weights (latency does not depend on the values;
random 64-d item vectors are the hardest case for HNSW), or, with ``--vectors-from``, a trained model whose
catalog is grown to ``--items`` by noisy copies of its trained item embeddings (the structure real embeddings
have). Recall of the same index against exact search at the
serving k is measured on the same queries. Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/sequence_latency.py [--items 100000] [--requests 2000] [--set hnsw_ef_search=300]
        [--vectors-from DIR] [--sweep 100:300,100:600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from shelfwise.request import Query
from shelfwise.retrieval.sequence import SequenceRetriever
from shelfwise.settings import SequenceSettings

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--set", action="append", default=[], help="SequenceSettings override key=value")
    ap.add_argument("--vectors-from", default="", help="a model saved by sequence_quality.py --save: its trained "
                                                       "encoder, and its item embeddings (plus noisy copies up to "
                                                       "--items) as the catalog")
    ap.add_argument("--sweep", default="", help="extra (candidates:ef_search) pairs measured on the same index, "
                                                 "e.g. 100:300,100:600,200:1000 (one HNSW build for all)")
    ap.add_argument("--json", default=str(RESULTS / "sequence_latency.json"))
    a = ap.parse_args()
    over = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    settings = SequenceSettings(**(over | {"progress": False}))

    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if a.vectors_from:  # a trained model, its catalog grown to --items around its own item embeddings
        model = SequenceRetriever.load(Path(a.vectors_from))
        model.settings = model.settings.model_copy(update=over)
        settings = model.settings
        trained = model.model.item.weight.detach().numpy()[1:]
        pick = rng.integers(0, len(trained), a.items - len(trained))
        noise = rng.normal(size=(len(pick), trained.shape[1])) * trained.std(axis=0) * 0.3
        grown = np.vstack([model.model.item.weight.detach().numpy(), trained[pick] + noise]).astype(np.float32)
        model.model.item = torch.nn.Embedding.from_pretrained(torch.from_numpy(grown), freeze=True, padding_idx=0)
        model.n_items = a.items
    else:  # the default architecture with seeded random weights
        model = SequenceRetriever(settings)
        model.n_items = a.items
        model.model = model._new_model()
    model.model.eval()
    with torch.no_grad():
        model.item_vectors = model.model.item_weights().numpy().astype(np.float32, copy=True)
    t0 = time.perf_counter()
    model._build_index()
    build_s = time.perf_counter() - t0

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core from here on
    torch.set_num_threads(1)
    lengths = rng.integers(1, settings.max_len + 1, a.requests)
    queries = [Query(history=rng.integers(0, a.items, n).astype(np.int32),
                     history_kind=rng.choice([0, 0, 0, 1, 3], n).astype(np.int8)) for n in lengths]
    def pct(x):
        x = np.asarray(x)
        return {"p50": round(float(np.percentile(x, 50)), 3), "p99": round(float(np.percentile(x, 99)), 3),
                "mean": round(float(x.mean()), 3)}

    def measure(k: int, ef: int) -> dict:
        """Per request: encode + HNSW top-k at this ef_search; recall@k against exact search."""
        model.settings = model.settings.model_copy(update={"candidates": k, "hnsw_ef_search": ef})
        model.index.ef_search = ef
        for q in queries[:50]:  # warm-up
            model.score([q])
        enc_ms, ann_ms, score_ms, cpu_ms = [], [], [], []
        vecs = []
        for q in queries:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            _, v = model.encode([q])
            t1 = time.perf_counter()
            model.candidates(v, k, exact=False)
            t2 = time.perf_counter()
            cpu_ms.append((time.thread_time() - c0) * 1e3)  # CPU time of this thread: excludes waiting for the core
            enc_ms.append((t1 - t0) * 1e3)
            ann_ms.append((t2 - t1) * 1e3)
            vecs.append(v[0])
        for q in queries:
            t0 = time.perf_counter()
            model.score([q])
            score_ms.append((time.perf_counter() - t0) * 1e3)
        total = np.array(enc_ms) + np.array(ann_ms)
        V = np.array(vecs)
        hk, _ = model.candidates(V, k, exact=False)
        ek, _ = model.candidates(V, k, exact=True)
        recall = float(np.mean([len(set(h) & set(e)) / len(e) for h, e in zip(hk, ek)]))
        row = {"candidates": k, "ef_search": ef, "encode_ms": pct(enc_ms), "ann_ms": pct(ann_ms),
               "encode_plus_ann_ms": pct(total), "encode_plus_ann_cpu_ms": pct(cpu_ms),
               "score_call_ms": pct(score_ms), f"recall@{k}": round(recall, 4), "recall": round(recall, 4)}
        print(json.dumps({k_: row[k_] for k_ in ("candidates", "ef_search", "recall", "encode_plus_ann_cpu_ms")}),
              file=sys.stderr, flush=True)
        return row

    first = measure(settings.candidates, settings.hnsw_ef_search)
    sweep = [measure(int(k), int(ef)) for k, ef in (p_.split(":") for p_ in a.sweep.split(",") if p_)]
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (pinned to 1), "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "vectors": f"trained ({a.vectors_from}) + noisy copies" if a.vectors_from else "random init",
        "items": a.items, "requests": a.requests, "dim": settings.dim, "layers": settings.layers,
        "max_len": settings.max_len, "candidates": first["candidates"],
        "hnsw": {"M": settings.hnsw_m, "ef_construction": settings.hnsw_ef_construction,
                 "ef_search": first["ef_search"], "build_s": round(build_s, 1)},
        **{k_: v for k_, v in first.items() if k_ not in ("candidates", "ef_search", "recall")},
        "sweep": sweep,
    }
    print(json.dumps(out, indent=1))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
