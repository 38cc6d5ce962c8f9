"""Run models on evaluation splits through the production pipeline.

Every model, baseline or not, is a ``Pipeline`` fitted with ``training.fit_pipeline`` on the split's training
log and asked for the homepage rail with ``Pipeline.recommend`` in batches, each request carrying the shopper's
state as online state would hold it (their last ``history_length`` training events). The protocol's "exclude
the shopper's history" is passed as the request's ``exclude`` list, as a storefront would. There is no separate
scoring path: the lists scored here are the lists the API would serve.

The cold-start protocols (``splits.cold_items``, ``splits.cold_shoppers``) run the same way, with three
differences: each request carries the state the split gives it (the shopper's events before the target); for cold
items the model is trained on the catalog without the held-out items, which are then added to it the way the API
adds items after training (``coldstart.add_live_items``); and two baselines without a served counterpart
(``popularity-cold``, ``attr-knn``: ``coldstart``) are scored on the same targets.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfwise.domain import EventType
from shelfwise.evaluation import metrics as M
from shelfwise.evaluation.coldstart import AttributeKNN, add_live_items, category_popularity, popularity_among
from shelfwise.domain import Item
from shelfwise.evaluation.data import Dataset
from shelfwise.evaluation.splits import Split, positive_kinds, positive_mask, shopper_bounds
from shelfwise.request import RecRequest
from shelfwise.retrieval import SOURCES
from shelfwise.settings import ModelSettings, PlacementSettings
from shelfwise.stores.protocols import Interaction, ShopperState
from shelfwise.training import fit_pipeline

BASELINES = ("popularity", "covisit", "als", "ease")
DEFAULT_MODELS = BASELINES + ("default",)
COLD_BASELINES = ("popularity-cold", "popularity-category", "attr-knn")  # computed in ``coldstart``, not pipelines
COLD_MODELS = {  # the models each cold-start protocol runs unless told otherwise
    "cold-items": ("popularity-cold", "popularity-category", "attr-knn", "content"),
    "cold-shoppers": ("popularity", "attr-knn", "covisit", "als", "content"),
}
COLD_PROTOCOLS = tuple(COLD_MODELS)
PLACEMENT = "homepage"

Report = Callable[[str, int, int | None], None]  # (stage, done, total)


@dataclass
class ModelSpec:
    """A pipeline to evaluate: the sources to fit and the homepage blend weights."""

    name: str
    sources: tuple[str, ...]
    weights: dict[str, float]
    ranker: bool | None = False  # the learned ranker (ranking/) re-scores the blend's top N; None: as configured

    def settings(self, base: ModelSettings) -> ModelSettings:
        placements = dict(base.placements)
        home = placements[PLACEMENT]
        placements[PLACEMENT] = PlacementSettings(weights=dict(self.weights), exclude_history=home.exclude_history)
        enabled = base.ranker.enabled if self.ranker is None else self.ranker
        ranker = base.ranker.model_copy(update={"enabled": enabled})
        return base.model_copy(update={"placements": placements, "ranker": ranker})


def model_spec(name: str, settings: ModelSettings) -> ModelSpec:
    """``default`` = the homepage pipeline exactly as configured (what ``shelfwise train`` builds: the blend, and
    the learned ranker when ``ranker.enabled``); ``blend`` = the configured blend alone; ``ranker`` = the blend
    plus the ranker, its labels taken the protocol's way; a baseline or source name = a pipeline of that source.
    ``content`` is the content source as served: fitted after ALS, its vectors projected into the ALS item space
    (ALS itself has no weight); ``content-raw`` the content source alone, on the unprojected content vectors."""
    if name == "content":
        return ModelSpec(name, ("als", "content"), {"content": 1.0})
    if name == "content-raw":
        return ModelSpec(name, ("content",), {"content": 1.0})
    if name in ("default", "blend", "ranker"):
        weights = {s: w for s, w in settings.placements[PLACEMENT].weights.items() if w > 0}
        return ModelSpec(name, tuple(weights), weights, ranker={"default": None, "blend": False}.get(name, True))
    source = {"popularity": "trending", "pop": "trending", "itemknn": "covisit"}.get(name, name)
    return ModelSpec(name, (source,), {source: 1.0})


@dataclass
class ModelResult:
    name: str
    sources: list[str]
    metrics: dict[str, float]
    coverage: dict[str, float]
    long_tail: dict[str, float]
    segments: dict[str, dict[str, float]]
    fit_s: float
    recommend_s: float
    fit_detail: dict[str, float] = field(default_factory=dict)
    importances: dict[str, float] = field(default_factory=dict)  # the ranker's feature importances (gain)
    among_new: dict[str, float] = field(default_factory=dict)  # cold items: the same, ranked among the held-out ones

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class SplitResult:
    name: str
    protocol: str
    target: str
    users: int
    train_events: int
    notes: dict
    segment_threshold: int
    models: dict[str, ModelResult] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "models"}
        d["models"] = {k: m.as_dict() for k, m in self.models.items()}
        return d


@dataclass
class ShopperViews:
    """Per evaluated shopper: request state, items to exclude, and training history length."""

    states: list[ShopperState]
    exclude: list[list[str]]
    history_len: np.ndarray


def shopper_views(split: Split, history_length: int) -> ShopperViews:
    """What the API would know about each evaluated shopper at request time, from the training log only."""
    if split.history is not None:
        return _given_views(split, history_length)
    log = split.train
    bounds = shopper_bounds(log)
    where = {str(log.shopper[bounds[b]]): (bounds[b], bounds[b + 1]) for b in range(len(bounds) - 1)}
    pos = positive_mask(log)
    states, exclude, lengths = [], [], []
    items, kinds, ts = log.item, log.kind, log.ts
    for u in split.users:
        lo, hi = where.get(u, (0, 0))
        recent = [Interaction(str(items[i]), int(kinds[i]), float(ts[i])) for i in range(max(lo, hi - history_length),
                                                                                         hi)]
        purchased = {str(items[i]) for i in range(lo, hi) if kinds[i] == EventType.purchase_completed}
        states.append(ShopperState(recent=recent, purchased=purchased))
        hist = [str(x) for x in items[lo:hi][pos[lo:hi]]]
        exclude.append(list(dict.fromkeys(hist)))
        lengths.append(len(hist))
    return ShopperViews(states, exclude, np.array(lengths, np.int64))


def _given_views(split: Split, history_length: int) -> ShopperViews:
    """Views from the events the split gives each request (the cold-start protocols)."""
    assert split.history is not None
    positive = positive_kinds()
    states, exclude, lengths = [], [], []
    for events in split.history:
        hist = [e.item_id for e in events if e.kind in positive]
        states.append(ShopperState(recent=list(events[-history_length:]) if history_length else [],
                                   purchased={e.item_id for e in events if e.kind == EventType.purchase_completed}))
        exclude.append(list(dict.fromkeys(hist)))
        lengths.append(len(hist))
    return ShopperViews(states, exclude, np.array(lengths, np.int64))


def recommend_lists(pipeline, split: Split, views: ShopperViews, k: int, batch_size: int = 1024,
                    report: Report | None = None, stage: str = "", also_exclude: Sequence[str] = ()) -> list[list[str]]:
    """Each evaluated shopper's list (``also_exclude``: items no request may show, beside its own exclusions)."""
    lists: list[list[str]] = []
    n = len(split.users)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        reqs = [RecRequest(PLACEMENT, shopper=split.users[i], k=k, state=views.states[i], now=split.now,
                           exclude=[*views.exclude[i], *also_exclude] if also_exclude else views.exclude[i])
                for i in range(start, stop)]
        lists += [[r.item_id for r in ans.items] for ans in pipeline.recommend(reqs)]
        if report:
            report(stage, stop, n)
    return lists


def evaluate_model(spec: ModelSpec, split: Split, dataset: Dataset, settings: ModelSettings, views: ShopperViews,
                   ks: Sequence[int] = M.KS, batch_size: int = 1024, tail: set[str] | None = None,
                   segment_threshold: int = 0, export: Path | None = None,
                   report: Report | None = None, cache: Path | None = None) -> ModelResult:
    """``cache``: a folder where the content source's tower is kept between runs (its encoded texts are reused)."""
    model_settings = spec.settings(settings)
    if spec.ranker is True:  # leave-one-out: rows labelled by each shopper's last training item; temporal: a time cut
        model_settings.ranker.split = "last" if split.protocol == "loo" else "time"
    stage = f"{split.name} · {spec.name}"
    if report:
        report(f"{stage}: fitting", 0, None)
    held = set(split.held_out)
    catalog = _Catalog([it for it in dataset.items if it.id not in held])  # held-out items arrive after training
    tower_dir = cache / f"content-{split.name}-{_digest(split.held_out)}" if cache and "content" in spec.sources \
        else None
    t0 = time.perf_counter()
    fitted = fit_pipeline(split.train, catalog, model_settings, sources=spec.sources,
                          previous=tower_dir if tower_dir is not None and tower_dir.is_dir() else None)
    if tower_dir is not None and getattr(fitted.model.retrievers["content"], "tower", None) is not None:
        tower_dir.mkdir(parents=True, exist_ok=True)
        fitted.model.retrievers["content"].tower.save(tower_dir)  # before the held-out items join it
    fit_s = time.perf_counter() - t0
    pipeline, detail = fitted.pipeline, {k: round(v, 2) for k, v in fitted.seconds.items()}
    if held:
        if report:
            report(f"{stage}: adding {len(held)} items after training", 0, None)
        t_live = time.perf_counter()
        pipeline, encoded = add_live_items(pipeline, [it for it in dataset.items if it.id in held])
        detail.update({"live_items_s": round(time.perf_counter() - t_live, 2), "live_items_encoded": encoded})
    t1 = time.perf_counter()
    lists = recommend_lists(pipeline, split, views, max(ks), batch_size, report, stage)
    rec_s = time.perf_counter() - t1
    result = _result(spec.name, list(spec.sources), lists, split, views, ks, len(pipeline.items), tail,
                     segment_threshold, export, fit_s, rec_s, detail,
                     fitted.pipeline.ranker.importances() if fitted.pipeline.ranker is not None else {})
    if held:  # the same requests with every other item excluded: which of the new items
        others = [i for i in pipeline.items.index if i not in held]
        new_lists = recommend_lists(pipeline, split, views, max(ks), batch_size, report, f"{stage} (among new items)",
                                    also_exclude=others)
        result.among_new = M.summarise(M.per_user(new_lists, split.targets, ks))
    return result


class _Catalog:
    """The part of the Catalog protocol training reads: the items it is trained with."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def all(self) -> list[Item]:
        return self.items


def _digest(ids: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:10]


def evaluate_baseline(name: str, split: Split, dataset: Dataset, settings: ModelSettings, views: ShopperViews,
                      ks: Sequence[int] = M.KS, tail: set[str] | None = None, segment_threshold: int = 0,
                      export: Path | None = None, report: Report | None = None) -> ModelResult:
    """``popularity-cold``, ``popularity-category`` (held-out items only) or ``attr-knn`` (``coldstart``)."""
    k = max(ks)
    if report:
        report(f"{split.name} · {name}", 0, len(split.users))
    t0 = time.perf_counter()
    if name in ("popularity-cold", "popularity-category"):
        if not split.held_out:
            raise ValueError(f"{name} ranks held-out items: only for the cold-items protocol")
        order = popularity_among(split, dataset.log) if name == "popularity-cold" else \
            category_popularity(split, dataset.items)
        lists = []
        for ex in views.exclude:
            drop = set(ex)
            lists.append([i for i in order if i not in drop][:k])
        fit_s = time.perf_counter() - t0
    else:
        knn = AttributeKNN(dataset.items, settings.content.history)
        fit_s = time.perf_counter() - t0
        positive = positive_kinds()
        hist = [[e.item_id for e in st.recent if e.kind in positive] for st in views.states]
        lists = knn.lists(hist, views.exclude, k)
    rec_s = time.perf_counter() - t0 - fit_s
    among_new: dict[str, float] = {}
    if split.held_out:  # ranked among the held-out items only
        held = set(split.held_out)
        new_lists = knn.lists(hist, views.exclude, k, only=held) if name == "attr-knn" else lists
        among_new = M.summarise(M.per_user(new_lists, split.targets, ks))
    if report:
        report(f"{split.name} · {name}", len(split.users), len(split.users))
    result = _result(name, [name], lists, split, views, ks, len({it.id for it in dataset.items}), tail,
                     segment_threshold, export, fit_s, rec_s, {}, {})
    result.among_new = among_new
    return result


def _result(name: str, sources: list[str], lists: list[list[str]], split: Split, views: ShopperViews,
            ks: Sequence[int], n_items: int, tail: set[str] | None, segment_threshold: int, export: Path | None,
            fit_s: float, rec_s: float, detail: dict, importances: dict) -> ModelResult:
    values = M.per_user(lists, split.targets, ks)
    short = views.history_len <= segment_threshold
    segments = {"short": M.summarise(values, short), "long": M.summarise(values, ~short)}
    segments["short"]["users"] = float(short.sum())
    segments["long"]["users"] = float((~short).sum())
    result = ModelResult(
        name=name, sources=sources, metrics=M.summarise(values),
        coverage={f"@{k}": M.coverage(lists, n_items, k) for k in ks},
        long_tail={f"@{k}": M.long_tail_share(lists, tail or set(), k) for k in ks},
        segments=segments, fit_s=round(fit_s, 2), recommend_s=round(rec_s, 2), fit_detail=detail,
        importances=importances)
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
        with export.open("w") as fh:
            for u, lst in zip(split.users, lists):
                fh.write(json.dumps({"user": u, "items": lst}) + "\n")
    return result


def evaluate_split(split: Split, dataset: Dataset, settings: ModelSettings, models: Sequence[str],
                   ks: Sequence[int] = M.KS, batch_size: int = 1024, export_dir: Path | None = None,
                   report: Report | None = None, cache: Path | None = None) -> SplitResult:
    views = shopper_views(split, settings.history_length)
    threshold = int(np.median(views.history_len)) if len(views.history_len) else 0
    if split.protocol == "cold-shoppers":
        threshold = 0  # the segments are the two requests of each cold shopper: 0 and 1 prior events
    pos = positive_mask(split.train)
    counts: dict[str, int] = {}
    for it in split.train.item[pos].tolist():
        counts[it] = counts.get(it, 0) + 1
    vocab = sorted({it.id for it in dataset.items} | set(map(str, split.train.item.tolist())))
    tail = M.long_tail_items(counts, vocab)
    out = SplitResult(split.name, split.protocol, split.target, len(split.users), len(split.train),
                      dict(split.notes), threshold)
    for name in models:
        export = (export_dir / f"{dataset.name}.{split.name}.{name}.jsonl"
                  if export_dir is not None and split.target == "test" else None)
        if name in COLD_BASELINES:
            out.models[name] = evaluate_baseline(name, split, dataset, settings, views, ks, tail, threshold, export,
                                                 report)
            continue
        out.models[name] = evaluate_model(model_spec(name, settings), split, dataset, settings, views, ks,
                                          batch_size, tail, threshold, export, report, cache)
    return out


def known_models(settings: ModelSettings) -> list[str]:
    from shelfwise.retrieval import build_retrievers

    names = list(DEFAULT_MODELS) + ["blend", "ranker"]
    for source in ("copurchase", *SOURCES):
        if source not in names and source != "trending":
            try:
                build_retrievers(settings, (source,))
            except ValueError:
                continue
            names.append(source)
    return names


def evaluate_dataset(dataset: Dataset, settings: ModelSettings, protocols: Sequence[str] = ("auto",),
                     targets: Sequence[str] = ("test",), models: Sequence[str] | None = None,
                     ks: Sequence[int] = M.KS, batch_size: int = 1024, export_dir: Path | None = None,
                     split_time: float | None = None, test_fraction: float = 0.2,
                     report: Report | None = None, command: str | None = None, cold_fraction: float = 0.1,
                     seed: int = 0, cache: Path | None = None) -> dict:
    """Every requested protocol × target × model on one dataset; a JSON-ready dict (see ``report``).

    ``models`` None: ``DEFAULT_MODELS`` for leave-one-out and temporal splits, ``COLD_MODELS`` for the cold-start
    protocols (``cold-items``, ``cold-shoppers``: ``cold_fraction`` of the items / shoppers held out, drawn with
    ``seed``). ``cache``: where the content tower's encodings are kept between runs."""
    from shelfwise.evaluation.report import machine
    from shelfwise.evaluation.splits import cold_items, cold_shoppers, leave_one_out, temporal

    t0 = time.perf_counter()
    wanted = set(protocols)
    if "auto" in wanted:
        wanted.discard("auto")
        wanted.add("loo")
        if dataset.real_time:
            wanted.add("temporal")
    unknown = wanted - {"loo", "temporal", *COLD_PROTOCOLS}
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; known: loo, temporal, auto, "
                         f"{', '.join(COLD_PROTOCOLS)}")
    if "temporal" in wanted and not dataset.real_time:
        raise ValueError(f"{dataset.fmt} data have synthetic timestamps (order only): no temporal split")
    bad_targets = set(targets) - {"valid", "test"}
    if bad_targets or not targets:
        raise ValueError(f"targets must be among valid, test (got {', '.join(targets) or 'none'})")
    known = known_models(settings) + ["content", "content-raw", *COLD_BASELINES]
    bad_models = [m for m in models or () if m not in known and m not in ("pop", "itemknn")]
    if bad_models:
        raise ValueError(f"unknown model(s) {', '.join(bad_models)}; known: {', '.join(known)}")
    if models is not None and {"popularity-cold", "popularity-category"} & set(models) and wanted - {"cold-items"}:
        raise ValueError("popularity-cold and popularity-category rank the held-out items of the cold-items "
                         "protocol: only with --protocol cold-items")
    if len(dataset.log) == 0:
        raise ValueError("the dataset has no item interactions")
    splits: list[Split] = []
    if "loo" in wanted:
        splits += [leave_one_out(dataset.log, t, settings.event_weights) for t in ("valid", "test") if t in targets]
    if "temporal" in wanted:
        splits.append(temporal(dataset.log, split_time, test_fraction, settings.event_weights))
    if "cold-items" in wanted:
        splits.append(cold_items(dataset.log, [it.id for it in dataset.items], cold_fraction, seed,
                                 settings.event_weights))
    if "cold-shoppers" in wanted:
        splits.append(cold_shoppers(dataset.log, cold_fraction, seed, settings.event_weights))
    results = []
    for split in splits:
        if not split.users:
            raise ValueError(f"{split.name}: no shopper has enough interactions to be evaluated")
        chosen = models if models is not None else COLD_MODELS.get(split.protocol, DEFAULT_MODELS)
        results.append(evaluate_split(split, dataset, settings, chosen, ks, batch_size, export_dir, report,
                                      cache).as_dict())
    log = dataset.log
    return {
        "dataset": {"name": dataset.name, "format": dataset.fmt, "source": dataset.source, "events": len(log),
                    "shoppers": int(len(set(log.shopper.tolist()))), "items": len({it.id for it in dataset.items} |
                                                                                   set(log.item.tolist()))},
        "command": command,
        "machine": machine(),
        "settings": settings.model_dump(mode="json"),
        "ks": list(ks),
        "splits": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
