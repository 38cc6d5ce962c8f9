"""Training cost as the shop grows: wall time, CPU time and peak memory of `shelfwise train` (the default pipeline).

    .venv/bin/python benchmarks/training_cost.py [--sizes 12000x500000,12000x2000000,12000x5000000,1000000x2000000]
        [--env SHELFWISE_KEY=VALUE] [--json benchmarks/results/training_cost.json]
        [--plot benchmarks/results/training_cost.png [--include benchmarks/results/training_cost_1m.json ...]]

For each ITEMSxEVENTS size: the synthetic storefront (shoppers scale with events: one per 25 events) is generated into
a fresh data directory (reused when it is already there), then the default pipeline is trained in a process of its
own as the shop's first training (the directory's model versions and encoder export are removed first), exactly as `shelfwise train` does (``cli.run_training``: the ranker's prefix fit, its rows and booster, every
source on the whole log, the vector indexes, the ranker compiled to native code, the held-out metrics and the
registry's gates). Reported per size: wall and CPU seconds, peak resident memory of the training process, the load
average before and after, and where the time went: each stage's wall and CPU seconds and peak memory, timed by
wrapping the functions training calls (``Stages``; the training code is unchanged), and the transformer's own report
of each of its fits (epochs, and whether its time cap, ``models.sequence.max_train_minutes``, stopped it). `--env`
passes settings to the training (e.g. sampled softmax and a time cap for a 1M-item catalog). `--plot` draws time and
peak memory against events, and the stages of every run (with `--include`, earlier results files beside this run's).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shelfwise.cli"]


# ---- in the training process ---------------------------------------------------------------------------------------
def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Stages:
    """Where a training run's time goes: each wrapped call becomes a stage (nested calls its children) with its wall
    and CPU seconds (CPU of every thread of the process) and the peak resident memory while it ran (sampled every
    0.2 s), so the training code needs no timers of its own."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.root: dict[str, Any] = {"stage": "train", "children": []}
        self.stack = [self.root]
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.perf_counter() - self.t0, rss_mb()))

    def wrap(self, owner: Any, attr: str, label: str | Callable[..., str]) -> None:
        """Time every call of ``owner.attr`` (a module's function, a class's method or an instance's)."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = label(*args, **kwargs) if callable(label) else label
            node: dict[str, Any] = {"stage": name, "children": []}
            self.stack[-1]["children"].append(node)
            self.stack.append(node)
            t, c, mb = time.perf_counter(), time.process_time(), rss_mb()
            try:
                return fn(*args, **kwargs)
            finally:
                node.update(start=t - self.t0, end=time.perf_counter() - self.t0, cpu_s=time.process_time() - c,
                            rss=(mb, rss_mb()))
                self.stack.pop()

        setattr(owner, attr, timed)

    def close(self, wall: float, cpu: float) -> list[dict[str, Any]]:
        """The stages as rows (``path`` is ' / '-joined from the outermost); a stage with children gets a row
        '<stage> / rest' for its own time when that is at least 0.5 s."""
        self._stop.set()
        self.root.update(start=0.0, end=wall, cpu_s=cpu)
        rows: list[dict[str, Any]] = []

        def peak(node: dict[str, Any]) -> float:
            got = [mb for t, mb in self.samples if node["start"] <= t <= node["end"]]
            return round(max(got + list(node.get("rss", ()))), 1)

        def walk(node: dict[str, Any], path: str) -> None:
            kids = node["children"]
            wall_s = node["end"] - node["start"]
            if path:
                rows.append({"path": path, "wall_s": round(wall_s, 1), "cpu_s": round(node["cpu_s"], 1),
                             "peak_rss_mb": peak(node), "leaf": not kids})
            for k in kids:
                walk(k, f"{path} / {k['stage']}" if path else k["stage"])
            rest = wall_s - sum(k["end"] - k["start"] for k in kids)
            if kids and rest >= 0.5:
                rows.append({"path": f"{path} / rest" if path else "rest", "wall_s": round(rest, 1),
                             "cpu_s": round(node["cpu_s"] - sum(k["cpu_s"] for k in kids), 1),
                             "peak_rss_mb": None, "leaf": True})

        walk(self.root, "")
        return rows

    def timeline(self, step: float = 5.0) -> list[list[float]]:
        """Resident memory over the run: the highest sample of every ``step`` seconds."""
        out: dict[int, float] = {}
        for t, mb in self.samples:
            out[int(t // step)] = max(out.get(int(t // step), 0.0), mb)
        return [[k * step, round(v, 1)] for k, v in sorted(out.items())]


def train_here(out: Path) -> None:
    """Train the default pipeline in this process as `shelfwise train` does, and write what it cost to ``out``."""
    from shelfwise import cli, training
    from shelfwise.evaluation import holdout
    from shelfwise.pipeline import Model
    from shelfwise.ranking import model as ranker_model, train as ranker_train
    from shelfwise.settings import load_settings
    from shelfwise.service import Shelfwise

    settings = load_settings()
    engine = Shelfwise(settings)
    stages = Stages()
    retrievers: list[tuple[str, str, Any]] = []  # (phase, source, retriever): their reports after the run
    whole: list[Any] = []  # the log the ranker's cut splits: the whole log (the ranker off: every fit is on it)

    def phase(log: Any, *args: Any, **kwargs: Any) -> str:
        return "on the prefix" if whole and log is not whole[0] else "on the whole log"

    def cut(original: Callable[..., Any]) -> Callable[..., Any]:
        def split(log: Any, *args: Any, **kwargs: Any) -> Any:
            whole[:] = [log]
            return original(log, *args, **kwargs)
        return split

    def build_retrievers(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def build(*args: Any, **kwargs: Any) -> dict[str, Any]:
            got = original(*args, **kwargs)
            where = stages.stack[-1]["stage"]
            for name, r in got.items():
                retrievers.append((where, name, r))
                stages.wrap(r, "fit", name)
            return got
        return build

    stages.wrap(engine.store, "scan", "read the event log")
    stages.wrap(engine.store, "entry_contexts", "entry contexts (cohorts)")
    training.split_history = cut(training.split_history)
    stages.wrap(training, "split_history", "ranker: cut the log")
    stages.wrap(training, "fit_sources", lambda log, *a, **k: "sources " + phase(log))
    stages.wrap(training, "train_data", lambda log, *a, **k: "training data " + phase(log))
    training.build_retrievers = build_retrievers(training.build_retrievers)
    stages.wrap(training, "train_ranker", "ranker: rows and booster")
    stages.wrap(ranker_train, "build_rows", "training rows")
    stages.wrap(ranker_model.Ranker, "fit", "booster")
    stages.wrap(training, "held_out", "held-out slice")
    stages.wrap(Model, "save", "save the model")
    stages.wrap(ranker_model.Ranker, "compile", "ranker compiled to native code")
    stages.wrap(training, "attach_indexes", "vector indexes")
    stages.wrap(holdout, "holdout_metrics", "held-out metrics")
    stages.wrap(engine.releases, "after_training", "registry and gates")

    t0, c0 = time.perf_counter(), time.process_time()
    report = cli.run_training(engine)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    reports = {f"{source} ({where})": r.report for where, source, r in retrievers
               if isinstance(getattr(r, "report", None), dict) and r.report}
    row = {"version": report.version, "events": report.events, "shoppers": report.shoppers, "items": report.items,
           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
           "stages": stages.close(wall, cpu), "source_reports": reports, "rss_timeline": stages.timeline(),
           "settings": {"sequence_max_train_minutes": settings.models.sequence.max_train_minutes,
                        "sequence_finetune_epochs": settings.models.sequence.finetune_epochs,
                        "sequence_negatives": settings.models.sequence.negatives,
                        "content_source": settings.models.content.source, "vectors": settings.stores.vectors}}
    ranker = engine.models.path(report.version) / "ranker.json"
    if ranker.exists():
        row["ranker_detail"] = json.loads(ranker.read_text())["report"].get("seconds", {})
    engine.close()
    out.write_text(json.dumps(row, default=str) + "\n")


# ---- the driver ----------------------------------------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12000x500000,12000x2000000,12000x5000000,1000000x2000000",
                    help="ITEMSxEVENTS,... (empty: no training, only --plot of the --include files)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / ".work" / "training_cost")
    ap.add_argument("--env", action="append", default=[], metavar="SHELFWISE_KEY=VALUE")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--include", type=Path, action="append", default=[],
                    help="an earlier results file whose runs the plot shows beside this run's")
    ap.add_argument("--train-here", type=Path, help=argparse.SUPPRESS)  # the training process (writes its row)
    args = ap.parse_args()
    if args.train_here:
        train_here(args.train_here)
        return
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), base.get("PYTHONPATH")) if p)
    base.update(kv.split("=", 1) for kv in args.env)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    doc = {"command": " ".join(["python", *sys.argv]), "env": args.env, "cpu_count": os.cpu_count(),
           "commit": commit, "results": []}
    rows = doc["results"]
    for size in filter(None, args.sizes.split(",")):  # none: only the plot of the --include files
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
        for earlier in ("models", "cache"):  # a shop's first training: no model version to resume from, no export
            shutil.rmtree(data / earlier, ignore_errors=True)
        print(f"{size}: training … (load average {load_average()})", flush=True)
        load0, out = load_average(), data / "training_cost_row.json"
        out.unlink(missing_ok=True)
        with (data / "training_cost.log").open("w") as log:
            proc = subprocess.run([sys.executable, __file__, "--train-here", str(out)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        if proc.returncode or not out.exists():
            tail = (data / "training_cost.log").read_text()[-3000:]
            print(tail)
            rows.append({"items": items, "events": events, "size": size, "error": tail[-500:]})
        else:
            row = json.loads(out.read_text())
            row.update(size=size, commit=commit, load_average=[load0, load_average()])
            print(json.dumps({k: v for k, v in row.items() if k not in ("stages", "rss_timeline")}), flush=True)
            rows.append(row)
        if args.json:  # after every size: a long run's finished sizes are kept
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        earlier = [{**r, "run_env": d["env"]} for d in map(json.loads, map(Path.read_text, args.include))
                   for r in d["results"]]
        plot(earlier + [{**r, "run_env": args.env} for r in rows], args.plot)


# ---- the plot ------------------------------------------------------------------------------------------------------
PARTS = ("transformer", "content encoding", "ALS", "other sources", "sources on the prefix (not split)",
         "ranker rows", "ranker booster, features", "held-out metrics, registry", "vector indexes",
         "data, save, compile, other")


def part_of(path: str) -> str:
    """The part (``PARTS``) a stage's time belongs to, from its path (``Stages.close``)."""
    top, name = path.split(" / ")[0], path.split(" / ")[-1]
    named = {"sequence": "transformer", "content": "content encoding", "als": "ALS", "vector indexes": "vector indexes"}
    if name in named:
        return named[name]
    if top == "ranker: rows and booster":
        return "ranker rows" if name == "training rows" else "ranker booster, features"
    if top in ("held-out slice", "held-out metrics", "registry and gates"):
        return "held-out metrics, registry"
    if top.startswith("sources ") and name != "rest" and not name.startswith("training data"):
        return "other sources"
    return "data, save, compile, other"


def where_time_went(row: dict) -> dict[str, float]:
    """A run's wall seconds by part (``PARTS``). Runs of before the stages were timed (100k and 1M items) have only
    the per-source seconds of the whole-log fit and the ranker's report: their prefix fits are one part."""
    got = dict.fromkeys(PARTS, 0.0)
    if "stages" in row:
        for s in row["stages"]:
            if s["leaf"]:
                got[part_of(s["path"])] += s["wall_s"]
        got["data, save, compile, other"] += row["wall_s"] - sum(got.values())
        return got
    sec, detail = row["seconds"], row.get("ranker_detail", {})
    got["transformer"] = sec.get("sequence", 0.0)
    got["content encoding"] = sec.get("content", 0.0)
    got["ALS"] = sec.get("als", 0.0)
    got["other sources"] = sum(v for k, v in sec.items() if k not in ("ranker", "sequence", "content", "als"))
    got["ranker rows"] = detail.get("rows", 0.0)
    got["ranker booster, features"] = detail.get("total", 0.0) - detail.get("rows", 0.0)
    got["sources on the prefix (not split)"] = sec.get("ranker", 0.0) - detail.get("total", 0.0)
    got["data, save, compile, other"] = row["wall_s"] - sum(got.values())
    return got


def catalog(n: int) -> str:
    return f"{n / 1000:g}k" if n < 1_000_000 else f"{n / 1e6:g}M"


def sequence_cap(row: dict) -> str:
    """The transformer's time cap of a run, in minutes (the setting, else the --env it ran with, else the default)."""
    got = row.get("settings", {}).get("sequence_max_train_minutes")
    for kv in row.get("run_env", []):
        if got is None and kv.startswith("SHELFWISE_MODELS__SEQUENCE__MAX_TRAIN_MINUTES="):
            got = float(kv.split("=", 1)[1])
    return f"{15.0 if got is None else got:g}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    catalogs = sorted({r["items"] for r in ok})
    for n in catalogs:
        runs = sorted((r for r in ok if r["items"] == n), key=lambda r: r["events"])
        x = [r["events"] / 1e6 for r in runs]
        style = dict(marker="o", label=f"{catalog(n)} items")
        line = a.plot(x, [r["wall_s"] / 60 for r in runs], **style)
        a.plot(x, [r["cpu_s"] / 60 for r in runs], marker="o", mfc="none", ls="--", color=line[0].get_color(),
               label=f"{catalog(n)} items, CPU")
        b.plot(x, [r["peak_rss_mb"] / 1024 for r in runs], **style)
        for r in runs:
            a.annotate(f"{r['wall_s'] / 60:.0f} min", (r["events"] / 1e6, r["wall_s"] / 60), fontsize=7,
                       xytext=(4, -10), textcoords="offset points")
            b.annotate(f"{r['peak_rss_mb'] / 1024:.1f} GB", (r["events"] / 1e6, r["peak_rss_mb"] / 1024),
                       fontsize=7, xytext=(4, -10), textcoords="offset points")
    a.set(xlabel="events (millions)", ylabel="minutes", title="training time (wall; dashed: CPU of all threads)", xlim=(0, None), ylim=(0, None))
    b.set(xlabel="events (millions)", ylabel="GB", title="peak memory of the training process", xlim=(0, None),
          ylim=(0, None))
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    ordered = sorted(ok, key=lambda r: (r["items"], r["events"]))
    labels = [f"{catalog(r['items'])} items\n{r['events'] / 1e6:.2g}M events\ncap {sequence_cap(r)} min"
              for r in ordered]
    split = [where_time_went(r) for r in ordered]
    bottom = [0.0] * len(ordered)
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(PARTS):
        vals = [s[p] / 60 for s in split]
        if any(v > 0 for v in vals):
            c.bar(labels, vals, bottom=bottom, label=p, color=cmap(i))
            bottom = [x + y for x, y in zip(bottom, vals)]
    c.set(ylabel="minutes (wall)", title="where the time goes")
    c.tick_params(axis="x", labelsize=7)
    c.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("shelfwise train, the default pipeline, 2-core AMD EPYC", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
