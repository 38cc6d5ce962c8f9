"""Stage 5: the learned ranker re-scores the blend's best ``ranker.candidates`` items of each request.

Its candidates keep the ranker's final scores (relevance, plus margin when ``margin_weight`` is set); every other
candidate follows in blend order below all of them, so pins and reserved slots can still reach it. A placement with
``ranker = true`` (the rerank placements by default) is re-scored by the same ranker, every item of its list. A request that a
new shoppers' source answered (a cohort centroid: no history, page or cart) keeps the blend's order: the ranker
learned only from requests with a history (``ranking.labels.split_history``) and knows nothing of cohorts.
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

    def __init__(self, ranker: Ranker, ctx: FeatureContext, new_shoppers: tuple[str, ...] = ()) -> None:
        """``new_shoppers``: the sources that score only a new shopper's request (whose rows keep blend order)."""
        self.ranker, self.ctx, self.new_shoppers = ranker, ctx, new_shoppers

    def run(self, batch: Batch) -> None:
        applies = self.ranker.applies(batch.placement) or (batch.conf.ranker and self.ranker.applies(
            self.ranker.settings.placements[0] if self.ranker.settings.placements else ""))
        if not batch.use_ranker or not applies:
            return
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
        final = self.ranker.score(self.ctx, batch.requests, batch.queries, head)
        blend = cand.score.copy() if cold.any() else None
        cand.score = ranked_scores(cand, n, final)
        if blend is not None:
            cand.score[cold] = blend[cold]
        batch.candidates = cand.sorted()
