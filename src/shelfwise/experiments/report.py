"""``shelfwise experiments report ID``: the results as Markdown with plots (lift forest plot, the confidence
sequence day by day, posterior of the conversion lift) and the raw JSON beside them."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shelfwise.experiments import analysis

METRIC_NAMES = {"ctr": "CTR", "add_to_cart_rate": "add-to-cart rate (per visit)", "conversion": "conversion",
                "revenue_per_shopper": "revenue per shopper", "revenue_per_session": "revenue per session"}


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{x:+.2%}"


def _ci(ci: Any, pct: bool = False) -> str:
    if not ci:
        return "–"
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if pct else f"[{_f(ci[0])}, {_f(ci[1])}]"


def timeline(service: Any, experiment_id: str, days: int = 60) -> list[dict[str, Any]]:
    """Cumulative primary-metric difference and its confidence sequence at the end of every day."""
    e = service.experiment(experiment_id)
    if e.started_at is None:
        return []
    end = e.stopped_at or datetime.now(timezone.utc).timestamp()
    n_days = min(days, max(1, math.ceil((end - e.started_at) / 86400.0)))
    window = service.conf.attribution_window_hours * 3600.0
    metric = e.spec.primary_metric
    control = e.spec.control_name
    planned = float(e.spec.planned_units or service.conf.planned_units)
    out = []
    for d in range(1, n_days + 1):
        cut = min(e.started_at + d * 86400.0, end + 1e-6)
        table = service.log.unit_table(e.spec.id, window, since=e.started_at, until=cut)
        num, den = analysis.metric_columns(table, metric)
        c = analysis.arm_stat(num[table.variant == control], den[table.variant == control])
        row: dict[str, Any] = {"day": d, "until": cut, "variants": {}}
        for v in e.spec.variants:
            a = analysis.arm_stat(num[table.variant == v.name], den[table.variant == v.name])
            row["variants"][v.name] = None if a is None else a.value
            if v.name != control and a is not None and c is not None:
                cs = analysis.confidence_sequence(a.value - c.value, a.var + c.var, analysis.n_effective(a.n, c.n),
                                                  planned, service.conf.alpha)
                row.setdefault("sequential", {})[v.name] = {"diff": a.value - c.value, "ci": cs["ci"]}
        out.append(row)
    return out


def write_report(service: Any, experiment_id: str, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    res = service.results(experiment_id)
    ex = res["experiment"]
    spec = ex["spec"]
    lines = [f"# Experiment `{ex['id']}`: {spec.get('name') or ''}".rstrip(": "), ""]
    if spec.get("hypothesis"):
        lines += [f"*Hypothesis:* {spec['hypothesis']}", ""]
    lines += [f"status **{ex['status']}**, traffic {ex['traffic']:.0%}, layer `{spec['layer']}` "
              f"[{spec['layer_range'][0]:g}, {spec['layer_range'][1]:g}), started {_when(ex['started_at'])}"
              + (f", stopped {_when(ex['stopped_at'])} ({ex['stop_reason'] or 'no reason'})"
                 if ex["stopped_at"] else "")
              + (f", serving `{ex['serve']}`" if ex["serve"] else ""), ""]
    if "detail" in res:
        lines.append(res["detail"])
        path = out_dir / "report.md"
        path.write_text("\n".join(lines) + "\n")
        return path
    a = res.get("analysis")
    if a is not None:
        srm = a["srm"]
        lines += ["## Units and sample-ratio check", "",
                  "| variant | units | expected | visits | rails | clicks | orders | revenue |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for v, n in a["units"].items():
            t = a["totals"][v]
            lines.append(f"| {v} | {n} | {srm['expected'].get(v, 0):.0f} | {t['visits']:.0f} | {t['rails']:.0f} | "
                         f"{t['clicks']:.0f} | {t['orders']:.0f} | {t['revenue']:.2f} |")
        lines += ["", f"SRM chi² = {srm['chi2']:.2f}, p = {srm['p_value']:.3g}: "
                      + ("**ALARM (p < 0.001): do not trust these results until the cause is found**"
                         if srm["alarm"] else "no mismatch"),
                  f"; units served several variants (left out): {a['mixed_units']}; "
                  f"returning shoppers (pre-period activity): {a['returning_share']:.1%}", ""]
        lines += ["## Metrics", "", "| metric | variant | value | 95 % CI | Δ vs control | relative (CI) | p (Holm) | "
                                    "CUPED relative (CI) | variance reduction | anytime-valid Δ CI | "
                                    "group-sequential Δ CI (daily looks) |",
                  "| --- | --- | ---: | --- | ---: | --- | ---: | --- | ---: | --- | --- |"]
        for metric, entry in a["metrics"].items():
            for v, st in entry["variants"].items():
                c = entry["comparisons"].get(v)
                cells = [METRIC_NAMES.get(metric, metric), v, _f(st["value"]) if st else "–",
                         _ci(st["ci"]) if st else "–"]
                if c:
                    cu = c["cuped"]
                    cells += [_f(c["diff"]), f"{_pct(c['relative'])} {_ci(c['relative_ci'], True)}",
                              f"{c['p_holm']:.3g}" + (" ✱" if c["significant"] else ""),
                              f"{_pct(cu['relative'])} {_ci(cu['relative_ci'], True)}",
                              f"{cu['variance_reduction']:.1%}", _ci(c["sequential"]["ci"]),
                              (f"{_ci(c['group_sequential']['ci'])} at {c['group_sequential']['information_fraction']:.0%}"
                               " of the planned size" if "group_sequential" in c else "–")]
                else:
                    cells += ["control", "", "", "", "", "", ""]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "✱ significant at α = %g after Holm's correction. The anytime-valid interval (confidence "
                      "sequence) may be read at any time, however often, also beyond the planned size; the "
                      "group-sequential interval spends α over daily looks up to the planned size (narrower, "
                      "exactly α over the plan)." % a["alpha"], ""]
        if "bayesian" in a:
            lines += ["## Bayesian readout", "", "| metric | model | variant | mean | P(beat control) | "
                                                 "expected loss | relative lift 95 % CrI |",
                      "| --- | --- | --- | ---: | ---: | ---: | --- |"]
            for metric, b in a["bayesian"].items():
                for v, st in b["variants"].items():
                    if st["prob_beat_control"] is None:
                        continue
                    lines.append(f"| {METRIC_NAMES[metric]} | {b['model']} | {v} | {_f(st['mean'])} | "
                                 f"{st['prob_beat_control']:.3f} | {_f(st['expected_loss'])} | "
                                 f"{_ci(st['relative_lift_ci'], True)} |")
            lines.append("")
        _forest(plt, a, out_dir / "lift.png")
        lines += ["![relative lift](lift.png)", ""]
        tl = timeline(service, experiment_id)
        if tl:
            _timeline_plot(plt, tl, spec, out_dir / "timeline.png")
            lines += [f"## {METRIC_NAMES[spec.get('primary_metric', 'conversion')]} day by day", "",
                      "![timeline](timeline.png)", ""]
    if "interleaving" in res:
        il = res["interleaving"]
        u = il["by_unit"]
        lines += ["## Interleaving", "", f"A = `{il['a']}`, B = `{il['b']}`: per shopper, A wins {u['wins_a']}, "
                  f"B wins {u['wins_b']}, ties {u['ties']}; ΔAB = {u['delta_ab']:+.4f}, sign test p = "
                  f"{u['p_value']:.3g}; winner: {u['winner'] or 'none'}", ""]
    if res.get("guardrails"):
        lines += ["## Guardrails", "", "| metric | variant | status | threshold | detail |", "| --- | --- | --- | --- | --- |"]
        for g in res["guardrails"]:
            lines.append(f"| {g['metric']} | {g['variant']} | {g['status']} | {g['threshold']} | {g['detail']} |")
        lines.append("")
    if res.get("requests"):
        lines += ["## Serving", "", "| variant | requests | error rate | p50 ms | p95 ms |", "| --- | ---: | ---: | ---: | ---: |"]
        for v, m in res["requests"].items():
            lines.append(f"| {v} | {m['requests']} | {_f(m['error_rate'])} | {_f(m['p50_ms'])} | {_f(m['p95_ms'])} |")
        lines.append("")
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _forest(plt: Any, a: dict[str, Any], path: Path) -> None:
    rows = [(m, v, c) for m, e in a["metrics"].items() for v, c in e["comparisons"].items() if c["relative"] is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2), dpi=90)
    for i, (m, v, c) in enumerate(rows):
        y = len(rows) - i
        ax.plot(c["relative_ci"], [y + 0.12] * 2, color="tab:blue", lw=2, label="fixed horizon" if i == 0 else None)
        cu = c["cuped"]
        if cu["relative_ci"]:
            ax.plot(cu["relative_ci"], [y - 0.12] * 2, color="tab:green", lw=2, label="CUPED" if i == 0 else None)
        ax.plot([c["relative"]], [y + 0.12], "o", color="tab:blue")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(rows), 0, -1), [f"{METRIC_NAMES[m]} ({v})" for m, v, _ in rows])
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:+.0%}"))
    ax.set_xlabel("relative change vs control (95 % CI)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _timeline_plot(plt: Any, tl: list[dict[str, Any]], spec: dict[str, Any], path: Path) -> None:
    days = [r["day"] for r in tl]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), dpi=90, sharex=True)
    for v in spec["variants"]:
        top.plot(days, [r["variants"].get(v["name"]) for r in tl], marker=".", label=v["name"])
    top.set_ylabel(spec.get("primary_metric", "conversion"))
    top.legend(fontsize=8)
    for v in spec["variants"]:
        seq = [r.get("sequential", {}).get(v["name"]) for r in tl]
        if not any(seq):
            continue
        diff = np.array([s["diff"] if s else np.nan for s in seq])
        lo = np.array([max(s["ci"][0], -1e9) if s else np.nan for s in seq])
        hi = np.array([min(s["ci"][1], 1e9) if s else np.nan for s in seq])
        bottom.plot(days, diff, marker=".", label=f"{v['name']} − control")
        bottom.fill_between(days, lo, hi, alpha=0.2)
    bottom.axhline(0, color="grey", lw=1)
    bottom.set_xlabel("day")
    bottom.set_ylabel("difference, anytime-valid 95 %")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
