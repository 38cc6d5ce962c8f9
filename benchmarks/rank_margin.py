"""Relevance vs margin on the synthetic storefront as ``models.ranker.margin_weight`` (w) varies.

final score = minmax(ranker score over the request's 120 candidates) + w · (price × margin rate) / max over them.

Protocol: the storefront's events are split in time (``ranking.labels.split_history``, the last 10% of the
interactions held out); the pipeline (sources + ranker, the ranker itself trained with its own time cut inside
the first 90%) is fit on the first 90%. Each held-out request (a shopper's state just before an interaction) is
scored against what the shopper did next in the session (purchase 3 > cart 2 > view 1, gains 2^g - 1).

Reported per w: NDCG@10 (graded), HR@10 of carts/purchases, the mean expected margin of the items shown
(price × margin per slot), and the captured margin: per request, the margin of shown items the shopper then
carted or bought. Writes Markdown + a PNG (matplotlib, Agg).

    .venv/bin/python benchmarks/rank_margin.py [--requests 6000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_common import machine, storefront_engine  # noqa: E402

from shelfwise.ranking.labels import split_history  # noqa: E402
from shelfwise.settings import RankerSettings  # noqa: E402
from shelfwise.training import fit_pipeline  # noqa: E402

WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
K = 10


def score_lists(pipe, points, lists) -> dict[str, float]:
    idx = pipe.items.index
    value = np.nan_to_num(pipe.items.price * pipe.items.margin, nan=0.0)
    disc = 1.0 / np.log2(np.arange(K) + 2)
    ndcg, hit, shown, captured = [], [], [], []
    for p, lst in zip(points, lists):
        gains = np.array([2.0 ** p.labels.get(it, 0) - 1 for it in lst[:K]])
        ideal = np.sort(np.array([2.0 ** g - 1 for g in p.labels.values()]))[::-1][:K]
        ndcg.append(float((gains * disc[:len(gains)]).sum() / (ideal * disc[:len(ideal)]).sum()))
        bought = [it for it in lst[:K] if p.labels.get(it, 0) >= 2]
        hit.append(float(bool(bought)) if any(g >= 2 for g in p.labels.values()) else np.nan)
        shown.append(float(np.mean([value[idx[it]] for it in lst[:K]])) if lst else 0.0)
        captured.append(float(sum(value[idx[it]] for it in bought)))
    return {"NDCG@10": float(np.mean(ndcg)), "HR@10 cart/purchase": float(np.nanmean(hit)),
            "shown margin per slot": float(np.mean(shown)), "captured margin per request": float(np.mean(captured))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--data-dir", default="/tmp/shelfwise-rank-bench")
    ap.add_argument("--sources", default="trending,covisit,copurchase,als",
                    help="sources fit (pinned, so the run does not depend on the default source set)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    t_start = time.perf_counter()
    engine = storefront_engine(Path(a.data_dir), a.items, a.shoppers, a.events)
    log = engine.store.scan()
    ms = engine.settings.models
    ms = ms.model_copy(update={"ranker": RankerSettings(enabled=True, max_requests=10_000)})
    test = split_history(log, RankerSettings(split="time", holdout_fraction=0.1, max_requests=a.requests, seed=1),
                         ms.history_length, ms.covisit.session_gap_minutes * 60)
    fitted = fit_pipeline(test.prefix, engine.catalog, ms, tuple(a.sources.split(",")))
    pipe, ranker = fitted.pipeline, fitted.pipeline.ranker
    points = [p for p in test.points if p.labels]
    print(f"{len(points)} test requests; fit {fitted.seconds}", file=sys.stderr)

    def lists_for(rk, w: float) -> list[list[str]]:
        pipe.ranker = rk
        if rk is not None:
            rk.settings = rk.settings.model_copy(update={"margin_weight": w})
        out = []
        for s in range(0, len(points), 256):
            reqs = [p.request("homepage", K) for p in points[s:s + 256]]
            out += [[x.item_id for x in ans.items] for ans in pipe.recommend(reqs)]
        return out

    rows = [{"w": None, "model": "blend (no ranker)", **score_lists(pipe, points, lists_for(None, 0.0))}]
    for w in WEIGHTS:
        rows.append({"w": w, "model": "ranker", **score_lists(pipe, points, lists_for(ranker, w))})
        print(rows[-1], file=sys.stderr)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank_margin.json").write_text(json.dumps({"machine": machine(), "rows": rows, "requests": len(points),
                                                      "train_events": len(test.prefix),
                                                      "ranker_report": ranker.report}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    r = [x for x in rows if x["w"] is not None]
    base = rows[0]
    for ax, key in zip(axes, ("shown margin per slot", "captured margin per request")):
        ax.plot([x["NDCG@10"] for x in r], [x[key] for x in r], "o-", color="C0", label="ranker, w varies")
        for x in r:
            ax.annotate(f"w={x['w']:g}", (x["NDCG@10"], x[key]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        ax.plot([base["NDCG@10"]], [base[key]], "s", color="C3", label="blend without ranker")
        ax.set_xlabel("NDCG@10 (graded: purchase > cart > view)")
        ax.set_ylabel(f"{key} (currency units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Synthetic storefront: relevance vs margin, final = ranker + w · normalised expected margin")
    fig.tight_layout()
    fig.savefig(out / "rank_margin.png", dpi=110)
    lines = ["# Relevance vs margin (synthetic storefront)", "",
             f"Machine: {machine()}. {len(points)} held-out requests (last 10% of interactions by time), "
             f"pipeline fit on the first 90% ({len(test.prefix)} events). Wall time "
             f"{time.perf_counter() - t_start:.0f} s.", "",
             "`models.ranker.margin_weight` = w: final = minmax(ranker score) + w · price×margin / max over the "
             "request's candidates.", "",
             "| model | w | NDCG@10 | HR@10 cart/purchase | shown margin / slot | captured margin / request |",
             "|---|---:|---:|---:|---:|---:|"]
    for x in rows:
        lines.append(f"| {x['model']} | {'' if x['w'] is None else x['w']} | {x['NDCG@10']:.4f} | "
                     f"{x['HR@10 cart/purchase']:.4f} | {x['shown margin per slot']:.2f} | "
                     f"{x['captured margin per request']:.3f} |")
    lines += ["", "![relevance vs margin](rank_margin.png)", ""]
    (out / "rank_margin.md").write_text("\n".join(lines))
    print("\n".join(lines))
    engine.close()


if __name__ == "__main__":
    main()
