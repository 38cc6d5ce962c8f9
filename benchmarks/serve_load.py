"""Load on the whole API: the full default pipeline under a placement mix, while events stream in.

    .venv/bin/python benchmarks/serve_load.py [--items 12000] [--processes 1,2] [--connections 8]
        [--seconds 20] [--warmup 5] [--events-per-s 500] [--json benchmarks/results/serve_load_12k.json]

1. Setup (reused when ``--data-dir`` already holds it): the synthetic storefront at ``--items`` SKUs (shoppers and
   events scale with it unless given), trained with the default pipeline (``shelfwise train``; ``--env`` passes
   settings to it, e.g. a time cap or sampled softmax for a 1M-item catalog), a published 50-rule set using every
   action (``rules_overhead.fifty_rules``) and MMR diversity on every placement (lambda 0.8), written to the
   ``shelfwise.toml`` the server reads.
2. For each ``--processes`` count: ``shelfwise serve --workers N`` (N > 1: Redis online state, as scale-out needs),
   warmed up, then driven by ``wrk`` (a C load generator in its own process; the Python client is used only when
   wrk is absent) for ``--seconds`` at each ``--connections``: homepage 50 %, pdp_similar 25 %, pdp_fbt 15 %,
   cart_upsell 10 %, for random known shoppers (80 %) and unknown ones (20 %), while a second process posts
   ``--events-per-s`` events (product views and carts of random shoppers, in batches of 10).
   With ``--rerank N`` the load is ``POST /v1/rerank`` instead: N-item lists of random catalog items with a query,
   for the same shoppers (the rails' ``--processes``, ``--connections`` and ``--rate`` apply).
   With ``--rate R`` the load is open-loop instead: R requests/s whatever the server's latency, each request timed
   from when it was due (how to read "p99 at 100 requests/s"; wrk is closed-loop).
3. In the same run, under the same server settings (uvicorn, uvloop, httptools, N workers), the framework ceiling:
   a trivial FastAPI endpoint returning a 12-item JSON, driven the same way; the ratio is what to compare across
   machines and runs.

Reports requests/s, latency p50/p95/p99/max, errors (non-2xx and socket errors), events posted and failed, the
API processes' resident memory at the end, and their CPU time per request over the window
(``server_cpu_ms_per_request``, events ingested meanwhile included): the cost measure that other jobs on a shared
machine disturb least, for comparing two versions of the code. ``server_thread_cpu_ms_per_request`` splits it by
thread (the API's ``shelfwise_thread_cpu_seconds_total``, read before and after the window): the event loop
(``MainThread``), the pipeline (``shelfwise-batch``), the logs' writers, the event store's appends (``AnyIO worker
thread``). With several processes the ones not scraped lag by up to 2 s (their counts reach the shared files every
2 s), a few per cent of a 20 s window.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shelfwise.cli"]
MIX = (("homepage", 0.50), ("pdp_similar", 0.25), ("pdp_fbt", 0.15), ("cart_upsell", 0.10))

RERANK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %s"
wrk.headers["Content-Type"] = "application/json"
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/rerank", nil, bodies[(i %% #bodies) + 1])
end
"""

WRK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %s"
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
local non2xx = 0
response = function(status, headers, body)
  if status >= 300 then non2xx = non2xx + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "socket_errors": %%d, "status_errors": %%d, "duration_us": %%d, '
    .. '"p50_us": %%d, "p95_us": %%d, "p99_us": %%d, "max_us": %%d}\\n', summary.requests,
    e.connect + e.read + e.write + e.timeout, e.status, summary.duration, latency:percentile(50),
    latency:percentile(95), latency:percentile(99), latency.max))
end
"""

CEILING_APP = '''
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
app = FastAPI(default_response_class=ORJSONResponse)
ITEMS = [{"item_id": f"SKU-{i:06d}", "score": 1.0 - i / 100, "sources": ["covisit", "als"], "reason": "evidence",
          "fallback": False} for i in range(12)]

@app.get("/readyz")
def ready():
    return {"status": "ready"}

@app.get("/v1/recommendations/{placement}")
def rail(placement: str, user_id: str | None = None, item_id: str | None = None, cart: str | None = None,
         k: int = 12):
    return {"request_id": "0" * 32, "placement": placement, "model_version": "v0", "fallback": False,
            "items": ITEMS[:k]}
'''


RERANK_SCRIPT += WRK_SCRIPT[WRK_SCRIPT.index("local non2xx"):]


def rerank_bodies(shoppers: list[str], items: list[str], n_items: int, n: int = 500, seed: int = 0) -> list[str]:
    """``--rerank N``: JSON bodies of ``POST /v1/rerank`` (placement ``search``): N distinct random catalog items in
    a random shop order, a query of two words of the catalog's titles, for random known shoppers (80 %) and
    unknown ones (20 %), personalization_impact 0.5."""
    rng = random.Random(seed)
    words = ["case", "charger", "laptop", "smartphone", "headphones", "cable", "tv", "camera", "black", "pro"]
    out = []
    for _ in range(n):
        who = rng.choice(shoppers) if rng.random() < 0.8 else f"anon-{rng.randrange(10**9)}"
        out.append(json.dumps({"items": rng.sample(items, min(n_items, len(items))), "user_id": who,
                               "query": " ".join(rng.sample(words, 2)), "personalization_impact": 0.5}))
    return out


def run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as fh:
        subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True, cwd=env["PWD_FOR_BENCH"])


def family(pid: int) -> list[int]:
    """A process and its children (uvicorn workers)."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(x) for x in out]
    except FileNotFoundError:
        pass
    return pids


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children: per request, a measure of cost that
    other jobs on a shared machine disturb far less than latency or throughput."""
    total = 0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), MB."""
    total = 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def paths(shoppers: list[str], items: list[str], n: int = 60_000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    names = [m for m, _ in MIX]
    weights = [w for _, w in MIX]
    for _ in range(n):
        placement = rng.choices(names, weights)[0]
        who = rng.choice(shoppers) if rng.random() < 0.8 else f"anon-{rng.randrange(10**9)}"
        item = rng.choice(items)
        q = f"k=12&user_id={who}"
        if placement.startswith("pdp"):
            q += f"&item_id={item}"
        elif placement == "cart_upsell":
            q += f"&cart={item},{rng.choice(items)}"
        out.append(f"/v1/recommendations/{placement}?{q}")
    return out


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    cmd = ["wrk", "-t2" if connections >= 2 else "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s",
           "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "requests_per_s": round(r["requests"] / secs, 1),
            "errors": r["socket_errors"] + r["status_errors"], "p50_ms": round(r["p50_us"] / 1e3, 2),
            "p95_ms": round(r["p95_us"] / 1e3, 2), "p99_ms": round(r["p99_us"] / 1e3, 2),
            "max_ms": round(r["max_us"] / 1e3, 2), "seconds": round(secs, 1)}


def fixed_rate(url: str, all_paths: list[str], key: str, rate: float, seconds: float, connections: int = 64,
               bodies: list[str] | None = None) -> dict:
    """Open-loop load at ``rate`` requests/s (as wrk2 does; Debian ships only wrk, whose load is closed-loop):
    request i is due at ``i / rate`` whatever the earlier ones are doing, and its latency is counted from when it
    was due, so a stall is charged to every request it delays (no coordinated omission).

    ``connections`` keep-alive connections, each a loop that takes the next due request, waits for its time, sends
    it and reads the answer (plain HTTP/1.1 on asyncio streams: a tenth of httpx's CPU per request). A request due
    while every connection is busy waits for the first free one, its wait counted. The client's own lag (when a
    request was sent after its time although a connection was free: the client, not the server, was behind) is
    reported as ``client_lag_p99_ms``; when it is large the latencies say more about the client than the server.

    (The earlier client started one httpx task per request and let httpx's connection pool queue them: its pool
    scans every waiting request on each release, so at a few hundred requests/s on a busy 2-core machine the
    client fell behind, its queue grew, and requests timed out in the pool without being sent.)"""
    import asyncio
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80
    head = f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"

    def request(i: int) -> bytes:
        if bodies:
            body = bodies[i % len(bodies)].encode()
            return (f"POST /v1/rerank HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        return f"GET {all_paths[i % len(all_paths)]} HTTP/1.1\r\n{head}\r\n".encode()

    async def answer(reader: asyncio.StreamReader) -> int:
        """Read one response; its status."""
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        if "content-length" in fields:
            await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        return status

    async def go() -> dict:
        loop = asyncio.get_running_loop()
        n = int(rate * seconds)
        lat = np.full(n, np.nan)
        lag = np.zeros(n)
        errors = 0
        nxt = 0
        t0 = loop.time() + 0.2  # the connections are open by then

        async def worker() -> None:
            nonlocal errors, nxt
            reader = writer = None
            while nxt < n:
                i, nxt = nxt, nxt + 1
                due = t0 + i / rate
                free = loop.time()  # this connection was free from here: a send later than max(due, free) is lag
                await asyncio.sleep(max(0.0, due - free))
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    lag[i] = max(0.0, loop.time() - max(due, free))
                    writer.write(request(i))
                    status = await asyncio.wait_for(answer(reader), 10)
                    errors += status >= 300
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                    errors += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                lat[i] = loop.time() - due
            if writer is not None:
                writer.close()

        await asyncio.gather(*(worker() for _ in range(connections)))
        secs = loop.time() - t0
        ms = lat * 1e3
        return {"requests": n, "requests_per_s": round(n / secs, 1), "errors": errors,
                "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
                "seconds": round(secs, 1), "target_rate": rate,
                "client_lag_p99_ms": round(float(np.percentile(lag * 1e3, 99)), 2)}

    return asyncio.run(go())


class EventPoster(threading.Thread):
    """Posts ``rate`` events per second in batches of 10 over one keep-alive connection."""

    def __init__(self, url: str, shoppers: list[str], items: list[str], rate: float, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.shoppers, self.items, self.rate, self.key = url, shoppers, items, rate, key
        self.sent = self.failed = 0
        self.acked: list[str] = []  # ids of the events the API acknowledged (202)
        self.stop = threading.Event()

    def run(self) -> None:
        import httpx

        rng = random.Random(1)
        period = 10 / self.rate if self.rate > 0 else None
        n = 0
        with httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as http:
            next_at = time.monotonic()
            while period is not None and not self.stop.is_set():
                batch = []
                for _ in range(10):
                    n += 1
                    batch.append({"event_id": f"load-{os.getpid()}-{time.time_ns()}-{n}",
                                  "type": "add_to_cart" if n % 7 == 0 else "product_viewed",
                                  "user_id": rng.choice(self.shoppers), "session_id": f"load-{n // 20}",
                                  "item_id": rng.choice(self.items),
                                  "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                try:
                    r = http.post("/v1/events", json=batch)
                    ok = r.status_code == 202
                except httpx.HTTPError:
                    ok = False
                self.sent += 10 if ok else 0
                self.failed += 0 if ok else 10
                if ok:
                    self.acked += [e["event_id"] for e in batch]
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not become ready:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            if r.status_code == 200 and r.json().get("trained", True):
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)


def prime(url: str, some: list[str], key: str) -> None:
    """One request at a time until every placement answered: the first requests compile the rule set over the
    catalog and warm the models' sessions (30 s at 1M items), which must not count as load-test latency."""
    import httpx

    with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as http:
        for path in some:
            http.get(path)


def machine_ticks() -> list[int]:
    """The machine's CPU time so far by state (``/proc/stat``: user, nice, system, idle, iowait, irq, softirq,
    steal), [] without /proc."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of the machine's CPU time between two ``machine_ticks`` that the hypervisor gave to other virtual
    machines (steal): on a shared host it swings, and a run's speed with it."""
    if len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after)]
    return round(100 * spent[7] / max(sum(spent), 1), 1)


_THREAD_CPU = re.compile(r'^shelfwise_thread_cpu_seconds_total\{thread="([^"]*)"\} (\S+)$', re.M)


def thread_cpu(url: str, key: str) -> dict[str, float]:
    """The API's CPU seconds by thread so far (its ``/metrics``; every process's threads added up), {} when it has
    none (the ceiling app, a machine without /proc)."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    except httpx.HTTPError:
        return {}
    return {name: float(v) for name, v in _THREAD_CPU.findall(text)}


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def measure(name: str, kind: str, processes: int, cmd: list[str], env: dict[str, str], port: int, args,
            script: Path, log: Path, shoppers: list[str], items: list[str], events: bool, key: str) -> list[dict]:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=env["PWD_FOR_BENCH"])
    rows = []
    try:
        wait_ready(port, proc, log)
        url = f"http://127.0.0.1:{port}"
        prime(url, paths(shoppers, items)[:40], key)
        wrk(url, script, max(args.connections), args.warmup)  # warm-up: caches, compiled rules, JIT-free paths
        for c in args.connections:
            poster = EventPoster(url, shoppers, items, args.events_per_s, key) if events else None
            if poster:
                poster.start()
            cpu0, threads0, ticks0 = cpu_s(proc.pid), thread_cpu(url, args.metrics_key), machine_ticks()
            if args.rate:
                bodies = rerank_bodies(shoppers, items, args.rerank) if args.rerank and kind == "shelfwise" else None
                res = fixed_rate(url, paths(shoppers, items), key, args.rate, args.seconds, bodies=bodies)
            else:
                res = wrk(url, script, c, args.seconds)
            if poster:
                poster.stop.set()
                poster.join(15)
                res.update(events_posted=poster.sent, events_failed=poster.failed,
                           events_per_s=round(poster.sent / res["seconds"], 1))
            used = cpu_s(proc.pid) - cpu0  # the server's CPU over the window, the events it ingested included
            threads = {n: v - threads0.get(n, 0.0) for n, v in thread_cpu(url, args.metrics_key).items()}
            if threads:  # where it went: the event loop (MainThread), the pipeline (shelfwise-batch), the logs...
                res["server_thread_cpu_ms_per_request"] = {
                    n: round(1000 * v / max(res["requests"], 1), 3)
                    for n, v in sorted(threads.items(), key=lambda x: -x[1]) if v >= 0.005}
            res.update(setup=name, kind=kind, processes=processes, connections=c, rss_mb=rss_mb(proc.pid),
                       server_cpu_ms_per_request=round(1000 * used / max(res["requests"], 1), 3),
                       load_average_1m=round(os.getloadavg()[0], 2), steal_pct=steal_share(ticks0, machine_ticks()))
            print(json.dumps(res), flush=True)
            rows.append(res)
    finally:
        stop(proc)
    return rows


def setup(args, env: dict[str, str], data: Path, log: Path) -> tuple[list[str], list[str]]:
    """The storefront, its trained model, the 50-rule set and the settings file (reused when present)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from rules_overhead import fifty_rules

    from shelfwise.settings import ModelSettings
    from shelfwise.synthetic import generate_storefront

    done = data / "setup.json"
    if not done.exists():
        train_s = None
        if (data / "models" / "CURRENT").exists():  # generated and trained elsewhere (e.g. training_cost.py): reused
            print(f"reusing the trained storefront in {data}", flush=True)
        else:
            print(f"generating the storefront ({args.items} items) …", flush=True)
            run(CLI + ["generate", "--items", str(args.items), "--shoppers", str(args.shoppers), "--events",
                       str(args.events), "--seed", "7"], env, log)
            t = time.perf_counter()
            print("training the default pipeline …", flush=True)
            run(CLI + ["train"], env, log)
            train_s = time.perf_counter() - t
        shop = generate_storefront(n_items=min(args.items, 20_000), n_shoppers=10, n_events=100, seed=7)
        rules = data / "rules.json"
        rules.write_text(json.dumps(fifty_rules(shop, time.time())))
        run(CLI + ["rules", "put", "bench", str(rules), "--publish", "--author", "benchmark"], env, log)
        with (data / "bench_key.txt").open("w") as fh:  # authentication on, as in production (no rate limit)
            subprocess.run(CLI + ["keys", "create", "--scope", "read", "--scope", "ingest", "--name", "bench",
                                  "--rate", "1000000", "--quiet"], env=env, stdout=fh, check=True,
                           cwd=env["PWD_FOR_BENCH"])
        done.write_text(json.dumps({"train_s": train_s and round(train_s, 1), "items": args.items,
                                    "events": args.events}))
    # MMR on every placement: a settings file the server reads (a dict of placements is replaced, not merged)
    ms = ModelSettings()
    lines = []
    for name, conf in ms.placements.items():  # every setting of the placement as configured, then MMR
        doc = conf.model_dump(mode="json", exclude_none=True)
        if conf.kind != "rerank":  # the shop's lists keep their configured order (no MMR by default)
            doc["diversity"]["mmr_lambda"] = args.mmr_lambda
        lines.append(f"[models.placements.{name}]\n" + "\n".join(
            f"{k} = {json.dumps(v)}" for k, v in doc.items() if not isinstance(v, dict)))
        for table, values in doc.items():
            if isinstance(values, dict):
                lines.append(f"[models.placements.{name}.{table}]\n" + "\n".join(
                    f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items()))
    (data / "shelfwise.toml").write_text("\n".join(lines) + "\n")
    with sqlite3.connect(data / "shelfwise.db") as db:
        users = [r[0] for r in db.execute("SELECT DISTINCT user_id FROM events WHERE user_id IS NOT NULL LIMIT 50000")]
        items = [r[0] for r in db.execute("SELECT id FROM items LIMIT 50000")]
    scrape = data / "metrics_key.txt"
    if not scrape.exists():  # the monitoring's key (admin scope: /metrics), as the Prometheus scraping the API has
        with scrape.open("w") as fh:
            subprocess.run(CLI + ["keys", "create", "--scope", "admin", "--name", "metrics", "--quiet"], env=env,
                           stdout=fh, check=True, cwd=env["PWD_FOR_BENCH"])
    args.metrics_key = scrape.read_text().strip()
    return users, items, (data / "bench_key.txt").read_text().strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=0, help="default: 20,000 per 12k items, at least 20,000")
    ap.add_argument("--events", type=int, default=0, help="default: 500,000 per 12k items, at least 500,000")
    ap.add_argument("--processes", default="1,2", help="API process counts (2+: Redis online state)")
    ap.add_argument("--connections", default="8", help="comma-separated wrk connection counts")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--events-per-s", type=float, default=500)
    ap.add_argument("--mmr-lambda", type=float, default=0.8)
    ap.add_argument("--port", type=int, default=8793)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--env", action="append", default=[], metavar="SHELFWISE_KEY=VALUE",
                    help="settings for every process (training and serving)")
    ap.add_argument("--skip-ceiling", action="store_true")
    ap.add_argument("--rate", type=float, default=0,
                    help="open-loop load at this many requests/s (latency from each request's due time) instead "
                         "of wrk's closed loop; --connections is then ignored")
    ap.add_argument("--rerank", type=int, default=0, metavar="N",
                    help="drive POST /v1/rerank with N-item lists (placement search, a query, impact 0.5) instead "
                         "of the rails' mix (the framework ceiling is not measured then)")
    ap.add_argument("--setup-only", action="store_true", help="generate, train and configure, then stop")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.connections = [int(x) for x in args.connections.split(",")]
    scale = max(1.0, args.items / 12_000)
    args.shoppers = args.shoppers or int(20_000 * min(scale, 10))
    args.events = args.events or int(500_000 * min(scale, 10))
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    data = (args.data_dir or ROOT / "benchmarks" / "results" / ".work" / f"serve_load_{args.items}").resolve()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "processes.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    env.update(SHELFWISE_DATA_DIR=str(data), SHELFWISE_CONFIG=str(data / "shelfwise.toml"), PWD_FOR_BENCH=str(data),
               SHELFWISE_SECURITY__RATE_PER_CLIENT="0")  # the load comes from one address
    env.update(kv.split("=", 1) for kv in args.env)
    users, items, key = setup(args, env, data, log)
    if args.setup_only:
        return
    script = data / "mix.lua"
    if args.rerank:
        args.skip_ceiling = True
        lua = ",".join("[[" + b + "]]" for b in rerank_bodies(users, items, args.rerank))
        script.write_text(RERANK_SCRIPT % (key, lua))
    else:
        script.write_text(WRK_SCRIPT % (key, ",".join(f'"{p}"' for p in paths(users, items))))
    ceiling_dir = Path(tempfile.mkdtemp(prefix="sw-ceiling-"))
    (ceiling_dir / "ceiling_app.py").write_text(CEILING_APP)
    results = []
    for n in (int(x) for x in args.processes.split(",")):
        serve_env = dict(env)
        prefix = f"swload:{os.getpid()}:"
        if n > 1:
            serve_env["SHELFWISE_STORES__ONLINE"] = f"{args.redis}?prefix={prefix}"
        name = f"{n} API process{'es' if n > 1 else ''}" + (" (Redis online state)" if n > 1 else " (embedded)")
        results += measure(name, "shelfwise", n, CLI + ["serve", "--port", str(args.port), "--workers", str(n)],
                           serve_env, args.port, args, script, log, users, items, events=True, key=key)
        if not args.skip_ceiling:
            cmd = [sys.executable, "-m", "uvicorn", "ceiling_app:app", "--port", str(args.port + 1), "--workers",
                   str(n), "--log-level", "warning", "--app-dir", str(ceiling_dir)]
            results += measure(f"framework ceiling, {n} process{'es' if n > 1 else ''}", "ceiling", n, cmd, env,
                               args.port + 1, args, script, log, users, items, events=False, key=key)
        if n > 1:
            import redis

            rc = redis.Redis.from_url(args.redis)
            keys = list(rc.scan_iter(match=prefix + "*", count=1000))
            if keys:
                rc.delete(*keys)
    for r in results:
        ceiling = next((c for c in results if c["kind"] == "ceiling" and c["processes"] == r["processes"]
                        and c["connections"] == r["connections"]), None)
        if ceiling and r["kind"] == "shelfwise":
            r["share_of_ceiling"] = round(r["requests_per_s"] / ceiling["requests_per_s"], 3)
    setup_info = json.loads((data / "setup.json").read_text())
    doc = {"command": " ".join(["python", *sys.argv]), "items": args.items, "shoppers": args.shoppers,
           "load": f"POST /v1/rerank, {args.rerank}-item lists" if args.rerank else "rails mix",
           "events": args.events, "train_s": setup_info.get("train_s"), "env": args.env, "mix": dict(MIX),
           "events_per_s": args.events_per_s, "cpu_count": os.cpu_count(), "machine": _machine(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip(), "results": results}
    print(json.dumps(doc, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


def _machine() -> str:
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown CPU"
    return f"{os.cpu_count()} cores, {cpu}"


if __name__ == "__main__":
    main()
