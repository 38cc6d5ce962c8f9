"""GET /v1/recommendations latency and throughput: embedded online state vs Redis, and the scale-out setup.

    .venv/bin/python benchmarks/serve_recommendations.py [--seconds 15] [--concurrency 8] [--json out.json]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]

Generates a small synthetic storefront (3,000 items, 5,000 shoppers, 150,000 events), trains the default
pipeline once, then serves it in three setups, one after the other:

- ``embedded``: SQLite event store + in-process online state, 1 API process (the default);
- ``redis``: SQLite event store + Redis online state, 1 API process;
- ``scale-out``: PostgreSQL event store + Redis online state, ``shelfwise serve --workers N`` for N in
  ``--api-processes`` (default 1 and 2).

Load comes from a second process on loopback: ``--concurrency`` keep-alive connections asking for the homepage
rail of shoppers drawn from a Zipf-like distribution (so most requests hit the online state and some read through
to the event store), for ``--seconds`` after a warm-up. ``--client wrk`` (the default when ``wrk`` is installed:
``apt-get install wrk``) is a C load generator that needs little CPU, which matters on a 2-core machine where the
client shares the cores with the server; ``--client python`` is a threaded httpx client (heavier: its own CPU
use lowers the server's throughput), bounded by ``--max-requests``. Reports p50/p99 latency seen by the client and
requests/s. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

CLI = [sys.executable, "-m", "shelfwise.cli"]


def loadgen(args: argparse.Namespace) -> None:
    """The load generator (a process of its own): closed loop, bounded by time and count."""
    import httpx

    shoppers = Path(args.shoppers).read_text().split()
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, len(shoppers) + 1) ** 0.8
    weights /= weights.sum()
    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    errors = [0] * args.concurrency
    stop_at = {"warm": time.monotonic() + args.warmup, "end": time.monotonic() + args.warmup + args.seconds}
    budget = {"left": args.max_requests}
    lock = threading.Lock()

    def worker(w: int) -> None:
        picks = rng.choice(len(shoppers), size=200_000, p=weights)
        with httpx.Client(base_url=args.url, timeout=10) as http:
            i = 0
            while True:
                now = time.monotonic()
                if now > stop_at["end"]:
                    return
                with lock:
                    if budget["left"] <= 0:
                        return
                    if now > stop_at["warm"]:
                        budget["left"] -= 1
                user = shoppers[picks[(i * args.concurrency + w) % len(picks)]]
                i += 1
                t0 = time.perf_counter()
                r = http.get("/v1/recommendations/homepage", params={"user_id": user, "k": 12})
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors[w] += 1
                elif time.monotonic() > stop_at["warm"]:
                    latencies[w].append(dt)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = min(time.monotonic(), stop_at["end"]) - max(t_start, stop_at["warm"])
    lat = np.array([x for lst in latencies for x in lst]) * 1000
    print(json.dumps({"requests": int(len(lat)), "errors": int(sum(errors)), "seconds": round(elapsed, 1),
                      "requests_per_s": round(len(lat) / elapsed, 1),
                      "p50_ms": round(float(np.percentile(lat, 50)), 2), "p90_ms": round(float(np.percentile(lat, 90)), 2),
                      "p99_ms": round(float(np.percentile(lat, 99)), 2)}))


WRK_SCRIPT = """
local users = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/v1/recommendations/homepage?k=12&user_id=" .. users[(i %% #users) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "errors": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, '
    .. '"p99_us": %%d}\\n', summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_load(args: argparse.Namespace, url: str, shoppers: Path) -> dict:
    """Closed-loop load with wrk (one client thread): a warm-up run, then the measured one."""
    users = shoppers.read_text().split()
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, len(users) + 1) ** 0.8
    picks = rng.choice(len(users), size=50_000, p=weights / weights.sum())
    script = shoppers.with_name("wrk.lua")
    script.write_text(WRK_SCRIPT % ",".join(f'"{users[i]}"' for i in picks))
    base = ["wrk", "-t1", f"-c{args.concurrency}", "--timeout", "10s", "-s", str(script), url]
    subprocess.run(base[:1] + [f"-d{max(1, int(args.warmup))}s"] + base[1:], capture_output=True, check=True)
    out = subprocess.run(base[:1] + [f"-d{int(args.seconds)}s"] + base[1:], capture_output=True, text=True,
                         check=True).stdout
    r = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    secs = r["duration_us"] / 1e6
    return {"client": "wrk", "requests": r["requests"], "errors": r["errors"], "seconds": round(secs, 1),
            "requests_per_s": round(r["requests"] / secs, 1), "p50_ms": round(r["p50_us"] / 1000, 2),
            "p90_ms": round(r["p90_us"] / 1000, 2), "p99_ms": round(r["p99_us"] / 1000, 2)}


def state_latency(redis_url: str, prefix: str, n: int = 20_000) -> list[dict]:
    """The online-state read of a request in isolation: get() of one cached shopper (50 recent events)."""
    from shelfwise.stores import open_online_state
    from shelfwise.stores.protocols import Interaction, ShopperState

    out = []
    for name, dsn in (("memory://", "memory://"), ("redis://", f"{redis_url}?prefix={prefix}lat:")):
        online = open_online_state(dsn, 50)
        shoppers = [f"u{i:05d}" for i in range(1000)]
        recent = [Interaction(f"i{j:06d}", j % 3, 1.79e9 + j) for j in range(50)]
        online.put({s: ShopperState(recent=recent, purchased={"i000001"}) for s in shoppers})
        lat = []
        for i in range(n):
            t = time.perf_counter()
            online.get([shoppers[i % 1000]])
            lat.append(time.perf_counter() - t)
        online.clear()
        ms = np.array(lat) * 1000
        out.append({"online_state": name, "get_p50_ms": round(float(np.percentile(ms, 50)), 4),
                    "get_p99_ms": round(float(np.percentile(ms, 99)), 4)})
        print(json.dumps(out[-1]), flush=True)
    return out


def run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as fh:
        subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def serve_and_measure(name: str, env: dict[str, str], workers: int, args, shoppers: Path, log: Path) -> dict:
    import httpx

    port = args.port
    proc = subprocess.Popen(CLI + ["serve", "--port", str(port), "--workers", str(workers)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("trained"):
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.3)
        if args.client == "wrk":
            res = wrk_load(args, f"http://127.0.0.1:{port}", shoppers)
        else:
            out = subprocess.run([sys.executable, __file__, "--loadgen", "--url", f"http://127.0.0.1:{port}",
                                  "--shoppers", str(shoppers), "--seconds", str(args.seconds), "--warmup",
                                  str(args.warmup), "--concurrency", str(args.concurrency), "--max-requests",
                                  str(args.max_requests)], capture_output=True, text=True, check=True)
            res = {"client": "python", **json.loads(out.stdout.strip().splitlines()[-1])}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    res = {"setup": name, "api_processes": workers, **res}
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--shoppers", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--port", type=int, default=8792)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--only", default="embedded,redis,scale-out")
    ap.add_argument("--api-processes", default="1,2", help="API process counts of the scale-out setup")
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                    help="load generator: wrk when installed (auto), else the Python client")
    ap.add_argument("--env", action="append", default=[], metavar="SHELFWISE_KEY=VALUE",
                    help="settings for the train and serve processes (the caller's SHELFWISE_* are not passed), "
                         "e.g. SHELFWISE_API__RECOMMEND_BATCH=1")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.loadgen:
        loadgen(args)
        return
    if args.client == "auto":
        import shutil

        args.client = "wrk" if shutil.which("wrk") else "python"

    import psycopg
    import redis

    data = Path(tempfile.mkdtemp(prefix="sw-serve-bench-"))
    log = data / "processes.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    base["SHELFWISE_DATA_DIR"] = str(data)
    # throughput of the pipeline, not of the security layer (benchmarks/auth_overhead.py measures that): no keys,
    # no rate limit (one client address sends everything)
    base.update({"SHELFWISE_SECURITY__AUTH": "off", "SHELFWISE_SECURITY__RATE_PER_CLIENT": "0"})
    base.update(kv.split("=", 1) for kv in args.env)
    tag = uuid.uuid4().hex[:8]
    prefix = f"swbench:{tag}:"
    dbname = f"sw_serve_{tag}"
    pg = urlunsplit(urlsplit(args.postgres)._replace(path="/" + dbname))
    size = ["--items", "3000", "--shoppers", "5000", "--events", "150000", "--seed", "7"]
    results = []
    rc = redis.Redis.from_url(args.redis)
    state: list[dict] = []
    try:
        print("generating and training (embedded) …", flush=True)
        run(CLI + ["generate", *size], base, log)
        run(CLI + ["train"], base, log)
        with sqlite3.connect(data / "shelfwise.db") as db:
            users = [r[0] for r in db.execute("SELECT DISTINCT user_id FROM events WHERE user_id IS NOT NULL")]
        shoppers = data / "shoppers.txt"
        shoppers.write_text("\n".join(np.random.default_rng(1).permutation(users).tolist()))
        only = set(args.only.split(","))
        state = state_latency(args.redis, prefix)
        if "embedded" in only:
            results.append(serve_and_measure("embedded (SQLite + in-process state)", base, 1, args, shoppers, log))
        redis_env = {**base, "SHELFWISE_STORES__ONLINE": f"{args.redis}?prefix={prefix}"}
        if "redis" in only:
            results.append(serve_and_measure("SQLite + Redis online state", redis_env, 1, args, shoppers, log))
            for key in rc.scan_iter(match=prefix + "*", count=1000):
                rc.delete(key)
        if "scale-out" in only:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
            scale = {**redis_env, "SHELFWISE_STORES__EVENTS": pg, "SHELFWISE_STORES__MODELS": str(data / "models")}
            print("loading the same storefront into PostgreSQL …", flush=True)
            run(CLI + ["generate", *size], scale, log)
            for n in (int(x) for x in args.api_processes.split(",")):
                results.append(serve_and_measure(f"PostgreSQL + Redis, {n} API process{'es' if n > 1 else ''}",
                                                 scale, n, args, shoppers, log))
                for key in rc.scan_iter(match=prefix + "*", count=1000):  # each setup starts cold
                    rc.delete(key)
    finally:
        keys = list(rc.scan_iter(match=prefix + "*", count=1000))
        if keys:
            rc.delete(*keys)
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    doc = {"command": " ".join(["python", *sys.argv]), "client": args.client, "env": args.env,
           "concurrency": args.concurrency,
           "seconds": args.seconds, "cpu_count": os.cpu_count(),
           "load_average_1m_at_end": round(os.getloadavg()[0], 1), "online_state_get": state, "results": results}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
