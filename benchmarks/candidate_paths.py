"""The two candidate paths on a real dataset: the exact (dense) path against the union of each source's top-K.

    .venv/bin/python benchmarks/candidate_paths.py [beauty|sports] [--per-source 100,200,300]
        [--sequence-epochs 20] [--json benchmarks/results/candidate_paths_beauty.json]

Fits the default pipeline ONCE on the leave-one-out test split (the sequence model capped at a number of epochs, so
the fit does not depend on the machine's load), then asks the same fitted model for every evaluated shopper's
homepage rail through each candidate path (``models.candidates.dense_max_items`` decides the path; ``per_source``
the union's depth) and reports, per path: NDCG@10 / HR@10 (the published protocol), how much of the exact path's
top-N candidates (what the learned ranker re-scores) the union found, how many top-10 lists are identical, and the
time per 1,024-request batch. Same fitted model, same run: only the candidate path differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from shelfwise.evaluation import metrics as M  # noqa: E402
from shelfwise.evaluation.data import load_dataset  # noqa: E402
from shelfwise.evaluation.report import machine  # noqa: E402
from shelfwise.evaluation.runner import PLACEMENT, shopper_views  # noqa: E402
from shelfwise.evaluation.splits import leave_one_out  # noqa: E402
from shelfwise.request import RecRequest  # noqa: E402
from shelfwise.settings import load_settings  # noqa: E402
from shelfwise.stages.base import Batch  # noqa: E402
from shelfwise.training import fit_pipeline  # noqa: E402

FILES = {"beauty": "amazon-beauty-s3rec/Beauty.txt.gz", "sports": "amazon-sports-s3rec/Sports_and_Outdoors.txt.gz"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default="beauty", choices=sorted(FILES))
    ap.add_argument("--per-source", default="100,200,300")
    ap.add_argument("--sequence-epochs", type=int, default=20)
    ap.add_argument("--data-dir", default=str(ROOT / "benchmarks" / "results" / ".work" / "candidate_paths"))
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    settings = load_settings(data_dir=Path(args.data_dir))
    ms = settings.models
    ms.sequence.max_epochs = args.sequence_epochs
    ms.sequence.max_train_minutes = 600.0
    ms.sequence.progress = False
    t0 = time.perf_counter()
    data = load_dataset("s3rec", Path(FILES[args.dataset]), settings)
    split = leave_one_out(data.log, "test", ms.event_weights)
    views = shopper_views(split, ms.history_length)
    print(f"{args.dataset}: {len(split.users)} shoppers; fitting the default pipeline …", flush=True)
    fitted = fit_pipeline(split.train, data, ms)
    fit_s = time.perf_counter() - t0
    pipe = fitted.pipeline
    cand_settings = pipe.settings.candidates
    n_ranked = pipe.ranker.settings.candidates if pipe.ranker is not None else 120

    def run(dense: bool, per_source: int) -> dict:
        cand_settings.dense_max_items = 10**9 if dense else 0
        cand_settings.per_source = per_source
        lists, tops, secs = [], [], []
        for start in range(0, len(split.users), 1024):
            stop = min(start + 1024, len(split.users))
            reqs = [RecRequest(PLACEMENT, shopper=split.users[i], k=10, exclude=views.exclude[i],
                               state=views.states[i], now=split.now) for i in range(start, stop)]
            t = time.perf_counter()
            lists += [[r.item_id for r in a.items] for a in pipe.recommend(reqs)]
            secs.append(time.perf_counter() - t)
            batch = Batch(PLACEMENT, pipe.placement(PLACEMENT), reqs, 10)
            for stage in pipe.stages[:pipe.stages.index(pipe.stage("candidates")) + 1]:
                stage.run(batch)
            assert batch.candidates is not None
            tops += [set(row[row >= 0].tolist()) for row in batch.candidates.items[:, :n_ranked]]
        values = M.per_user(lists, split.targets, (10,))
        return {"metrics": M.summarise(values), "lists": lists, "tops": tops, "batch_s": float(np.median(secs))}

    exact = run(True, cand_settings.per_source)
    out = {"dataset": args.dataset, "machine": machine(), "fit_s": round(fit_s, 1), "ranker_candidates": n_ranked,
           "sequence_epochs": args.sequence_epochs, "command": " ".join(sys.argv),
           "exact": {"ndcg10": exact["metrics"]["NDCG@10"], "hr10": exact["metrics"]["HR@10"],
                     "batch_s": round(exact["batch_s"], 3)}, "union": []}
    print(f"exact: NDCG@10 {exact['metrics']['NDCG@10']:.5f} HR@10 {exact['metrics']['HR@10']:.5f} "
          f"({exact['batch_s']:.2f} s per 1,024 requests)", flush=True)
    for k in [int(x) for x in args.per_source.split(",")]:
        u = run(False, k)
        recall = np.mean([len(a & b) / len(a) for a, b in zip(exact["tops"], u["tops"]) if a])
        same = np.mean([a == b for a, b in zip(exact["lists"], u["lists"])])
        row = {"per_source": k, "ndcg10": u["metrics"]["NDCG@10"], "hr10": u["metrics"]["HR@10"],
               "recall_of_exact_top_n": round(float(recall), 5), "identical_top10_lists": round(float(same), 5),
               "batch_s": round(u["batch_s"], 3)}
        out["union"].append(row)
        print(f"union K={k}: NDCG@10 {row['ndcg10']:.5f} HR@10 {row['hr10']:.5f}; recall of the exact top-{n_ranked} "
              f"{recall:.4f}; identical top-10 lists {same:.4f} ({u['batch_s']:.2f} s per 1,024 requests)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
