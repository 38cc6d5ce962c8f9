"""Stage 7: diversity and slot filling over each request's candidates, then the answer.

Rows without diversity and without pins, reserved slots or caps are simply the best ``k`` by score. Others go
through ``rerank.slots.fill`` (pins, reserved slots, caps, MMR) on the request's candidate row; a request's
exploration slots (``stages.explore``) are reserved slots of the lowest priority there. Requests sampled
for a draft rule set in shadow get the draft's answer computed from the same candidates and logged. The
answer is stamped with the model version and the live rule set versions that computed it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.request import Answer, Recommendation
from shelfwise.rerank.business import BusinessScorer
from shelfwise.rerank.mmr import Similarity, price_bands
from shelfwise.rerank.slots import Constraints, Placed, SlotSpec, fill
from shelfwise.retrieval.cohort import CohortRetriever
from shelfwise.rules.compile import LocalEffects, apply_local, localize
from shelfwise.rules.log import ShadowRecord
from shelfwise.rules.stage import RulesStage, ShadowJob
from shelfwise.settings import BusinessSignals
from shelfwise.stages.base import Batch, Explored

EXPLORATION_PRIORITY = -2**31  # below every rule's priority (rules: -1,000,000 to 1,000,000): rules claim first


class LocalSimilarity(Similarity):
    """``Similarity`` over one request's candidates (column j = item ``items[j]``)."""

    def __init__(self, sim: Similarity, items: np.ndarray) -> None:
        self.sim, self.items = sim, np.maximum(items, 0)

    def between(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.sim.between(self.items[a], self.items[b])


def _tops(score: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """(B, k) columns of each row's best k by score, ties broken by lower item index (the blend's own order)."""
    return np.lexsort((items, -score), axis=1)[:, :k]


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


class SlotStage:
    name = "slots"

    def __init__(self, items: ItemTable, business: BusinessScorer, signals: BusinessSignals,
                 unit: np.ndarray | None, version: str, rules: RulesStage | None,
                 fallbacks: dict[str, str] | None = None, cohort: CohortRetriever | None = None) -> None:
        """``unit``: unit-length item embeddings for the diversity similarity (ALS), or None. ``fallbacks``: the
        sources whose scores are no evidence about the shopper or item (a slot only they support is a fallback),
        each with the reason its slots give (``popular``, ``cohort``). ``cohort``: the cohort source (explanations
        name the cohort that answered)."""
        self.items, self.business, self.signals, self.unit = items, business, signals, unit
        self.version, self.rules, self.fallbacks, self.cohort = version, rules, fallbacks or {}, cohort
        self._sim: dict[str, Similarity] = {}
        self._bands: np.ndarray | None = None

    def invalidate(self) -> None:
        """The catalog changed (prices: the diversity price bands)."""
        self._sim.clear()
        self._bands = None

    def similarity(self, batch: Batch) -> Similarity:
        got = self._sim.get(batch.placement)
        if got is None:
            if self._bands is None:
                self._bands = price_bands(self.items.price, self.signals.price_band_ratio)
            got = self._sim[batch.placement] = Similarity.build(self.items, batch.conf.diversity, self.signals,
                                                                self.unit, self._bands)
        return got

    @staticmethod
    def _constraints(local: LocalEffects | None, explored: dict[int, Explored] | None,
                     items: np.ndarray) -> Constraints | None:
        """A request's slot constraints: its rules', and a reserved slot of the lowest priority per exploration
        slot (its new item's column, at its position)."""
        c = local.constraints if local is not None else None
        if not explored:
            return c
        slots = [SlotSpec("exploration", items == j, e.position, 1, EXPLORATION_PRIORITY, n, reason="exploration")
                 for n, (j, e) in enumerate(sorted(explored.items(), key=lambda x: x[1].position))]
        return Constraints(slots=slots) if c is None else replace(c, slots=c.slots + slots)

    def _slate(self, row: np.ndarray, items: np.ndarray, k: int, c: Constraints | None,
               pre: np.ndarray | None, sim: Similarity | None, lam: float, pool: int
               ) -> tuple[list[Placed], list[str]]:
        if lam >= 1 and (c is None or c.empty):
            top = _tops(row[None, :], items[None, :], k)[0]
            return [Placed(int(j), float(row[j]), "ranked") for j in top if np.isfinite(row[j])], []
        return fill(row, k, c, pre, sim, lam, pool)

    def run(self, batch: Batch) -> None:
        cand = batch.candidates
        assert cand is not None
        div = batch.conf.diversity
        lam = div.mmr_lambda
        sim = self.similarity(batch) if lam < 1 else None
        weights = {n: batch.conf.weights.get(n, 0.0) for n in cand.sources}
        local = batch.local or [None] * len(batch)
        pre = batch.pre or [None] * len(batch)
        explore = batch.explore or [None] * len(batch)
        cons = [self._constraints(lc, ec, items) for lc, ec, items in zip(local, explore, cand.items)]
        plain = lam >= 1 and not any(c is not None and not c.empty for c in cons)
        tops = _tops(cand.score, cand.items, batch.kmax) if plain else None
        names = list(cand.sources)
        contrib = np.stack([weights[n] * cand.sources[n] for n in names], axis=2) if names else None  # (B, M, S)
        answers = []
        for r, req in enumerate(batch.requests):
            items = cand.items[r]
            row_sim = LocalSimilarity(sim, items) if sim is not None else None
            if tops is not None:
                row = cand.score[r]
                slate = [Placed(j, float(row[j]), "ranked") for j in tops[r, :req.k].tolist() if np.isfinite(row[j])]
                conflicts: list[str] = []
            else:
                slate, conflicts = self._slate(cand.score[r], items, req.k, cons[r], pre[r], row_sim, lam,
                                               div.pool)
            if local[r] is not None:
                conflicts = local[r].notes + conflicts
            plan = batch.plans[r] if batch.plans is not None else None
            if plan is not None and plan.shadows and r in batch.base:
                for job in plan.shadows:
                    self._shadow(batch, r, job, slate, row_sim)
            stated = batch.preferred[r] if batch.preferred and batch.lift is not None and batch.lift[r] else None
            recs = self._slots(slate, items, contrib[r] if contrib is not None else None, names, stated, explore[r])
            note = self._explain(batch, r, slate, conflicts, recs) if req.explain else None
            answers.append(Answer(recs, batch.placement, note, self.version, batch.rulesets))
        batch.answers = answers

    def _slots(self, slate: list[Placed], items: np.ndarray, contrib: np.ndarray | None,
               names: list[str], stated: np.ndarray | None = None,
               explored: dict[int, Explored] | None = None) -> list[Recommendation]:
        """The answer's slots: each item with the sources that proposed it (strongest first; then "preferences" when
        it matches the shopper's stated preferences; "fallback" when nothing did), why it is there and whether
        anything about this shopper or item (a source's evidence, their stated preferences) went into it.
        ``stated``: the shopper's soft preference match per item when it lifted this request's scores. An
        exploration slot's item was proposed by its content match (evidence when the request had a profile and
        the item a vector), with the propensity of its draw."""
        ids = self.items.ids
        if not slate:
            return []
        cols = np.fromiter((p.item for p in slate), np.int64, len(slate))
        rows = items[cols]
        id_list = [x if type(x) is str else str(x) for x in ids[rows].tolist()]
        n_src = len(names)
        if contrib is not None and n_src:
            c = contrib[cols]  # (slots, sources)
            order = np.argsort(-c, axis=1, kind="stable")
            # each slot's proposing sources, strongest first, as one code (sources with a positive contribution
            # sort first): slots sharing a code share their source list, built once
            digits = np.where(np.take_along_axis(c, order, axis=1) > 0, order + 1, 0)
            codes = (digits * (n_src + 1) ** np.arange(n_src, dtype=np.int64)).sum(axis=1).tolist()
            firsts: dict[int, int] = {}
            for pos, code in enumerate(codes):
                firsts.setdefault(code, pos)
            kinds = {code: [names[s] for s in digits[pos] - 1 if s >= 0] for code, pos in firsts.items()}
        else:
            codes = [0] * len(slate)
            kinds = {0: []}
        # per source list: (sources, evidence, the reason and fallback of a ranked slot with no preference match)
        plain: dict[int, tuple[list[str], list[str], str, bool]] = {}
        for code, src in kinds.items():
            evidence = [s for s in src if s not in self.fallbacks]
            if evidence:
                reason = "evidence"
            else:
                reason = "cohort" if "cohort" in {self.fallbacks[s] for s in src} else "popular"
            plain[code] = (src, evidence, reason, not evidence)
        liked = (stated[rows] > 0).tolist() if stated is not None else None
        recs = []
        for pos, p in enumerate(slate):
            src, evidence, reason, fallback = plain[codes[pos]]
            if p.reason == "ranked" and not (liked and liked[pos]):  # the usual slot: as its sources say
                recs.append(Recommendation(id_list[pos], p.score, list(src) if src else ["fallback"], None, reason,
                                           fallback))
                continue
            src, evidence = list(src), list(evidence)
            if liked and liked[pos]:
                src.append("preferences")
                evidence.append("preferences")
            propensity = 1.0
            if p.reason == "exploration" and explored is not None:
                e = explored[int(rows[pos])]
                propensity = e.propensity
                if e.evidence:
                    src = ["content"] + [s for s in src if s != "content"]
                    evidence = ["content"] + [s for s in evidence if s != "content"]
            if p.reason in ("pinned", "reserved", "exploration"):
                reason = p.reason
            elif evidence:
                reason = "evidence" if evidence[0] != "preferences" else "preference"
            else:
                reason = "cohort" if "cohort" in {self.fallbacks[s] for s in src} else "popular"
            recs.append(Recommendation(id_list[pos], p.score, src or ["fallback"], reason=reason,
                                       fallback=not evidence, propensity=propensity))
        return recs

    # ---- shadow --------------------------------------------------------------------------------------
    def _shadow(self, batch: Batch, r: int, job: ShadowJob, live: list[Placed], sim: Similarity | None) -> None:
        cand = batch.candidates
        assert cand is not None and self.rules is not None
        req = batch.requests[r]
        div = batch.conf.diversity
        row = batch.base[r].copy()
        local = localize(job.eff, cand.items[r], job.world.items)
        pre = apply_local(row, local)
        c = self._constraints(local, batch.explore[r] if batch.explore else None, cand.items[r])
        slate, _ = self._slate(row, cand.items[r], req.k, c, pre, sim, div.mmr_lambda, div.pool)
        ids, price, margin = self.items.ids, self.items.price, self.items.margin
        best = float(batch.relevance_best[r]) if batch.relevance_best is not None else 0.0
        weights = batch.conf.weights

        def rows(sl: list[Placed]) -> list[list[Any]]:
            out = []
            for p in sl:
                j = int(cand.items[r, p.item])
                rel = sum(weights.get(n, 0.0) * float(s[r, p.item]) for n, s in cand.sources.items())
                rel = rel / best if best > 0 else 0.0
                out.append([str(ids[j]), round(float(rel), 6), _num(price[j]), _num(margin[j])])
            return out

        self.rules.record_shadow(ShadowRecord(
            ts=req.now or time.time(), request_id=req.request_id, shopper=req.shopper, placement=batch.placement,
            ruleset_id=job.ruleset_id, live_version=job.live_version, shadow_version=job.version,
            live=rows(live), shadow=rows(slate),
            pinned=[str(ids[cand.items[r, p.item]]) for p in slate if p.reason == "pinned"],
            blocked=[str(ids[cand.items[r, p.item]]) for p in live if not np.isfinite(row[p.item])]))

    # ---- explanation ---------------------------------------------------------------------------------
    @staticmethod
    def _stated(batch: Batch, r: int, j: int) -> dict[str, float]:
        """The preference boost of item j in row r, when the shopper's preferences lifted it."""
        pref = batch.preferred[r] if batch.preferred else None
        if pref is None or batch.lift is None or not batch.lift[r] or not pref[j]:
            return {}
        return {"preferences": round(float(batch.lift[r] * pref[j]), 6)}

    @staticmethod
    def _fatigue(batch: Batch, r: int, j: int) -> dict[str, float]:
        """The caps' penalty of item j in row r (impression fatigue, taken out of the cart), when it had one."""
        got = batch.fatigue[r] if batch.fatigue else None
        if got is None or batch.fatigue_scale is None or not batch.fatigue_scale[r]:
            return {}
        idx, val = got
        pos = int(np.searchsorted(idx, j))
        if pos >= len(idx) or idx[pos] != j:
            return {}
        return {"fatigue": round(-float(val[pos] * batch.fatigue_scale[r]), 6)}

    def _explain(self, batch: Batch, r: int, slate: list[Placed], conflicts: list[str],
                 recs: list[Recommendation]) -> dict[str, Any]:
        cand = batch.candidates
        assert cand is not None
        conf = batch.conf
        req = batch.requests[r]
        plan = batch.plans[r] if batch.plans is not None else None
        best = float(batch.relevance_best[r]) if batch.relevance_best is not None else 0.0
        for pos, (p, rec) in enumerate(zip(slate, recs)):
            j = int(cand.items[r, p.item])
            rel = sum(conf.weights.get(n, 0.0) * float(s[r, p.item]) for n, s in cand.sources.items())
            if not conf.score.relevance_only:  # the business score uses relevance scaled to the row's best
                rel = rel / best if best > 0 else 0.0
            why = {"pinned": f"pinned by {p.rule}", "reserved": f"reserved slot of {p.rule}"}.get(
                p.reason, "ranked by score" + (" with diversity" if conf.diversity.mmr_lambda < 1 else ""))
            if p.reason == "exploration" and batch.explore and batch.explore[r]:
                e = batch.explore[r][j]
                why = (f"exploration slot for a new item: content match {e.match:.3f}" if e.evidence else
                       "exploration slot for a new item: no content match (no profile or vector)") + \
                    f", drawn with probability {e.propensity:.3f}"
            rec.explanation = {
                "position": pos + 1,
                "reason": why,
                "score": round(p.score, 6),
                "components": (self.business.explain(j, conf.score, req.now, rel) | self._stated(batch, r, j)
                               | self._fatigue(batch, r, j)),
                "rules": plan.world.explain(plan.sig, j) if plan is not None else [],
                "diversity_penalty": round(p.penalty, 6),
            }
        out: dict[str, Any] = {"conflicts": conflicts, "score_weights": conf.score.model_dump(),
                               "mmr_lambda": conf.diversity.mmr_lambda}
        if self.rules is not None:
            out["rulesets"] = batch.rulesets
        capped = batch.capped[r] if batch.capped else None
        if capped:  # not shown: the next eligible items took their slots
            out["capped"] = [{"item_id": x, "reason": why} for x, why in sorted(capped.items())[:100]]
            out["capped_total"] = len(capped)
        cohort = self.cohort.describe(batch.queries[r]) if self.cohort is not None else None
        if cohort is not None:
            out["cohort"] = cohort
        return out
