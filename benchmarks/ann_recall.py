"""Recall of the HNSW index against exact inner-product search, on trained item embeddings and real shoppers.

Loads a sequence model saved by ``sequence_quality.py --save DIR`` (item embeddings + the shoppers'
histories), encodes every shopper, and compares the HNSW top-k with the exact top-k (``ExactIndex``) for a
grid of M / ef_search, at the serving k (``SequenceSettings.candidates``) and at k=10. Also reports the
per-query search time (1 thread). Writes JSON to benchmarks/results/.

    .venv/bin/python benchmarks/ann_recall.py DIR [DIR ...] [--m 16,32] [--ef 200,300,400]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from shelfwise.domain import EventType
from shelfwise.request import Query
from shelfwise.retrieval.sequence import SequenceRetriever
from shelfwise.stores.vectors import ExactIndex, HNSWIndex

RESULTS = Path(__file__).resolve().parent / "results"


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--m", default="16,32")
    ap.add_argument("--ef", default="200,300,400,600")
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--json", default=str(RESULTS / "ann_recall.json"))
    a = ap.parse_args()
    out = {"machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", "runs": []}
    for d in a.models:
        model = SequenceRetriever.load(Path(d))
        hist = json.loads((Path(d) / "histories.json").read_text())
        rng = np.random.default_rng(0)
        pick = rng.choice(len(hist), min(a.queries, len(hist)), replace=False)
        queries = [Query(history=np.array(hist[i], np.int32),
                         history_kind=np.full(len(hist[i]), int(EventType.purchase_completed), np.int8))
                   for i in pick]
        _, vecs = model.encode(queries)
        exact = ExactIndex()
        exact.build(np.arange(model.n_items), model.item_vectors)
        serving_k = model.settings.candidates
        truth = {k: exact.search(vecs, k)[0] for k in (10, serving_k)}
        for m in map(int, a.m.split(",")):
            t0 = time.perf_counter()
            index = HNSWIndex(m=m, ef_construction=model.settings.hnsw_ef_construction)
            index.build(np.arange(model.n_items), model.item_vectors)
            build_s = time.perf_counter() - t0
            for ef in map(int, a.ef.split(",")):
                index.ef_search = ef
                row = {"model": d, "items": model.n_items, "M": m, "ef_search": ef, "build_s": round(build_s, 1)}
                for k, tk in truth.items():
                    t0 = time.perf_counter()
                    got = np.concatenate([index.search(vecs[i:i + 1], k)[0] for i in range(len(vecs))])
                    row[f"recall@{k}"] = round(recall(got, tk), 4)
                    row[f"ms_per_query@{k}"] = round((time.perf_counter() - t0) / len(vecs) * 1e3, 3)
                print(json.dumps(row), flush=True)
                out["runs"].append(row)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
