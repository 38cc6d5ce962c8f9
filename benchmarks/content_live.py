"""Time from a catalog upsert to a new item's first appearance, without retraining (issue 14, item 2).

    .venv/bin/python benchmarks/content_live.py [--items 3000 --shoppers 3000 --events 60000 --trials 20]

A synthetic storefront is trained (trending, co-visitation, co-purchase, ALS and the content source; no sequence
model or ranker, which do not see new items anyway). Then, per trial, a new item is upserted: a copy of a popular
warm item under a new id with a slightly different title (the "new edition" of a product shoppers already
view). The clock runs from the upsert call until ``pdp_similar`` of that warm item (k=12) shows the new item
with content evidence; the answer cache is on, as in serving. Writes benchmarks/results/content_live.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from shop_common import batches  # noqa: E402

from shelfwise.request import RecRequest  # noqa: E402
from shelfwise.service import Shelfwise  # noqa: E402
from shelfwise.settings import load_settings  # noqa: E402
from shelfwise.synthetic import generate_storefront  # noqa: E402
from shelfwise.training import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--shoppers", type=int, default=3000)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an appearance")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "content_live.json"))
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    settings = load_settings(data_dir=Path(tmp.name) / "data")
    models = settings.models.model_copy(update={"ranker": settings.models.ranker.model_copy(update={"enabled": False})})
    shop = generate_storefront(n_items=a.items, n_shoppers=a.shoppers, n_events=a.events, seed=7)
    eng = Shelfwise(settings)
    eng.upsert_items(shop.items)
    for batch in batches(shop.events(), 20_000):
        eng.ingest(batch)
    t = time.perf_counter()
    report = train(eng.store, eng.catalog, eng.models, models, sources=("trending", "covisit", "copurchase", "als"))
    train_s = time.perf_counter() - t
    eng.close()

    eng = Shelfwise(settings)
    assert eng.encoder is not None, "the trained model has no content source"
    t = time.perf_counter()
    eng.encoder.flush(120)  # the text encoder loads at start, off the request path
    warm_up_s = time.perf_counter() - t
    trending = eng.pipeline.retrievers["trending"]
    order = [str(eng.pipeline.items.ids[j]) for j in trending.order(eng.pipeline.items.unservable)[:a.trials]]
    runs = []
    for n, warm_id in enumerate(order):
        warm = eng.get_item(warm_id)
        new = warm.model_copy(update={"id": f"new-{n}", "title": f"{warm.title} (new edition)"})
        eng.recommend(RecRequest("pdp_similar", item_id=warm_id, k=12))  # a cached answer from before
        t0 = time.perf_counter()
        eng.upsert_items([new])
        upsert_s = time.perf_counter() - t0
        seen, position = None, None
        while time.perf_counter() - t0 < a.timeout:
            ans = eng.recommend(RecRequest("pdp_similar", item_id=warm_id, k=12))
            got = [i for i, r in enumerate(ans.items) if r.item_id == new.id and "content" in r.sources]
            if got:
                seen, position = time.perf_counter() - t0, got[0] + 1
                break
            time.sleep(0.002)
        runs.append({"warm_item": warm_id, "upsert_ms": round(upsert_s * 1000, 2),
                     "appeared_ms": None if seen is None else round(seen * 1000, 1), "position": position})
    eng.close()
    seen = [r["appeared_ms"] for r in runs if r["appeared_ms"] is not None]
    out = {
        "command": " ".join(["benchmarks/content_live.py"] + sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "storefront": {"items": a.items, "shoppers": a.shoppers, "events": a.events},
        "train_s": round(train_s, 1), "train_seconds": {k: round(v, 2) for k, v in report.seconds.items()},
        "encoder_warm_up_s": round(warm_up_s, 2),
        "trials": len(runs), "appeared": len(seen),
        "appeared_ms_median": round(statistics.median(seen), 1) if seen else None,
        "appeared_ms_max": max(seen) if seen else None,
        "upsert_ms_median": round(statistics.median(r["upsert_ms"] for r in runs), 2),
        "position_median": statistics.median(r["position"] for r in runs if r["position"]) if seen else None,
        "runs": runs,
    }
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
