"""Stage 1: requests in the storefront's terms → model indices (``Query``) and what may not be shown
(``Exclusions``: unservable items, the page's and cart's own items, excluded ids, already bought or seen items as
the placement says, a category filter, the request's filters on catalog fields, the hard fields of the shopper's
preferences and, for a rerank placement, every item not on the shop's list), and how well each item matches their
soft preferences (``Batch.preferred``, boosted by the merchandise stage). What a request's anchors are follows the
placement's kind: a product page's item (``item``), the cart's items (``cart``), none (``homepage``, ``rerank``)."""

from __future__ import annotations

import numpy as np

from shelfwise.domain import EventType
from shelfwise.items import ItemTable, category_path
from shelfwise.request import Exclusions, Query, RecRequest, Visit
from shelfwise.rules.preferences import PreferenceMasks
from shelfwise.stages.base import Batch, Given


class ResolveStage:
    name = "resolve"

    def __init__(self, items: ItemTable, shopper_index: dict[str, int], trained_until: float,
                 preferences: PreferenceMasks | None = None) -> None:
        self.items, self.shopper_index, self.trained_until = items, shopper_index, trained_until
        self.preferences = preferences

    def query(self, req: RecRequest, kind: str = "homepage") -> Query:
        idx = self.items.index
        hist, kinds, ts = [], [], []
        if req.state is not None:
            for it in req.state.recent:
                j = idx.get(it.item_id)
                if j is not None:
                    hist.append(j)
                    kinds.append(it.kind)
                    ts.append(it.ts)
        anchors: list[int] = []
        if kind == "item" and req.item_id is not None:
            anchors = [idx[req.item_id]] if req.item_id in idx else []
        elif kind == "cart":
            anchors = [idx[c] for c in req.cart if c in idx]
        user = self.shopper_index.get(req.shopper, -1) if req.shopper else -1
        fresh = bool(ts) and max(ts) > self.trained_until
        visit = Visit((req.device or "").casefold(), req.placement.casefold(),
                      category_path(req.category)[0].casefold() if req.category else "",
                      tuple(s.casefold() for s in req.segments))
        return Query(user=user, history=np.array(hist, np.int32), history_kind=np.array(kinds, np.int8),
                     history_ts=np.array(ts, np.float64), anchors=np.array(anchors, np.int32), fresh=fresh,
                     now=req.now, visit=visit)

    def excluded(self, req: RecRequest, q: Query, exclude_history: str) -> np.ndarray:
        """Item indices this request must not show (besides the catalog's unservable items)."""
        idx = self.items.index
        drop = [idx[x] for x in req.exclude if x in idx]
        drop += q.anchors.tolist()
        if req.item_id in idx:
            drop.append(idx[req.item_id])
        drop += [idx[c] for c in req.cart if c in idx]
        if exclude_history == "all":
            drop += q.history.tolist()
        elif exclude_history == "purchased" and req.state is not None:
            drop += [idx[p] for p in req.state.purchased if p in idx]
            drop += q.history[q.history_kind == EventType.purchase_completed].tolist()
        return np.array(sorted(set(drop)), np.int64)

    def allowed(self, req: RecRequest, given: Given | None = None) -> np.ndarray | None:
        """The only items a request may show (None: no filter): its category, its filters, the shop's list."""
        out = self.items.category_mask(req.category) if req.category else None
        if req.filters and self.preferences is not None:
            keep = self.preferences.filtered(req.filters, req.now)
            out = keep if out is None else out & keep
        if req.given is not None:
            keep = np.zeros(len(self.items), bool)
            keep[(given or self.given(req)).items] = True
            out = keep if out is None else out & keep
        return out

    def given(self, req: RecRequest) -> Given:
        idx = self.items.index
        ids = req.given or ()
        pos = [p for p, x in enumerate(ids) if x in idx]
        return Given(np.array([idx[ids[p]] for p in pos], np.int64), np.array(pos, np.float32), len(ids))

    def run(self, batch: Batch) -> None:
        kind = batch.conf.kind
        batch.queries = [self.query(r, kind) for r in batch.requests]
        rows = [self.excluded(r, q, batch.conf.exclude_history) for r, q in zip(batch.requests, batch.queries)]
        given = batch.given = [self.given(r) for r in batch.requests] if kind == "rerank" else None
        allowed = [self.allowed(r, given[i] if given else None) if r.category or r.filters or r.given is not None
                   else None for i, r in enumerate(batch.requests)]
        batch.preferred = [None] * len(batch)
        for r, req in enumerate(batch.requests):
            if req.preferences is None or self.preferences is None:
                continue
            hard = self.preferences.hard(req.preferences.preferences)
            if hard is not None:
                allowed[r] = hard if allowed[r] is None else allowed[r] & hard
            batch.preferred[r] = self.preferences.soft(req.preferences.preferences)
        batch.exclusions = Exclusions(self.items.unservable, rows, allowed)
