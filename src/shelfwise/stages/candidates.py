"""Stages 3 and 4: candidates from every source of the placement, merged and blended.

Each source proposes its top ``per_source`` items a request may show (``SourceScores.top``); the union (plus
the items the request's rules need, and popular items when evidence runs out, so a rail is never empty while the
catalog has servable items) is scored by every source (``SourceScores.at``), each source divided by its best
score over the whole catalog (``peak``), and blended with the placement's weights. The union is cut to the
``limit`` best by blended score; nothing here touches the whole catalog.
"""

from __future__ import annotations

import numpy as np

from shelfwise.request import Candidates, Exclusions
from shelfwise.retrieval.base import Retriever, SourceScores
from shelfwise.retrieval.trending import TrendingRetriever
from shelfwise.settings import CandidateSettings
from shelfwise.stages.base import Batch, padded


def union_rows(parts: list[np.ndarray]) -> np.ndarray:
    """Per row, the distinct non-negative items of (B, k_i) matrices, ascending, -1 padded."""
    allc = np.concatenate([p for p in parts if p.shape[1]], axis=1) if any(p.shape[1] for p in parts) else None
    if allc is None:
        return np.full((len(parts[0]) if parts else 0, 0), -1, np.int64)
    s = np.sort(allc, axis=1)
    dup = np.zeros(s.shape, bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s[dup] = -1
    keep = s >= 0
    width = int(keep.sum(axis=1).max(initial=0))
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    out = np.take_along_axis(s, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = -1
    return out


def without(items: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Rows of ``items`` with the entries also in the same row of ``present`` set to -1."""
    if not items.size or not present.size:
        return items
    n = int(max(items.max(initial=0), present.max(initial=0))) + 1
    rows = np.arange(len(items), dtype=np.int64)[:, None] * n
    hit = np.isin(rows + items, (rows + present)[present >= 0]) & (items >= 0)
    return np.where(hit, -1, items)


class CandidateStage:
    name = "candidates"

    def __init__(self, sources: dict[str, Retriever], settings: CandidateSettings, n_items: int) -> None:
        self.sources, self.settings, self.n_items = sources, settings, n_items
        trending = sources.get("trending")
        self._popular = trending if isinstance(trending, TrendingRetriever) else None

    def fallback_order(self, banned: np.ndarray) -> np.ndarray:
        """Servable items, most popular first (item order without a trending source)."""
        if self._popular is not None:
            return self._popular.order(banned)
        return np.flatnonzero(~banned).astype(np.int64)

    def _fill(self, have: np.ndarray, need: int, ex: Exclusions) -> np.ndarray:
        """Per row, popular items not in ``have`` until the row has ``need`` candidates (rails never empty)."""
        count = (have >= 0).sum(axis=1)
        short = np.flatnonzero(count < need)
        rows = [np.zeros(0, np.int64)] * len(have)
        if not len(short):
            return padded(rows)
        order = self.fallback_order(ex.banned)
        for r in short:
            want = need - count[r]
            drop = np.union1d(ex.rows[r], have[r][have[r] >= 0])
            allow, rule = ex.allowed[r], ex.dropped[r]
            got, start, step = [], 0, max(2 * want + len(drop), 64)
            while sum(len(g) for g in got) < want and start < len(order):
                part = order[start:start + step]
                start += step
                part = part[~np.isin(part, drop)]
                if allow is not None:
                    part = part[allow[part]]
                if rule is not None:
                    part = part[~rule[part]]
                got.append(part)
                step *= 4
            rows[r] = np.concatenate(got)[:want] if got else np.zeros(0, np.int64)
        return padded(rows)

    def _score(self, items: np.ndarray, scored: dict[str, SourceScores], peaks: dict[str, np.ndarray],
               weights: dict[str, float]) -> Candidates:
        sources: dict[str, np.ndarray] = {}
        blend = np.zeros(items.shape, np.float32)
        for name, sc in scored.items():
            pk = peaks[name][:, None]
            s = np.divide(sc.at(items), pk, out=np.zeros(items.shape, np.float32), where=pk > 0)
            sources[name] = s
            blend += weights[name] * s
        score = np.where(items >= 0, blend, -np.inf).astype(np.float32)
        return Candidates(items, sources, blend, score)

    def run(self, batch: Batch) -> None:
        ex = batch.exclusions
        assert ex is not None
        weights = {n: w for n, w in batch.conf.weights.items() if w and n in self.sources}
        scored = {n: self.sources[n].scores(batch.queries) for n in weights}
        per = self.settings.per_source
        # a source gives its best `per` items, however many of its best ones a request excludes
        proposals = [sc.top(per, ex)[0] for sc in scored.values()]
        peaks = {n: sc.peak() for n, sc in scored.items()}
        union = union_rows(proposals) if proposals else np.full((len(batch), 0), -1, np.int64)
        cand = self._score(union, scored, peaks, weights).sorted(self.settings.limit)
        extra = [] if batch.extra is None else [without(padded(batch.extra), cand.items)]
        if extra:  # rules' items (pins, reserved slots) that may be shown and are not there yet
            e = extra[0]
            extra[0] = np.where(ex.keep(e, rules=False), e, -1)
        fill = self._fill(union_rows([cand.items] + extra), batch.kmax, ex)
        more = union_rows(extra + [fill]) if extra or fill.shape[1] else fill
        if more.shape[1] and (more >= 0).any():
            add = self._score(more, scored, peaks, weights)
            cand = Candidates(np.concatenate([cand.items, add.items], axis=1),
                              {n: np.concatenate([cand.sources[n], add.sources[n]], axis=1) for n in cand.sources},
                              np.concatenate([cand.blend, add.blend], axis=1),
                              np.concatenate([cand.score, add.score], axis=1)).sorted()
        batch.candidates = cand
