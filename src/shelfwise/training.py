"""Training, in one place: fit every candidate source (and the learned ranker) and publish a new model version.

The order (``fit_pipeline``), with the ranker enabled:

1. cut the log (``ranking.labels.split_history``): a prefix, and labelled requests after it;
2. fit the sources on the prefix (``fit_sources``) and assemble that pipeline;
3. build the ranker's training rows from that pipeline's own candidates and fit the booster (``train_ranker``);
4. fit the sources on the whole log, each starting from its prefix fit where it can (``Retriever.warm_start``:
   the sequence model then needs a few epochs instead of a full training).

Between 3 and 4 the held-out slice of the model registry's offline metrics is set aside (``Holdout``): the prefix
pipeline with the ranker, asked for the labelled requests after the cut that no part of training fitted on — the
ranker's early-stopping requests (README "Model registry"). It costs no data: every model is served as before.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfwise.assemble import assemble, attach_indexes
from shelfwise.domain import Item
from shelfwise.pipeline import Model, Pipeline
from shelfwise.request import RecRequest
from shelfwise.ranking.features import ItemStats
from shelfwise.ranking.labels import Point, grade_of, split_history
from shelfwise.ranking.search import train_search_ranker
from shelfwise.ranking.train import resolve_split, train_ranker, without_ranker
from shelfwise.retrieval import SOURCES, build_retrievers, with_cohort, with_content
from shelfwise.retrieval.base import Retriever, TrainData
from shelfwise.settings import ModelSettings
from shelfwise.stores import vector_index_factory
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import Catalog, EntryContext, EventLog, EventStore, LoggedSearch

Progress = Callable[[str], None]
logger = logging.getLogger(__name__)


@dataclass
class TrainReport:
    version: str
    events: int
    shoppers: int
    items: int
    seconds: dict[str, float]


@dataclass
class Holdout:
    """The held-out slice of a training run: requests after the ranker's cut that no part of training fitted on,
    what each shopper did next (``targets``), and the pipeline fitted without them (sources on the prefix, plus the
    ranker, its item statistics from the prefix too). The model registry's offline metrics are computed on it
    (``evaluation.holdout``)."""

    pipeline: Pipeline
    requests: list[RecRequest]
    targets: list[list[str]]
    popularity: dict[str, int]  # positive interactions per item in the prefix (which items are the long tail)
    what: str  # how the slice was chosen, for the registry


@dataclass
class Fitted:
    model: Model
    data: TrainData
    seconds: dict[str, float]
    holdout: Holdout | None = None

    @property
    def pipeline(self) -> Pipeline:
        """The model's request path without merchandising rules (offline evaluation, tests), its ranker compiled as
        a loaded model's is (the same scores, so the same lists as a served model)."""
        got = getattr(self, "_pipeline", None)
        if got is None:
            for ranker in (self.model.ranker, self.model.search_ranker):
                if ranker is not None:
                    with tempfile.TemporaryDirectory(prefix="shelfwise-ranker-") as tmp:
                        ranker.compile(Path(tmp))
            got = self._pipeline = assemble(self.model)
        return got


def train_data(log: EventLog, catalog: dict[str, Item], settings: ModelSettings,
               contexts: dict[str, EntryContext] | None = None) -> TrainData:
    return TrainData.from_log(log, catalog, settings.event_weights,
                              session_gap_s=settings.covisit.session_gap_minutes * 60, contexts=contexts)


def fit_sources(log: EventLog, catalog: dict[str, Item], settings: ModelSettings, sources: tuple[str, ...],
                warm: Fitted | None = None, progress: Progress | None = None, data: TrainData | None = None,
                previous: Path | None = None, contexts: dict[str, EntryContext] | None = None) -> Fitted:
    """Fit the named sources on an event log (no ranker), in order (each sees those fitted before it), each from
    its fit in ``warm`` where it can, or else from the serving model version in ``previous``. ``contexts``: the
    shoppers' entry contexts (the cohort source groups shoppers by them)."""
    data = data if data is not None else train_data(log, catalog, settings, contexts)
    retrievers = build_retrievers(settings, sources)
    seconds: dict[str, float] = {}
    done: dict[str, Retriever] = {}
    for name, r in retrievers.items():
        if progress:
            progress(name)
        t0 = time.perf_counter()
        r.progress = progress
        r.link(dict(done))
        if warm is not None and name in warm.model.retrievers:
            r.warm_start(warm.model.retrievers[name], warm.data.items)
        elif previous is not None:
            r.resume(previous)
        r.fit(data)
        done[name] = r
        seconds[name] = time.perf_counter() - t0
    model = Model(settings, data.items, retrievers, data.shopper_index, trained_until=data.now)
    return Fitted(model, data, seconds)


def fit_pipeline(log: EventLog, catalog: Catalog, settings: ModelSettings, sources: tuple[str, ...] = SOURCES,
                 progress: Progress | None = None, previous: Path | None = None,
                 contexts: dict[str, EntryContext] | None = None, hold_out: bool = False,
                 searches: Sequence[LoggedSearch] = ()) -> Fitted:
    """Fit the named sources, and the learned ranker when enabled, on an event log (not saved); with logged
    searches (``EventStore.searches``), the search ranker too (``ranking/search.py``). ``previous``:
    the serving model version's directory (sources reuse what still holds, e.g. encoded item texts); ``contexts``:
    the shoppers' entry contexts (``EventStore.entry_contexts``, for cohorts). ``hold_out``: also set aside the
    held-out slice (``Fitted.holdout``; with the ranker off that costs a second fit of the sources, on the prefix)."""
    items = {it.id: it for it in catalog.all()}
    if not (settings.ranker.enabled and len(log)):
        fitted = fit_sources(log, items, settings, sources, progress=progress, previous=previous, contexts=contexts)
        if hold_out and len(log):
            plain = without_ranker(resolve_split(settings, log))
            split = split_history(log, plain.ranker, plain.history_length, plain.covisit.session_gap_minutes * 60.0)
            if len(split.prefix):
                if progress:
                    progress("held-out slice (sources on the prefix)")
                prefix = fit_sources(split.prefix, items, plain, sources, contexts=contexts)
                fitted.holdout = held_out(prefix, None, split.points, split.prefix, items, plain)
        return fitted
    t0 = time.perf_counter()
    settings = resolve_split(settings, log)
    split = split_history(log, settings.ranker, settings.history_length,
                          settings.covisit.session_gap_minutes * 60.0)
    if progress:
        progress("ranker sources (prefix)")
    prefix = fit_sources(split.prefix, items, without_ranker(settings), sources, previous=previous,
                         contexts=contexts)
    final_data = train_data(log, items, settings, contexts)
    ranker = train_ranker(prefix.pipeline, prefix.model.items, prefix.model.retrievers, prefix.data, final_data, log,
                          items, settings, split, progress)
    search = train_search_ranker(prefix.pipeline, prefix.model.items, prefix.model.retrievers, prefix.data,
                                 final_data, log, items, settings, split, searches, progress)
    ranker_s = time.perf_counter() - t0
    # before the final fit, which may continue the prefix fit's sources in place
    holdout = held_out(prefix, ranker, split.points, split.prefix, items, settings) if hold_out else None
    fitted = fit_sources(log, items, settings, sources, warm=prefix, progress=progress, data=final_data)
    fitted.model.ranker, fitted.model.search_ranker = ranker, search
    fitted.seconds = {"ranker": ranker_s, **fitted.seconds}
    fitted.holdout = holdout
    return fitted


def held_out(prefix: Fitted, ranker, points: Sequence[Point], prefix_log: EventLog, catalog: dict[str, Item],
             settings: ModelSettings) -> Holdout | None:
    """The held-out slice (``Holdout``) of a training run whose sources were fit on ``prefix`` and whose ranker (or
    None: the blend order serves) learned from ``points``. With a ranker: the points only its early stopping saw
    (the latest ``valid_fraction`` by time; ``split="last"``: the validation shoppers'); without one, every point.
    Logged impressions (exposure-log points) are left out: their labels are clicks on what was shown."""
    points = [p for p in points if not p.positions and any(g > 0 for g in p.labels.values())]
    what = "every labelled request after the cut (no ranker was trained on them)"
    model = prefix.model
    if ranker is not None:
        by_time, cut, shoppers = getattr(ranker, "validation", (True, float("inf"), set()))
        points = [p for p in points if p.ts >= cut] if by_time else [p for p in points if p.shopper in shoppers]
        what = ("the ranker's early-stopping requests (" + ("the latest by time" if by_time else
                                                             "its validation shoppers") + "), not fitted on")
        ranker = copy.copy(ranker)  # the served ranker keeps the full log's item statistics
        ranker.stats = ItemStats.fit(prefix.data, catalog)
        model = copy.copy(model)
        model.ranker = ranker
    if not points:
        return None
    placement = settings.ranker.placements[0]
    pos = grade_of(prefix_log.kind) > 0
    popularity: dict[str, int] = {}
    for it in prefix_log.item[pos].tolist():
        popularity[it] = popularity.get(it, 0) + 1
    return Holdout(Fitted(model, prefix.data, {}).pipeline, [p.request(placement, 12) for p in points],
                   [[i for i, g in p.labels.items() if g > 0] for p in points], popularity, what)


def expected_seconds(events: int, settings: ModelSettings, sources: tuple[str, ...] = SOURCES,
                     texts: int = 0) -> float:
    """A rough forecast of ``train``'s wall time on a 2-core machine (to tell users when the full model is
    due): the sequence model's epochs (about 8,000 events a second, capped by its time limit) dominate, the other
    sources and the ranker's rows scale with the log (BENCHMARKS.md, Training cost); the content source encodes
    ``texts`` item texts not encoded by the serving model (about 70 a second under load: BENCHMARKS.md, Content
    tower)."""
    seq = settings.sequence
    epoch = events / 8000.0
    total = events / 5000.0
    if "sequence" in sources:
        first = min(seq.max_train_minutes * 60.0, seq.max_epochs * epoch)
        total += first + seq.finetune_epochs * epoch
    if settings.ranker.enabled:
        total *= 1.3
    if "content" in with_content(sources, settings):
        total += texts / 70.0
    return total


SCAN_FILE = "scanned_at.json"  # when training read the event store: shoppers erased later lose their rows at load


def train(store: EventStore, catalog: Catalog, models: DirectoryModelStore, settings: ModelSettings,
          progress: Progress | None = None, vectors: str = "hnsw://", sources: tuple[str, ...] = SOURCES,
          consenting: Callable[[Sequence[str]], set[str]] | None = None,
          release: Callable[[str, Fitted, EventLog], None] | None = None) -> TrainReport:
    """Fit on everything in the event store and publish a new version (or, with ``release``, store it and hand it
    over: ``release(version, fitted, log)`` decides whether it goes live; the fit then sets its held-out slice aside).

    ``vectors``: ``stores.vectors``, whose indexes of the embedding sources are built before the version goes live,
    so no replica builds them. ``consenting(shoppers)``: those whose personalisation consent is granted now; the
    others' events (kept from before they withdrew, e.g. with ``privacy.erase_on_withdrawal`` off) are left out of
    training."""
    scanned_at = time.time()
    log = store.scan()
    if consenting is not None and len(log):
        shoppers = list(dict.fromkeys(log.shopper.tolist()))
        allowed = consenting(shoppers)
        if len(allowed) < len(shoppers):
            log = log.take(np.fromiter((s in allowed for s in log.shopper), bool, len(log)))
    if len(log) == 0:
        raise ValueError("the event store has no item interactions to train on; import or send events first")
    current = models.current()
    n_items = len(catalog.ids())
    chosen = with_content(sources, settings, n_items)
    if chosen != with_content(sources, settings):  # only the catalog's size kept the content source out
        note = (f"{n_items} catalog items > models.content.max_items ({settings.content.max_items}): training "
                "without the content source")
        logger.warning(note)
        if progress:
            progress(note)
    chosen = with_cohort(chosen, settings)
    contexts = store.entry_contexts() if "cohort" in chosen else None
    searches = store.searches() if settings.ranker.enabled and settings.ranker.search_placements else []
    if consenting is not None and searches:
        allowed_s = consenting(list(dict.fromkeys(s.shopper for s in searches)))
        searches = [s for s in searches if s.shopper in allowed_s]
    fitted = fit_pipeline(log, catalog, settings, sources=chosen, progress=progress,
                          previous=models.path(current) if current is not None else None, contexts=contexts,
                          hold_out=release is not None, searches=searches)
    version, path = models.new_version()
    fitted.model.version = version
    fitted.model.save(path)
    (path / SCAN_FILE).write_text(json.dumps({"scanned_at": scanned_at}))
    for ranker in (fitted.model.ranker, fitted.model.search_ranker):
        if ranker is not None:
            if progress:
                progress(f"{ranker.name} (native code)")
            ranker.compile(path)
    if progress:
        progress("vector indexes")
    attach_indexes(fitted.model, vector_index_factory(vectors, path, version))
    if release is not None:
        models.store(version)
        release(version, fitted, log)
    else:
        models.publish(version)
        models.prune()
    return TrainReport(version, len(log), fitted.data.n_users, fitted.data.n_items, fitted.seconds)
