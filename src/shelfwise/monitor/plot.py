"""A PNG of the reference and current distributions of a report's drifted checks (matplotlib, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from shelfwise.monitor.stats import Check

COLUMNS = 3
MAX_PANELS = 24
MAX_CATEGORIES = 12


def plot_drift(report: Any, path: Path) -> int:
    """Draw the drifted checks (at most ``MAX_PANELS``) into ``path``; returns how many were drawn (0: no file)."""
    checks = [c for c in report.drifted if c.samples is not None][:MAX_PANELS]
    if not checks:
        return 0
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(checks) / COLUMNS)
    cols = min(COLUMNS, len(checks))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, check in zip(axes.ravel(), checks):
        (_numeric if check.kind == "numeric" else _categorical)(ax, check)
        ax.set_title(f"{check.feature}\n{'; '.join(check.reasons)}", fontsize=8)
    for ax in axes.ravel()[len(checks):]:
        ax.axis("off")
    ref, cur = report.reference.to_dict(), report.current.to_dict()
    fig.suptitle(f"reference {ref['start']} – {ref['end']}\ncurrent {cur['start']} – {cur['end']}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(checks)


def _numeric(ax: Any, check: Check) -> None:
    ref, cur = check.samples
    both = np.concatenate([ref, cur])
    lo, hi = np.quantile(both, [0.01, 0.99]) if len(both) else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    for values, label, colour in ((ref, f"reference (n={len(ref)})", "tab:blue"),
                                  (cur, f"current (n={len(cur)})", "tab:orange")):
        if len(values):
            ax.hist(np.clip(values, lo, hi), bins=bins, density=True, histtype="step", linewidth=1.6, label=label,
                    color=colour)
    ax.legend(fontsize=7)


def _categorical(ax: Any, check: Check) -> None:
    ref, cur = check.samples
    cats = sorted(set(ref) | set(cur), key=lambda k: -max(ref.get(k, 0.0), cur.get(k, 0.0)))[:MAX_CATEGORIES]
    x = np.arange(len(cats))
    ax.bar(x - 0.2, [ref.get(k, 0.0) for k in cats], 0.4, label=f"reference (n={check.n_reference})")
    ax.bar(x + 0.2, [cur.get(k, 0.0) for k in cats], 0.4, label=f"current (n={check.n_current})")
    ax.set_xticks(x, cats, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
