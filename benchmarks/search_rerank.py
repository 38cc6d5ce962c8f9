"""Search re-ranking quality: does ``POST /v1/rerank`` put the result a shopper picks higher than the shop's order?

    .venv/bin/python benchmarks/search_rerank.py [--items 6000] [--shoppers 8000] [--events 200000]
        [--searches 2000] [--train-searches 5000] [--search-days 10] [--train-minutes 3]
        [--json benchmarks/results/search_rerank.json]

1. Setup (reused when ``--data-dir`` already holds it): the synthetic storefront (``--seed`` 7), its events stored
   through the engine's ingest path, plus ``--train-searches`` logged searches (``Storefront.searches`` on stream 1,
   over the last ``--search-days`` of the log: a ``search`` event with the query and the results shown, then the
   view of the picked result), and the default pipeline trained on them (``shelfwise train``'s code: the search
   ranker learns from the logged searches after the ranker's time cut; the sequence model capped at
   ``--train-minutes``).
2. Held-out searches (``Storefront.searches``: stream 0, in the day after the last training event, none of them
   logged): a known
   shopper searches one of their favourite categories; the shop's search engine answers the category's items in
   stock (of the brand the query names), title matches first, then by popularity with noise — the same for every
   shopper; the shopper picks one as the simulator's sessions pick a first view (popularity thinned by their brand
   and price preferences; a variant the query names and accessories of their devices 3x as likely). The position
   of the pick in the shop's order plays no part in the pick.
3. Each search goes through the API (``POST /v1/rerank``, a test client in process: the route, the micro-batcher,
   the stages) with the shop's list, the shopper, the query, at several ``personalization_impact`` values, and
   without the query; then again with the same model version without its search ranker (``search_placements``
   empty: the homepage ranker's order blended with popularity and the query's match, as served before the search
   ranker). NDCG@10 (and HR@10, MRR) of the picked item in the shop's order and in each answer, and in
   the simulator's own order (``Search.odds``, each result's chance to be the pick: the best any ranker can do in
   expectation, the ceiling of the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def metrics(ranks: list[int]) -> dict[str, float]:
    """NDCG@10, HR@10 and MRR of one relevant item per search at 0-based ``ranks`` (-1: missing)."""
    r = np.array(ranks, float)
    found = r >= 0
    ndcg = np.where(found & (r < 10), 1.0 / np.log2(r + 2), 0.0)
    return {"ndcg@10": round(float(ndcg.mean()), 4), "hr@10": round(float((found & (r < 10)).mean()), 4),
            "mrr": round(float(np.where(found, 1.0 / (r + 1), 0.0).mean()), 4), "n": int(len(r))}


def setup(args, data: Path):
    from shelfwise.service import Shelfwise
    from shelfwise.settings import load_settings
    from shelfwise.synthetic import generate_storefront
    from shelfwise.training import train

    from datetime import timedelta

    settings = load_settings(data_dir=data, models={"sequence": {"max_train_minutes": args.train_minutes}})
    shop = generate_storefront(n_items=args.items, n_shoppers=args.shoppers, n_events=args.events, seed=args.seed)
    done = data / "setup.json"
    if not done.exists():
        eng = Shelfwise(settings)
        eng.upsert_items(shop.items)
        window = shop.end - timedelta(days=args.search_days)  # the logged searches' days: the log's last ones
        seen: dict[str, list[str]] = {}  # item ids each shopper looked at before them (their devices)
        batch = []
        for ev in shop.events():
            if ev.user_id and ev.item_id and ev.timestamp < window:
                seen.setdefault(ev.user_id, []).append(ev.item_id)
            batch.append(ev)
            if len(batch) == 5000:
                eng.ingest(batch)
                batch = []
        logged = shop.searches(args.train_searches, at=window, hours=args.search_days * 24.0, owned=seen,
                               results=args.results, stream=1)
        batch += [ev for s in logged for ev in s.events(prefix="logged-")]
        for start in range(0, len(batch), 5000):
            eng.ingest(batch[start:start + 5000])
        t = time.perf_counter()
        print(f"training the default pipeline ({len(logged)} logged searches) …", flush=True)
        report = train(eng.store, eng.catalog, eng.models, settings.models, progress=lambda m: print(m, flush=True))
        search = eng.models.path(report.version) / "search_ranker.json"
        done.write_text(json.dumps({"train_s": round(time.perf_counter() - t, 1), "train_searches": len(logged),
                                    "search_days": args.search_days, "version": report.version,
                                    "search_ranker": json.loads(search.read_text())["report"]
                                    if search.exists() else None}))
        eng.close()
    return settings, shop


def ask(eng, settings, searches, variants: list[tuple[float, bool]], label: str,
        ranks: dict[str, list[int]]) -> None:
    """Each search through ``POST /v1/rerank`` (a test client in process) at each (impact, with the query)."""
    from fastapi.testclient import TestClient

    from shelfwise.api.app import create_app

    t0 = time.perf_counter()
    with TestClient(create_app(settings, engine=eng)) as client:
        for n, s in enumerate(searches):
            if n % 100 == 0:
                print(f"{label}: search {n}/{len(searches)} ({time.perf_counter() - t0:.0f} s)", flush=True)
            for impact, with_query in variants:
                name = f"{label}, impact {impact:g}" + ("" if with_query else ", no query")
                body = {"items": list(s.results), "user_id": s.shopper, "personalization_impact": impact}
                if with_query:
                    body["query"] = s.query
                r = client.post("/v1/rerank", json=body)
                r.raise_for_status()
                got = [x["item_id"] for x in r.json()["items"]]
                ranks.setdefault(name, []).append(got.index(s.picked) if s.picked in got else -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=6000)
    ap.add_argument("--shoppers", type=int, default=8000)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--searches", type=int, default=1000)
    ap.add_argument("--results", type=int, default=50, help="results the shop's search engine answers per query")
    ap.add_argument("--train-searches", type=int, default=5000, help="logged searches in the training log")
    ap.add_argument("--search-days", type=float, default=10.0, help="over the log's last this many days")
    ap.add_argument("--train-minutes", type=float, default=3.0)
    ap.add_argument("--impacts", default="0.5,0.75,1", help="personalization_impact values asked with the query (the "
                                                           "largest also without it)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = (args.data_dir or ROOT / "benchmarks" / "results" / ".work" /
            f"search_rerank_{args.items}_{args.events}_{args.train_searches}").resolve()
    data.mkdir(parents=True, exist_ok=True)
    os.chdir(data)
    for k in [k for k in os.environ if k.startswith("SHELFWISE_")]:
        del os.environ[k]
    settings, shop = setup(args, data)
    settings = settings.model_copy(update={"security": settings.security.model_copy(update={"auth": "off"})})

    from shelfwise.service import Shelfwise

    eng = Shelfwise(settings)
    known = [s for s in shop.shoppers if s in eng.pipeline.shopper_index]
    history = {s: [e.item_id for e in st.recent] for s, st in eng.shopper_states(known).items()}
    searches = shop.searches(args.searches, owned=history, results=args.results)
    impacts = [float(x) for x in args.impacts.split(",")]
    ranks: dict[str, list[int]] = {"shop order": [], "the simulator's pick odds (ceiling)": []}
    for s in searches:
        ranks["shop order"].append(s.results.index(s.picked))
        best = sorted(range(len(s.results)), key=lambda i: -s.odds[i])  # ties: the shop's order
        ranks["the simulator's pick odds (ceiling)"].append(best.index(s.results.index(s.picked)))
    t0 = time.perf_counter()
    ask(eng, settings, searches, [(i, True) for i in impacts] + [(max(impacts), False)], "rerank", ranks)
    seconds = time.perf_counter() - t0
    eng.close()
    # the same model version without its search ranker: the homepage ranker's order blended with popularity and
    # the query's match, as the search placement served before the search ranker
    ranker = settings.models.ranker.model_copy(update={"search_placements": []})
    before = settings.model_copy(update={"models": settings.models.model_copy(update={"ranker": ranker})})
    eng = Shelfwise(before)
    ask(eng, before, searches, [(i, True) for i in impacts[-2:]], "without the search ranker", ranks)
    eng.close()
    base = metrics(ranks["shop order"])
    rows = []
    for name, rk in ranks.items():
        m = metrics(rk)
        m["vs_shop_ndcg"] = round(m["ndcg@10"] / base["ndcg@10"] - 1, 4) if base["ndcg@10"] else math.nan
        rows.append({"order": name, **m})
        print(f"{name:45s} NDCG@10 {m['ndcg@10']:.4f} ({m['vs_shop_ndcg']:+.1%})  HR@10 {m['hr@10']:.4f}  "
              f"MRR {m['mrr']:.4f}", flush=True)
    info = json.loads((data / "setup.json").read_text())
    doc = {"command": " ".join(["python", *sys.argv]), "items": args.items, "shoppers": args.shoppers,
           "events": args.events, "searches": len(searches), "results_per_search": args.results,
           "train_s": info.get("train_s"), "train_searches": info.get("train_searches"),
           "search_ranker": info.get("search_ranker"),
           "requests_seconds": round(seconds, 1), "load_average_1m": round(os.getloadavg()[0], 2),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip(), "rows": rows}
    print(json.dumps(doc, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
