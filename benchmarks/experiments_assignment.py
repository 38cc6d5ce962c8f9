"""Assignment speed: one shopper's variants over a handful of experiments (the request path's cost).

Five running experiments over three layers (three sharing the "ranking" layer in disjoint slices, one ramped to
50 %, one to 10 %), plus a 5 % global holdout, compiled once (``assignment.Assigner``); then 200,000 distinct
shoppers are assigned, best of 5 passes. Also the full runtime hook ``ExperimentRuntime.assign`` (identity, store
snapshot check, config merge) on an embedded SQLite store.

Run:  .venv/bin/python benchmarks/experiments_assignment.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from shelfwise.experiments.assignment import Assigner
from shelfwise.experiments.memlog import MemoryExperimentLog
from shelfwise.experiments.runtime import ExperimentRuntime
from shelfwise.experiments.schema import Experiment, parse_spec
from shelfwise.experiments.store import SQLiteExperimentStore
from shelfwise.settings import load_settings

RESULTS = Path(__file__).resolve().parent / "results"


def specs():
    def two(eid, layer, rng=(0.0, 1.0), **kw):
        return parse_spec({"id": eid, "layer": layer, "layer_range": list(rng),
                           "variants": [{"name": "control", "share": 0.5},
                                        {"name": "treatment", "share": 0.5, "config": {"k": 8}}]} | kw)
    return [(two("a", "ranking", (0, 0.3)), 1.0), (two("b", "ranking", (0.3, 0.6)), 1.0),
            (two("c", "ranking", (0.6, 1.0)), 0.5), (two("d", "merch"), 1.0), (two("e", "ui"), 0.1)]


def best_of(fn, units, passes=5) -> float:
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        for u in units:
            fn(u)
        best = min(best, (time.perf_counter() - t0) / len(units))
    return best * 1e6


def main() -> None:
    load0 = os.getloadavg()
    exps = [Experiment(spec=s, status="running", traffic=t, created_at=0, updated_at=0) for s, t in specs()]
    a = Assigner(exps, holdout_share=0.05)
    units = [f"u{i:07d}" for i in range(200_000)]
    pure = best_of(lambda u: a.assign(u, "homepage"), units)
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteExperimentStore(Path(d) / "events.db")
        for s, t in specs():
            store.create(s.model_copy(update={"traffic": t}), "bench")
            store.start(s.id, "bench")
        rt = ExperimentRuntime(load_settings(data_dir=Path(d), experiments={"holdout_share": 0.05}), store=store,
                               xlog=MemoryExperimentLog(), background=False)
        hook = best_of(lambda u: rt.assign(u, "s1", "homepage"), units[:50_000])
        rt.close()
        store.close()
    out = {"experiments": 5, "layers": 3, "holdout_share": 0.05, "pure_assign_us": pure, "runtime_assign_us": hook,
           "loadavg": [load0, os.getloadavg()]}
    print(json.dumps(out, indent=1))
    (RESULTS / "experiments_assignment.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
