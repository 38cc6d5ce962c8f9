"""Stage 5: the learned ranker re-scores the blend's best ``ranker.candidates`` items of each request.

Its candidates keep the ranker's final scores (relevance, plus margin when ``margin_weight`` is set); every other
candidate follows in blend order below all of them, so pins and reserved slots can still reach it. A placement with
``ranker = true`` (the rerank placements by default) is re-scored by the same ranker, every item of its list. A request that a
new shoppers' source answered (a cohort centroid: no history, page or cart) keeps the blend's order: the ranker
learned only from requests with a history (``ranking.labels.split_history``) and knows nothing of cohorts.

The search placements (``ranker.search_placements``) are scored by the model's search ranker instead when it has
one (``ranking/search.py``: trained on logged searches, the shop's order and the query among its features), every
row: it learned from searches with and without a history. ``Batch.learned`` says which booster scored the list.
"""

from __future__ import annotations

import numpy as np

from shelfwise.ranking.features import FeatureContext
from shelfwise.ranking.model import Ranker
from shelfwise.request import Candidates
from shelfwise.stages.base import Batch


def ranked_scores(cand: Candidates, n: int, final: np.ndarray) -> np.ndarray:
    """Scores of every candidate (sorted by blend) once its first ``n`` columns are re-scored by ``final``
    (B, n): those keep their final scores, the rest follow in blend order in [floor - 2, floor - 1]."""
    finite = np.isfinite(final)
    floor = np.where(finite, final, np.inf).min(axis=1, keepdims=True, initial=np.inf)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    blend = np.where(cand.valid, cand.blend, 0.0)
    best = blend.max(axis=1, keepdims=True, initial=0.0)
    best = np.where(best > 0, best, 1.0)
    out = (floor - 2.0 + blend / best).astype(np.float32)
    out[:, :n] = np.where(finite, final, -np.inf)
    return np.where(cand.valid, out, -np.inf).astype(np.float32)


class RankStage:
    name = "rank"

    def __init__(self, ranker: Ranker | None, ctx: FeatureContext | None, new_shoppers: tuple[str, ...] = (),
                 search: tuple[Ranker, FeatureContext] | None = None) -> None:
        """``new_shoppers``: the sources that score only a new shopper's request (whose rows keep blend order).
        ``search``: the search ranker and its feature context."""
        self.ranker, self.ctx, self.new_shoppers, self.search = ranker, ctx, new_shoppers, search

    def run(self, batch: Batch) -> None:
        if not batch.use_ranker:
            return
        if self.search is not None and batch.conf.kind == "rerank" and self.search[0].applies(batch.placement):
            self._search(batch, *self.search)
            return
        ranker = self.ranker
        if ranker is None or not (ranker.applies(batch.placement) or (batch.conf.ranker and ranker.applies(
                ranker.settings.placements[0] if ranker.settings.placements else ""))):
            return
        assert self.ctx is not None
        cand = batch.candidates
        assert cand is not None
        cold = np.zeros(len(batch), bool)
        for name in self.new_shoppers:
            if name in cand.sources:
                cold |= (cand.sources[name] > 0).any(axis=1)
        if cold.all():
            return
        # a rerank placement's candidates are the shop's list: every item of it is re-scored
        n = cand.shape[1] if batch.conf.kind == "rerank" else min(self.ranker.settings.candidates, cand.shape[1])
        head = cand.take(np.broadcast_to(np.arange(n), (len(batch), n)))
        final = ranker.score(self.ctx, batch.requests, batch.queries, head)
        blend = cand.score.copy() if cold.any() else None
        cand.score = ranked_scores(cand, n, final)
        if blend is not None:
            cand.score[cold] = blend[cold]
        batch.candidates = cand.sorted()
        batch.learned = ranker.name

    @staticmethod
    def _search(batch: Batch, ranker: Ranker, ctx: FeatureContext) -> None:
        cand = batch.candidates
        assert cand is not None
        final = ranker.score(ctx, batch.requests, batch.queries, cand)
        cand.score = ranked_scores(cand, cand.shape[1], final)
        batch.candidates = cand.sorted()
        batch.learned = ranker.name
