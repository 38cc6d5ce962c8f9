"""What the per-stage metrics and traces add to ``Pipeline.recommend``, measured against none in the same run.

A model is trained on the synthetic storefront (trending, co-visitation and ALS by default: the observer's cost is
per stage, not per source, so a faster pipeline is the harsher comparison); then single requests (homepage and
product page, random shoppers with their online state) are answered with no observer, with the API's observer
(``Telemetry.stage_observer``: one histogram observation per stage; tracing off) and with tracing on (a span per
pipeline call and per stage, handed to the batching processor as in production, whose exporter drops them). The
same request is timed every way, interleaved in rotating order, so drift cancels; reported as percentiles of the
per-request difference. On a busy machine that difference is noisier than the effect, so the observer's and the
batch scope's own cost per call are also timed in a tight loop.

Run:  .venv/bin/python benchmarks/observability_overhead.py [--items 12000 --shoppers 10000 --events 300000]
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import logging
import os
import platform
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from shelfwise.api.metrics import Metrics
from shelfwise.api.telemetry import RequestTelemetry, Telemetry
from shelfwise.observability import tracing
from shelfwise.observability.logs import configure_logging
from shelfwise.request import RecRequest
from shelfwise.settings import ModelSettings, ObservabilitySettings
from shelfwise.training import fit_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shop_common import single_requests, sqlite_storefront  # noqa: E402


class Drop:
    """A span exporter that keeps nothing."""

    def export(self, spans):  # noqa: ANN001
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def middleware(n: int = 20_000) -> dict[str, float]:
    """Microseconds the request middleware adds to an ASGI app that answers at once: request id, request count,
    (the span when tracing: off here) and the JSON access-log line (to /dev/null)."""
    import asyncio

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict:
        return {"type": "http.request"}

    async def send(message: dict) -> None:
        pass

    def per_request(asgi) -> float:  # noqa: ANN001
        async def loop() -> float:
            t = time.perf_counter()
            for _ in range(n):
                await asgi({"type": "http", "method": "GET", "path": "/x", "headers": []}, receive, send)
            return (time.perf_counter() - t) / n * 1e6
        return asyncio.run(loop())

    root = logging.getLogger()
    handler = configure_logging(ObservabilitySettings(log_format="json"), open(os.devnull, "w"))
    try:
        bare = per_request(app)
        quiet = per_request(RequestTelemetry(app, Metrics(), access_log=False))
        logged = per_request(RequestTelemetry(app, Metrics(), access_log=True))
    finally:
        root.removeHandler(handler)
    return {"middleware": round(quiet - bare, 2), "middleware_with_access_log": round(logged - bare, 2)}


def per_call(telemetry: Telemetry, n: int = 200_000) -> dict[str, float]:
    """Microseconds per call of what a pipeline call adds: one stage observation, the batch scope (enter + exit);
    tracing off, then on."""
    out = {}
    ctx = [contextvars.copy_context()]
    for traced in (False, True):
        if traced:
            tracing.configure_tracing(ObservabilitySettings(), exporter=Drop(), batch=True)
        else:
            tracing.shutdown_tracing()
        tag = "traced" if traced else "tracing_off"
        t = time.perf_counter()
        for _ in range(n):
            telemetry.stage_observer("homepage", "candidates", 0.001)
        out[f"stage_observer_{tag}"] = round((time.perf_counter() - t) / n * 1e6, 2)
        t = time.perf_counter()
        for _ in range(n // 10):
            with telemetry.batch_scope(ctx):
                pass
        out[f"batch_scope_{tag}"] = round((time.perf_counter() - t) / (n // 10) * 1e6, 2)
    tracing.shutdown_tracing()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--sources", default="trending,covisit,als")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "observability_overhead.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    shop, store, tmp = sqlite_storefront(args.items, args.shoppers, args.events, args.seed)
    settings = ModelSettings()
    settings.ranker.enabled = False
    pipe = fit_pipeline(store.scan(), store, settings, sources=tuple(args.sources.split(","))).pipeline
    now = (shop.end + timedelta(hours=1)).timestamp()
    print(f"setup {time.perf_counter() - t0:.0f}s; stages: {[s.name for s in pipe.stages]}", file=sys.stderr)
    reqs = single_requests(shop, pipe, store, args.requests, now, settings.history_length)
    telemetry = Telemetry(Metrics())

    def timed(mode: str, kw: dict) -> float:
        """One request; with telemetry as the API adds it: the batch's scope (batch size, request ids, the
        pipeline span when tracing) and the stage observer."""
        pipe.observer = None if mode == "none" else telemetry.stage_observer
        req = RecRequest(**kw)
        t = time.perf_counter()
        if mode == "none":
            pipe.recommend([req])
        else:
            with telemetry.batch_scope([contextvars.copy_context()]):
                pipe.recommend([req])
        return time.perf_counter() - t

    modes = ["none", "metrics", "traced"]
    out: dict[str, list[float]] = {m: [] for m in modes}
    with threadpool_limits(1, "blas"):  # as the API serves
        for kw in reqs[:500]:  # warm-up
            for m in modes:
                timed(m, kw)
        gc.disable()
        for i, kw in enumerate(reqs):
            order = modes[i % 3:] + modes[:i % 3]
            for m in order:
                if m != "traced" and tracing.tracer is not None:
                    tracing.shutdown_tracing()  # metrics only: tracing off, as by default
                if m == "traced" and tracing.tracer is None:
                    tracing.configure_tracing(ObservabilitySettings(), exporter=Drop(), batch=True)
                out[m].append(timed(m, kw))
        gc.enable()
        tracing.shutdown_tracing()
        result_calls = per_call(telemetry) | middleware()
    base = np.array(out["none"]) * 1000
    result = {"storefront": {"items": args.items, "shoppers": args.shoppers, "events": args.events,
                             "seed": args.seed}, "sources": args.sources, "requests": args.requests,
              "stages": [s.name for s in pipe.stages], "machine": platform.processor() or platform.machine(),
              "per_call_us": result_calls}
    for m in modes:
        x = np.array(out[m]) * 1000
        result[m] = {"p50_ms": round(float(np.percentile(x, 50)), 4), "p99_ms": round(float(np.percentile(x, 99)), 4),
                     "mean_ms": round(float(x.mean()), 4)}
        if m != "none":
            d = x - base
            result[m]["added_us"] = {"per_request_difference_p50": round(float(np.percentile(d, 50)) * 1000, 1),
                                     "mean": round(float(d.mean()) * 1000, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
