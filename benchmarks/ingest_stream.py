"""Ingestion throughput through the Redis stream into PostgreSQL + Redis online state, with N worker processes.

    .venv/bin/python benchmarks/ingest_stream.py [--events 100000] [--consumers 2] [--batch 500]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]
        [--via-api] [--json out.json]

Creates a database of its own beside the given one (dropped at the end) and a Redis key prefix of its own.
Starts ``shelfwise worker --consumers N``, waits until its consumers are reading, then publishes the synthetic
storefront's events (batches of --batch) to the stream — directly with the bus the API uses, or with --via-api
through ``POST /v1/events`` of a ``shelfwise serve`` process — and measures until every event is committed to the
event store (end-to-end events/s). Everything runs on this machine; bounded by --events and --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=500, help="events per publish and per worker read")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--via-api", action="store_true", help="publish through POST /v1/events (one API process)")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--cold", action="store_true", help="no shopper cached in Redis (default: all are)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    from shelfwise.stores.bus import EventProcessor
    from shelfwise.stores.redis_stream import RedisStreamBus
    from shelfwise.stores.memory import MemoryOnlineState
    from shelfwise.stores.postgres import PostgresStore
    from shelfwise.synthetic import generate_storefront

    tag = uuid.uuid4().hex[:8]
    dbname = f"sw_bench_{tag}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    pg = urlunsplit(urlsplit(args.postgres)._replace(path="/" + dbname))
    prefix = f"swbench:{tag}:"
    online = f"{args.redis}?prefix={prefix}"
    bus_dsn = f"redis-stream{args.redis[len('redis'):]}?stream={prefix}events&batch={args.batch}"
    data = Path(tempfile.mkdtemp(prefix="sw-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    env.update({"SHELFWISE_DATA_DIR": str(data), "SHELFWISE_STORES__EVENTS": pg, "SHELFWISE_STORES__ONLINE": online,
                "SHELFWISE_STORES__BUS": bus_dsn})
    env.update({"SHELFWISE_SECURITY__AUTH": "off", "SHELFWISE_SECURITY__RATE_PER_CLIENT": "0"})  # see auth_overhead.py
    procs: list[subprocess.Popen] = []
    client = redis.Redis.from_url(args.redis)
    try:
        print(f"generating {args.events} synthetic events …", flush=True)
        shop = generate_storefront(n_items=3000, n_shoppers=max(100, args.events // 25), n_events=args.events, seed=7)
        events = list(shop.events())
        store = PostgresStore(pg)
        store.upsert(shop.items)
        bus = RedisStreamBus(bus_dsn, EventProcessor(store, MemoryOnlineState()))
        if not args.cold:  # every shopper cached: each event is a full read-modify-write of its Redis state
            from shelfwise.stores.protocols import ShopperState
            from shelfwise.stores.redis_state import RedisOnlineState

            state = RedisOnlineState(online)
            shoppers = sorted({ev.shopper for ev in events})
            for i in range(0, len(shoppers), 1000):
                state.put({s: ShopperState(recent=[], purchased=set()) for s in shoppers[i:i + 1000]})
            state.close()
        log = data / "processes.log"
        procs.append(subprocess.Popen([sys.executable, "-m", "shelfwise.cli", "worker", "--consumers",
                                       str(args.consumers)], env=env, stdout=log.open("ab"),
                                      stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while len(client.xinfo_consumers(bus.stream, bus.group)) < args.consumers:
            assert time.monotonic() < deadline and procs[0].poll() is None, log.read_text()
            time.sleep(0.1)
        post = None
        if args.via_api:
            procs.append(subprocess.Popen([sys.executable, "-m", "shelfwise.cli", "serve", "--port", str(args.port)],
                                          env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT))
            post = _wait_api(args.port, procs[-1], log)
        batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
        payloads = [[ev.model_dump(mode="json") for ev in b] for b in batches] if post else None
        published = {"done": 0.0}

        def produce() -> None:
            t = time.perf_counter()
            if post is None:
                for b in batches:
                    bus.publish(b)
            else:
                for p in payloads:
                    r = post(p)
                    assert r.status_code == 202, r.text
            published["done"] = time.perf_counter() - t

        print(f"publishing {len(events)} events in batches of {args.batch} "
              f"({'POST /v1/events' if post else 'bus.publish'}); {args.consumers} consumers …", flush=True)
        t0 = time.perf_counter()
        producer = threading.Thread(target=produce)
        producer.start()
        samples = []
        deadline = time.monotonic() + args.timeout
        while True:
            n = store.count()
            samples.append((time.perf_counter() - t0, n))
            if n >= len(events) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        total = time.perf_counter() - t0
        producer.join()
        n = store.count()
        res = {
            "events": len(events), "stored": n, "consumers": args.consumers, "batch": args.batch,
            "path": "POST /v1/events" if post else "bus.publish", "shoppers_cached": not args.cold,
            "publish_s": round(published["done"], 2),
            "end_to_end_s": round(total, 2), "events_per_s": round(n / total),
            "publish_events_per_s": round(len(events) / published["done"]) if published["done"] else None,
            "cpu_count": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(res, indent=2))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        store.close()
        bus.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _wait_api(port: int, proc: subprocess.Popen, log: Path):
    import httpx

    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            if http.get("/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return lambda payload: http.post("/v1/events", json=payload)


if __name__ == "__main__":
    main()
