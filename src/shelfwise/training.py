"""Train every candidate source from the event store and publish a new model version."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from shelfwise.pipeline import Pipeline
from shelfwise.retrieval import SOURCES, TrainData, build_retrievers
from shelfwise.settings import ModelSettings
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import Catalog, EventLog, EventStore


@dataclass
class TrainReport:
    version: str
    events: int
    shoppers: int
    items: int
    seconds: dict[str, float]


@dataclass
class Fitted:
    pipeline: Pipeline
    data: TrainData
    seconds: dict[str, float]


def fit_pipeline(log: EventLog, catalog: Catalog, settings: ModelSettings, sources: tuple[str, ...] = SOURCES,
                 progress: Callable[[str], None] | None = None) -> Fitted:
    """Fit the named sources on an event log; the pipeline is ready to answer (not saved).

    With the learned ranker enabled, the sources are first fit on the ranker's prefix (the log before its label
    cut, see ``ranking/labels.py``), the ranker learns from their candidates, and then each source is fit on the
    whole log, starting from its prefix fit where it can (``Retriever.warm_start``: the sequence model then
    needs a few epochs instead of a full training).
    """
    items = {it.id: it for it in catalog.all()}
    data = TrainData.from_log(log, items, settings.event_weights,
                              session_gap_s=settings.covisit.session_gap_minutes * 60)
    retrievers = build_retrievers(settings, sources)
    timings: dict[str, float] = {}
    ranker, prefix = None, None
    if settings.ranker.enabled and len(log):  # learning to rank over the sources' candidates (ranking/)
        from shelfwise.ranking.labels import split_history
        from shelfwise.ranking.train import fit_ranker, resolve_split, without_ranker

        t0 = time.perf_counter()
        settings = resolve_split(settings, log)
        split = split_history(log, settings.ranker, settings.history_length,
                              settings.covisit.session_gap_minutes * 60.0)
        if progress:
            progress("ranker sources (prefix)")
        prefix = fit_pipeline(split.prefix, catalog, without_ranker(settings), tuple(retrievers))
        ranker = fit_ranker(log, items, settings, data, tuple(retrievers), prefix=prefix, progress=progress,
                            split=split)
        timings["ranker"] = time.perf_counter() - t0
    for name, r in retrievers.items():
        if progress:
            progress(name)
        t0 = time.perf_counter()
        if prefix is not None:
            r.warm_start(prefix.pipeline.retrievers[name], prefix.data.items)
        r.fit(data)
        timings[name] = time.perf_counter() - t0
    pipe = Pipeline(settings, data.items, retrievers, data.shopper_index, trained_until=data.now)
    pipe.ranker = ranker
    return Fitted(pipe, data, timings)


SCAN_FILE = "scanned_at.json"  # when training read the event store: shoppers erased later lose their rows at load


def train(store: EventStore, catalog: Catalog, models: DirectoryModelStore, settings: ModelSettings,
          progress: Callable[[str], None] | None = None,
          consenting: Callable[[Sequence[str]], set[str]] | None = None) -> TrainReport:
    """``consenting(shoppers)``: those whose personalisation consent is granted now; the others' events (kept
    from before they withdrew, e.g. with ``privacy.erase_on_withdrawal`` off) are left out of training."""
    scanned_at = time.time()
    log = store.scan()
    if consenting is not None and len(log):
        shoppers = list(dict.fromkeys(log.shopper.tolist()))
        allowed = consenting(shoppers)
        if len(allowed) < len(shoppers):
            log = log.take(np.fromiter((s in allowed for s in log.shopper), bool, len(log)))
    if len(log) == 0:
        raise ValueError("the event store has no item interactions to train on; import or send events first")
    fitted = fit_pipeline(log, catalog, settings, progress=progress)
    version, path = models.new_version()
    fitted.pipeline.version = version
    fitted.pipeline.save(path)
    (path / SCAN_FILE).write_text(json.dumps({"scanned_at": scanned_at}))
    models.publish(version)
    models.prune()
    return TrainReport(version, len(log), fitted.data.n_users, fitted.data.n_items, fitted.seconds)
