"""``fit_ranker``: sources fit on the past, rows labelled by the future, a LambdaMART booster on top.

See ``labels.py`` for the time-split scheme. Used by ``training.fit_pipeline`` when ``models.ranker.enabled``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from shelfwise.domain import Item
from shelfwise.ranking.features import FeatureSpec, ItemStats
from shelfwise.ranking.labels import HistorySplit, RankRows, auto_split, build_rows, split_history
from shelfwise.ranking.model import Ranker
from shelfwise.stores.protocols import EventLog

log_ = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from shelfwise.retrieval.base import TrainData
    from shelfwise.settings import ModelSettings
    from shelfwise.training import Fitted


@dataclass
class _ListCatalog:
    items: list[Item]

    def all(self) -> list[Item]:
        return self.items


def without_ranker(settings: "ModelSettings") -> "ModelSettings":
    return settings.model_copy(update={"ranker": settings.ranker.model_copy(update={"enabled": False})})


def resolve_split(settings: "ModelSettings", log: EventLog) -> "ModelSettings":
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


def fit_ranker(log: EventLog, items: dict[str, Item], settings: "ModelSettings", final_data: "TrainData",
               sources: tuple[str, ...], prefix: "Fitted | None" = None,
               progress: Callable[[str], None] | None = None, split: HistorySplit | None = None
               ) -> Ranker | None:
    """Train the ranker for a pipeline fit on ``log`` (whose training data is ``final_data``).

    ``prefix``: sources already fit on the ranker's prefix (saves a refit when the caller has them, e.g. the
    leave-one-out benchmark which tunes blend weights on the same validation stage); ``split``: the
    ``split_history`` of ``log`` the prefix was cut by, when the caller made it. Returns None (the pipeline
    serves the blend order) when fewer than ``min_requests`` labelled requests have a positive candidate.
    """
    from shelfwise.training import fit_pipeline

    settings = resolve_split(settings, log)
    rs = settings.ranker
    t0, cpu0 = time.perf_counter(), time.process_time()
    seconds: dict[str, float] = {}
    gap = settings.covisit.session_gap_minutes * 60.0
    if split is None:
        split = split_history(log, rs, settings.history_length, gap)
    exposure_points = 0
    if rs.exposure_log and rs.split == "time" and np.isfinite(split.cut):  # logged impressions, IPW by position
        from shelfwise.ranking.exposures import exposure_points as to_points, read_exposures

        logged = to_points(read_exposures(rs.exposure_log, rs.placements[0], since=split.cut), log,
                           settings.history_length, gap, rs.label_horizon)
        split.points += logged
        exposure_points = len(logged)
    seconds["split"] = time.perf_counter() - t0
    if prefix is None:
        if progress:
            progress("ranker sources (prefix)")
        t = time.perf_counter()
        prefix = fit_pipeline(split.prefix, _ListCatalog(list(items.values())), without_ranker(settings), sources)
        seconds["prefix_sources"] = time.perf_counter() - t
    placement = rs.placements[0]
    spec = FeatureSpec.from_pipeline(prefix.pipeline, placement)
    t = time.perf_counter()
    if progress:
        progress("ranker rows")
    rows = build_rows(prefix.pipeline, ItemStats.fit(prefix.data, items), spec, split.points, placement,
                      rs.candidates, ipw_eta=rs.ipw_eta, ipw_max=rs.ipw_max_weight)
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
    ranker.stats = ItemStats.fit(final_data, items)
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
