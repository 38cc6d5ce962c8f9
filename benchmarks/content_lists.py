"""The content source's neighbour lists against the product with every item, on a trained model.

    .venv/bin/python benchmarks/content_lists.py MODEL_DIR [--carts 300] [--json out.json]

``MODEL_DIR``: a model version's directory (e.g. ``<data dir>/models/v…`` of ``serve_load.py --setup-only``).
Reports the time to build the lists (``ItemVectors.build_lists``), and for random product pages and carts of two
and three items: how much of the exact top 10 / 50 (the product of the query with every item) the lists' answer
holds, and the time per query of each way (one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shelfwise.evaluation.report import machine
from shelfwise.request import Exclusions, Query
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.retrieval.embedding import ItemVectors, vector_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--carts", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.model / "content.npz").is_file():
        sys.exit(f"{args.model}: no content source in this model version")
    with threadpool_limits(1):
        source = ContentRetriever.load(args.model)
        space = source.vectors
        plain = ItemVectors("content", space.vectors)
        t0 = time.perf_counter()
        plain.build_lists(source.settings.neighbours)
        build_s = time.perf_counter() - t0
        n = len(space)
        rng = np.random.default_rng(0)
        rows = []
        for size in (1, 2, 3):
            hold10, hold50, t_lists, t_exact = [], [], 0.0, 0.0
            for _ in range(args.carts):
                anchors = rng.choice(n, size, replace=False).astype(np.int32)
                q = [Query(anchors=anchors)]
                ex = Exclusions.none(n, 1)
                t0 = time.perf_counter()
                got = source.scores(q).top(50, ex)[0][0]
                t_lists += time.perf_counter() - t0
                v = source.profile(space.vectors, q[0])[None, :]
                t0 = time.perf_counter()
                want = vector_scores(space, v, np.array([True])).top(50, ex)[0][0]
                t_exact += time.perf_counter() - t0
                hold10.append(len(set(got[:10]) & set(want[:10])) / 10)
                hold50.append(len(set(got) & set(want)) / 50)
            rows.append({"items": size, "top10_held": round(float(np.mean(hold10)), 4),
                         "top50_held": round(float(np.mean(hold50)), 4), "top50_held_min": float(np.min(hold50)),
                         "ms_lists": round(1e3 * t_lists / args.carts, 3), "ms_exact": round(1e3 * t_exact / args.carts, 3)})
            print(rows[-1])
    out = {"model": str(args.model), "items": n, "dimensions": int(space.vectors.shape[1]),
           "neighbours": source.settings.neighbours, "build_s": round(build_s, 2), "queries": rows,
           "machine": machine()}
    print(json.dumps({k: v for k, v in out.items() if k != "queries"}, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
