"""Cold-start benchmark driver (issue 14 item 6): the cold-item (and cold-shopper) protocols of `shelfwise evaluate`
on the synthetic storefront, Amazon Beauty, MovieLens 100K and the Complete Journey sample.

    .venv/bin/python benchmarks/cold_start.py [synthetic beauty ml100k completejourney] [--protocol cold-items]

Per dataset it runs the exact `shelfwise evaluate … --protocol …` command shown in BENCHMARKS.md (a subprocess,
under `nice -n 10`, data directory benchmarks/results/.work unless --data-dir), with the load average before and
after, and writes benchmarks/results/cold_start-<dataset>.json (command, commit, wall time, load, every number) and
the Markdown report under benchmarks/results/cold_start-<dataset>/. The synthetic storefront is generated first
(3,000 items, 3,000 shoppers, 90,000 events: its 3,000 texts encode in about two minutes on 2 busy cores). The
content tower's encodings are cached under the data directory: a second run encodes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {
    "synthetic": ["store"],
    "beauty": ["s3rec", "amazon-beauty-s3rec/Beauty.txt.gz"],
    "ml100k": ["movielens", "movielens-100k"],
    "completejourney": ["completejourney", "completejourney"],
}
MODELS = {"cold-items": "popularity-cold,popularity-category,attr-knn,content,content-raw",
          "cold-shoppers": "popularity,attr-knn,covisit,als,content"}
SHOP = ["--items", "3000", "--shoppers", "3000", "--events", "90000"]


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--protocol", default="cold-items", choices=list(MODELS))
    ap.add_argument("--data-dir", type=Path, default=RESULTS / ".work")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for name in args.datasets:
        data_dir = args.data_dir / ("shop" if name == "synthetic" else "data")
        env["SHELFWISE_DATA_DIR"] = str(data_dir)
        cli = ["nice", "-n", "10", sys.executable, "-m", "shelfwise.cli"]
        if name == "synthetic" and not (data_dir / "shelfwise.db").exists():
            subprocess.run(cli + ["generate", *SHOP], env=env, cwd=ROOT, check=True)
        report = RESULTS / f"cold_start-{name}" if args.protocol == "cold-items" else \
            RESULTS / f"cold_start-{name}-{args.protocol}"
        cmd = cli + ["evaluate", *DATASETS[name], "--protocol", args.protocol, "--models", MODELS[args.protocol],
                     "--report", str(report)]
        before, t0 = load(), time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True)
        wall, after = time.perf_counter() - t0, load()
        result = json.loads((report / "results.json").read_text())[0]
        out = {"command": shlex.join(cmd[3:]), "commit": commit, "wall_s": round(wall, 1),
               "load_average": {"before": before, "after": after}, "result": result}
        suffix = "" if args.protocol == "cold-items" else f"-{args.protocol}"
        (RESULTS / f"cold_start-{name}{suffix}.json").write_text(json.dumps(out, indent=1))
        print(f"{name}: {wall:.0f} s, load {before:.1f} -> {after:.1f}", flush=True)


if __name__ == "__main__":
    main()
