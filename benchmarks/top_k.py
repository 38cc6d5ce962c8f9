"""``top_k`` on wide rows: the threshold selection against a partition of every row, and an exact vector search.

    .venv/bin/python benchmarks/top_k.py [--repeats 5] [--json benchmarks/results/top_k.json]

For score matrices of the shapes the request path and training meet — 4 requests over 12k items (a micro-batch of
the API), 256 over 12k (offline evaluation, the ranker's training rows), 167 over 100k and 16 over 1M (one chunk of
an exact search: ``stores.vectors.EXACT_CELLS``) — the time of ``top_k`` (``retrieval.base``: the threshold above
4,096 items), of the whole-row partition it falls back to (``_top_k_partition``) and of the argpartition it replaced,
best of ``--repeats``, one thread; the first two give the same rows (checked on every shape). Then an exact search of 512 queries over 1M 64-d items
(``ItemVectors.search``, as the held-out metrics and the ranker's rows of a 1M-item shop run it): CPU time and the
rise of peak memory, in chunks of queries as now and in one piece as before.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shelfwise.evaluation.report import machine
from shelfwise.retrieval.base import _top_k_partition, top_k_wide as top_k
from shelfwise.retrieval.embedding import ItemVectors
from shelfwise.stores import vectors as V

SHAPES = ((4, 12_000, 300), (256, 12_000, 300), (256, 12_000, 50), (167, 100_000, 300), (16, 1_000_000, 300))


def argpartition_before(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``top_k`` as it was before the threshold (commit 4c100d9): argpartition of every row, then a sort of k."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    idx = np.take_along_axis(part, np.lexsort((part, -part_scores), axis=1), axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(1):
        for b, n, k in SHAPES:
            scores = rng.normal(size=(b, 64)).astype(np.float32) @ rng.normal(size=(n, 64)).astype(np.float32).T
            same = all(np.array_equal(x, y) for x, y in zip(top_k(scores, k), _top_k_partition(scores, k)))
            before = best_of(lambda: argpartition_before(scores, k), args.repeats)
            part = best_of(lambda: _top_k_partition(scores, k), args.repeats)
            above = best_of(lambda: top_k(scores, k), args.repeats)
            rows.append({"rows": b, "items": n, "k": k, "argpartition_before_ms": round(before, 2),
                         "partition_ms": round(part, 2), "top_k_ms": round(above, 2),
                         "speed_up_vs_before": round(before / above, 2), "same_rows": same})
            print(rows[-1], flush=True)
        space = ItemVectors("bench", rng.normal(size=(1_000_000, 64)).astype(np.float32))
        queries = rng.normal(size=(512, 64)).astype(np.float32)
        search = {}
        for name, cells in (("chunks of queries", V.EXACT_CELLS), ("one piece", 1 << 40)):
            V.EXACT_CELLS, before = cells, peak_mb()
            c = time.process_time()
            space.search(queries, 300)
            search[name] = {"cpu_s": round(time.process_time() - c, 2), "peak_rise_mb": round(peak_mb() - before)}
            print(name, search[name], flush=True)
    doc = {"command": "python benchmarks/top_k.py", "machine": machine(), "top_k": rows,
           "exact_search_512_queries_1m_items": search}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
