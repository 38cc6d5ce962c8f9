"""Reports over the exposure and shadow logs: a draft's shadow report, and SKUs nobody was shown.

Expected revenue and margin of a shown list use the blended relevance of each item (row-normalised, in [0, 1])
as its click propensity, discounted by position (``1 / log2(position + 1)``), times price (and margin rate):
``sum(relevance * discount * price [* margin])``. It is a proxy until a learned click/purchase model replaces
it; compare the live and shadow figures with each other, not with revenue.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from shelfwise.domain import Item
from shelfwise.items import ItemTable
from shelfwise.rules.compile import CompiledRules, ItemFacts, pin_warnings
from shelfwise.rules.log import ExposureLog, ShadowRecord
from shelfwise.rules.schema import RuleSet
from shelfwise.rules.store import NotFound, RuleStore

PROPENSITY_NOTE = ("expected revenue/margin = sum over shown items of blended relevance (as click propensity) "
                   "x 1/log2(position + 1) x price [x margin rate]; a proxy until a learned ranker/click model "
                   "provides probabilities")


def _value(rows: Sequence[Sequence[Any]]) -> tuple[float, float]:
    revenue = margin = 0.0
    for pos, (_, rel, price, mrate) in enumerate(rows, start=1):
        if price is None or rel is None:
            continue
        w = max(float(rel), 0.0) / math.log2(pos + 1)
        revenue += w * price
        if mrate is not None:
            margin += w * price * mrate
    return revenue, margin


def shadow_report(records: Sequence[ShadowRecord], catalog_size: int, ruleset_id: str, version: int | None,
                  blocked_by_draft: Sequence[str] = (), top: int = 20) -> dict[str, Any]:
    """Compare the live and shadow answers of the sampled requests."""
    n = len(records)
    out: dict[str, Any] = {"ruleset": ruleset_id, "shadow_version": version, "requests": n,
                           "note": PROPENSITY_NOTE}
    if not n:
        out["detail"] = "no shadow traffic logged yet for this version"
        out["would_block_catalog"] = {"items": len(blocked_by_draft), "examples": list(blocked_by_draft[:top])}
        return out
    changed = top1 = 0
    overlap, shifts = [], []
    live_items: set[str] = set()
    shadow_items: set[str] = set()
    entered: Counter[str] = Counter()
    left: Counter[str] = Counter()
    pinned: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    rev = np.zeros(2)
    mar = np.zeros(2)
    placements: Counter[str] = Counter()
    for rec in records:
        placements[rec.placement] += 1
        live = [r[0] for r in rec.live]
        shadow = [r[0] for r in rec.shadow]
        live_items.update(live)
        shadow_items.update(shadow)
        changed += live != shadow
        top1 += (live[:1] != shadow[:1])
        overlap.append(len(set(live) & set(shadow)) / max(len(live), 1))
        pos_s = {x: i for i, x in enumerate(shadow)}
        shifts += [abs(i - pos_s[x]) for i, x in enumerate(live) if x in pos_s]
        entered.update(set(shadow) - set(live))
        left.update(set(live) - set(shadow))
        pinned.update(rec.pinned)
        blocked.update(rec.blocked)
        for j, rows in enumerate((rec.live, rec.shadow)):
            r_, m_ = _value(rows)
            rev[j] += r_
            mar[j] += m_

    def change(a: float, b: float) -> float | None:
        return None if a == 0 else round((b - a) / a, 4)

    out.update({
        "placements": dict(placements),
        "rank_changes": {
            "requests_changed": round(changed / n, 4),
            "top1_changed": round(top1 / n, 4),
            "mean_overlap": round(float(np.mean(overlap)), 4),
            "mean_abs_rank_shift": round(float(np.mean(shifts)), 4) if shifts else 0.0,
            "entered": [{"item_id": k, "requests": v} for k, v in entered.most_common(top)],
            "left": [{"item_id": k, "requests": v} for k, v in left.most_common(top)],
        },
        "coverage": {"live_items": len(live_items), "shadow_items": len(shadow_items),
                     "live_share": round(len(live_items) / max(catalog_size, 1), 4),
                     "shadow_share": round(len(shadow_items) / max(catalog_size, 1), 4)},
        "expected": {"revenue_live": round(rev[0], 2), "revenue_shadow": round(rev[1], 2),
                     "revenue_change": change(rev[0], rev[1]),
                     "margin_live": round(mar[0], 2), "margin_shadow": round(mar[1], 2),
                     "margin_change": change(mar[0], mar[1])},
        "would_pin": [{"item_id": k, "requests": v} for k, v in pinned.most_common(top)],
        "would_block": [{"item_id": k, "requests": v} for k, v in blocked.most_common(top)],
        "would_block_catalog": {"items": len(blocked_by_draft), "examples": list(blocked_by_draft[:top])},
    })
    return out


def zero_impressions(items: Iterable[Item], log: ExposureLog, hours: float, now: float | None = None,
                     servable_only: bool = True, limit: int = 1000) -> dict[str, Any]:
    """Catalog SKUs not shown in any rail during the last ``hours``, from the exposure log."""
    now = time.time() if now is None else now
    since = now - hours * 3600.0
    shown = log.last_shown(since)
    started = log.started_at()
    missing, n_catalog, n_servable = [], 0, 0
    for it in items:
        n_catalog += 1
        servable = it.in_stock
        n_servable += servable
        if it.id in shown or (servable_only and not servable):
            continue
        missing.append(it)
    missing.sort(key=lambda it: it.id)
    out: dict[str, Any] = {
        "window_hours": hours, "since": since, "now": now,
        "log_started_at": started,
        "catalog_items": n_catalog, "servable_items": n_servable,
        "shown_items": len(shown),
        "zero_impression_items": len(missing),
        "share": round(len(missing) / max(n_servable if servable_only else n_catalog, 1), 4),
        "servable_only": servable_only,
        "items": [{"item_id": it.id, "title": it.title, "category": " > ".join(it.category), "brand": it.brand,
                   "price": it.price, "stock": it.stock, "available": it.available} for it in missing[:limit]],
    }
    if started is None or started > since:
        out["warning"] = ("the exposure log covers less than the window" if started is not None
                          else "the exposure log is empty: nothing was served (or logging is off)")
    return out


def build_shadow_report(store: RuleStore, log: ExposureLog, ruleset_id: str, version: int | None,
                        hours: float | None, items: ItemTable, facts: ItemFacts | None,
                        limit: int = 100_000) -> dict[str, Any]:
    """The shadow report of a rule set's shadow version (or ``version``), over the last ``hours`` (or all), from
    at most the ``limit`` latest sampled requests."""
    st = next((s for s in store.states() if s.id == ruleset_id), None)
    if st is None:
        raise NotFound(f"no rule set {ruleset_id!r}")
    version = version or st.shadow_version or st.latest_version
    log.flush()
    since = time.time() - hours * 3600 if hours else None
    records = log.shadow_records(ruleset_id, version, since, limit=limit)
    doc = RuleSet.model_validate(store.version(ruleset_id, version).document)
    draft = CompiledRules([(ruleset_id, doc)], items, facts)
    blocked: set[str] = set()
    for rule in draft.rules:
        if rule.kind == "block":
            blocked.update(str(x) for x in items.ids[rule.mask])
    out = shadow_report(records, len(items), ruleset_id, version, sorted(blocked))
    out["shadow_active"] = st.shadow_version == version
    out["live_version"] = st.live_version
    out["warnings"] = pin_warnings(doc, items)  # pins that cannot apply now (unknown to the model, not servable)
    return out
