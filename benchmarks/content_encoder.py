"""MiniLM item-text encoder: ONNX Runtime against torch, on this machine (BENCHMARKS.md, Content tower).

For each backend: load time (for onnx the one-time export into the cache is timed separately), batch-64
throughput over the item texts of the synthetic storefront (title + description), batch-1 latency (p50/p95)
over single texts, and the largest difference between the two backends' vectors. Then the time to encode
``--full`` texts with the faster configuration, through the tower's progress bar (the issue's bound: 10,000 texts
in under 2 minutes, with a progress bar). ``--full-only``: only that, with the default settings (onnx, every core).
JSON to benchmarks/results/content_encoder.json (``--full-only``: content_encoder_full.json).

    PYTHONPATH=src .venv/bin/python benchmarks/content_encoder.py [--texts 2048] [--singles 200] [--full 10000] [--threads 1,2]
    PYTHONPATH=src .venv/bin/python benchmarks/content_encoder.py --full-only [--full 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from shelfwise.content.encoder import TextEncoder
from shelfwise.content.features import item_text
from shelfwise.content.tower import progress_bar
from shelfwise.settings import ContentSettings
from shelfwise.synthetic import generate_storefront

RESULTS = Path(__file__).resolve().parent / "results"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure(backend: str, cache: Path, texts: list[str], singles: list[str], threads: int
            ) -> tuple[dict, np.ndarray, TextEncoder]:
    enc = TextEncoder(backend=backend, cache_dir=cache, threads=threads)
    row: dict = {"backend": backend, "threads": enc.threads}
    if backend == "onnx" and not enc.onnx_path().is_file():
        t = time.perf_counter()
        from shelfwise.content.encoder import export_onnx

        export_onnx(enc.onnx_path())
        row["export_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    enc.load()
    row["load_s"] = round(time.perf_counter() - t, 2)
    enc.encode(texts[:64])  # warm-up
    t = time.perf_counter()
    vecs = enc.encode(texts, batch_size=64)
    dt = time.perf_counter() - t
    row.update(batch64_s=round(dt, 2), batch64_texts_per_s=round(len(texts) / dt, 1),
               batch64_ms_per_batch=round(dt / (len(texts) / 64) * 1000, 1))
    lat = []
    for s in singles:
        t = time.perf_counter()
        enc.encode([s], batch_size=1)
        lat.append((time.perf_counter() - t) * 1000)
    lat_a = np.array(lat)
    row.update(batch1_p50_ms=round(float(np.percentile(lat_a, 50)), 2),
               batch1_p95_ms=round(float(np.percentile(lat_a, 95)), 2),
               batch1_texts_per_s=round(1000 / lat_a.mean(), 1))
    return row, vecs, enc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=2048, help="texts of the batch-64 throughput run")
    ap.add_argument("--singles", type=int, default=200, help="single texts of the batch-1 latency run")
    ap.add_argument("--full", type=int, default=10_000, help="texts encoded end to end by the faster backend "
                                                             "(0 = skip)")
    ap.add_argument("--threads", default="1,2", help="encoder thread counts measured (0 = every core)")
    ap.add_argument("--full-only", action="store_true", help="only the end-to-end run, default settings")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    a.json = a.json or str(RESULTS / ("content_encoder_full.json" if a.full_only else "content_encoder.json"))
    if a.full_only:
        return full_only(a)

    n_items = max(a.texts, a.full, a.singles)
    shop = generate_storefront(n_items=n_items, n_shoppers=10, n_events=10, seed=7)
    all_texts = [item_text(it) for it in shop.items]
    rng = np.random.default_rng(0)
    texts = [all_texts[i] for i in rng.permutation(len(all_texts))[: a.texts]]
    singles = [all_texts[i] for i in rng.permutation(len(all_texts))[: a.singles]]
    report: dict = {"commit": _git_commit(), "cpu": _cpu(), "cores": os.cpu_count(),
                    "load_before": os.getloadavg(), "texts": a.texts, "singles": a.singles,
                    "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
                    "content_defaults": {"max_tokens": ContentSettings().max_tokens}}
    with tempfile.TemporaryDirectory() as tmp:
        rows, vecs, encoders = [], {}, {}
        for threads in [int(x) for x in a.threads.split(",")]:
            for backend in ("torch", "onnx"):
                row, v, enc = measure(backend, Path(tmp), texts, singles, threads)
                rows.append(row)
                vecs[backend], encoders[(backend, threads)] = v, enc
                print(json.dumps(row), flush=True)
        diff = np.abs(vecs["torch"] - vecs["onnx"])
        cos = np.sum(vecs["torch"] * vecs["onnx"], axis=1)
        report.update(rows=rows, max_abs_diff=float(diff.max()), min_cosine=float(cos.min()))
        best64 = min(rows, key=lambda r: r["batch64_s"])
        report["faster_batch64"] = f"{best64['backend']} threads={best64['threads']}"
        best1 = min(rows, key=lambda r: r["batch1_p50_ms"])
        report["faster_batch1"] = f"{best1['backend']} threads={best1['threads']}"
        if a.full:
            enc = encoders[(best64["backend"], best64["threads"])]
            report["full"] = encode_full(enc, all_texts[: a.full])
    report["load_after"] = os.getloadavg()
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=1))


def encode_full(enc: TextEncoder, texts: list[str]) -> dict:
    """Encode ``texts`` end to end with the tower's progress bar; seconds, texts/s and the load around it."""
    before = os.getloadavg()
    t = time.perf_counter()
    with progress_bar(True, "content") as bar:
        enc.encode(texts, progress=bar)
    dt = time.perf_counter() - t
    return {"backend": enc.backend, "threads": enc.threads, "batch_size": enc.batch_size, "texts": len(texts),
            "distinct_texts": len(set(texts)), "seconds": round(dt, 1), "texts_per_s": round(len(texts) / dt, 1),
            "load_before": before, "load_after": os.getloadavg()}


def full_only(a: argparse.Namespace) -> None:
    shop = generate_storefront(n_items=a.full, n_shoppers=10, n_events=10, seed=7)
    texts = [item_text(it) for it in shop.items][: a.full]
    with tempfile.TemporaryDirectory() as tmp:
        content = ContentSettings()
        enc = TextEncoder(backend=content.backend, cache_dir=Path(tmp), batch_size=content.batch_size,
                          max_tokens=content.max_tokens, max_chars=content.max_chars, threads=content.threads)
        t = time.perf_counter()
        enc.load()  # the one-time export into the cache is not part of encoding
        load_s = time.perf_counter() - t
        report = {"commit": _git_commit(), "cpu": _cpu(), "cores": os.cpu_count(), "load_s": round(load_s, 1),
                  "mean_chars": round(float(np.mean([len(x) for x in texts])), 1),
                  "full": encode_full(enc, texts)}
    print(json.dumps(report, indent=1))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
