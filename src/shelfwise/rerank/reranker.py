"""After blending: business score → merchandising rules → diversity and slot filling (one placement, a batch).

``Pipeline.recommend`` hands the blended, masked scores of a batch to ``Reranker.rank``, which returns the
slates. With relevance-only weights, no rules and diversity off it is exactly ``top_k`` (the old answers).
Shadow answers (a draft rule set on a sample of requests) are computed here from the same business scores
and logged; the live answer is what is served.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from shelfwise.rerank.business import BusinessScorer
from shelfwise.rerank.mmr import Similarity
from shelfwise.rerank.slots import Placed, fill
from shelfwise.retrieval.base import ItemTable, Retriever, top_k
from shelfwise.settings import ModelSettings


class Reranker:
    def __init__(self, items: ItemTable, retrievers: dict[str, Retriever], settings: ModelSettings):
        self.items, self.settings = items, settings
        trending = retrievers.get("trending")
        trend = getattr(trending, "global_score", None)
        self.business = BusinessScorer(items, settings.business, trend)
        als = retrievers.get("als")
        self._factors = getattr(als, "item_factors", None)
        self._sim: dict[str, Similarity] = {}

    def invalidate(self) -> None:
        """The catalog changed (stock, price, margin)."""
        self.business.invalidate()
        self._sim.clear()

    def similarity(self, placement: str) -> Similarity:
        got = self._sim.get(placement)
        if got is None:
            conf = self.settings.placements[placement].diversity
            got = Similarity.build(self.items, conf, self.settings.business, self._factors)
            self._sim[placement] = got
        return got

    def rank(self, reqs: Sequence[Any], total: np.ndarray, parts: dict[str, np.ndarray], placement: str,
             kmax: int, rules: Any = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any] | None]]:
        """Top (B, kmax) item indices (-1 pads), their scores (-inf pads) and, per request asking for it, an
        explanation. ``total`` is modified in place."""
        conf = self.settings.placements[placement]
        w, div = conf.score, conf.diversity
        n_req = len(reqs)
        plans = rules.plan(self.items, reqs, placement) if rules is not None else None
        lam = div.mmr_lambda
        if plans is None and w.relevance_only and lam >= 1 and not any(r.explain for r in reqs):
            top, scores = top_k(total, kmax)
            return top, scores, [None] * n_req
        need_best = [r for r in range(n_req) if reqs[r].explain or (plans and plans[r].shadows)]
        best = np.ones(n_req, np.float32)
        if need_best:
            sub = total[need_best]
            best[need_best] = np.where(np.isfinite(sub), sub, 0).max(axis=1)
        if not w.relevance_only:
            self.business.apply(total, w, [r.now for r in reqs])
        base = {r: total[r].copy() for r in range(n_req) if plans and plans[r].shadows}
        pres: list[np.ndarray | None] = [None] * n_req
        for r in range(n_req):
            if plans is not None and not plans[r].eff.noop:
                pres[r] = plans[r].world.apply(total[r], plans[r].eff)
        sim = self.similarity(placement) if lam < 1 else None
        top = np.full((n_req, kmax), -1, np.int64)
        scores = np.full((n_req, kmax), -np.inf, np.float32)
        slates: list[list[Placed]] = [[] for _ in range(n_req)]
        conflicts: list[list[str]] = [[] for _ in range(n_req)]
        plain = [r for r in range(n_req) if lam >= 1 and (plans is None or plans[r].eff.constraints.empty)]
        if plain:
            t, s = top_k(total[plain], kmax)  # at most n_items columns
            top[plain, : t.shape[1]], scores[plain, : t.shape[1]] = t, s
            for r, tr, sr in zip(plain, t, s):
                slates[r] = [Placed(int(j), float(x), "ranked") for j, x in zip(tr, sr) if np.isfinite(x)]
        for r in sorted(set(range(n_req)) - set(plain)):
            c = plans[r].eff.constraints if plans is not None else None
            slates[r], conflicts[r] = fill(total[r], reqs[r].k, c, pres[r], sim, lam, div.pool)
            for pos, p in enumerate(slates[r][:kmax]):
                top[r, pos], scores[r, pos] = p.item, p.score
        for r, row in base.items():
            for job in plans[r].shadows:
                self._shadow(reqs[r], placement, row.copy(), job, slates[r], parts, r, best[r], sim, lam, div.pool,
                             rules)
        notes: list[dict[str, Any] | None] = [None] * n_req
        for r, req in enumerate(reqs):
            if req.explain:
                notes[r] = self._explain(req, r, placement, slates[r], conflicts[r], parts, best[r],
                                         plans[r] if plans else None, rules)
        return top, scores, notes

    # ---- shadow --------------------------------------------------------------------------------------
    def _shadow(self, req, placement, row, job, live, parts, r, best, sim, lam, pool, rules) -> None:
        from shelfwise.rules.log import ShadowRecord

        pre = job.world.apply(row, job.eff)
        if lam >= 1 and job.eff.constraints.empty:
            t, s = top_k(row[None, :], req.k)
            slate = [Placed(int(j), float(x), "ranked") for j, x in zip(t[0], s[0]) if np.isfinite(x)]
        else:
            slate, _ = fill(row, req.k, job.eff.constraints, pre, sim, lam, pool)
        ids, price, margin = self.items.ids, self.items.price, self.items.margin

        def rows(sl: list[Placed]) -> list[list[Any]]:
            out = []
            for p in sl:
                rel = sum(float(v[r, p.item]) for v in parts.values()) / float(best) if best > 0 else 0.0
                out.append([str(ids[p.item]), round(float(rel), 6), _num(price[p.item]), _num(margin[p.item])])
            return out

        rules.record_shadow(ShadowRecord(
            ts=req.now or time.time(), request_id=req.request_id, shopper=req.shopper, placement=placement,
            ruleset_id=job.ruleset_id, live_version=job.live_version, shadow_version=job.version,
            live=rows(live), shadow=rows(slate),
            pinned=[str(ids[p.item]) for p in slate if p.reason == "pinned"],
            blocked=[str(ids[p.item]) for p in live if not np.isfinite(row[p.item])]))

    # ---- explanation ---------------------------------------------------------------------------------
    def _explain(self, req, r, placement, slate, conflicts, parts, best, plan, rules) -> dict[str, Any]:
        conf = self.settings.placements[placement]
        items = []
        for pos, p in enumerate(slate):
            rel = sum(float(v[r, p.item]) for v in parts.values())
            if not conf.score.relevance_only:  # the business score uses relevance scaled to the row's best
                rel = rel / best if best > 0 else 0.0
            why = {"pinned": f"pinned by {p.rule}", "reserved": f"reserved slot of {p.rule}"}.get(
                p.reason, "ranked by score" + (" with diversity" if conf.diversity.mmr_lambda < 1 else ""))
            items.append({
                "position": pos + 1,
                "reason": why,
                "score": round(p.score, 6),
                "components": self.business.explain(p.item, conf.score, req.now, rel),
                "rules": plan.world.explain(plan.sig, p.item) if plan is not None else [],
                "diversity_penalty": round(p.penalty, 6),
            })
        out: dict[str, Any] = {"items": items, "conflicts": conflicts,
                               "score_weights": conf.score.model_dump(),
                               "mmr_lambda": conf.diversity.mmr_lambda}
        if rules is not None:
            out["rulesets"] = rules.label()
        return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def ranked_rows(pipe: Any, reqs: Sequence[Any], queries: Sequence[Any], total: np.ndarray,
                parts: dict[str, np.ndarray], placement: str) -> np.ndarray:
    """Full score rows after the learned ranker: its top-N candidates keep the ranker's final scores; every other
    servable item follows in blend order, below all of them (so pins and reserved slots can still reach it)."""
    n = min(pipe.ranker.settings.candidates, total.shape[1])
    top, scores = pipe.ranker.rerank(pipe, reqs, queries, total, parts, placement, n)
    finite = np.isfinite(scores)
    best = np.where(np.isfinite(total), total, 0.0).max(axis=1, keepdims=True)
    best = np.where(best > 0, best, 1.0)
    floor = np.where(finite, scores, np.inf).min(axis=1, keepdims=True, initial=np.inf)
    floor = np.where(np.isfinite(floor), floor, 0.0)
    out = (floor - 2.0 + total / best).astype(np.float32)  # in [floor - 2, floor - 1]; -inf stays
    r, c = np.nonzero(finite)
    out[r, top[r, c]] = scores[r, c]
    return out
