"""``train_ranker``: rows labelled by the future from a pipeline fit on the past, a LambdaMART booster on top.

See ``labels.py`` for the time-split scheme. ``training.fit_pipeline`` orders the whole fit (sources on the prefix
→ this → sources on everything) when ``models.ranker.enabled``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from shelfwise.domain import Item
from shelfwise.items import ItemTable
from shelfwise.ranking.features import FeatureContext, FeatureSpec, ItemStats
from shelfwise.ranking.labels import CandidateSource, HistorySplit, RankRows, auto_split, build_rows
from shelfwise.ranking.model import Ranker
from shelfwise.retrieval.base import Retriever, TrainData
from shelfwise.settings import ModelSettings
from shelfwise.stores.protocols import EventLog

log_ = logging.getLogger(__name__)


def without_ranker(settings: ModelSettings) -> ModelSettings:
    return settings.model_copy(update={"ranker": settings.ranker.model_copy(update={"enabled": False})})


def resolve_split(settings: ModelSettings, log: EventLog) -> ModelSettings:
    """``settings`` with ``ranker.split="auto"`` made concrete for this log (``labels.auto_split``)."""
    if settings.ranker.split != "auto":
        return settings
    split = auto_split(log)
    return settings.model_copy(update={"ranker": settings.ranker.model_copy(update={"split": split})})


def split_rows(rows: RankRows, valid_fraction: float, by: str, seed: int = 0) -> tuple[RankRows, RankRows]:
    """Early-stopping split: the latest requests by time (``by="time"``) or a random share of shoppers."""
    g = len(rows.group)
    if g < 4 or valid_fraction <= 0:
        return rows, rows.take_groups(np.zeros(g, bool))
    if by == "time":
        cut = np.quantile(rows.ts, 1.0 - valid_fraction, method="higher")
        valid = rows.ts >= cut
        if valid.all() or not valid.any():
            valid = np.arange(g) >= int(g * (1 - valid_fraction))
    else:
        shoppers = np.unique(rows.shopper.astype(str))
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(shoppers, max(1, int(len(shoppers) * valid_fraction)), replace=False).tolist())
        valid = np.array([s in chosen for s in rows.shopper.astype(str)])
    return rows.take_groups(~valid), rows.take_groups(valid)


def train_ranker(source: CandidateSource, items: ItemTable, retrievers: dict[str, Retriever], prefix_data: TrainData,
                 final_data: TrainData, log: EventLog, catalog: dict[str, Item], settings: ModelSettings,
                 split: HistorySplit, progress: Callable[[str], None] | None = None) -> Ranker | None:
    """Train the ranker of a pipeline fit on ``log`` (its training data ``final_data``) from ``source``, the same
    pipeline fit on ``split.prefix`` (items, retrievers and data of that fit given beside it).

    Returns None (the pipeline serves the blend order) when fewer than ``min_requests`` labelled requests have a
    positive candidate.
    """
    rs = settings.ranker
    t0, cpu0 = time.perf_counter(), time.process_time()
    seconds: dict[str, float] = {}
    gap = settings.covisit.session_gap_minutes * 60.0
    exposure_points = 0
    if rs.exposure_log and rs.split == "time" and np.isfinite(split.cut):  # logged impressions, IPW by position
        from shelfwise.ranking.exposures import exposure_points as to_points, read_exposures

        logged = to_points(read_exposures(rs.exposure_log, rs.placements[0], since=split.cut), log,
                           settings.history_length, gap, rs.label_horizon)
        split.points += logged
        exposure_points = len(logged)
    placement = rs.placements[0]
    spec = FeatureSpec.from_sources(settings.placements[placement].weights, retrievers, items, gap)
    ctx = FeatureContext.build(items, ItemStats.fit(prefix_data, catalog), spec, retrievers)
    t = time.perf_counter()
    if progress:
        progress("ranker rows")
    rows = build_rows(source, ctx, split.points, placement, rs.candidates, ipw_eta=rs.ipw_eta,
                      ipw_max=rs.ipw_max_weight)
    seconds["rows"] = time.perf_counter() - t
    ranker = Ranker(rs, spec)
    if len(rows.group) < rs.min_requests:  # too little history to learn from: serve the blend order
        log_.warning("ranker not trained: %d labelled requests with a positive candidate (< %d)",
                     len(rows.group), rs.min_requests)
        return None
    train_rows, valid_rows = split_rows(rows, rs.valid_fraction, "time" if rs.split == "time" else "shopper",
                                        rs.seed)
    if progress:
        progress("ranker booster")
    ranker.fit(train_rows, valid_rows)
    # which points only early stopping saw (the registry's held-out slice, ``training.held_out``); not saved
    ranker.validation = (rs.split == "time", float(valid_rows.ts.min()) if len(valid_rows.group) else float("inf"),
                         set(valid_rows.shopper.astype(str).tolist()))
    ranker.stats = ItemStats.fit(final_data, catalog)
    seconds["total"] = time.perf_counter() - t0
    seconds["total_cpu"] = time.process_time() - cpu0  # all threads of the process
    report: dict[str, Any] = {"split": rs.split, "cut": split.cut, "points": len(split.points),
                              "exposure_points": exposure_points,
                              "points_with_positive": rows.with_positive,
                              "candidate_recall": round(rows.with_positive / max(len(split.points), 1), 4),
                              "prefix_events": len(split.prefix), "placement": placement,
                              "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    ranker.report.update(report)
    return ranker
