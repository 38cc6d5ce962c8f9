"""The weighted business score of a placement (``ScoreWeights`` in settings).

    score = w_relevance * relevance + w_trend * trend + w_stock * stock + w_margin * margin
            + w_freshness * freshness + w_seasonality * seasonality

``relevance`` is the candidates' score (the blend, or the learned ranker's) divided by the request's best (so the
best item is 1); every business signal is in [0, 1]:

* ``trend``       the trending source's time-decayed popularity (max 1), 0 without a trending source;
* ``stock``       ``log1p(stock) / log1p(stock_reference)`` capped at 1; 1 when stock is not tracked;
* ``margin``      gross margin ``(price - cost) / price`` clipped to [0, 1]; the catalog median when unknown;
* ``freshness``   ``0.5 ** (age_days / freshness_half_life_days)``, 0 when the creation date is unknown;
* ``seasonality`` 1 while a configured yearly season (category prefixes / tags, ``MM-DD`` window) covers the item.

With every weight but relevance at 0 the stage is skipped and answers are exactly the blend's ranking.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np

from shelfwise.items import ItemTable, category_prefix_mask, pad_rows
from shelfwise.settings import BusinessSignals, ScoreWeights

SIGNALS = ("trend", "stock", "margin", "freshness", "seasonality")


def _in_window(day: str, start: str, end: str) -> bool:
    return start <= day <= end if start <= end else (day >= start or day <= end)


class BusinessScorer:
    """Computes the business signals over an item table and combines them per placement."""

    def __init__(self, items: ItemTable, signals: BusinessSignals, trend: np.ndarray | None = None,
                 tags: Callable[[], list[set[str]]] | None = None):
        self.items, self.signals = items, signals
        n = len(items)  # items added since the trending source was fitted: no trend
        self.trend = pad_rows(trend, n) if trend is not None and len(trend) <= n else np.zeros(n, np.float32)
        self._tags = tags
        self._static: dict[tuple, np.ndarray] = {}
        self._fresh: dict[int, np.ndarray] = {}
        self._season: dict[str, np.ndarray] = {}
        self._season_masks: list[np.ndarray] | None = None

    def invalidate(self) -> None:
        """The catalog changed (stock, price, margin): recompute the static signals on next use."""
        self._static.clear()

    # ---- signals ---------------------------------------------------------------------------------------
    def stock(self) -> np.ndarray:
        s = self.items.stock
        ref = np.log1p(self.signals.stock_reference)
        with np.errstate(invalid="ignore"):
            out = np.where(np.isinf(s), 1.0, np.clip(np.log1p(np.maximum(s, 0)) / ref, 0, 1))
        return out.astype(np.float32)

    def margin(self) -> np.ndarray:
        m = self.items.margin
        known = np.isfinite(m)
        fill = float(np.median(m[known])) if known.any() else 0.0
        return np.clip(np.where(known, m, fill), 0, 1).astype(np.float32)

    def freshness(self, now: float) -> np.ndarray:
        hour = int(now // 3600)
        got = self._fresh.get(hour)
        if got is None:
            age_days = (hour * 3600.0 - self.items.created_at) / 86400.0
            with np.errstate(invalid="ignore", over="ignore"):
                got = np.where(np.isfinite(age_days),
                               np.power(0.5, np.maximum(age_days, 0) / self.signals.freshness_half_life_days), 0.0)
            got = got.astype(np.float32)
            if len(self._fresh) > 48:
                self._fresh.clear()
            self._fresh[hour] = got
        return got

    def seasonality(self, now: float) -> np.ndarray:
        day = datetime.fromtimestamp(now, timezone.utc).strftime("%m-%d")
        got = self._season.get(day)
        if got is None:
            got = np.zeros(len(self.items), np.float32)
            for season, mask in zip(self.signals.seasons, self._masks()):
                if _in_window(day, season.start, season.end):
                    got[mask] = 1.0
            self._season[day] = got
        return got

    def _masks(self) -> list[np.ndarray]:
        if self._season_masks is None:
            tags = self._tags() if self._tags and any(s.tags for s in self.signals.seasons) else None
            masks = []
            for s in self.signals.seasons:
                m = category_prefix_mask(self.items, s.categories) if s.categories else np.zeros(len(self.items), bool)
                if s.tags and tags is not None:
                    want = set(s.tags)
                    m |= np.fromiter((bool(t & want) for t in tags), bool, len(self.items))
                masks.append(m)
            self._season_masks = masks
        return self._season_masks

    def signal(self, name: str, now: float) -> np.ndarray:
        if name == "trend":
            return self.trend
        if name == "stock":
            return self.stock()
        if name == "margin":
            return self.margin()
        if name == "freshness":
            return self.freshness(now)
        return self.seasonality(now)

    # ---- combination -----------------------------------------------------------------------------------
    def static(self, w: ScoreWeights) -> np.ndarray:
        key = (w.trend, w.stock, w.margin)
        got = self._static.get(key)
        if got is None:
            got = (w.trend * self.trend + w.stock * self.stock() + w.margin * self.margin()).astype(np.float32)
            self._static[key] = got
        return got

    def apply(self, total: np.ndarray, items: np.ndarray, w: ScoreWeights, nows: Sequence[float]) -> np.ndarray:
        """Turn the candidates' relevance scores (B, M; items (B, M), -1 pads) into business scores in place (-inf
        stays); returns each row's relevance scale (1 / best relevance score)."""
        finite = np.where(np.isfinite(total), total, 0.0)
        best = finite.max(axis=1, initial=0.0)
        scale = np.where(best > 0, 1.0 / np.where(best > 0, best, 1.0), 0.0).astype(np.float32)
        factor = (w.relevance * scale).astype(np.float32)
        zero = factor == 0
        factor[zero] = 1.0  # no evidence in the row (every finite score is 0) or relevance weight 0
        total *= factor[:, None]
        if w.relevance == 0:
            rows = total[zero]
            rows[np.isfinite(rows)] = 0.0
            total[zero] = rows
        safe = np.maximum(items, 0)
        total += self.static(w)[safe]
        if w.freshness or w.seasonality:
            for r, now in enumerate(nows):
                if w.freshness:
                    total[r] += w.freshness * self.freshness(now)[safe[r]]
                if w.seasonality:
                    total[r] += w.seasonality * self.seasonality(now)[safe[r]]
        return scale

    def explain(self, j: int, w: ScoreWeights, now: float, relevance: float) -> dict[str, float]:
        out = {"relevance": round(float(w.relevance * relevance), 6)}
        for name in SIGNALS:
            wt = getattr(w, name)
            if wt:
                out[name] = round(float(wt * self.signal(name, now)[j]), 6)
        return out
