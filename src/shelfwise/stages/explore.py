"""Exploration slots for new items (between the rules plan and the candidates).

A placement's ``explore`` share of its slots goes to *new* items: younger than ``models.explore.max_age_days``
(``ItemTable.born``: the catalog's ``created_at``, else when Shelfwise first saw the item) and shown fewer than
``max_impressions`` times (``rules.log.ImpressionCounts``: in memory, kept by the exposure log's writer), so they
gather feedback before any model learns them. Per request, as the experiments' item bandit does it
(``experiments.bandits``): how many slots explore (``k × share``, the fraction by a coin) and where (uniform
positions); which new items, drawn by content match — the cosine of their content vectors with the content
source's profile of the request (the page's or cart's items, else the shopper's recent ones), a softmax at
``temperature`` times the share of the item's impression budget left, so slots spread over the new items —
each with the exact probability of its draw: its propensity, logged with the exposure for the ranker's IPW.

Rules win: only items the request may show are drawn (in stock, available, not excluded, within the category
filter, not dropped by a rule); drawn items join the candidates (``batch.extra``), so the later stages score them
and apply the rules' score effects like any other, and the slot stage places each in its position as a reserved
slot of the lowest priority (a pin or a rule's slot there moves it to the next free position; a cap or a drop
leaves the position to the ranked items; an item already placed is not shown twice).

The pool of new items is rebuilt when the catalog, the content vectors or the counts change (counts at most once
a second) and each minute, never per request: without new items a request costs a comparison.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from shelfwise.experiments.bandits import explore_count, explore_positions, weighted_draw
from shelfwise.items import ItemTable
from shelfwise.request import Exclusions, Query, RecRequest
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.rules.log import ImpressionCounts
from shelfwise.settings import ExploreSettings
from shelfwise.stages.base import Batch, Explored


@dataclass
class Pool:
    """The new items a request may explore, with what the draw needs."""

    items: np.ndarray  # int64 item indices
    room: np.ndarray  # (P,) share of each item's impression budget left, in (0, 1]
    vectors: np.ndarray | None  # (P, d) unit content vectors (zero rows: not encoded yet); None: no content source
    encoded: np.ndarray  # (P,) bool: has a content vector
    key: tuple
    built: float  # monotonic time
    waiting: bool = False  # some new items' impressions were not counted yet (they join once they are)


def _empty_pool(key: tuple, waiting: bool = False) -> Pool:
    return Pool(np.zeros(0, np.int64), np.zeros(0), None, np.zeros(0, bool), key, time.monotonic(), waiting)


class ExploreStage:
    name = "explore"

    def __init__(self, items: ItemTable, settings: ExploreSettings, content: ContentRetriever | None,
                 counts: ImpressionCounts | None) -> None:
        """``counts``: impressions from the exposure log (None: not logged, so only the age limits exploration)."""
        self.items, self.settings, self.content, self.counts = items, settings, content, counts
        born = items.born()
        known = np.flatnonzero(np.isfinite(born))
        self._order = known[np.argsort(-born[known], kind="stable")]  # newest first (the table's rows never move)
        self._neg_born = -born[self._order]  # ascending
        self._pool = _empty_pool(())
        self._watched: tuple[int, int] | None = None  # (minute, young items) last handed to counts.watch
        self._rng = np.random.default_rng(settings.seed)  # requests without an id (offline calls) share it

    def young(self, now: float) -> np.ndarray:
        """Items younger than ``max_age_days`` at ``now``, newest first."""
        cutoff = now - self.settings.max_age_days * 86400.0
        return self._order[:int(np.searchsorted(self._neg_born, -cutoff, side="right"))]

    def pool(self, now: float) -> Pool:
        content = self.content
        minute = int(now // 60)
        counted = self.counts.version if self.counts is not None else 0
        key = (minute, self.items.version, id(content.vectors) if content is not None else 0)
        got = self._pool
        if got.key[:3] == key and (got.key[3] == counted or not got.waiting and time.monotonic() - got.built < 1.0):
            return got
        young = self.young(now)
        young = young[~self.items.unservable[young]]
        if not len(young):
            self._pool = _empty_pool(key + (counted,))
            return self._pool
        ids = [str(x) for x in self.items.ids[young]]
        if self.counts is None:
            shown = np.zeros(len(young))
        else:
            if self._watched != (minute, len(young)):  # new items, or a minute passed: still wanted
                self._watched = (minute, len(young))
                self.counts.watch(ids)
            counted = self.counts.version
            shown = np.array(self.counts.get(ids), np.float64)
        limit = self.settings.max_impressions
        keep = (shown >= 0) & (shown < limit)  # -1: not counted yet, so not known to be few
        items, room, waiting = young[keep], 1.0 - shown[keep] / limit, bool((shown < 0).any())
        vectors, encoded = None, np.zeros(len(items), bool)
        if content is not None:
            space = content.vectors.vectors
            vectors = np.zeros((len(items), space.shape[1]), np.float32)
            inside = items < len(space)
            vectors[inside] = space[items[inside]]
            norm = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.divide(vectors, norm, out=np.zeros_like(vectors), where=norm > 0)
            encoded = norm[:, 0] > 0
        self._pool = Pool(items.astype(np.int64), room, vectors, encoded, key + (counted,), time.monotonic(),
                          waiting)
        return self._pool

    def rng(self, req: RecRequest) -> np.random.Generator:
        """The request's own generator: seeded by the setting's seed and its request id (the same id draws the
        same slots), else the stage's."""
        if not req.request_id:
            return self._rng
        h = hashlib.blake2b(req.request_id.encode(), digest_size=8).digest()
        return np.random.default_rng([self.settings.seed & 0xFFFFFFFF, int.from_bytes(h, "little")])

    @staticmethod
    def showable(items: np.ndarray, ex: Exclusions, r: int) -> np.ndarray:
        """Which of ``items`` (servable: the pool is) request ``r`` may show: not excluded, within its category
        filter, not dropped by its rules."""
        ok = np.ones(len(items), bool) if not len(ex.rows[r]) else ~np.isin(items, ex.rows[r])
        if ex.allowed[r] is not None:
            ok &= ex.allowed[r][items]
        if ex.dropped[r] is not None:
            ok &= ~ex.dropped[r][items]
        return ok

    def profiles(self, queries: list[Query]) -> np.ndarray | None:
        """(B, d) unit content profiles of the requests (zero rows: no evidence), None without a content source."""
        if self.content is None:
            return None
        space = self.content.vectors.vectors
        return np.stack([self.content.profile(space, q) for q in queries]) if queries else None

    def run(self, batch: Batch) -> None:
        share = batch.conf.explore
        if share <= 0 or not self.settings.enabled:
            return
        pool = self.pool(max((r.now for r in batch.requests), default=0.0) or time.time())
        if not len(pool.items):
            return
        todo = []  # (row, its generator, slots to explore)
        for r, req in enumerate(batch.requests):
            rng = self.rng(req)
            n = explore_count(req.k, share, rng)
            if n:
                todo.append((r, rng, n))
        if not todo:
            return
        ex = batch.exclusions
        assert ex is not None
        ok = np.stack([self.showable(pool.items, ex, r) for r, _, _ in todo])
        match = np.zeros(ok.shape, np.float32)
        profiled = np.zeros(len(todo), bool)
        prof = self.profiles([batch.queries[r] for r, _, _ in todo]) if pool.vectors is not None else None
        if prof is not None and pool.vectors is not None:
            match = prof @ pool.vectors.T
            profiled = np.abs(prof).sum(axis=1) > 0
        masked = np.where(ok, match, -np.inf)
        best = masked.max(axis=1, keepdims=True, initial=-np.inf)
        weight = np.exp((masked - np.where(np.isfinite(best), best, 0.0)) / self.settings.temperature) * pool.room
        if batch.extra is None:
            batch.extra = [np.zeros(0, np.int64)] * len(batch)
        batch.explore = [None] * len(batch)
        for s, (r, rng, n) in enumerate(todo):
            picks = weighted_draw(weight[s], n, rng)
            if not picks:
                continue
            positions = explore_positions(batch.requests[r].k, len(picks), rng)
            batch.explore[r] = {int(pool.items[j]): Explored(at, p, float(match[s, j]),
                                                             bool(profiled[s] and pool.encoded[j]))
                                for (j, p), at in zip(picks, positions)}
            batch.extra[r] = np.union1d(batch.extra[r], pool.items[[j for j, _ in picks]])
