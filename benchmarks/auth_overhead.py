"""What authentication adds to a request, measured against the same app with authentication off, in one run.

Two measurements, both in process through ASGI (no sockets, no HTTP client):

1. **The security middleware alone**, in front of an app that answers 200 at once: with a key to verify, with
   authentication off, and the bare app. This isolates what authentication costs from everything else.
2. **The whole API**: three apps over one data directory —

- ``auth``: the default — ``Authorization: Bearer <key>`` verified (parse, cached lookup, scope check), then the
  rate limiter (client address + key buckets);
- ``no-auth``: ``security.auth = "off"`` — the same middleware (rate limiter on the client address only);
- ``bare``: the security middleware removed altogether (what the API cost before keys existed).

   The route is ``GET /v1/consent?user_id=…`` (scope ``ingest``: one indexed SQLite read), cheap enough that the
   middleware's share is visible.

Requests are interleaved in rounds (auth, no-auth, bare, auth, …) so drift cancels; each round times ``--batch``
sequential requests of one variant. Reported per variant: the median per-request time over the rounds; and the
added time as the median over rounds of the paired difference (auth − no-auth: authentication alone; auth − bare:
the whole security layer), with the ratio of medians. The first call of a key reads the store; every later one is
served by the key cache (as in production within ``security.key_cache_s``).

Run:  .venv/bin/python benchmarks/auth_overhead.py [--rounds 30 --batch 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from shelfwise.api.app import create_app
from shelfwise.security.keys import create_key
from shelfwise.security.middleware import SecurityMiddleware
from shelfwise.settings import load_settings
from shelfwise.stores import open_privacy_store


class Caller:
    """Calls an ASGI app with a fixed GET request, reusing one event loop."""

    def __init__(self, app, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                      "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                      "query_string": query, "headers": headers, "client": ("127.0.0.1", 50000),
                      "server": ("127.0.0.1", 8000)}
        self.status = 0

    async def one(self) -> None:
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                self.status = message["status"]

        await self.app(dict(self.scope, state={}), receive, send)

    async def many(self, n: int) -> float:
        """Mean seconds per request over ``n`` sequential requests."""
        t0 = time.perf_counter()
        for _ in range(n):
            await self.one()
        return (time.perf_counter() - t0) / n


async def ok_app(scope, receive, send) -> None:
    """An app that answers 200 at once: what is left of a request is the middleware in front of it."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def measure(callers: dict[str, "Caller"], rounds: int, batch: int) -> dict:
    for c in callers.values():  # warm-up: start-up caches, the key cache, the route
        await c.many(200)
        assert c.status == 200, c.status
    samples: dict[str, list[float]] = {name: [] for name in callers}
    gc.disable()
    for _ in range(rounds):
        for name, c in callers.items():
            samples[name].append(await c.many(batch))
    gc.enable()
    med = {name: statistics.median(v) * 1000 for name, v in samples.items()}

    def added(a: str, b: str) -> float:
        return round(statistics.median(x - y for x, y in zip(samples[a], samples[b])) * 1000, 4)

    return {"median_ms": {k: round(v, 4) for k, v in med.items()},
            "auth_added_ms": added("auth", "no-auth"), "security_layer_added_ms": added("auth", "bare"),
            "ratio_auth_vs_no_auth": round(med["auth"] / med["no-auth"], 3),
            "ratio_auth_vs_bare": round(med["auth"] / med["bare"], 3),
            "spread_ms": {k: [round(min(v) * 1000, 4), round(max(v) * 1000, 4)] for k, v in samples.items()}}


async def lifespan(app):
    """Run the app's start-up; returns a coroutine-ish handle to shut it down."""
    queue: asyncio.Queue = asyncio.Queue()
    done: asyncio.Queue = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})

    async def receive():
        return await queue.get()

    async def send(message):
        await done.put(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    msg = await done.get()
    assert msg["type"] == "lifespan.startup.complete", msg

    async def stop():
        await queue.put({"type": "lifespan.shutdown"})
        await done.get()
        await task

    return stop


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "commit": commit,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--online", default="memory://", help="stores.online: redis://host:6379/0?prefix=bench: puts "
                                                          "the rate limiter in Redis (one round trip a request)")
    args = ap.parse_args()

    data = Path(tempfile.mkdtemp(prefix="sw-auth-bench-"))
    base = {k: v for k, v in os.environ.items() if k.startswith("SHELFWISE_")}
    for k in base:
        os.environ.pop(k)
    settings = load_settings(data_dir=data, stores={"online": args.online})
    settings.security.rate_per_client = settings.security.rate_per_key = 1e9  # measured, never limiting
    store = open_privacy_store(settings.events_dsn)
    key, _ = create_key(store, "bench", ["ingest", "read"])
    store.close()
    off = settings.model_copy(deep=True)
    off.security.auth = "off"
    apps = {"auth": create_app(settings), "no-auth": create_app(off), "bare": create_app(off)}
    apps["bare"].user_middleware = [m for m in apps["bare"].user_middleware if m.cls is not SecurityMiddleware]
    stops = [await lifespan(app) for app in apps.values()]
    header = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]
    verifier = apps["auth"].state.verifier  # started: its key store is open
    limiter = apps["auth"].state.limiter
    middleware = {"auth": SecurityMiddleware(ok_app, settings.security, verifier, limiter,
                                             limiter_blocks=args.online != "memory://"),
                  "no-auth": SecurityMiddleware(ok_app, off.security, verifier, limiter,
                                                limiter_blocks=args.online != "memory://"),
                  "bare": ok_app}
    t_start = time.time()
    parts = {}
    for part, targets in (("middleware", middleware), ("api", apps)):
        callers = {name: Caller(app, "/v1/consent", b"user_id=u00042", header if name == "auth" else header[:1])
                   for name, app in targets.items()}
        parts[part] = await measure(callers, args.rounds, args.batch)
    wall = time.time() - t_start
    for stop in stops:
        await stop()
    result = {
        "route": "GET /v1/consent?user_id=u00042",
        "rate_limiter": "redis" if args.online.startswith("redis") else "memory",
        "requests_per_variant": args.rounds * args.batch,
        **parts,
        "wall_s": round(wall, 1),
        "machine": machine(),
        "command": "python benchmarks/auth_overhead.py " + f"--rounds {args.rounds} --batch {args.batch}"
                   + (f" --online {args.online}" if args.online != "memory://" else ""),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in base.items():
        os.environ[k] = v


if __name__ == "__main__":
    asyncio.run(main())
