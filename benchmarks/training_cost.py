"""Training cost as the shop grows: wall time, CPU time and peak memory of `shelfwise train` (the default pipeline).

    .venv/bin/python benchmarks/training_cost.py [--sizes 12000x500000,12000x2000000,12000x5000000,1000000x2000000]
        [--env SHELFWISE_KEY=VALUE] [--json benchmarks/results/training_cost.json] [--plot benchmarks/results/training_cost.png]

For each ITEMSxEVENTS size: the synthetic storefront (shoppers scale with events: one per 25 events) is generated into
a fresh data directory (reused when it is already there), then the default pipeline is trained in a process of its
own, exactly as `shelfwise train` does (the ranker's prefix fit, its rows and booster, every source on the whole
log, the vector indexes, the ranker compiled to native code). Reported per size: wall and CPU seconds, peak
resident memory of the training process, and where the time went (each source, the ranker's part). `--env`
passes settings to the training (e.g. sampled softmax and a time cap for a 1M-item catalog).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shelfwise.cli"]

RUNNER = r'''
import json, resource, sys, time
from shelfwise.settings import load_settings
from shelfwise.service import Shelfwise
from shelfwise.training import train

settings = load_settings()
engine = Shelfwise(settings)
t0, c0 = time.perf_counter(), time.process_time()
report = train(engine.store, engine.catalog, engine.models, settings.models, vectors=settings.stores.vectors)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
ranker = engine.models.path(report.version) / "ranker.json"
detail = json.loads(ranker.read_text())["report"].get("seconds", {}) if ranker.exists() else {}
print(json.dumps({"version": report.version, "events": report.events, "shoppers": report.shoppers,
                  "items": report.items, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "seconds": {k: round(v, 1) for k, v in report.seconds.items()}, "ranker_detail": detail}))
engine.close()
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12000x500000,12000x2000000,12000x5000000,1000000x2000000")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / ".work" / "training_cost")
    ap.add_argument("--env", action="append", default=[], metavar="SHELFWISE_KEY=VALUE")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    base.update(kv.split("=", 1) for kv in args.env)
    rows = []
    for size in args.sizes.split(","):
        items, events = (int(x) for x in size.split("x"))
        data = args.work / f"{items}x{events}"
        env = {**base, "SHELFWISE_DATA_DIR": str(data), "SHELFWISE_SECURITY__AUTH": "off"}
        if not (data / "generated").exists():
            data.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            print(f"{size}: generating …", flush=True)
            subprocess.run(CLI + ["generate", "--items", str(items), "--shoppers", str(max(1000, events // 25)),
                                  "--events", str(events), "--seed", "11"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            (data / "generated").write_text(json.dumps({"seconds": round(time.perf_counter() - t, 1)}))
        print(f"{size}: training …", flush=True)
        load0 = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", RUNNER], env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:])
            rows.append({"items": items, "events": events, "error": out.stderr[-500:]})
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update(size=size, load_average_1m=[round(load0, 2), round(os.getloadavg()[0], 2)])
        print(json.dumps(row), flush=True)
        rows.append(row)
    doc = {"command": " ".join(["python", *sys.argv]), "env": args.env, "cpu_count": os.cpu_count(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip(), "results": rows}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    labels = [f"{r['items'] // 1000}k items\n{r['events'] / 1e6:g}M events" for r in ok]
    parts = sorted({k for r in ok for k in r["seconds"]})
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0.0] * len(ok)
    for p in parts:
        vals = [r["seconds"].get(p, 0.0) / 60 for r in ok]
        a.bar(labels, vals, bottom=bottom, label=p)
        bottom = [x + y for x, y in zip(bottom, vals)]
    a.set_ylabel("minutes (wall)")
    a.set_title("where training time goes")
    a.legend(fontsize=8)
    b.bar(labels, [r["peak_rss_mb"] / 1024 for r in ok], color="tab:gray")
    b.set_ylabel("GB")
    b.set_title("peak memory of the training process")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
