"""Cold items: how much of a model's NDCG@10 is the order in which equal scores are broken (BENCHMARKS.md, Cold
start, "Ties").

The cold-item protocol ranks the whole catalog. The served pipeline breaks equal scores in its item table's order,
where items added after training (the held-out ones) come last; the ``attr-knn`` baseline breaks them in the
dataset's catalog order, where the held-out items are spread among the others. On a catalog with many items of
identical catalog data (the Complete Journey: 7,087 distinct product texts among 18,822 training items) a new item
then loses every tie with its warm twins under the served order and wins about half under the catalog order.

This script recomputes both models' scores outside the pipeline and ranks every target under three tie rules:
``served`` (item table order), ``catalog`` (dataset order) and ``expected`` (the mean over the tied positions,
which favours no order). Checks: ``content`` under ``served`` and ``attr-knn`` under ``catalog`` reproduce
``shelfwise evaluate --protocol cold-items`` (they are what it measures). The content model is fitted exactly as
the runner fits it, reusing its tower cache (run the evaluation first, with the same SHELFWISE_DATA_DIR).

    SHELFWISE_DATA_DIR=<dir> PYTHONPATH=src .venv/bin/python benchmarks/cold_item_ties.py completejourney completejourney
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from shelfwise.evaluation import runner as R
from shelfwise.evaluation.coldstart import AttributeKNN, add_live_items
from shelfwise.evaluation.data import load_dataset
from shelfwise.evaluation.splits import cold_items, positive_kinds
from shelfwise.request import RecRequest
from shelfwise.settings import Settings
from shelfwise.training import fit_pipeline

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def ndcg(score: np.ndarray, t: int, order_rank: np.ndarray) -> dict[str, float]:
    """NDCG@10 of target ``t`` under the three tie rules (``order_rank``: the catalog position of each row)."""
    st = score[t]
    if not np.isfinite(st) or st <= 0:
        return {"served": 0.0, "catalog": 0.0, "expected": 0.0}
    above, tied = int((score > st).sum()), score == st
    pos = {"served": above + int(tied[:t].sum()), "catalog": above + int((tied & (order_rank < order_rank[t])).sum())}
    out = {k: (1.0 / np.log2(p + 2) if p < K else 0.0) for k, p in pos.items()}
    span = np.arange(above, above + int(tied.sum()))
    out["expected"] = float(np.mean(np.where(span < K, 1.0 / np.log2(span + 2), 0.0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fmt")
    ap.add_argument("path", nargs="?")
    a = ap.parse_args()
    settings = Settings()
    ms = settings.models
    dataset = load_dataset(a.fmt, a.path, settings)
    split = cold_items(dataset.log, [it.id for it in dataset.items], 0.1, 0, ms.event_weights)
    views = R.shopper_views(split, ms.history_length)
    spec = R.model_spec("content", ms)
    held = set(split.held_out)
    cache = settings.data_dir / "cache" / "evaluate" / f"{dataset.fmt}-{dataset.name}"
    tower_dir = cache / f"content-{split.name}-{hashlib.sha1(chr(10).join(split.held_out).encode()).hexdigest()[:10]}"
    t0 = time.perf_counter()
    fitted = fit_pipeline(split.train, R._Catalog([it for it in dataset.items if it.id not in held]),
                          spec.settings(ms), sources=spec.sources, previous=tower_dir if tower_dir.is_dir() else None)
    pipeline, _ = add_live_items(fitted.pipeline, [it for it in dataset.items if it.id in held])
    content = pipeline.retrievers["content"]
    vectors = content.vectors.vectors
    table = pipeline.items.index  # id -> row: the served order
    ids = sorted(table, key=table.get)
    catalog_pos = {it.id: r for r, it in enumerate(dataset.items)}
    order_rank = np.array([catalog_pos.get(i, len(catalog_pos) + r) for r, i in enumerate(ids)])
    knn = AttributeKNN(dataset.items, ms.content.history)
    knn_rows = np.array([knn.index.get(i, -1) for i in ids])
    positive = positive_kinds()
    sums = {m: {"served": 0.0, "catalog": 0.0, "expected": 0.0} for m in ("content", "attr-knn")}
    for u, state, exclude, target in zip(split.users, views.states, views.exclude, split.targets):
        t = table.get(target[0], -1)
        if t < 0:
            continue
        drop = [table[x] for x in exclude if x in table]
        q = pipeline.query(RecRequest(R.PLACEMENT, shopper=u, k=K, state=state, now=split.now, exclude=exclude))
        profile = content.profile(vectors, q)
        score = vectors @ profile if np.any(profile) else np.zeros(len(ids), np.float32)
        score[drop] = -np.inf
        for k, v in ndcg(score, t, order_rank).items():
            sums["content"][k] += v
        hist = [knn.index[e.item_id] for e in state.recent if e.kind in positive and e.item_id in knn.index]
        hist = hist[-knn.history:]
        jac = np.zeros(len(ids))
        if hist:
            inter = (knn.matrix @ knn.matrix[hist].T).toarray()
            union = knn.sizes[:, None] + knn.sizes[hist][None, :] - inter
            per = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).mean(axis=1)
            jac[knn_rows >= 0] = per[knn_rows[knn_rows >= 0]]
        jac[drop] = -np.inf
        for k, v in ndcg(jac, t, order_rank).items():
            sums["attr-knn"][k] += v
    n = len(split.users)
    out = {"dataset": dataset.name, "targets": n, "blend": content.tower.meta.get("blend") if content.tower else None,
           "space": content.space, "ndcg10": {m: {k: round(v / n, 4) for k, v in s.items()} for m, s in sums.items()},
           "load": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))
    (RESULTS / f"cold_item_ties-{dataset.name}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
