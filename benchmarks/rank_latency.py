"""Latency the learned ranker adds to one homepage request (re-scoring the blend's top 120), measured in one run.

The synthetic storefront (12k items by default) is trained once with the ranker; then the same single-shopper
requests (B=1, as the API serves them, one BLAS thread as in the API) go through ``Pipeline.recommend`` with and
without the ranker, interleaved request by request (order alternating) so machine noise hits both alike.
Reported: p50/p95/p99 of both, the p99 difference, the paired per-request difference, and the ranker stage alone
(``Ranker.rerank``: candidates, features, LightGBM predict, margin blend) — in wall-clock time AND in CPU time of
the serving thread (``time.thread_time``; everything runs in that thread: one BLAS thread, LightGBM predict with
one thread). On a 2-core machine shared with other benchmarks, wall-clock percentiles mostly measure the
scheduler; CPU time is what the request itself costs.

    .venv/bin/python benchmarks/rank_latency.py [--requests 2000] [--data-dir /tmp/shelfwise-rank-bench]
        [--json benchmarks/results/rank_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_common import machine, storefront_engine  # noqa: E402

from shelfwise.pipeline import Pipeline
from shelfwise.request import RecRequest  # noqa: E402
from shelfwise.ranking.model import Ranker  # noqa: E402
from shelfwise.settings import RankerSettings  # noqa: E402
from shelfwise.training import fit_pipeline  # noqa: E402


def pct(x: list[float]) -> dict[str, float]:
    a = np.array(x) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--candidates", type=int, default=120)
    ap.add_argument("--data-dir", default="/tmp/shelfwise-rank-bench")
    ap.add_argument("--sources", default="trending,covisit,copurchase,als",
                    help="sources fit (pinned, so the run does not depend on the default source set)")
    ap.add_argument("--retrain", action="store_true", help="retrain even if a saved model exists")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    engine = storefront_engine(Path(a.data_dir), a.items, a.shoppers, a.events)
    log = engine.store.scan()
    ms = engine.settings.models
    ms = ms.model_copy(update={"ranker": RankerSettings(enabled=True, candidates=a.candidates, max_requests=10_000)})
    model_dir = Path(a.data_dir) / f"rank-latency-model-{a.candidates}"
    fit_seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if model_dir.exists() and not a.retrain:  # trained by an earlier run on the same storefront
        pipe = Pipeline.load(model_dir, ms)
        train_s = float("nan")
    else:
        fitted = fit_pipeline(log, engine.catalog, ms, tuple(a.sources.split(",")))
        train_s = time.perf_counter() - t0
        pipe, fit_seconds = fitted.pipeline, fitted.seconds
        model_dir.mkdir(parents=True, exist_ok=True)
        pipe.save(model_dir)
        print(f"trained in {train_s:.0f} s: {fit_seconds}", file=sys.stderr)
    ranker = pipe.ranker

    rng = np.random.default_rng(0)
    shoppers = [s for s in np.unique(log.shopper.astype(str)) if not s.startswith("s")]
    picks = rng.choice(shoppers, a.requests, replace=True)
    states = {s: engine.shopper_state(s) for s in set(picks.tolist())}
    now = float(log.ts.max()) + 60.0

    stage: list[float] = []
    stage_cpu: list[float] = []
    original = Ranker.rerank

    def timed(self, *args, **kw):
        t, c = time.perf_counter(), time.thread_time()
        out = original(self, *args, **kw)
        stage.append(time.perf_counter() - t)
        stage_cpu.append(time.thread_time() - c)
        return out

    Ranker.rerank = timed  # type: ignore[method-assign]
    with_r, without_r, diff = [], [], []
    cpu_with, cpu_without, cpu_diff = [], [], []
    with threadpool_limits(1):
        for i, s in enumerate(list(picks[:100]) + list(picks)):  # the first 100: warm-up
            req = lambda: RecRequest("homepage", shopper=s, k=12, state=states[s], now=now)  # noqa: E731
            t_on = t_off = c_on = c_off = 0.0
            for on in ((True, False) if i % 2 else (False, True)):
                pipe.ranker = ranker if on else None
                t, c = time.perf_counter(), time.thread_time()
                pipe.recommend([req()])
                dt, dc = time.perf_counter() - t, time.thread_time() - c
                if on:
                    t_on, c_on = dt, dc
                else:
                    t_off, c_off = dt, dc
            if i >= 100:
                with_r.append(t_on)
                without_r.append(t_off)
                diff.append(t_on - t_off)
                cpu_with.append(c_on)
                cpu_without.append(c_off)
                cpu_diff.append(c_on - c_off)
    stage, stage_cpu = stage[100:], stage_cpu[100:]
    out = {"machine": machine(), "catalog_items": len(pipe.items), "events": len(log), "requests": len(with_r),
           "candidates": a.candidates, "features": len(ranker.feature_names), "trees": ranker.booster.num_trees(),
           "train_s": round(train_s, 1), "fit_seconds": {k: round(v, 1) for k, v in fit_seconds.items()},
           "load_1m": round(os.getloadavg()[0], 1),
           "wall": {"without_ranker_ms": pct(without_r), "with_ranker_ms": pct(with_r),
                    "paired_difference_ms": pct(diff), "ranker_stage_ms": pct(stage)},
           "cpu": {"without_ranker_ms": pct(cpu_without), "with_ranker_ms": pct(cpu_with),
                   "paired_difference_ms": pct(cpu_diff), "ranker_stage_ms": pct(stage_cpu)}}
    for kind in ("wall", "cpu"):
        d = out[kind]
        d["added_p99_ms"] = round(d["with_ranker_ms"]["p99"] - d["without_ranker_ms"]["p99"], 3)
        d["ratio_p99"] = round(d["with_ranker_ms"]["p99"] / d["without_ranker_ms"]["p99"], 2)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    engine.close()


if __name__ == "__main__":
    main()
