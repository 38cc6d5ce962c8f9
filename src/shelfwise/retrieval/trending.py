"""Trending: time-decayed popularity, global and per category."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shelfwise.retrieval.base import Query, Retriever, TrainData
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
        self._members = None
        cat_max = np.zeros(max(self.category.max(initial=-1) + 2, 1))
        np.maximum.at(cat_max, self.category + 1, pop)
        denom = cat_max[self.category + 1]
        self.category_score = np.where(denom > 0, pop / np.where(denom > 0, denom, 1), 0).astype(np.float32)
        return self

    def score(self, queries: Sequence[Query]) -> np.ndarray:
        out = np.tile(self.global_score, (len(queries), 1))
        for r, q in enumerate(queries):
            focus = q.anchors if len(q.anchors) else q.history[-3:]
            for c in np.unique(self.category[focus]) if len(focus) else ():
                if c >= 0:  # items of the categories in focus rank above the rest, by in-category popularity
                    idx = self.members[c]
                    out[r, idx] = 0.5 * self.global_score[idx] + 0.5 + 0.5 * self.category_score[idx]
        return out

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
        obj._members = None
        return obj
