"""Small charts drawn on the server as inline SVG (no chart library, nothing fetched by the browser)."""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

from markupsafe import Markup

COLORS = ("#2f6fb3", "#d9822b", "#3a9b5c", "#a4478a")


def _fmt_pct(x: float) -> str:
    return f"{x:+.0%}" if abs(x) >= 0.1 else f"{x:+.1%}"


def forest(rows: Sequence[tuple[str, float, tuple[float, float] | None]], width: int = 640,
           title: str = "relative change vs control (95 % interval)") -> Markup:
    """One row per (label, estimate, interval): a dot and its interval against a zero line."""
    rows = [r for r in rows if r[1] is not None and math.isfinite(r[1])]
    if not rows:
        return Markup("")
    vals = [v for _, est, ci in rows for v in ([est, *(ci or ())]) if v is not None and math.isfinite(v)]
    lo, hi = min(min(vals), 0.0), max(max(vals), 0.0)
    pad = (hi - lo) * 0.1 or 0.05
    lo, hi = lo - pad, hi + pad
    left, right, row_h, top = 200, 20, 26, 28
    plot_w = width - left - right
    height = top + row_h * len(rows) + 30
    x = lambda v: left + (v - lo) / (hi - lo) * plot_w  # noqa: E731
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
             f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 6}" y2="{height - 24}" class="zero"/>']
    for i, (label, est, ci) in enumerate(rows):
        y = top + row_h * i + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        if ci is not None and all(c is not None and math.isfinite(c) for c in ci):
            a, b = max(ci[0], lo), min(ci[1], hi)
            parts.append(f'<line x1="{x(a):.1f}" x2="{x(b):.1f}" y1="{y:.1f}" y2="{y:.1f}" class="ci"/>')
        parts.append(f'<circle cx="{x(est):.1f}" cy="{y:.1f}" r="4" class="est"><title>{escape(label)}: '
                     f'{_fmt_pct(est)}</title></circle>')
    for v in (lo + pad, 0.0, hi - pad):
        parts.append(f'<text x="{x(v):.1f}" y="{height - 8}" text-anchor="middle" class="tick">{_fmt_pct(v)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def paired_bars(rows: Sequence[tuple[str, float | None, float | None]], names: tuple[str, str],
                width: int = 640, title: str = "") -> Markup:
    """Two horizontal bars per row (shares in [0, 1]), e.g. catalog share vs impression share."""
    if not rows:
        return Markup("")
    left, right, row_h, top = 190, 60, 30, 40
    plot_w = width - left - right
    height = top + row_h * len(rows) + 10
    peak = max([v for _, a, b in rows for v in (a, b) if v is not None] + [1e-9])
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>']
    for k, name in enumerate(names):
        parts.append(f'<rect x="{left + k * 160}" y="22" width="10" height="10" fill="{COLORS[k]}"/>'
                     f'<text x="{left + 14 + k * 160}" y="31" class="tick">{escape(name)}</text>')
    for i, (label, a, b) in enumerate(rows):
        y = top + row_h * i
        parts.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{escape(label)}</text>')
        for k, v in enumerate((a, b)):
            if v is None:
                continue
            w = v / peak * plot_w
            parts.append(f'<rect x="{left}" y="{y + 3 + k * 12}" width="{w:.1f}" height="11" fill="{COLORS[k]}">'
                         f'<title>{escape(names[k])}: {v:.1%}</title></rect>'
                         f'<text x="{left + w + 4:.1f}" y="{y + 12 + k * 12}" class="tick">{v:.1%}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
