"""Impressions of items added after training, over their first simulated day, with exploration slots on and off
(issue 14, item 3: items added after training reach ≥ 50 % of the per-item impression share of warm items of
the same category within the first simulated day).

    .venv/bin/python benchmarks/new_item_exposure.py [--items 3000 --shoppers 3000 --events 90000 --days 31
        --new-share 0.05 --train-minutes 1]

1. A synthetic storefront (``synthetic.py``) over ``--days`` days. ``--new-share`` of its servable items are the
   *new* ones: they and every event naming them are left out of training, as products that do not exist yet.
2. Training on every day but the last (the default pipeline: trending, co-visitation, co-purchase, ALS, the
   sequence model capped at ``--train-minutes``, the learned ranker, the content source).
3. From the same trained data, exploration on (the defaults: 1 of 12 slots on the homepage and ``pdp_similar``)
   and off (``models.explore.enabled = false``), through the API (in-process ``TestClient``, key auth on, answer
   cache on): the new items are added with ``PUT /v1/items`` (without ``created_at``: new since now), then the
   last day is replayed event by event in time order: a session's first event opens the homepage (k 12), a
   product view opens its page (``pdp_similar`` k 12 and ``pdp_fbt`` k 8), an add to cart the cart's upsell rail
   (``cart_upsell`` k 8); each event is then sent with ``POST /v1/events``. Two variants of the day
   (``--variants``): *strict*, without the events naming new items (shoppers reach them only through
   recommendations), and *organic*, with them (the generator has shoppers view new items as much as warm ones).
4. Every item shown counts as an impression. Per category (leaf) with new items: impressions per new item and
   per servable warm item; the ratio is the new items' impressions over what warm items of their categories
   get per item (pooled over the new items; the median over categories; and per placement).

Writes ``benchmarks/results/new_item_exposure.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from shop_common import batches  # noqa: E402

from shelfwise.domain import Event, Item  # noqa: E402
from shelfwise.security.keys import create_key  # noqa: E402
from shelfwise.service import Shelfwise  # noqa: E402
from shelfwise.settings import Settings, load_settings  # noqa: E402
from shelfwise.stores import open_privacy_store  # noqa: E402
from shelfwise.synthetic import generate_storefront  # noqa: E402
from shelfwise.training import train  # noqa: E402

PDP_K, FBT_K, CART_K, HOME_K = 12, 8, 8, 12


def servable(it: Item) -> bool:
    return it.available and (it.stock is None or it.stock > 0)


def leaf(it: Item) -> str:
    return " > ".join(it.category)


def settings_for(data: Path, explore: bool, train_minutes: float) -> Settings:
    s = load_settings(data_dir=data)
    s.security.rate_per_client = s.security.rate_per_key = 0  # measured, never limited
    s.models.sequence = s.models.sequence.model_copy(update={"max_train_minutes": train_minutes,
                                                             "progress": False})
    s.models.content = s.models.content.model_copy(update={"progress": False})
    s.models.explore = s.models.explore.model_copy(update={"enabled": explore})
    return s


def prepare(a: argparse.Namespace, data: Path) -> tuple[list[Item], list[Item], list[Event], dict]:
    """The storefront, its new items left out; training on all days but the last. Returns (warm items, new
    items, the last day's events, timings)."""
    t0 = time.perf_counter()
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    shop = generate_storefront(n_items=a.items, n_shoppers=a.shoppers, n_events=a.events, seed=a.seed,
                               start=today - timedelta(days=a.days), days=a.days)
    rng = np.random.default_rng(a.seed)
    ok = [it for it in shop.items if servable(it)]
    new_ids = {ok[j].id for j in rng.choice(len(ok), size=int(round(a.new_share * len(shop.items))), replace=False)}
    new = [it.model_copy(update={"created_at": None}) for it in shop.items if it.id in new_ids]
    warm = [it for it in shop.items if it.id not in new_ids]
    cut = today - timedelta(days=1)
    past, day = [], []
    for ev in shop.events():
        if ev.timestamp >= cut:
            day.append(ev)
        elif not any(i in new_ids for i, _, _ in ev.lines()):
            past.append(ev)
    s = settings_for(data, True, a.train_minutes)
    eng = Shelfwise(s)
    eng.upsert_items(warm)
    for batch in batches(past, 20_000):
        eng.ingest(batch)
    t1 = time.perf_counter()
    report = train(eng.store, eng.catalog, eng.models, s.models)
    eng.close()
    return warm, new, day, {"generate_s": round(t1 - t0, 1), "train_s": round(time.perf_counter() - t1, 1),
                            "train_seconds": {k: round(v, 1) for k, v in report.seconds.items()},
                            "training_events": len(past)}


def replay(data: Path, explore: bool, a: argparse.Namespace, new: list[Item], day: list[Event]) -> dict:
    """The new items PUT through the API, then the day's events replayed; impressions counted from the
    answers."""
    from fastapi.testclient import TestClient

    from shelfwise.api.app import create_app

    s = settings_for(data, explore, a.train_minutes)
    store = open_privacy_store(s.events_dsn)
    key, _ = create_key(store, f"bench-{explore}", ["ingest", "read", "admin"])
    store.close()
    eng = Shelfwise(s)
    assert eng.encoder is not None, "the trained model has no content source"
    eng.encoder.flush(300)  # the warm items' texts (the text encoder loads at start, off the requests)
    stage_s: dict[str, list[float]] = defaultdict(list)  # "placement/stage" -> seconds of each pipeline call
    eng.pipeline.observer = lambda placement, stage, dt: stage_s[f"{placement}/{stage}"].append(dt)  # (kept by
    # the pipelines that add the new items' rows)
    shown: dict[str, Counter] = defaultdict(Counter)  # placement -> item -> impressions
    by_placement: dict[str, Counter] = defaultdict(Counter)  # placement -> new / warm / exploration slots
    new_ids = {it.id for it in new}
    latency: dict[str, list[float]] = defaultdict(list)
    requests = 0
    with TestClient(create_app(s, engine=eng), headers={"Authorization": f"Bearer {key}"}) as client:
        # before the new items come: what the exploration stage costs a request when nothing is new
        before = list(dict.fromkeys(ev.user_id for ev in day if ev.user_id))[:300]
        for who in before:
            assert client.get("/v1/recommendations/homepage", params={"user_id": who, "k": HOME_K}).status_code == 200
        no_new = {k: v for k, v in stage_s.items()}
        stage_s.clear()
        t0 = time.perf_counter()
        r = client.put("/v1/items", json=[it.model_dump(mode="json", exclude_none=True) for it in new])
        assert r.status_code == 200, r.text
        put_s = time.perf_counter() - t0
        eng.encoder.flush(120)
        encoded_s = time.perf_counter() - t0

        def ask(placement: str, **params) -> None:
            nonlocal requests
            t = time.perf_counter()
            got = client.get(f"/v1/recommendations/{placement}", params=params)
            latency[placement].append(time.perf_counter() - t)
            assert got.status_code == 200, (placement, params, got.text)
            requests += 1
            for x in got.json()["items"]:
                shown[placement][x["item_id"]] += 1
                c = by_placement[placement]
                c["slots"] += 1
                c["new" if x["item_id"] in new_ids else "warm"] += 1
                c["exploration"] += x["reason"] == "exploration"

        sessions: set[str] = set()
        carts: dict[str, list[str]] = defaultdict(list)
        t0 = time.perf_counter()
        for ev in day:
            who = {"user_id": ev.user_id} if ev.user_id else {"session_id": ev.session_id}
            session = ev.session_id or ev.user_id or ""
            if session not in sessions:
                sessions.add(session)
                ask("homepage", k=HOME_K, **who)
            if ev.type == "product_viewed" and ev.item_id:
                ask("pdp_similar", item_id=ev.item_id, k=PDP_K, **who)
                ask("pdp_fbt", item_id=ev.item_id, k=FBT_K, **who)
            elif ev.type == "add_to_cart" and ev.item_id:
                carts[session].append(ev.item_id)
                ask("cart_upsell", cart=",".join(dict.fromkeys(carts[session])), k=CART_K, **who)
            elif ev.type == "remove_from_cart" and ev.item_id in carts[session]:
                carts[session].remove(ev.item_id)
            elif ev.type == "purchase_completed":
                carts.pop(session, None)
            t = time.perf_counter()
            r = client.post("/v1/events", json=ev.model_dump(mode="json", exclude_none=True))
            latency["POST /v1/events"].append(time.perf_counter() - t)
            assert r.status_code == 202, r.text
        replay_s = time.perf_counter() - t0
    isolated = stage_cost(eng, day) if explore else None
    eng.close()
    lat = {p: {"n": len(v), "p50_ms": round(1000 * float(np.percentile(v, 50)), 2),
               "p99_ms": round(1000 * float(np.percentile(v, 99)), 2), "max_ms": round(1000 * max(v), 1),
               "total_s": round(sum(v), 1)} for p, v in latency.items()}
    stages = {k: timing(v) for k, v in sorted(stage_s.items())}
    for p in {k.split("/")[0] for k in stage_s}:
        stages[f"{p}/all stages"] = {"mean_ms": round(sum(v["mean_ms"] for k, v in stages.items()
                                                        if k.startswith(p + "/")), 4)}
    if explore:
        stages["homepage/explore before any new item"] = timing(no_new["homepage/explore"])
    return {"explore": explore, "requests": requests, "stages": stages, "isolated": isolated, "sessions": len(sessions), "events": len(day),
            "put_ms": round(put_s * 1000, 1), "encoded_s": round(encoded_s, 2), "replay_s": round(replay_s, 1),
            "shown": {p: dict(c) for p, c in shown.items()}, "placements": {p: dict(c) for p, c in by_placement.items()}, "latency": lat}


def stage_cost(eng: Shelfwise, day: list[Event], n: int = 1000) -> dict:
    """After the day, the API closed (no other thread busy): each stage of the serving pipeline timed on ``n``
    requests of each exploring placement, one request a call, against the same model assembled without the
    exploration stage."""
    from shelfwise.assemble import assemble
    from shelfwise.request import RecRequest
    from shelfwise.stages.base import Batch

    live = eng.pipeline
    plain = assemble(live.model, eng.merch.stage)
    views = [ev for ev in day if ev.type == "product_viewed" and ev.user_id and ev.item_id in live.items.index]
    states = eng.shopper_states(list(dict.fromkeys(ev.user_id for ev in views)))
    out = {}
    for placement in ("homepage", "pdp_similar"):
        for name, pipe in (("with exploration", live), ("without", plain)):
            times: dict[str, list[float]] = defaultdict(list)
            for i in range(n):
                ev = views[i % len(views)]
                req = RecRequest(placement, shopper=ev.user_id, item_id=ev.item_id, k=HOME_K, now=time.time(),
                                 state=states[ev.user_id], request_id=f"cost-{i}")
                batch = Batch(placement, pipe.placement(placement), [req], req.k)
                for stage in pipe.stages:
                    t = time.perf_counter()
                    stage.run(batch)
                    times[stage.name].append(time.perf_counter() - t)
            total = [sum(x) for x in zip(*times.values())]
            out[f"{placement} {name}"] = {"all stages": timing(total)} | {
                k: timing(v) for k, v in times.items() if k in ("explore", "candidates", "slots")}
    return out


def timing(seconds: list[float]) -> dict:
    v = 1000 * np.array(seconds)
    return {"calls": len(v), "mean_ms": round(float(v.mean()), 4), "p50_ms": round(float(np.percentile(v, 50)), 4),
            "p99_ms": round(float(np.percentile(v, 99)), 4)}


def shares(run: dict, warm: list[Item], new: list[Item]) -> dict:
    """Per-item impressions of new items against warm servable items of the same categories: overall, with each
    category's detail, and per placement."""
    out = ratios(sum((Counter(c) for c in run["shown"].values()), Counter()), warm, new)
    out["placements"] = {p: {k: v for k, v in ratios(c, warm, new).items() if k != "per_category"}
                         for p, c in run["shown"].items()}
    return out


def ratios(shown: dict[str, int], warm: list[Item], new: list[Item]) -> dict:
    warm_by: dict[str, list[str]] = defaultdict(list)
    for it in warm:
        if servable(it):
            warm_by[leaf(it)].append(it.id)
    new_by: dict[str, list[str]] = defaultdict(list)
    for it in new:
        new_by[leaf(it)].append(it.id)
    warm_mean = {c: sum(shown.get(i, 0) for i in ids) / len(ids) for c, ids in warm_by.items() if ids}
    expected = sum(warm_mean.get(leaf(it), 0.0) for it in new)
    got = sum(shown.get(it.id, 0) for it in new)
    per_category = {}
    for c, ids in new_by.items():
        m = sum(shown.get(i, 0) for i in ids) / len(ids)
        per_category[c] = {"new_items": len(ids), "new_per_item": round(m, 2),
                           "warm_per_item": round(warm_mean.get(c, 0.0), 2),
                           "ratio": round(m / warm_mean[c], 3) if warm_mean.get(c) else None}
    ratios = [v["ratio"] for v in per_category.values() if v["ratio"] is not None]
    return {"ratio": round(got / expected, 3) if expected else None,
            "median_category_ratio": round(statistics.median(ratios), 3) if ratios else None,
            "categories_at_half": sum(r >= 0.5 for r in ratios), "categories": len(ratios),
            "new_impressions_per_item": round(got / len(new), 2), "warm_impressions_per_item_same_categories":
                round(expected / len(new), 2),
            "new_items_shown": sum(shown.get(it.id, 0) > 0 for it in new), "new_items": len(new),
            "per_category": per_category}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--shoppers", type=int, default=3000)
    ap.add_argument("--events", type=int, default=90_000)
    ap.add_argument("--days", type=int, default=31, help="the storefront's days; the last one is replayed")
    ap.add_argument("--new-share", type=float, default=0.05, help="share of items added after training")
    ap.add_argument("--train-minutes", type=float, default=1.0, help="cap of the sequence model's training")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--variants", default="strict,organic",
                    help="strict: the replayed day without the events naming new items (shoppers reach them only "
                         "through recommendations); organic: with them")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "new_item_exposure.json"))
    a = ap.parse_args()
    for k in [k for k in os.environ if k.startswith("SHELFWISE_")]:
        os.environ.pop(k)
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="sw-new-items-"))
    try:
        warm, new, day, setup = prepare(a, tmp / "trained")
        print(json.dumps(setup), flush=True)
        new_ids = {it.id for it in new}
        # strict: shoppers come to new items only through recommendations (the generator's own views of them,
        # as if they had always been in the shop, are left out); organic: those views are kept
        days = {"strict": [ev for ev in day if not any(i in new_ids for i, _, _ in ev.lines())], "organic": day}
        runs: dict[str, dict] = {}
        for variant in a.variants.split(","):
            for explore in (True, False):
                name = f"{variant}, exploration {'on' if explore else 'off'}"
                data = tmp / name.replace(", ", "-").replace(" ", "-")
                shutil.copytree(tmp / "trained", data)
                run = replay(data, explore, a, new, days[variant])
                shutil.rmtree(data, ignore_errors=True)
                run["shares"] = shares(run, warm, new)
                del run["shown"]
                runs[name] = run
                print(name, json.dumps({k: v for k, v in run.items() if k != "shares"} | {
                    "ratio": run["shares"]["ratio"], "median_category_ratio": run["shares"]["median_category_ratio"]}),
                    flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out = {
        "command": " ".join(["benchmarks/new_item_exposure.py"] + sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "machine": f"{os.cpu_count()} cores, load average {Path('/proc/loadavg').read_text().split()[:3]}",
        "storefront": {"items": a.items, "shoppers": a.shoppers, "events": a.events, "days": a.days,
                       "new_items": len(new), "replayed_events": len(day)},
        "setup": setup, "runs": runs, "total_s": round(time.perf_counter() - t_start, 1),
    }
    Path(a.out).write_text(json.dumps(out, indent=1))
    for name, run in runs.items():
        sh = run["shares"]
        print(f"{name}: ratio {sh['ratio']} (median over categories {sh['median_category_ratio']}, "
              f"{sh['categories_at_half']}/{sh['categories']} categories ≥ 0.5); new items shown "
              f"{sh['new_items_shown']}/{sh['new_items']}; {sh['new_impressions_per_item']} impressions per new item "
              f"vs {sh['warm_impressions_per_item_same_categories']} per warm item")


if __name__ == "__main__":
    main()
