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
    evidence = False  # popularity (global, or the category's best sellers) says nothing about this shopper or item

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
            focus.append(np.array(sorted({c for c in self.category[f].tolist() if c >= 0}), np.int64))
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


def first_kept(order: np.ndarray, k: int, keep: Sequence[np.ndarray | None] = (),
               drop: Sequence[np.ndarray | None] = (), without: np.ndarray | None = None) -> np.ndarray:
    """The first ``k`` items of ``order`` that every ``keep`` mask allows, no ``drop`` mask marks and that are not in
    ``without`` (item ids); None masks are no constraint. The order is read in growing chunks, so a request's
    filters never scan the whole catalog (at 1M items, masking the whole order per request was a third of the
    request's time)."""
    keep = [m for m in keep if m is not None]
    drop = [m for m in drop if m is not None]
    if not keep and not drop and without is None:
        return order[:k]
    got, have, start = [], 0, 0
    step = max(2 * k + (len(without) if without is not None else 0), 64)
    while have < k and start < len(order):
        part = order[start:start + step]
        start, step = start + step, step * 4
        if without is not None:
            part = part[~np.isin(part, without)]
        for m in keep:
            part = part[m[part]]
        for m in drop:
            part = part[~m[part]]
        got.append(part)
        have += len(part)
    return np.concatenate(got)[:k] if got else order[:0]


class TrendingScores(SourceScores):
    def __init__(self, source: TrendingRetriever, focus: list[np.ndarray]) -> None:
        self.src, self.focus = source, focus
        n_cats = int(source.category.max(initial=-1)) + 2
        self.table = np.zeros((len(focus), n_cats), bool)  # [row, category + 1]: the row focuses on it
        for r, cats in enumerate(focus):
            self.table[r, cats + 1] = True

    def _values(self, row: np.ndarray, item: np.ndarray) -> np.ndarray:
        g = self.src.global_score[item]
        hit = self.table[row, self.src.category[item] + 1]
        return np.where(hit, 0.5 * g + 0.5 + 0.5 * self.src.category_score[item], g).astype(np.float32)

    def at(self, items: np.ndarray) -> np.ndarray:
        rows = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)
        return np.where(items >= 0, self._values(rows, np.maximum(items, 0)), 0.0).astype(np.float32)

    def peak(self) -> np.ndarray:
        top = float(self.src.global_score.max(initial=0.0))
        return np.array([max([top] + [float(self.src.boosted(int(c))[1][0]) for c in cats if
                                      len(self.src.members[c])]) for cats in self.focus], np.float32)

    def dense(self) -> np.ndarray:
        src = self.src
        out = np.tile(src.global_score, (len(self.focus), 1))
        for r, cats in enumerate(self.focus):
            for c in cats:  # items of the categories in focus rank above the rest, by in-category popularity
                idx = src.members[c]
                out[r, idx] = 0.5 * src.global_score[idx] + 0.5 + 0.5 * src.category_score[idx]
        return out

    def top(self, k: int, exclusions: Exclusions) -> tuple[np.ndarray, np.ndarray]:
        order = self.src.order(exclusions.banned)
        rows, idx = [], []
        for r, cats in enumerate(self.focus):
            depth = k + len(exclusions.rows[r])
            head = first_kept(order, depth, keep=[exclusions.allowed[r]], drop=[exclusions.dropped[r]])
            parts = [head] + [self.src.boosted(int(c))[0][:depth + 64] for c in cats]
            for p in parts:
                rows.append(np.full(len(p), r))
                idx.append(p)
        if not rows:
            return segment_top(len(self.focus), np.zeros(0, np.int64), np.zeros(0, np.int64),
                               np.zeros(0, np.float32), k)
        n = len(self.src.global_score)
        key = np.sort(np.concatenate(rows).astype(np.int64) * n + np.concatenate(idx))
        key = key[np.r_[True, key[1:] != key[:-1]]]
        row, item = key // n, key % n
        keep = exclusions.keep(item, owner=row)
        row, item = row[keep], item[keep]
        val = self._values(row, item)
        pos = val > 0
        return segment_top(len(self.focus), row[pos], item[pos], val[pos], k)
