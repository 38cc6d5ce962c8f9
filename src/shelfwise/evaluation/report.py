"""Markdown report, plots (matplotlib, Agg backend) and raw JSON of evaluation results."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

KEY_COLUMNS = ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "Recall@20"]


def machine() -> dict[str, Any]:
    """What the numbers were measured on (cores, CPU model, Python)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": mem_gb, "python": platform.python_version(),
            "system": platform.platform()}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _f(x: float) -> str:
    return f"{x:.4f}"


def split_title(split: dict) -> str:
    notes = split["notes"]
    if split["protocol"] == "cold-items":
        return (f"cold items, full ranking — {notes['held_out_items']} of {notes['candidate_items']} interacted "
                f"items ({notes['fraction']:.0%}, seed {notes['seed']}) held out of training with their "
                f"{notes['held_out_events']} events and added after it as new catalog items; target: each "
                f"shopper's first held-out item after at least one other interaction")
    if split["protocol"] == "cold-shoppers":
        return (f"cold shoppers, full ranking — {notes['held_out_shoppers']} of {notes['candidate_shoppers']} "
                f"shoppers ({notes['fraction']:.0%}, seed {notes['seed']}) held out of training with all their "
                f"events; each asked with 0 prior events (target: their first item) and with 1 (their first "
                f"event; target: the next different item)")
    if split["protocol"] == "loo":
        what = "leave-one-out, full ranking"
        target = "test: last item; trained on all but the last" if split["target"] == "test" else \
            "validation: second-to-last item; trained on all but the last two"
    else:
        what = "global temporal split"
        t = split["notes"].get("split_time")
        target = f"train before T, test after (T = {t:.0f} unix s)" if t is not None else "train before T"
    return f"{what} — {target}"


def metric_table(split: dict) -> list[str]:
    cols = KEY_COLUMNS + ["Cov@20", "Tail@20", "fit s", "rec s"]
    lines = ["| model | sources | " + " | ".join("MRR@20" if c == "MRR" else c for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    models = split["models"]
    best = {c: max((m["metrics"].get(c, 0.0) for m in models.values()), default=0.0) for c in KEY_COLUMNS}
    for name, m in models.items():
        cells = []
        for c in KEY_COLUMNS:
            v = m["metrics"].get(c, 0.0)
            cells.append(f"**{_f(v)}**" if v == best[c] and v > 0 else _f(v))
        cells += [_f(m["coverage"].get("@20", 0.0)), _f(m["long_tail"].get("@20", 0.0)), f"{m['fit_s']:.1f}",
                  f"{m['recommend_s']:.1f}"]
        lines.append(f"| {name} | {'+'.join(m['sources'])} | " + " | ".join(cells) + " |")
    return lines


def segment_table(split: dict) -> list[str]:
    t = split["segment_threshold"]
    models = split["models"]
    any_model = next(iter(models.values()), None)
    if any_model is None:
        return []
    n_short = int(any_model["segments"]["short"].get("users", 0))
    n_long = int(any_model["segments"]["long"].get("users", 0))
    if split["protocol"] == "cold-shoppers":
        lines = [f"By what the request knows: 0 prior events ({n_short} requests), 1 prior event ({n_long}).", "",
                 "| model | 0 prior HR@10 | 0 prior NDCG@10 | 1 prior HR@10 | 1 prior NDCG@10 |",
                 "|---|---:|---:|---:|---:|"]
        for name, m in models.items():
            s, lg = m["segments"]["short"], m["segments"]["long"]
            lines.append(f"| {name} | {_f(s.get('HR@10', 0))} | {_f(s.get('NDCG@10', 0))} | "
                         f"{_f(lg.get('HR@10', 0))} | {_f(lg.get('NDCG@10', 0))} |")
        return lines
    lines = [f"Segments by training-history length: short ≤ {t} interactions ({n_short} shoppers), "
             f"long > {t} ({n_long} shoppers).", "",
             "| model | short HR@10 | short NDCG@10 | long HR@10 | long NDCG@10 |", "|---|---:|---:|---:|---:|"]
    for name, m in models.items():
        s, lg = m["segments"]["short"], m["segments"]["long"]
        lines.append(f"| {name} | {_f(s.get('HR@10', 0))} | {_f(s.get('NDCG@10', 0))} | {_f(lg.get('HR@10', 0))} | "
                     f"{_f(lg.get('NDCG@10', 0))} |")
    return lines


def plot_split(split: dict, out: Path, prefix: str) -> list[str]:
    """metric-vs-k lines and per-segment bars; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = split["models"]
    if not models:
        return []
    ks = sorted({int(c.split("@")[1]) for m in models.values() for c in m["metrics"] if c.startswith("HR@")})
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("HR", "NDCG")):
        for name, m in models.items():
            ax.plot(ks, [m["metrics"][f"{metric}@{k}"] for k in ks], marker="o", label=name)
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{prefix}: {split['name']}")
    fig.tight_layout()
    name = f"{_slug(prefix)}-{split['name']}-metric-vs-k.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    files.append(name)

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(models) + 2), 4))
    names = list(models)
    width = 0.38
    xs = range(len(names))
    for off, seg in ((-width / 2, "short"), (width / 2, "long")):
        ax.bar([x + off for x in xs], [models[n]["segments"][seg].get("NDCG@10", 0) for n in names], width,
               label=f"{seg} history")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("NDCG@10")
    ax.legend(fontsize=8)
    ax.set_title(f"{prefix}: {split['name']} by history length (≤ {split['segment_threshold']} vs more)")
    fig.tight_layout()
    name = f"{_slug(prefix)}-{split['name']}-segments.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    files.append(name)
    return files


def among_new_table(split: dict) -> list[str]:
    """Cold items: the same requests ranked among the held-out items only (every other item excluded)."""
    models = {n: m for n, m in split["models"].items() if m.get("among_new")}
    if not models:
        return []
    lines = ["Ranked among the held-out (new) items only — every other item excluded from each request:", "",
             "| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR@20 |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        a = m["among_new"]
        lines.append(f"| {name} | {_f(a.get('HR@10', 0))} | {_f(a.get('NDCG@10', 0))} | {_f(a.get('HR@20', 0))} | "
                     f"{_f(a.get('NDCG@20', 0))} | {_f(a.get('MRR', 0))} |")
    return lines + [""]


def importance_table(split: dict, top: int = 15) -> list[str]:
    """The learned ranker's feature importances (share of total gain), for models that have one."""
    lines: list[str] = []
    for name, m in split["models"].items():
        imp = m.get("importances") or {}
        if imp:
            lines += [f"Feature importances of `{name}` (share of total split gain, top {top} of {len(imp)}):", "",
                      "| feature | gain |", "|---|---:|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in list(imp.items())[:top]] + [""]
    return lines


def dataset_section(result: dict, out: Path, plots: bool = True) -> list[str]:
    d = result["dataset"]
    lines = [f"## {d['name']} ({d['format']})", "",
             f"Source: `{d['source']}` — {d['events']} interactions, {d['shoppers']} shoppers, {d['items']} items. "
             f"Wall time {result['wall_s']:.0f} s.", ""]
    if result.get("command"):
        lines += [f"Command: `{result['command']}`", ""]
    for split in result["splits"]:
        lines += [f"### {split['name']}: {split_title(split)}", "",
                  f"{split['users']} shoppers evaluated; {split['train_events']} training events.", ""]
        lines += metric_table(split) + [""]
        lines += among_new_table(split)
        lines += segment_table(split) + [""]
        lines += importance_table(split)
        if plots:
            for f in plot_split(split, out, d["name"]):
                lines.append(f"![{f}]({f})")
            lines.append("")
    return lines


def write_report(results: list[dict], out: Path, title: str = "Shelfwise offline evaluation") -> Path:
    """Write ``report.md``, ``results.json`` and PNG plots into ``out``; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    m = results[0]["machine"] if results else machine()
    lines = [f"# {title}", "",
             f"Machine: {m['cores']} cores, {m['cpu']}, {m.get('memory_gb')} GB RAM, Python {m['python']}.", "",
             "Every row is the production homepage pipeline (`fit_pipeline` + `Pipeline.recommend`, batches of "
             "requests) restricted to the named sources; `default` is the configured blend. Items already in the "
             "shopper's history are excluded and every catalog item is ranked. HR, NDCG and Recall at k, MRR of "
             "the top-20 list (MRR@20); Cov@20 = share of the catalog shown in some top-20 list; Tail@20 = share "
             "of top-20 slots given to long-tail items (outside the 20% most-interacted items in training). "
             "Best value per column in bold.", ""]
    for r in results:
        lines += dataset_section(r, out)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
