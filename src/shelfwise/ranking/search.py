"""The search ranker: a second LambdaMART booster that orders the shop's search results for a shopper, trained on
logged searches.

A ``search`` event that carries the results the shop showed (``properties.results``, best first:
``EventStore.searches``) is a training request once the shopper acted on it: the results they viewed, carted or
bought in the session after it (the next ``label_horizon`` interactions on its results, within the session gap) are
its labels, graded as the main ranker's (purchase 3 > cart 2 > view 1); the other results are 0. Its features are
the main ranker's (``compute_features``: the sources' scores of each result, item statistics, the shopper's
category / brand / price affinity from their history before the search, embeddings, session) plus the search
features (``FeatureSpec.search``: the shop's position of the result, the query's text match of its title /
category / brand, its popularity within the list, the shopper's price band and brand share within the category,
and how often logged searches showed it and how often their shoppers then acted on it: ``SearchStats``).

Same time split as the main ranker (``labels.split_history``): only searches after the cut are requests, their
candidates and features come from the pipeline fit on the events before it (through the API's own stages: a
``search`` rerank request with the logged list and query), so neither the sources nor the item statistics have
seen a labelled interaction; the search statistics of training rows count the searches before the cut, the served
ranker's every logged search. Logs without real time (``split="last"``) train none. Served by the rank stage for
``ranker.search_placements`` (``stages/rank.py``), every item of the list; the shop-order stage then blends its order
with the shop's by ``personalization_impact`` alone (the popularity and query blends are its features here).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import numpy as np

from shelfwise.domain import Item
from shelfwise.items import ItemTable
from shelfwise.ranking.features import FeatureContext, FeatureSpec, ItemStats, SearchStats
from shelfwise.ranking.labels import CandidateSource, HistorySplit, Point, build_rows, grade_of, point_at
from shelfwise.ranking.model import SEARCH_RANKER, Ranker
from shelfwise.ranking.query import QueryMatcher
from shelfwise.ranking.train import split_rows
from shelfwise.retrieval.base import Retriever, TrainData
from shelfwise.rules.compile import ItemFacts
from shelfwise.settings import ModelSettings
from shelfwise.stores.protocols import EventLog, LoggedSearch

log_ = logging.getLogger(__name__)


def search_points(searches: Sequence[LoggedSearch], log: EventLog, since: float, history_length: int = 50,
                  session_gap_s: float = 1800.0, horizon: int = 5) -> list[Point]:
    """Training requests of the logged searches at or after ``since`` whose shopper acted on a result (``log``:
    the event log, grouped by shopper in time order): each one's history is what the shopper did before it, its
    labels the results they interacted with next (see the module docstring)."""
    if not len(log):
        return []
    change = np.flatnonzero(log.shopper[1:] != log.shopper[:-1]) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(log)]
    block = {str(log.shopper[a]): (int(a), int(b)) for a, b in zip(starts, ends)}
    grades = grade_of(log.kind)
    out = []
    for s in searches:
        if s.ts < since or s.shopper not in block:
            continue
        lo, hi = block[s.shopper]
        i = lo + int(np.searchsorted(log.ts[lo:hi], s.ts, side="left"))  # its past: what happened before it
        results = set(s.results)
        labels: dict[str, int] = {}
        last, taken = s.ts, 0
        for j in range(i, hi):
            if log.ts[j] - last > session_gap_s:
                break
            last = log.ts[j]
            item = str(log.item[j])
            if grades[j] == 0 or item not in results:
                continue
            labels[item] = max(labels.get(item, 0), int(grades[j]))
            taken += 1
            if taken >= horizon:
                break
        if not labels:
            continue
        p = point_at(log, lo, i, history_length, ts=s.ts)
        p.labels, p.given, p.query = labels, s.results, s.query
        out.append(p)
    return out


def search_stats(searches: Sequence[LoggedSearch], log: EventLog, items: ItemTable, session_gap_s: float = 1800.0,
                 horizon: int = 5) -> SearchStats:
    """``SearchStats`` of ``items`` from logged searches and the event log holding what the shoppers did next."""
    shown = np.zeros(len(items), np.float32)
    picked = np.zeros(len(items), np.float32)
    index = items.index
    for s in searches:
        rows = [j for j in (index.get(i) for i in s.results) if j is not None]
        shown[rows] += 1
    for p in search_points(searches, log, -np.inf, 0, session_gap_s, horizon):
        rows = [j for j in (index.get(i) for i in p.labels) if j is not None]
        picked[rows] += 1
    return SearchStats(shown, picked)


def train_search_ranker(source: CandidateSource, items: ItemTable, retrievers: dict[str, Retriever],
                        prefix_data: TrainData, final_data: TrainData, log: EventLog, catalog: dict[str, Item],
                        settings: ModelSettings, split: HistorySplit, searches: Sequence[LoggedSearch],
                        progress: Callable[[str], None] | None = None) -> Ranker | None:
    """The search ranker of a pipeline fit on ``log``, from ``source``, the same pipeline fit on ``split.prefix``
    (its items, retrievers and training data beside it), and the logged searches. None when search placements
    are off, the split has no time cut, or fewer than ``min_requests`` searches after the cut were acted on."""
    rs = settings.ranker
    placements = [p for p in rs.search_placements if p in settings.placements
                  and settings.placements[p].kind == "rerank"]
    if not placements or not searches or not np.isfinite(split.cut):
        return None
    t0 = time.perf_counter()
    gap = settings.covisit.session_gap_minutes * 60.0
    points = search_points(searches, log, split.cut, settings.history_length, gap, rs.label_horizon)
    if len(points) > rs.max_requests:
        keep = np.sort(np.random.default_rng(rs.seed).choice(len(points), rs.max_requests, replace=False))
        points = [points[i] for i in keep]
    if len(points) < rs.min_requests:
        log_.info("search ranker not trained: %d logged searches acted on after the cut (< %d)", len(points),
                  rs.min_requests)
        return None
    if progress:
        progress("search ranker rows")
    placement = placements[0]
    spec = FeatureSpec.from_sources(settings.placements[placement].weights, retrievers, items, gap, search=True)
    facts = ItemFacts.build(items, catalog)  # titles for the query match, as the serving rules' catalog facts
    matcher = QueryMatcher(items, lambda _: facts)
    before = [s for s in searches if s.ts < split.cut]  # what the sources' prefix knew of the searches
    ctx = FeatureContext.build(items, ItemStats.fit(prefix_data, catalog), spec, retrievers, matcher,
                               search_stats(before, split.prefix, items, gap, rs.label_horizon))
    n = max(len(p.given or ()) for p in points)
    rows = build_rows(source, ctx, points, placement, n)
    own = rs.for_search().model_copy(update={"placements": placements})
    ranker = Ranker(own, spec, name=SEARCH_RANKER)
    if len(rows.group) < rs.min_requests:
        log_.info("search ranker not trained: %d searches with a labelled result among the known items (< %d)",
                  len(rows.group), rs.min_requests)
        return None
    train_rows, valid_rows = split_rows(rows, own.valid_fraction, "time", rs.seed)
    if progress:
        progress("search ranker booster")
    ranker.fit(train_rows, valid_rows)
    ranker.stats = ItemStats.fit(final_data, catalog)
    ranker.searches = search_stats(searches, log, final_data.items, gap, rs.label_horizon)
    ranker.report.update({"cut": split.cut, "searches": len(searches), "points": len(points),
                          "points_with_positive": rows.with_positive, "placements": placements,
                          "seconds": round(time.perf_counter() - t0, 1)})
    return ranker
