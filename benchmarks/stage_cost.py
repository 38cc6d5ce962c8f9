"""CPU per request of each request-path stage, in process, on a shop that ``serve_load.py --setup-only`` built.

    PYTHONPATH=<source tree>/src .venv/bin/python benchmarks/stage_cost.py --data-dir <dir> [--requests 1500]
        [--batch 4] [--replays 5] [--rerank N] [--json out.json]

The serving mix of ``serve_load.py`` (homepage 50 %, pdp_similar 25 %, pdp_fbt 15 %, cart_upsell 10 %; 80 % known
shoppers, 20 % new ones), with the shop's settings (its 50-rule set and MMR on every placement), is answered by
``Shelfwise.recommend_many`` in micro-batches of ``--batch`` (the API's mean micro-batch at 8 connections is about
6), after 300 requests of warm-up. Each stage's input batches are captured on the way; then every stage is
**replayed alone** on its captured batches ``--replays`` times, and the fastest replay is reported as CPU
milliseconds per request (one BLAS thread, as in the API). A replay repeats the same work, so two source trees
compare stage by stage: run this once per tree, alternately, a few times (``PYTHONPATH`` picks the tree), and
compare the fastest figures. The whole call (``recommend_many``: the online state, the answer cache, exposure
logging queued) is timed once, in wall and CPU. ``--rerank N``: the lists of ``serve_load.py --rerank N`` instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_common import machine  # noqa: E402
from serve_load import MIX, rerank_bodies  # noqa: E402  (the load benchmark's placement mix and lists)


def requests(users: list[str], items: list[str], n: int, seed: int = 0, rerank: int = 0) -> list:
    from shelfwise.request import RecRequest

    rng = random.Random(seed)
    out = []
    if rerank:  # what serve_load.py --rerank N posts: N random items, a two-word query, impact 0.5
        for body in rerank_bodies(users, items, rerank, n=n, seed=seed):
            b = json.loads(body)
            out.append(RecRequest(placement="search", shopper=b["user_id"], k=len(b["items"]), given=b["items"],
                                  query=b["query"], impact=b["personalization_impact"], request_id="bench"))
        return out
    for i in range(n):
        placement = rng.choices([m for m, _ in MIX], [w for _, w in MIX])[0]
        who = rng.choice(users) if rng.random() < 0.8 else f"anon-{rng.randrange(10**9)}"
        kw: dict = dict(placement=placement, shopper=who, k=12, request_id=f"bench-{i}")
        if placement.startswith("pdp"):
            kw["item_id"] = rng.choice(items)
        elif placement == "cart_upsell":
            kw["cart"] = [rng.choice(items), rng.choice(items)]
        out.append(RecRequest(**kw))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="a shop built by serve_load.py --setup-only")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--replays", type=int, default=5)
    ap.add_argument("--rerank", type=int, default=0, metavar="N",
                    help="re-rank N-item lists (placement search) instead of the rails' mix")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = args.data_dir.resolve()
    if not (data / "setup.json").exists():
        sys.exit(f"{data} holds no shop: build one with benchmarks/serve_load.py --data-dir {data} --setup-only")
    os.environ.update(SHELFWISE_DATA_DIR=str(data), SHELFWISE_CONFIG=str(data / "shelfwise.toml"))
    from shelfwise.service import Shelfwise
    from shelfwise.settings import load_settings

    with sqlite3.connect(data / "shelfwise.db") as db:
        users = [r[0] for r in db.execute("SELECT DISTINCT user_id FROM events WHERE user_id IS NOT NULL LIMIT 50000")]
        items = [r[0] for r in db.execute("SELECT id FROM items LIMIT 50000")]
    with threadpool_limits(1):
        engine = Shelfwise(load_settings())
        pipe = engine.pipeline
        stages = pipe.rerank_stages if args.rerank else pipe.stages  # the shop's lists have a stage of their own
        for r in requests(users, items, 300, seed=1, rerank=args.rerank):  # warm: rules compiled, first loads done
            engine.recommend_many([r])
        captured: dict[str, list] = {s.name: [] for s in stages}
        runs = {s.name: s.run for s in stages}
        for s in stages:  # capture each stage's input batch (a stage's input is the batch as the previous left it)
            s.run = (lambda name, run: lambda batch: (captured[name].append((batch, _state(batch))), run(batch))[1])(
                s.name, runs[s.name])
        reqs = requests(users, items, args.requests, rerank=args.rerank)
        t, c = time.perf_counter(), time.process_time()
        for i in range(0, len(reqs), args.batch):
            engine.recommend_many(reqs[i:i + args.batch])
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        for s in stages:
            s.run = runs[s.name]
        out = {"whole call": {"wall_ms_per_request": round(wall / len(reqs) * 1e3, 3),
                              "cpu_ms_per_request": round(cpu / len(reqs) * 1e3, 3)}}
        print(f"{len(reqs)} requests in micro-batches of {args.batch}: recommend_many {wall / len(reqs) * 1e3:.3f} ms "
              f"wall, {cpu / len(reqs) * 1e3:.3f} ms CPU per request (exposure logging's thread included)")
        total = 0.0
        for s in stages:
            got = captured[s.name]
            n = sum(len(b.requests) for b, _ in got)
            if not n:
                continue
            best = float("inf")
            for _ in range(args.replays):
                spent = 0.0
                for batch, state in got:
                    _restore(batch, state)
                    c = time.thread_time()
                    runs[s.name](batch)
                    spent += time.thread_time() - c
                best = min(best, spent)
            total += best / n
            out[s.name] = {"cpu_ms_per_request": round(best / n * 1e3, 4), "batches": len(got), "requests": n}
            print(f"  {s.name:14s} {best / n * 1e3:7.3f} ms CPU per request ({len(got)} batches)")
        print(f"  {'all stages':14s} {total * 1e3:7.3f}")
        engine.close()
    if args.json:
        args.json.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "machine": machine(),
                                         "load_average_1m": round(os.getloadavg()[0], 2), "requests": len(reqs),
                                         "batch": args.batch, "rerank": args.rerank, "stages": out}, indent=1))


def _state(batch) -> dict:
    """The batch as the stage got it, so every replay starts from the stage's own input: its fields, and a copy of
    the candidates (later stages rescore them in place)."""
    return dict(vars(batch)) | {"candidates": copy.deepcopy(batch.candidates)}


def _restore(batch, state: dict) -> None:
    vars(batch).clear()
    vars(batch).update(state, candidates=copy.deepcopy(state["candidates"]))


if __name__ == "__main__":
    main()
