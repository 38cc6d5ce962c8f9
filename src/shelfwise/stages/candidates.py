"""Stages 3 and 4: candidates from every source of the placement, merged and blended.

Each source proposes its top ``per_source`` items a request may show (``SourceScores.top``); the union is
scored by every source (``SourceScores.at``), each source divided by its best score over the whole catalog
(``peak``), and blended with the placement's weights; the best by blended score are the candidates: as many as
the later stages look at (``depth``: the learned ranker's candidates, the diversity pool, four times the slots).
Nothing of this touches the whole catalog, so its cost does not grow with it.

Catalogs up to ``dense_max_items`` take the exact path instead: every source scores every item (``dense``), and
the blend's best are the candidates — on 12k items that is faster than building a union, and it is
what the union approximates (a test checks they agree).

Either way the items the request's rules need (pins, reserved slots) are added, the most popular items matching
the shopper's soft preferences (``preferences.candidates``; the merchandise stage boosts them), and popular items
when evidence runs out, so a rail is never empty while the catalog has servable items.

Items added to the catalog after training are scored by the sources as having no evidence from those fitted
without them (``scores_over``), except that ``cold_transfer`` of those sources' weight goes to the content
source's score of them (``cold_weights``): the content source is the only one that can judge them.
"""

from __future__ import annotations

import time

import numpy as np

from shelfwise.request import Candidates, Exclusions, take_rows
from shelfwise.retrieval.base import Retriever, SourceScores, scores_over, top_k
from shelfwise.retrieval.trending import TrendingRetriever, first_kept
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
    out = take_rows(s, order)
    out[~take_rows(keep, order)] = -1
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

    def __init__(self, sources: dict[str, Retriever], settings: CandidateSettings,
                 depth: dict[str, int] | None = None, preferred: int = 0) -> None:
        self.sources, self.settings = sources, settings
        self.preferred_n = preferred  # popular items matching a shopper's soft preferences added per request
        self.depth = depth or {}  # placement -> candidates the learned ranker re-scores
        trending = sources.get("trending")
        self._popular = trending if isinstance(trending, TrendingRetriever) else None

    def fallback_order(self, banned: np.ndarray) -> np.ndarray:
        """Servable items, most popular first (item order without a trending source)."""
        if self._popular is not None:
            return self._popular.order(banned)
        return np.flatnonzero(~banned).astype(np.int64)

    def _most_popular(self, want: dict[int, int], ex: Exclusions, have: np.ndarray | None = None,
                      match: list[np.ndarray | None] | None = None) -> np.ndarray:
        """For each row r of ``want``: its ``want[r]`` most popular items that it may show, not in ``have[r]`` and,
        with ``match``, among the items ``match[r]`` marks; (B, m) with -1 pads."""
        rows = [np.zeros(0, np.int64)] * len(ex)
        order = self.fallback_order(ex.banned) if want else None
        for r, k in want.items():
            drop = ex.rows[r] if have is None else np.union1d(ex.rows[r], have[r][have[r] >= 0])
            wanted = match[r] if match is not None else None
            rows[r] = first_kept(order, k, keep=[ex.allowed[r], wanted], drop=[ex.dropped[r]], without=drop)
        return padded(rows)

    def _fill(self, have: np.ndarray, need: int, ex: Exclusions) -> np.ndarray:
        """Per row, popular items not in ``have`` until the row has ``need`` candidates (rails never empty)."""
        count = (have >= 0).sum(axis=1)
        return self._most_popular({int(r): int(need - count[r]) for r in np.flatnonzero(count < need)}, ex, have)

    def _preferred(self, batch: Batch, ex: Exclusions) -> np.ndarray | None:
        """Per row with soft preferences, the most popular items matching them (None when no row has any)."""
        rows = [r for r, p in enumerate(batch.preferred) if p is not None]
        if not rows or not self.preferred_n:
            return None
        match: list[np.ndarray | None] = [None] * len(batch)
        for r in rows:
            match[r] = batch.preferred[r] > 0
        return self._most_popular({r: self.preferred_n for r in rows}, ex, match=match)

    def cold_weights(self, weights: dict[str, float], n_items: int) -> np.ndarray | None:
        """(n_items,) the extra weight of the content source's score of each item: ``cold_transfer`` of the weights
        of the sources fitted without the item (added since); None when no weighted source lacks an item."""
        if "content" not in weights:
            return None
        out = np.zeros(n_items, np.float32)
        for name, w in weights.items():
            m = self.sources[name].n_items
            if name != "content" and m < n_items:
                out[m:] += self.settings.cold_transfer * w
        return out if out.any() else None

    def _score(self, items: np.ndarray, scored: dict[str, SourceScores], peaks: dict[str, np.ndarray],
               weights: dict[str, float], cold: np.ndarray | None) -> Candidates:
        sources: dict[str, np.ndarray] = {}
        blend = np.zeros(items.shape, np.float32)
        for name, sc in scored.items():
            pk = peaks[name][:, None]
            s = np.divide(sc.at(items), pk, out=np.zeros(items.shape, np.float32), where=pk > 0)
            sources[name] = s
            blend += weights[name] * s
        if cold is not None:
            blend += np.where(items >= 0, cold[np.maximum(items, 0)], 0.0) * sources["content"]
        score = np.where(items >= 0, blend, -np.inf).astype(np.float32)
        return Candidates(items, sources, blend, score)

    def need(self, batch: Batch) -> int:
        """Candidates the later stages look at: the ranker's, the diversity pool, four times the slots."""
        div = batch.conf.diversity
        pool = div.pool if div.mmr_lambda < 1 else 0
        return min(self.settings.limit, max(self.depth.get(batch.placement, 0), pool, 4 * batch.kmax))

    def _union(self, batch: Batch, scored: dict[str, SourceScores], peaks: dict[str, np.ndarray],
               weights: dict[str, float], cold: np.ndarray | None) -> Candidates:
        ex = batch.exclusions
        assert ex is not None
        # a source gives its best `per_source` items, however many of its best ones a request excludes
        proposals = [sc.top(self.settings.per_source, ex)[0] for sc in scored.values()]
        union = union_rows(proposals) if proposals else np.full((len(batch), 0), -1, np.int64)
        return self._score(union, scored, peaks, weights, cold).sorted(self.need(batch))

    def _dense(self, batch: Batch, dense: dict[str, np.ndarray], peaks: dict[str, np.ndarray],
               weights: dict[str, float], cold: np.ndarray | None) -> Candidates:
        ex = batch.exclusions
        assert ex is not None
        n_items = len(ex.banned)
        total = np.zeros((len(batch), n_items), np.float32)
        normed = {}
        for name in weights:
            pk = peaks[name][:, None]
            s = np.divide(dense[name], pk, out=np.zeros(total.shape, np.float32), where=pk > 0)
            normed[name] = s
            total += weights[name] * s
        if cold is not None:
            total += cold[None, :] * normed["content"]
        total[ex.dense()] = -np.inf
        idx, val = top_k(total, min(self.need(batch), n_items))
        items = np.where(np.isfinite(val), idx, -1)  # items without evidence too (blend 0, lowest index first)
        safe = np.maximum(items, 0)
        sources = {n: np.where(items >= 0, take_rows(s, safe), 0.0).astype(np.float32) for n, s in normed.items()}
        blend = np.where(items >= 0, val, 0.0).astype(np.float32)
        return Candidates(items, sources, blend, np.where(items >= 0, val, -np.inf).astype(np.float32))

    def _guarded(self, batch: Batch, weights: dict[str, float], n_items: int,
                 dense: dict[str, np.ndarray] | None) -> tuple[dict[str, SourceScores], dict[str, np.ndarray]]:
        """The sources' scores while serving: a source whose breaker is open, or that fails now, is left out (and
        named in ``batch.degraded``); each call's time counts against the source's budget. With ``dense`` (the
        exact path), each source's every-item scores go there, computed before its peak (which a source may read
        off them: one product for both)."""
        guard = batch.guard
        assert guard is not None
        scored: dict[str, SourceScores] = {}
        peaks: dict[str, np.ndarray] = {}
        for n in weights:
            skip = guard.source_skipped(n)
            if skip is not None:
                batch.degraded.append(skip)
                continue
            t0 = time.perf_counter()
            try:
                sc = scores_over(self.sources[n], batch.queries, n_items)
                if dense is not None:
                    dense[n] = sc.dense()
                peaks[n] = sc.peak()
            except Exception as exc:
                batch.degraded.append(guard.source_failed(n, exc))
                continue
            scored[n] = sc
            guard.source_done(n, time.perf_counter() - t0)
        return scored, peaks

    def _given(self, batch: Batch, scored: dict[str, SourceScores], peaks: dict[str, np.ndarray],
               weights: dict[str, float], cold: np.ndarray | None) -> Candidates:
        """A rerank placement's candidates: the shop's own list (the items of it the request may show, nothing
        else), scored by every source like any candidate, with the shop's order as the ``shop`` column (1 for its
        first item down to 1/n for its last; not a blend source)."""
        ex = batch.exclusions
        assert ex is not None
        assert batch.given is not None
        items = padded([g.items for g in batch.given])
        shop = np.zeros(items.shape, np.float32)
        for r, g in enumerate(batch.given):
            shop[r, :len(g.items)] = 1.0 - g.positions / max(g.length, 1)
        ok = ex.keep(items)
        items = np.where(ok, items, -1)
        cand = self._score(items, scored, peaks, weights, cold)
        cand.sources["shop"] = np.where(ok, shop, 0.0).astype(np.float32)
        return cand.sorted()

    def run(self, batch: Batch) -> None:
        ex = batch.exclusions
        assert ex is not None
        weights = {n: w for n, w in batch.conf.weights.items() if w and n in self.sources}
        n_items = len(ex.banned)  # the request's catalog (it may have items some sources were not fitted on)
        # the exact path (small catalogs): every source's every-item scores, fetched with the sources
        dense: dict[str, np.ndarray] | None = \
            {} if n_items <= self.settings.dense_max_items and batch.conf.kind != "rerank" else None
        if batch.guard is None:
            scored = {n: scores_over(self.sources[n], batch.queries, n_items) for n in weights}
            if dense is not None:
                dense.update((n, sc.dense()) for n, sc in scored.items())
            peaks = {n: sc.peak() for n, sc in scored.items()}
        else:
            scored, peaks = self._guarded(batch, weights, n_items, dense)
            weights = {n: w for n, w in weights.items() if n in scored}
        cold = self.cold_weights(weights, n_items)
        if batch.conf.kind == "rerank":
            batch.candidates = self._given(batch, scored, peaks, weights, cold)
            return
        cand = self._dense(batch, dense, peaks, weights, cold) if dense is not None else \
            self._union(batch, scored, peaks, weights, cold)
        extra = [] if batch.extra is None else [without(padded(batch.extra), cand.items)]
        if extra:  # rules' items (pins, reserved slots) that may be shown and are not there yet
            e = extra[0]
            extra[0] = np.where(ex.keep(e, rules=False), e, -1)
        preferred = self._preferred(batch, ex) if batch.preferred else None
        if preferred is not None:  # items matching the shopper's stated preferences
            extra.append(without(preferred, cand.items))
        fill = self._fill(union_rows([cand.items] + extra), batch.kmax, ex)
        more = union_rows(extra + [fill]) if extra or fill.shape[1] else fill
        if more.shape[1] and (more >= 0).any():
            add = self._score(more, scored, peaks, weights, cold)
            cand = Candidates(np.concatenate([cand.items, add.items], axis=1),
                              {n: np.concatenate([cand.sources[n], add.sources[n]], axis=1) for n in cand.sources},
                              np.concatenate([cand.blend, add.blend], axis=1),
                              np.concatenate([cand.score, add.score], axis=1)).sorted()
        batch.candidates = cand
