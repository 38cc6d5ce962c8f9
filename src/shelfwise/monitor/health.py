"""Catalog health: what the rails do to the catalog, from the exposure log and the serving item table.

* **zero impressions** — servable SKUs shown in no rail during the window (72 h by default,
  ``rules.zero_impression_hours``): the definition of ``GET /v1/reports/zero-impressions``, computed over the
  serving model's item table (no catalog read, so the page stays fast on a large catalog);
* **new items** — items that came to the shop (``created_at``, else first seen) less than
  ``monitor.new_item_days`` ago, with their impressions so far (the log's per-item totals);
* **coverage by category** — per root category: servable items, those shown in the window, and the category's
  share of the window's impressions against its share of the servable catalog;
* **out of stock, still shown** — items out of stock or unavailable now that were shown in the last
  ``recent_hours`` (should be none: a stock change applies to the next request);
* **margin** — the impression-weighted margin rate against the catalog's, and impressions per margin band.

Shares of impressions come from a uniform sample of the window's exposure rows (at most ``sample_rows``: the
same sampler as the drift report), so the page costs the same on a busy shop; counts of items shown are exact (the
log's per-item summary).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.monitor.samples import impression_totals, sample_rows
from shelfwise.monitor.windows import Window

MARGIN_BANDS = ((-1.0, 0.1, "below 10 %"), (0.1, 0.2, "10-20 %"), (0.2, 0.3, "20-30 %"), (0.3, 0.5, "30-50 %"),
                (0.5, 1.01, "50 % and more"))


def catalog_health(items: ItemTable, last_shown: Callable[[float], dict[str, float]], log_path: Path | str,
                   hours: float = 72.0, new_item_days: float = 14.0, recent_hours: float = 1.0,
                   sample_limit: int = 20_000, examples: int = 50, now: float | None = None,
                   log_started: float | None = None, seed: int = 0) -> dict[str, Any]:
    """The catalog-health report (see the module docstring). ``last_shown(since)`` is the exposure log's
    ``item → last shown`` for items shown since then; ``log_path`` its SQLite file (sampled read-only)."""
    now = time.time() if now is None else now
    since = now - hours * 3600.0
    n = len(items)
    ids = items.ids
    servable = items.servable
    shown_at = last_shown(min(since, now - recent_hours * 3600.0))
    last = np.full(n, -np.inf)
    for iid, ts in shown_at.items():
        j = items.index.get(iid)
        if j is not None:
            last[j] = ts
    shown = last >= since
    out: dict[str, Any] = {"window_hours": hours, "since": since, "now": now, "catalog_items": n,
                           "servable_items": int(servable.sum()), "log_started_at": log_started}
    if log_started is None:
        out["warning"] = "the exposure log is empty: nothing was served yet (or logging is off)"
    elif log_started > since:
        out["warning"] = f"the exposure log covers only the last {(now - log_started) / 3600:.1f} h of the window"

    zero = servable & ~shown
    zi = np.flatnonzero(zero)
    order = zi[np.argsort(ids[zi].astype(str), kind="stable")][:examples] if len(zi) else zi
    out["zero_impressions"] = {"items": int(zero.sum()), "share": round(float(zero.sum()) / max(int(servable.sum()), 1), 4),
                               "examples": [_row(items, j) for j in order]}

    born = items.born()
    with np.errstate(invalid="ignore"):
        new = born >= now - new_item_days * 86400.0
    ni = np.flatnonzero(new)
    ni = ni[np.argsort(-born[ni], kind="stable")]
    totals = impression_totals(log_path, [str(ids[j]) for j in ni[:examples]])
    out["new_items"] = {"days": new_item_days, "items": int(new.sum()), "servable": int((new & servable).sum()),
                        "shown_in_window": int((new & shown).sum()),
                        "never_shown": int((new & (last == -np.inf)).sum()),
                        "examples": [_row(items, j) | {"born": float(born[j]),
                                                       "impressions": totals.get(str(ids[j]), (None, None, 0))[2],
                                                       "first_shown": totals.get(str(ids[j]), (None,))[0]}
                                     for j in ni[:examples]]}

    recent = now - recent_hours * 3600.0
    oos = ~servable & (last >= recent)
    oi = np.flatnonzero(oos)
    out["out_of_stock_shown"] = {"hours": recent_hours, "items": int(oos.sum()),
                                 "examples": [_row(items, j) | {"last_shown": float(last[j])} for j in oi[:examples]]}

    rows, total = sample_rows(log_path, Window(since, now, f"last {hours:g} h"), sample_limit,
                              np.random.default_rng(seed))
    shown_idx = np.array([items.index.get(r[5], -1) for r in rows], np.int64)
    shown_idx = shown_idx[shown_idx >= 0]
    out["impressions"] = {"window_rows": total, "sampled": len(rows), "known_items": int(len(shown_idx))}

    top = items.top_category
    names = _top_names(items)
    cats = []
    for code in np.unique(top[servable]) if servable.any() else []:
        in_cat = servable & (top == code)
        cats.append({"category": names.get(int(code), "(unknown)"), "servable": int(in_cat.sum()),
                     "shown": int((in_cat & shown).sum()),
                     "coverage": round(float((in_cat & shown).sum()) / max(int(in_cat.sum()), 1), 4),
                     "catalog_share": round(float(in_cat.sum()) / max(int(servable.sum()), 1), 4),
                     "impression_share": (round(float((top[shown_idx] == code).sum()) / len(shown_idx), 4)
                                          if len(shown_idx) else None)})
    cats.sort(key=lambda c: -c["servable"])
    out["categories"] = cats

    margin, price = items.margin, items.price
    ok = np.isfinite(margin) & np.isfinite(price)
    cat_rate = (float(np.sum((margin * price)[ok & servable]) / np.sum(price[ok & servable]))
                if (ok & servable).any() else None)
    imp_ok = shown_idx[ok[shown_idx]]
    imp_rate = float(np.sum(margin[imp_ok] * price[imp_ok]) / np.sum(price[imp_ok])) if len(imp_ok) else None
    bands = []
    for lo, hi, label in MARGIN_BANDS:
        with np.errstate(invalid="ignore"):
            in_band = ok & (margin >= lo) & (margin < hi)
        bands.append({"band": label, "catalog_share": round(float((in_band & servable).sum()) /
                                                             max(int((ok & servable).sum()), 1), 4),
                      "impression_share": round(float(in_band[shown_idx].sum()) / len(shown_idx), 4)
                      if len(shown_idx) else None})
    out["margin"] = {"catalog_rate": None if cat_rate is None else round(cat_rate, 4),
                     "impression_rate": None if imp_rate is None else round(imp_rate, 4),
                     "unknown_share": round(float((~ok[shown_idx]).sum()) / len(shown_idx), 4)
                     if len(shown_idx) else None,
                     "bands": bands}
    return out


def _top_names(items: ItemTable) -> dict[int, str]:
    """Root category code → name (from the full paths' names)."""
    seen: dict[int, str] = {}
    for code, top in zip(items.category.tolist(), items.top_category.tolist()):
        if top >= 0 and top not in seen and 0 <= code < len(items.category_names):
            seen[top] = items.category_names[code].split(" > ")[0]
    return seen


def _row(items: ItemTable, j: int) -> dict[str, Any]:
    code = int(items.category[j])
    price, stock, margin = float(items.price[j]), float(items.stock[j]), float(items.margin[j])
    return {"item_id": str(items.ids[j]),
            "category": items.category_names[code] if 0 <= code < len(items.category_names) else "",
            "price": price if np.isfinite(price) else None, "stock": stock if np.isfinite(stock) else None,
            "margin": margin if np.isfinite(margin) else None, "available": bool(items.available[j])}
