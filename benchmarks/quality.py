"""Offline quality benchmark driver (leave-one-out full ranking): the BENCHMARKS.md tables, and the tuning record.

    .venv/bin/python benchmarks/quality.py run [beauty sports ml100k]   # `shelfwise evaluate` per dataset, timed
    .venv/bin/python benchmarks/quality.py tune [beauty]                # co-visitation + blend search (validation)

``run`` executes the exact `shelfwise evaluate` command shown in BENCHMARKS.md (in a subprocess, with a fresh
data directory under benchmarks/results/.work unless --keep), measures its wall time and writes
benchmarks/results/quality-<dataset>.json (the command, wall time, machine and every number) plus the Markdown
report and plots under benchmarks/results/quality-<dataset>/.

``tune`` searches CovisitSettings and the homepage blend weights on the *validation* target (each shopper's
second-to-last item; the test item is never seen) through the production pipeline, one parameter at a time from
the current defaults, and writes every configuration tried with its numbers to
benchmarks/results/tuning-<dataset>.json.
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
    "beauty": ["s3rec", "amazon-beauty-s3rec/Beauty.txt.gz"],
    "sports": ["s3rec", "amazon-sports-s3rec/Sports_and_Outdoors.txt.gz"],
    "ml100k": ["movielens", "movielens-100k"],
    "diginetica": ["diginetica", "diginetica-cikm2016"],
    "completejourney": ["completejourney", "completejourney"],
}
# Published full-ranking numbers (HR@10, NDCG@10) quoted in issue 4, for the tables.
PUBLISHED = {
    "beauty": [("SASRec", 0.0605, 0.0318), ("DuoRec", 0.0845, 0.0443), ("eSASRec", 0.0928, 0.0523),
               ("BSARec", 0.1008, 0.0611)],
    "sports": [("SASRec", 0.0350, 0.0192), ("DuoRec", 0.0498, 0.0262), ("ICSRec", 0.0565, 0.0335)],
}
# seqbench.py (../shared/tools) numbers measured by its author on this protocol (HR@10, NDCG@10).
SEQBENCH = {
    "beauty": [("pop", 0.0136, 0.0061), ("item-kNN", 0.0735, 0.0465), ("ALS", 0.0617, 0.0320),
               ("EASE", 0.0734, 0.0400)],
    "sports": [("pop", 0.0091, 0.0052), ("item-kNN", 0.0379, 0.0232), ("ALS", 0.0431, 0.0233),
               ("EASE", 0.0512, 0.0279)],
}


def run(names: list[str], keep: bool, models: str, protocol: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        fmt, path = DATASETS[name]
        out = RESULTS / f"quality-{name}"
        work = RESULTS / ".work" / name
        cmd = ["shelfwise", "evaluate", fmt, path, "--models", models, "--report", str(out.relative_to(ROOT))]
        if protocol:
            cmd += ["--protocol", protocol]
        env = dict(os.environ, SHELFWISE_DATA_DIR=str(work))
        env.setdefault("SHELFWISE_DATASETS_DIR", str(ROOT.parent / "shared" / "datasets"))
        if not keep and work.exists():
            subprocess.run(["rm", "-rf", str(work)], check=True)
        shown = " ".join(shlex.quote(c) for c in cmd)
        print(f"$ {shown}", file=sys.stderr)
        t0 = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / cmd[0])] + cmd[1:], cwd=ROOT, env=env, check=True)
        wall = time.perf_counter() - t0
        result = json.loads((out / "results.json").read_text())[0]
        record = {"dataset": name, "command": shown, "wall_s": round(wall, 1), "cold_import": not keep,
                  "code": code_version(),
                  "machine": result["machine"], "published": PUBLISHED.get(name, []),
                  "seqbench": SEQBENCH.get(name, []), "result": result}
        (RESULTS / f"quality-{name}.json").write_text(json.dumps(record, indent=1))
        print(markdown_rows(record))


def code_version() -> str:
    """The commit measured: SHELFWISE_BENCH_COMMIT (set when running an exported tree via PYTHONPATH), else HEAD
    of this work tree, marked "+local changes" when src/ differs from it."""
    if os.environ.get("SHELFWISE_BENCH_COMMIT"):
        return os.environ["SHELFWISE_BENCH_COMMIT"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=ROOT).returncode != 0
    return head.strip() + (" +local changes" if dirty else "")


def markdown_rows(record: dict) -> str:
    lines = []
    for split in record["result"]["splits"]:
        lines.append(f"\n{record['dataset']} · {split['name']} · {split['users']} shoppers · wall {record['wall_s']} s")
        lines.append("| model | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR@20 | fit s | rec s |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, m in split["models"].items():
            v = m["metrics"]
            lines.append(f"| {name} | " + " | ".join(f"{v[c]:.4f}" for c in ("HR@5", "HR@10", "HR@20", "NDCG@5",
                                                                             "NDCG@10", "NDCG@20", "MRR"))
                         + f" | {m['fit_s']:.1f} | {m['recommend_s']:.1f} |")
    return "\n".join(lines)


TITLES = {"beauty": "Amazon Beauty (S3-Rec version)", "sports": "Amazon Sports and Outdoors (S3-Rec version)",
          "ml100k": "MovieLens 100K", "diginetica": "DIGINETICA purchases", "completejourney": "The Complete Journey"}


def markdown_section(names: list[str]) -> str:
    """The per-dataset tables of BENCHMARKS.md, from benchmarks/results/quality-<dataset>.json."""
    out = []
    for name in names:
        path = RESULTS / f"quality-{name}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        res = rec["result"]
        d = res["dataset"]
        m = rec["machine"]
        splits = {sp["name"]: sp for sp in res["splits"]}
        test, valid = splits.get("loo-test"), splits.get("loo-valid")
        out += [f"### {TITLES.get(name, name)}", "",
                f"{d['shoppers']:,} shoppers, {d['items']:,} items, {d['events']:,} interactions; "
                f"{test['users']:,} shoppers evaluated.", "",
                f"Command (from the repository root, `SHELFWISE_DATASETS_DIR` = `../shared/datasets`, the "
                f"default): `{rec['command']}` — wall time **{rec['wall_s']:.0f} s** including the import "
                f"({res.get('import_s', 0):.0f} s), commit {rec.get('code', '?')}, {m['cores']} cores ({m['cpu']}), {m.get('memory_gb')} GB.", "",
                "| model | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR@20 | Cov@20 | fit s | rec s |"
                + (" valid NDCG@10 |" if valid else ""),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if valid else "")]
        tail = " – |" if valid else ""
        for model, r in test["models"].items():
            v = r["metrics"]
            vv = valid["models"][model]["metrics"]["NDCG@10"] if valid and model in valid["models"] else None
            label = {"default": "**Shelfwise default pipeline**", "covisit": "co-visitation (item-kNN)",
                     "popularity": "popularity (trending)"}.get(model, model.upper() if model in ("als", "ease")
                                                              else model)
            out.append(f"| {label} | " + " | ".join(f"{v[c]:.4f}" for c in ("HR@5", "HR@10", "HR@20", "NDCG@5",
                                                                          "NDCG@10", "NDCG@20", "MRR"))
                       + f" | {r['coverage']['@20']:.3f} | {r['fit_s']:.1f} | {r['recommend_s']:.1f} |"
                       + ((f" {vv:.4f} |" if vv is not None else " – |") if valid else ""))
        for who, hr, ndcg in rec.get("seqbench", []):
            out.append(f"| seqbench.py: {who} | – | {hr:.4f} | – | – | {ndcg:.4f} | – | – | – | – | – |" + tail)
        for who, hr, ndcg in rec.get("published", []):
            out.append(f"| {who} (published) | – | {hr:.4f} | – | – | {ndcg:.4f} | – | – | – | – | – |" + tail)
        out.append("")
        seg = test["segment_threshold"]
        dm = test["models"].get("default")
        if dm:
            s_, l_ = dm["segments"]["short"], dm["segments"]["long"]
            out += [f"Default pipeline by history length: ≤ {seg} training interactions ({int(s_['users']):,} "
                    f"shoppers) NDCG@10 {s_['NDCG@10']:.4f}, longer ({int(l_['users']):,}) {l_['NDCG@10']:.4f}. "
                    f"Full report with plots: `benchmarks/results/quality-{name}/report.md`.", ""]
        tmp = splits.get("temporal-test")
        if tmp:
            t = tmp["notes"].get("split_time")
            out += [f"Global temporal split (train before T = the time leaving 20% of interactions after it, "
                    f"{t:.0f} unix s; targets = each known shopper's new items after T; {tmp['users']} shoppers):",
                    "", "| model | HR@10 | NDCG@10 | Recall@20 | MRR@20 |", "|---|---:|---:|---:|---:|"]
            for model, r in tmp["models"].items():
                v = r["metrics"]
                out.append(f"| {model} | {v['HR@10']:.4f} | {v['NDCG@10']:.4f} | {v['Recall@20']:.4f} | "
                           f"{v['MRR']:.4f} |")
            out.append("")
    return "\n".join(out)


# ---- tuning ---------------------------------------------------------------------------------------------------
COVISIT_GRID = {
    "window": [1, 2, 3, 5, 8, 12, 20, 50],
    "forward_weight": [1.0],
    "backward_weight": [0.0, 0.25, 0.5, 0.75, 1.0],
    "normalize": ["cosine", "none"],
    "last_n": [1, 2, 3, 5, 8],
    "recency_decay": [0.2, 0.35, 0.5, 0.7, 0.9],
    "top_per_item": [50, 100, 200],
}


def tune(name: str, rounds: int) -> None:
    from shelfwise.evaluation.data import load_dataset
    from shelfwise.evaluation.runner import ModelSpec, evaluate_model, shopper_views
    from shelfwise.evaluation.splits import leave_one_out
    from shelfwise.pipeline import Pipeline
    from shelfwise.settings import ModelSettings, PlacementSettings, load_settings
    from shelfwise.training import fit_pipeline
    from shelfwise.evaluation import metrics as M

    fmt, path = DATASETS[name]
    settings = load_settings(data_dir=RESULTS / ".work" / name,
                             datasets_dir=Path(os.environ.get("SHELFWISE_DATASETS_DIR",
                                                              ROOT.parent / "shared" / "datasets")))
    ds = load_dataset(fmt, path, settings)
    split = leave_one_out(ds.log, "valid", settings.models.event_weights)
    views = shopper_views(split, settings.models.history_length)
    base = settings.models
    tried: list[dict] = []
    record_path = RESULTS / f"tuning-{name}.json"

    def save() -> None:
        record_path.write_text(json.dumps({"dataset": name, "split": split.name, "users": len(split.users),
                                           "tried": tried}, indent=1))

    def covisit_score(params: dict) -> float:
        ms = base.model_copy(update={"covisit": base.covisit.model_copy(update=params)})
        r = evaluate_model(ModelSpec("covisit", ("covisit",), {"covisit": 1.0}), split, ds, ms, views)
        tried.append({"stage": "covisit", "params": params, "HR@10": r.metrics["HR@10"],
                      "NDCG@10": r.metrics["NDCG@10"], "fit_s": r.fit_s})
        print(f"covisit {params} NDCG@10={r.metrics['NDCG@10']:.4f} HR@10={r.metrics['HR@10']:.4f}",
              file=sys.stderr)
        save()
        return r.metrics["NDCG@10"]

    best = {k: getattr(base.covisit, k) for k in COVISIT_GRID}
    best_score = covisit_score(dict(best))
    for _ in range(rounds):  # coordinate ascent from the current defaults
        improved = False
        for key, values in COVISIT_GRID.items():
            for v in values:
                if v == best[key]:
                    continue
                cand = dict(best, **{key: v})
                s = covisit_score(cand)
                if s > best_score + 1e-5:
                    best, best_score, improved = cand, s, True
        if not improved:
            break
    print(f"best covisit {best} NDCG@10={best_score:.4f}", file=sys.stderr)

    # blend weights: fit every source once with the best co-visitation settings, then re-weight (no refit)
    ms = base.model_copy(update={"covisit": base.covisit.model_copy(update=best)})
    sources = ("covisit", "copurchase", "als", "trending", "ease")
    fitted = fit_pipeline(split.train, ds, ms, sources=sources)

    def blend_score(weights: dict) -> dict:
        placements = dict(ms.placements)
        placements["homepage"] = PlacementSettings(weights=weights,
                                                   exclude_history=ms.placements["homepage"].exclude_history)
        p = fitted.pipeline
        pipe = Pipeline(ms.model_copy(update={"placements": placements}), p.items, p.retrievers, p.shopper_index,
                        trained_until=p.trained_until)
        from shelfwise.evaluation.runner import recommend_lists

        lists = recommend_lists(pipe, split, views, 20)
        s = M.summarise(M.per_user(lists, split.targets))
        tried.append({"stage": "blend", "weights": weights, "HR@10": s["HR@10"], "NDCG@10": s["NDCG@10"]})
        print(f"blend {weights} NDCG@10={s['NDCG@10']:.4f} HR@10={s['HR@10']:.4f}", file=sys.stderr)
        save()
        return s

    grid = []
    for als in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        for trending in (0.0, 0.02, 0.05, 0.1):
            grid.append({"covisit": 1.0, "als": als, "trending": trending})
    results = [(blend_score(w)["NDCG@10"], w) for w in grid]
    top = max(results, key=lambda x: x[0])
    extra = []
    for cp in (0.1, 0.3, 0.5):
        extra.append(dict(top[1], copurchase=cp))
    for ease in (0.1, 0.3, 0.5, 1.0):
        extra.append(dict(top[1], ease=ease))
    results += [(blend_score(w)["NDCG@10"], w) for w in extra]
    best_blend = max(results, key=lambda x: x[0])
    print(f"best blend {best_blend[1]} NDCG@10={best_blend[0]:.4f}", file=sys.stderr)
    save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("datasets", nargs="*", default=["beauty", "sports", "ml100k"])
    r.add_argument("--keep", action="store_true", help="reuse the cached import (wall time then excludes it)")
    r.add_argument("--models", default="popularity,covisit,als,ease,default")
    r.add_argument("--protocol", default="")
    md = sub.add_parser("markdown", help="print the BENCHMARKS.md tables from the results JSON")
    md.add_argument("datasets", nargs="*", default=["beauty", "sports", "ml100k"])
    t = sub.add_parser("tune")
    t.add_argument("dataset", nargs="?", default="beauty")
    t.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.datasets, a.keep, a.models, a.protocol)
    elif a.cmd == "markdown":
        print(markdown_section(a.datasets))
    else:
        tune(a.dataset, a.rounds)


if __name__ == "__main__":
    main()
