"""Stage 1b: frequency caps, seen-item suppression and negative evidence (``rerank.caps``), right after resolve.

Each request's shopper state carries their impressions (``ShopperState.seen``, read with the state: no extra
round trip). Capped items — shown ``max_impressions`` times in the placement's window without a click, or shown on
another placement lately when ``seen_elsewhere_hours`` says so — join the request's exclusions, so every later
stage works without them: sources propose, exploration draws and popular fill take the next eligible items (a rail
is never emptier while servable items remain) and a pin of a capped item is named as a conflict. Penalties
(impression fatigue, items taken out of the cart) are handed to the merchandise stage, which subtracts them in
units of the request's score spread. ``explain=true`` lists the capped items and each slot's penalty.
"""

from __future__ import annotations

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.rerank.caps import cap_view
from shelfwise.settings import CapsSettings
from shelfwise.stages.base import Batch


class CapStage:
    name = "caps"

    def __init__(self, items: ItemTable, caps: CapsSettings) -> None:
        self.items, self.caps = items, caps

    def run(self, batch: Batch) -> None:
        n = len(batch)
        batch.capped, batch.fatigue = [None] * n, [None] * n
        conf = self.caps.placements.get(batch.placement)
        if conf is None and self.caps.removed_penalty <= 0:
            return
        ex = batch.exclusions
        assert ex is not None
        idx = self.items.index
        for r, req in enumerate(batch.requests):
            st = req.state
            if st is None or (not st.seen and not st.recent):
                continue
            now = req.now or batch.queries[r].now
            view = cap_view(st.seen, st.recent, now, batch.placement, conf, self.caps)
            if not view:
                continue
            if view.capped:
                batch.capped[r] = view.capped
                rows = [idx[x] for x in view.capped if x in idx]
                if rows:
                    ex.rows[r] = np.union1d(ex.rows[r], np.array(rows, np.int64))
            pen = sorted((idx[x], v) for x, v in view.penalty.items() if x in idx and v > 0)
            if pen:
                batch.fatigue[r] = (np.array([j for j, _ in pen], np.int64), np.array([v for _, v in pen], np.float32))
