"""Stage 5b (rerank placements only): the personal order blended with the shop's own.

A rerank request (``POST /v1/rerank``) sends the shop's list — its search engine's results, a category page — best
first. After the learned ranker (or the blend) has scored the list's items for the shopper, each item's score
becomes

    impact · personal + (1 − impact) · shop

where ``shop`` is 1 for the shop's first item down to 1/n for its last (``stages/candidates.py``), and ``personal``
the item's rank in the personal order on the same scale: the learned ranker's (or the blend's) order, mixed with
the list's popularity order (the trending source's) by the placement's ``popularity_weight`` p, so
``(1 − p) · ranker + p · popular``. With a search query and the placement's ``query_weight`` w, ``personal`` is
``(1 − w) ·`` that ``+ w ·`` the query-item text match (``ranking/query.py``). Ranks, not raw scores, are blended: the ranker's and the blend's scales mean nothing to the
shop's order. ``impact`` is the request's ``personalization_impact``: 0 answers the shop's order (after stock,
filters and rules), 1 the personal order alone. When the search ranker scored the list (``Batch.learned``), its order
is ``personal`` as it is: the shop's position, popularity and the query's match are among its features, weighed
by what shoppers picked in logged searches. The merchandise and slot stages follow as on every rail (business
score, stated preferences, rules, diversity).

Other placements pass through at the cost of one comparison.
"""

from __future__ import annotations

import numpy as np

from shelfwise.ranking.model import SEARCH_RANKER
from shelfwise.ranking.query import QueryMatcher
from shelfwise.stages.base import Batch


def rank_scores(score: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, 1 for the best valid score down to 1/n for the n-th (ties share the better rank's order by
    position); 0 on pads."""
    n = valid.sum(axis=1, keepdims=True)
    order = np.argsort(-np.where(valid, score, -np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(score.shape[1])[None, :].repeat(len(score), 0), axis=1)
    return np.where(valid, 1.0 - rank / np.maximum(n, 1), 0.0).astype(np.float32)


class ShopOrderStage:
    name = "shop_order"

    def __init__(self, matcher: QueryMatcher | None = None) -> None:
        self.matcher = matcher

    def run(self, batch: Batch) -> None:
        if batch.conf.kind != "rerank":
            return
        cand = batch.candidates
        assert cand is not None
        valid = cand.valid & np.isfinite(cand.score)
        personal = rank_scores(cand.score, valid)
        learned = batch.learned == SEARCH_RANKER
        pw = batch.conf.popularity_weight
        if pw > 0 and "trending" in cand.sources and not learned:
            popular = rank_scores(cand.sources["trending"], valid)
            personal = (1 - pw) * personal + pw * popular
        w = batch.conf.query_weight
        if w > 0 and self.matcher is not None and any(r.query for r in batch.requests) and not learned:
            match = np.zeros(cand.shape, np.float32)
            for r, req in enumerate(batch.requests):
                if req.query:
                    match[r] = self.matcher.match(req.query, cand.items[r])
            cand.sources["query"] = match
            has = np.array([bool(r.query) for r in batch.requests])[:, None]
            personal = np.where(has, (1 - w) * personal + w * match, personal)
        impact = np.array([r.impact for r in batch.requests], np.float32)[:, None]
        shop = cand.sources.get("shop", np.zeros(cand.shape, np.float32))
        cand.score = np.where(valid, impact * personal + (1 - impact) * shop, -np.inf).astype(np.float32)
        batch.candidates = cand.sorted()
