"""Trending: time-decayed popularity, global and per category.

An item's score is its global popularity (max 1); for a request about some categories (the product page's or
cart's items, else the shopper's last three items) the items of those categories rank above the rest, by
``0.5 + 0.5 * (global + in-category popularity)``. Candidates are read from precomputed orders (global, and per
category), so a request never scans the catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shelfwise.request import Exclusions, Query
from shelfwise.retrieval.base import Retriever, SourceScores, TrainData, segment_top
from shelfwise.settings import TrendingSettings


class TrendingRetriever(Retriever):
    name = "trending"

    def __init__(self, settings: TrendingSettings | None = None) -> None:
        self.settings = settings or TrendingSettings()
        self.global_score = np.zeros(0, np.float32)  # normalised to max 1
        self.category_score = np.zeros(0, np.float32)  # popularity relative to the item's own category (max 1)
        self.category = np.zeros(0, np.int32)

    def fit(self, data: TrainData) -> "TrendingRetriever":
        half_life = self.settings.half_life_days * 86400.0
        decay = np.power(0.5, (data.now - data.ts) / half_life).astype(np.float64)
        pop = np.bincount(data.item, weights=decay * np.maximum(data.weight, 0), minlength=data.n_items)
        self.global_score = (pop / pop.max() if pop.max(initial=0) > 0 else pop).astype(np.float32)
        self.category = data.items.category.copy()
        cat_max = np.zeros(max(self.category.max(initial=-1) + 2, 1))
        np.maximum.at(cat_max, self.category + 1, pop)
        denom = cat_max[self.category + 1]
        self.category_score = np.where(denom > 0, pop / np.where(denom > 0, denom, 1), 0).astype(np.float32)
        self._reset()
        return self

    @property
    def n_items(self) -> int:
        return len(self.global_score)

    def scores(self, queries: Sequence[Query]) -> "TrendingScores":
        focus = []
        for q in queries:
            f = q.anchors if len(q.anchors) else q.history[-3:]
            cats = np.unique(self.category[f]) if len(f) else np.zeros(0, np.int32)
            focus.append(cats[cats >= 0].astype(np.int64))
        return TrendingScores(self, focus)

    def order(self, banned: np.ndarray | None = None) -> np.ndarray:
        """Every item, most popular first (ties: lower index), without the ``banned`` ones; cached per mask."""
        got = getattr(self, "_order", None)
        if got is None:
            got = self._order = np.lexsort((np.arange(self.n_items), -self.global_score)).astype(np.int64)
        if banned is None:
            return got
        cached = getattr(self, "_order_ok", None)
        if cached is None or cached[0] is not banned:
            cached = self._order_ok = (banned, got[~banned[got]])
        return cached[1]

    def boosted(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Members of category c by boosted score (best first) and the scores."""
        cache = getattr(self, "_boosted", None)
        if cache is None:
            cache = self._boosted = {}
        got = cache.get(c)
        if got is None:
            idx = self.members[c]
            val = (0.5 * self.global_score[idx] + 0.5 + 0.5 * self.category_score[idx]).astype(np.float32)
            order = np.lexsort((idx, -val))
            got = cache[c] = (idx[order].astype(np.int64), val[order])
        return got

    @property
    def members(self) -> list[np.ndarray]:
        """Item indices of each category code."""
        if getattr(self, "_members", None) is None:
            order = np.argsort(self.category, kind="stable")
            bounds = np.searchsorted(self.category[order], np.arange(self.category.max(initial=-1) + 2))
            self._members = [order[bounds[c]:bounds[c + 1]] for c in range(len(bounds) - 1)]
        return self._members

    def top_in_category(self, category: int, k: int) -> np.ndarray:
        idx = np.flatnonzero(self.category == category)
        return idx[np.argsort(-self.global_score[idx], kind="stable")][:k]

    def save(self, path: Path) -> None:
        np.savez(path / "trending.npz", global_score=self.global_score, category_score=self.category_score,
                 category=self.category, half_life_days=self.settings.half_life_days)

    @classmethod
    def load(cls, path: Path) -> "TrendingRetriever":
        z = np.load(path / "trending.npz")
        obj = cls(TrendingSettings(half_life_days=float(z["half_life_days"])))
        obj.global_score, obj.category_score, obj.category = z["global_score"], z["category_score"], z["category"]
        obj._reset()
        return obj

    def _reset(self) -> None:
        self._members = self._order = self._order_ok = self._boosted = None


class TrendingScores(SourceScores):
    def __init__(self, source: TrendingRetriever, focus: list[np.ndarray]) -> None:
        self.src, self.focus = source, focus

    def at(self, items: np.ndarray) -> np.ndarray:
        g = self.src.global_score
        safe = np.maximum(items, 0)
        out = g[safe].copy()
        for r, cats in enumerate(self.focus):
            if len(cats):
                hit = np.isin(self.src.category[safe[r]], cats)
                out[r, hit] = 0.5 * g[safe[r, hit]] + 0.5 + 0.5 * self.src.category_score[safe[r, hit]]
        out[items < 0] = 0.0
        return out.astype(np.float32)

    def peak(self) -> np.ndarray:
        top = float(self.src.global_score.max(initial=0.0))
        return np.array([max([top] + [float(self.src.boosted(int(c))[1][0]) for c in cats if
                                      len(self.src.members[c])]) for cats in self.focus], np.float32)

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        order = self.src.order(exclusions.banned)
        rows, idx = [], []
        for r, cats in enumerate(self.focus):
            allow, rule = exclusions.allowed[r], exclusions.dropped[r]
            head = order
            if allow is not None:
                head = head[allow[head]]
            if rule is not None:
                head = head[~rule[head]]
            head = head[: k + len(exclusions.rows[r])]
            parts = [head] + [self.src.boosted(int(c))[0][: k + len(exclusions.rows[r]) + 64] for c in cats]
            got = np.unique(np.concatenate(parts)) if len(parts) > 1 else head
            rows.append(np.full(len(got), r))
            idx.append(got)
        row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        item = np.concatenate(idx) if idx else np.zeros(0, np.int64)
        keep = exclusions.keep(item, owner=row)
        row, item = row[keep], item[keep]
        g = self.src.global_score
        val = g[item].astype(np.float32)
        for r, cats in enumerate(self.focus):
            if len(cats):
                sel = (row == r) & np.isin(self.src.category[item], cats)
                val[sel] = 0.5 * g[item[sel]] + 0.5 + 0.5 * self.src.category_score[item[sel]]
        pos = val > 0
        return segment_top(len(self.focus), row[pos], item[pos], val[pos], k)
