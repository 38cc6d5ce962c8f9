"""Content tower projection: does a new item land near its true collaborative neighbours? (BENCHMARKS.md, Content
tower)

On a dataset: fit ALS (``ALSRetriever``, default settings) on every interaction; warm items = at least
``content.min_interactions`` interactions. Hold out a share of the warm items as if they were new: the tower is
fitted on the other warm items only (their ALS vectors), then for each held-out item, the top-k neighbours of its
*projected content vector* among the training warm items' ALS vectors are compared with the top-k neighbours of
its *true ALS vector* (cosine both): recall@k. Compared in the same run:

* ``ridge`` / ``mlp`` / ``knn``: the three projections (``content.projection``);
* ``content_knn``: the item's nearest training items in the raw content space (no learned map);
* ``category_popular`` (datasets with categories): the most interacted training items of the same leaf category;
* ``popular``: the most interacted training items; ``random``: k random training items (expected k / n).

Datasets: ``synthetic`` (``generate_storefront``: titles, descriptions, categories, brands, prices, attributes)
and ``beauty`` (Amazon Beauty, S3-Rec version: attribute ids only, no text; read from ``settings.datasets_dir``).
JSON to benchmarks/results/content_projection.json.

    PYTHONPATH=src .venv/bin/python benchmarks/content_projection.py [--datasets synthetic,beauty]
        [--items 12000 --shoppers 20000 --events 500000] [--holdout 0.1] [--k 10,50] [--upserts 50] [--upsert-threads 1,2]
        [--tower-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from content_encoder import _cpu, _git_commit  # noqa: E402

from shelfwise.content.projection import fit_projection, recall_at_k, true_neighbours  # noqa: E402
from shelfwise.content.encoder import TextEncoder  # noqa: E402
from shelfwise.content.features import item_text  # noqa: E402
from shelfwise.content.tower import BackgroundEncoder, ContentTower, interaction_counts, warm_mask  # noqa: E402
from shelfwise.domain import EventType, Item  # noqa: E402
from shelfwise.retrieval.als import ALSRetriever  # noqa: E402
from shelfwise.retrieval.base import TrainData  # noqa: E402
from shelfwise.settings import load_settings  # noqa: E402
from shelfwise.stores.protocols import EventLog  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _log(rows: list[tuple[str, str, str, int, float, str]]) -> EventLog:
    """(shopper, session, item, kind, ts, order) rows -> EventLog ordered by shopper, time."""
    rows.sort(key=lambda r: (r[0], r[4]))
    cols = list(zip(*rows))
    n = len(rows)
    return EventLog(shopper=np.array(cols[0], dtype=object), session=np.array(cols[1], dtype=object),
                    item=np.array(cols[2], dtype=object), kind=np.array(cols[3], dtype=np.int8),
                    ts=np.array(cols[4], dtype=np.float64), order=np.array(cols[5], dtype=object),
                    quantity=np.ones(n, np.int32), price=np.full(n, np.nan))


def synthetic(a: argparse.Namespace) -> tuple[list[Item], EventLog]:
    from shelfwise.synthetic import generate_storefront

    shop = generate_storefront(n_items=a.items, n_shoppers=a.shoppers, n_events=a.events, seed=a.seed)
    rows = []
    for e in shop.events():
        for item_id, _, _ in e.lines():
            rows.append((e.shopper, e.session_id or "", item_id, int(EventType[e.type]), e.timestamp.timestamp(),
                         e.order_id or ""))
    return shop.items, _log(rows)


def beauty(a: argparse.Namespace) -> tuple[list[Item], EventLog]:
    from shelfwise.importers.s3rec import read_attributes

    root = Path(a.datasets_dir) / "amazon-beauty-s3rec"
    items = read_attributes(root / "Beauty_item2attributes.json.gz")
    rows = []
    with gzip.open(root / "Beauty.txt.gz", "rt") as f:
        for line in f:
            user, *seq = line.split()
            for pos, it in enumerate(seq):
                rows.append((user, user, it, int(EventType.product_viewed), float(pos), ""))
    return items, _log(rows)


def evaluate(name: str, items: list[Item], log: EventLog, a: argparse.Namespace, settings) -> dict:
    t0 = time.perf_counter()
    catalog = {it.id: it for it in items}
    data = TrainData.from_log(log, catalog, settings.models.event_weights)
    als = ALSRetriever(settings.models.als).fit(data)
    vocab = [str(x) for x in data.items.ids]
    known = np.array([i in catalog for i in vocab])
    counts = interaction_counts(data.item, data.n_items, data.weight)
    warm = warm_mask(counts, settings.models.content.min_interactions) & known
    rng = np.random.default_rng(a.seed)
    warm_idx = np.nonzero(warm)[0]
    test = np.sort(rng.choice(warm_idx, int(round(len(warm_idx) * a.holdout)), replace=False))
    train_warm = warm.copy()
    train_warm[test] = False
    ref = np.nonzero(train_warm)[0]  # what a vector index of warm items holds
    t_als = time.perf_counter() - t0

    cat_items = [catalog[vocab[i]] for i in np.nonzero(known)[0]]
    rows_known = np.nonzero(known)[0]
    emb = als.item_factors[rows_known]
    saved = Path(a.tower_dir) / name if a.tower_dir else None
    if saved is not None and (saved / "content_tower.json").is_file():  # texts encoded by an earlier run are reused
        tower = ContentTower.load(saved, settings.models.content, cache_dir=a.cache_dir)
    else:
        tower = ContentTower(settings.models.content, cache_dir=a.cache_dir)
    t1 = time.perf_counter()
    done = {"n": 0}

    def progress(d: int, n: int) -> None:
        if d - done["n"] >= 2000 or d == n:
            done["n"] = d
            print(f"  [{name}] encoded {d}/{n} texts ({time.perf_counter() - t1:.0f} s)", flush=True)

    tower.fit(cat_items, emb, train_warm[rows_known], progress=progress, embedding="als")
    t_fit = time.perf_counter() - t1
    if saved is not None:
        tower.save(saved)
    ids_test = [vocab[i] for i in test]
    ids_ref = [vocab[i] for i in ref]
    x_all = {k: tower.vectors(v, "content") for k, v in (("test", ids_test), ("ref", ids_ref))}
    y_test, y_ref = als.item_factors[test], als.item_factors[ref]
    ks = [int(k) for k in a.k.split(",")]
    kmax = max(ks)
    truth = true_neighbours(y_test, y_ref, kmax)
    preds: dict[str, np.ndarray] = {}
    report: dict = {"dataset": name, "items": len(vocab), "warm": int(warm.sum()), "held_out": len(test),
                    "reference": len(ref), "interactions": len(log), "als_s": round(t_als, 1),
                    "tower_fit_s": round(t_fit, 1), "projections": {}}
    # the two projections on the same content vectors (the tower's own is the configured one)
    x_train = tower.vectors(ids_ref, "content")
    for kind in ("ridge", "mlp", "knn"):
        t = time.perf_counter()
        proj = fit_projection(tower._content.view()[[tower.index[i] for i in ids_ref]], y_ref,
                              settings.models.content, kind)
        report["projections"][kind] = {"fit_s": round(time.perf_counter() - t, 1), **proj.report}
        test_content = tower._content.view()[[tower.index[i] for i in ids_test]]
        preds[kind] = true_neighbours(proj.transform(test_content), y_ref, kmax)
    preds["content_knn"] = true_neighbours(x_all["test"], x_train, kmax)
    pop_order = ref[np.argsort(-counts[ref], kind="stable")]
    pos_in_ref = {int(r): j for j, r in enumerate(ref)}
    preds["popular"] = np.tile([pos_in_ref[int(r)] for r in pop_order[:kmax]], (len(test), 1))
    leaf = {i: " > ".join(catalog[vocab[i]].category) for i in np.nonzero(known)[0]}
    if any(leaf.values()):
        by_leaf: dict[str, list[int]] = {}
        for r in pop_order:
            by_leaf.setdefault(leaf[int(r)], []).append(pos_in_ref[int(r)])
        fill = [pos_in_ref[int(r)] for r in pop_order[:kmax]]
        rows = []
        for i in test:
            same = by_leaf.get(leaf[int(i)], [])[:kmax]
            rows.append((same + [f for f in fill if f not in same])[:kmax])
        preds["category_popular"] = np.array(rows)
    results = {}
    for method, p in preds.items():
        results[method] = {f"recall@{k}": round(recall_at_k(p[:, :k], truth[:, :k]), 4) for k in ks}
    results["random"] = {f"recall@{k}": round(k / len(ref), 4) for k in ks}
    report["recall"] = results
    if a.upserts and any(item_text(it) for it in cat_items):
        report["upsert_to_vector_ms"] = {}
        for threads in (int(x) for x in a.upsert_threads.split(",")):
            tower._encoder = TextEncoder.from_settings(settings.models.content.model_copy(update={"threads": threads}),
                                                       Path(a.cache_dir))
            report["upsert_to_vector_ms"][f"threads={threads}"] = upsert_latency(
                tower, [catalog[i] for i in ids_test[: a.upserts]], prefix=f"t{threads}-")
    report["total_s"] = round(time.perf_counter() - t0, 1)
    return report


def upsert_latency(tower: ContentTower, items: list[Item], prefix: str = "") -> dict:
    """Time from ``BackgroundEncoder.submit`` of one new item (a retitled copy of a catalog item) to its vector
    reaching the sink, one upsert at a time."""
    import threading

    got = threading.Event()
    worker = BackgroundEncoder(tower, lambda ids, v: got.set())
    worker.flush(30)
    lat = []
    try:
        for n, it in enumerate(items):
            new = it.model_copy(update={"id": f"upsert-{prefix}{n}", "title": f"{it.title} (new edition {prefix}{n})"})
            got.clear()
            t = time.perf_counter()
            worker.submit([new])
            if not got.wait(10):
                raise RuntimeError(f"no vector after 10 s ({worker.last_error})")
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        worker.close()
    arr = np.array(lat)
    return {"n": len(lat), "p50": round(float(np.percentile(arr, 50)), 1),
            "p95": round(float(np.percentile(arr, 95)), 1), "max": round(float(arr.max()), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="synthetic,beauty")
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--holdout", type=float, default=0.1, help="share of warm items treated as new")
    ap.add_argument("--k", default="10,50")
    ap.add_argument("--upserts", type=int, default=50, help="single-item upserts timed through BackgroundEncoder "
                                                            "(datasets with text; 0 = skip)")
    ap.add_argument("--cache-dir", default=None, help="ONNX export cache (default: a temporary directory)")
    ap.add_argument("--upsert-threads", default="1,2", help="encoder threads of the timed upserts")
    ap.add_argument("--tower-dir", default=None, help="save each dataset's fitted tower here, and start from it on "
                                                      "the next run (only changed texts are re-encoded)")
    ap.add_argument("--json", default=str(RESULTS / "content_projection.json"))
    a = ap.parse_args()
    settings = load_settings(data_dir=Path(tempfile.gettempdir()) / "shelfwise-content-bench")
    a.datasets_dir = settings.datasets_dir
    tmp = tempfile.TemporaryDirectory()
    a.cache_dir = a.cache_dir or tmp.name
    out = {"commit": _git_commit(), "cpu": _cpu(), "cores": os.cpu_count(), "load_before": os.getloadavg(),
           "content_settings": settings.models.content.model_dump(mode="json"), "runs": []}
    loaders = {"synthetic": synthetic, "beauty": beauty}
    for name in a.datasets.split(","):
        t = time.perf_counter()
        items, log = loaders[name](a)
        print(f"[{name}] {len(items)} items, {len(log)} interactions loaded in {time.perf_counter() - t:.0f} s",
              flush=True)
        rep = evaluate(name, items, log, a, settings)
        print(json.dumps(rep, indent=1), flush=True)
        out["runs"].append(rep)
    out["load_after"] = os.getloadavg()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
