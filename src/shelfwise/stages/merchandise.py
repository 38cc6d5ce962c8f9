"""Merchandising around the candidates: which rules apply (before candidates are generated, so that pinned items,
reserved slots' items and rule filters shape them) and, after ranking, the business score and the rules' score
effects.

``RulesPlanStage`` (stage 2): each request's active rules (``RulesStage.plan``); what they drop (hard: block,
filter, margin floor "drop") becomes part of the request's exclusions, so sources only propose showable items;
pinned items and the most popular items eligible for reserved slots are handed to candidate generation.

``MerchandiseStage`` (stage 6): the placement's business score (``rerank.business``) over the candidates, the
shopper's stated preferences, the caps' penalties (``stages.caps``: impression fatigue, items taken out of the
cart, subtracted in units of the spread of the request's scores), then each request's rule multipliers / offsets
and drops, all gathered at the candidates' indices. Preferences lift a candidate by its share of the soft fields it
matches times ``preferences.boost`` times the spread of the request's scores (best minus worst): at 1, an item matching them all
ranks level with the best item matching none, however old evidence scored it. While the shopper is in a session
(an event within ``preferences.session_minutes``) the lift is ``session_boost`` instead: what they do now stays in
front, preferences break near ties. Rules come last: they are the shop's final word.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.rerank.business import BusinessScorer
from shelfwise.rerank.slots import SlotSpec
from shelfwise.rules.compile import Effects, apply_local, localize
from shelfwise.rules.stage import RulesStage
from shelfwise.settings import PreferenceSettings
from shelfwise.stages.base import Batch


class RulesPlanStage:
    name = "rules"

    def __init__(self, rules: RulesStage, items: ItemTable, popular: Callable[[np.ndarray], np.ndarray]) -> None:
        self.rules, self.items, self.popular = rules, items, popular
        self._hard: dict[int, tuple[Effects, np.ndarray | None]] = {}
        self._slot_items: dict[tuple[int, int, int], np.ndarray] = {}

    def hard_mask(self, eff: Effects) -> np.ndarray | None:
        """Items a signature's rules drop outright (cached with the effects)."""
        got = self._hard.get(id(eff))
        if got is None or got[0] is not eff:
            mask = None
            if eff.drop is not None and len(eff.drop):
                mask = np.zeros(len(self.items), bool)
                mask[eff.drop] = True
            if len(self._hard) > 1024:
                self._hard.clear()
            got = self._hard[id(eff)] = (eff, mask)
        return got[1]

    def slot_items(self, spec: SlotSpec, banned: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` most popular servable items eligible for a reserved slot (cached per catalog state)."""
        key = (id(spec.mask), id(banned), n)
        got = self._slot_items.get(key)
        if got is None:
            order = self.popular(banned)
            got = order[spec.mask[order]][:n]
            if len(self._slot_items) > 1024:
                self._slot_items.clear()
            self._slot_items[key] = got
        return got

    def run(self, batch: Batch) -> None:
        ex = batch.exclusions
        assert ex is not None
        plans = self.rules.plan(self.items, batch.requests, batch.placement)
        batch.plans = plans
        batch.rulesets = self.rules.label()
        if plans is None:
            return
        extra = []
        for r, plan in enumerate(plans):
            c = plan.eff.constraints
            ex.dropped[r] = self.hard_mask(plan.eff)
            need = [p.items for p in c.pins]
            need += [self.slot_items(s, ex.banned, s.count + batch.kmax) for s in c.slots]
            for job in plan.shadows:  # shadow answers are filled from the same candidates
                need += [p.items for p in job.eff.constraints.pins]
                need += [self.slot_items(s, ex.banned, s.count + batch.kmax) for s in job.eff.constraints.slots]
            extra.append(np.unique(np.concatenate(need)).astype(np.int64) if need else np.zeros(0, np.int64))
        batch.extra = extra


class MerchandiseStage:
    name = "merchandise"

    def __init__(self, business: BusinessScorer, preferences: PreferenceSettings | None = None) -> None:
        self.business, self.preferences = business, preferences or PreferenceSettings()

    def lift(self, batch: Batch) -> None:
        """Add each request's preference boost to its candidates' scores (in place); ``batch.lift`` records it."""
        cand = batch.candidates
        assert cand is not None
        batch.lift = np.zeros(len(batch), np.float32)
        s = self.preferences
        for r, pref in enumerate(batch.preferred):
            if pref is None:
                continue
            row = cand.score[r]
            finite = np.isfinite(row)
            match = np.where(finite & cand.valid[r], pref[np.maximum(cand.items[r], 0)], 0.0)
            if not match.any():
                continue
            spread = float(row[finite].max() - row[finite].min())
            q = batch.queries[r]
            now = batch.requests[r].now
            recent = len(q.history_ts) and float(q.history_ts.max()) >= now - s.session_minutes * 60.0
            batch.lift[r] = (s.session_boost if recent else s.boost) * (spread if spread > 0 else 1.0)
            row += (batch.lift[r] * match).astype(np.float32)

    @staticmethod
    def fatigue(batch: Batch) -> None:
        """Subtract each request's cap penalties (``stages.caps``: impression fatigue, items taken out of the cart)
        from its candidates' scores, in units of the spread of its scores; ``batch.fatigue_scale`` records it."""
        cand = batch.candidates
        assert cand is not None
        batch.fatigue_scale = np.zeros(len(batch), np.float32)
        for r, got in enumerate(batch.fatigue):
            if got is None:
                continue
            idx, val = got
            row, items = cand.score[r], cand.items[r]
            finite = np.isfinite(row)
            if not finite.any():
                continue
            pos = np.minimum(np.searchsorted(idx, items), len(idx) - 1)
            hit = (idx[pos] == items) & finite & (items >= 0)
            if not hit.any():
                continue
            spread = float(row[finite].max() - row[finite].min())
            scale = batch.fatigue_scale[r] = spread if spread > 0 else 1.0
            row[hit] -= (val[pos[hit]] * scale).astype(np.float32)

    def run(self, batch: Batch) -> None:
        cand = batch.candidates
        assert cand is not None
        w = batch.conf.score
        plans = batch.plans
        score = cand.score
        if any(r.explain for r in batch.requests) or (plans and any(p.shadows for p in plans)):
            batch.relevance_best = np.where(np.isfinite(score), score, 0.0).max(axis=1, initial=0.0)
        if not w.relevance_only:
            self.business.apply(score, cand.items, w, [r.now for r in batch.requests])
        if any(p is not None for p in batch.preferred):
            self.lift(batch)
        if any(f is not None for f in batch.fatigue):
            self.fatigue(batch)
        batch.pre = [None] * len(batch)
        batch.local = [None] * len(batch)
        if plans is None:
            return
        for r, plan in enumerate(plans):
            if plan.shadows:
                batch.base[r] = score[r].copy()
            if not plan.eff.noop:
                local = batch.local[r] = localize(plan.eff, cand.items[r], plan.world.items)
                batch.pre[r] = apply_local(score[r], local)
