"""One request path for the API and offline evaluation: a trained ``Model`` and the ordered stages that answer
with it (``assemble.assemble`` builds them; read it to see the order).

``Pipeline.recommend`` groups a batch of requests by placement and runs each group through the stages; the API
(micro-batches of a few requests) and offline evaluation (batches of thousands) run this same code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfwise.items import ItemTable
from shelfwise.ranking.model import SEARCH_RANKER, Ranker
from shelfwise.request import Answer, Candidates, Query, RecRequest
from shelfwise.retrieval import SOURCES, load_retriever
from shelfwise.retrieval.base import Retriever
from shelfwise.rules.log import ImpressionCounts
from shelfwise.settings import ModelSettings, PlacementSettings, known_fields
from shelfwise.stages.base import Batch, Stage
from shelfwise.stages.budget import StageGuard

Observer = Callable[[str, str, float], None]  # (placement, stage, seconds of the batch)


@dataclass
class Exploration:
    """What a serving pipeline's exploration slots need from the engine (``stages.explore``)."""

    counts: ImpressionCounts | None  # impressions per new item (None: the exposure log is off)


@dataclass
class Model:
    """The artefacts of one trained model version."""

    settings: ModelSettings
    items: ItemTable
    retrievers: dict[str, Retriever]
    shopper_index: dict[str, int]
    version: str = "untrained"
    trained_until: float = float("inf")  # newest event the models were trained on
    ranker: Ranker | None = None  # re-scores the blend's top N for its placements (None: blend order)
    search_ranker: Ranker | None = None  # scores the shop's lists of the search placements (None: the ranker's order)

    @property
    def full(self) -> bool:
        """Trained with every default source (not the quick first model of ``shelfwise run``)."""
        return set(SOURCES) <= set(self.retrievers)

    def save(self, path: Path) -> None:
        np.savez(path / "items.npz", **{k: v for k, v in self.items.arrays().items() if k != "ids"})
        (path / "item_ids.json").write_text(json.dumps([str(x) for x in self.items.ids]))
        (path / "shoppers.json").write_text(json.dumps(list(self.shopper_index)))
        manifest = {"version": self.version, "retrievers": list(self.retrievers), "trained_until": self.trained_until,
                    "category_names": self.items.category_names, "brand_names": self.items.brand_names,
                    "settings": self.settings.model_dump(mode="json")}
        (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for r in self.retrievers.values():
            r.save(path)
        for ranker in (self.ranker, self.search_ranker):
            if ranker is not None:
                ranker.save(path)

    @classmethod
    def load(cls, path: Path, settings: ModelSettings | None = None) -> "Model":
        manifest = json.loads((path / "manifest.json").read_text())
        z = np.load(path / "items.npz")
        ids = np.array(json.loads((path / "item_ids.json").read_text()), dtype=object)
        items = ItemTable(ids=ids, **{k: z[k] for k in z.files}, category_names=manifest["category_names"],
                          brand_names=manifest.get("brand_names", []))
        shoppers = json.loads((path / "shoppers.json").read_text())
        retrievers = {name: load_retriever(name, path) for name in manifest["retrievers"]}
        model_settings = settings or ModelSettings.model_validate(known_fields(ModelSettings, manifest["settings"]))
        ranker = Ranker.load(path, model_settings.ranker) if Ranker.exists(path) else None
        search = (Ranker.load(path, model_settings.ranker, SEARCH_RANKER) if Ranker.exists(path, SEARCH_RANKER)
                  else None)
        for r in (ranker, search):
            if r is not None:
                r.compile(path)
        return cls(model_settings, items, retrievers, {s: i for i, s in enumerate(shoppers)}, manifest["version"],
                   manifest["trained_until"], ranker, search)


class Pipeline:
    """A model and its request path: the stages, in order."""

    def __init__(self, model: Model, stages: Sequence[Stage], candidate_stages: int,
                 on_catalog_change: Sequence[Callable[[], None]] = (), observer: Observer | None = None,
                 guard: StageGuard | None = None, explore: Exploration | None = None,
                 rerank_stages: Sequence[Stage] | None = None) -> None:
        self.model = model
        self.explore = explore  # assembled with exploration slots (kept when items are added: with_items)
        self.stages = list(stages)
        self.rerank_stages = list(rerank_stages) if rerank_stages is not None else self.stages  # the shop's lists
        self._candidate_stages = candidate_stages  # the leading stages that produce the candidates
        self._on_catalog_change = list(on_catalog_change)
        self.observer = observer
        self.guard = guard  # serving's budgets and breakers (stages/budget.py); None: offline, nothing left out

    # ---- the model's parts ---------------------------------------------------------------------------
    @property
    def settings(self) -> ModelSettings:
        return self.model.settings

    @property
    def items(self) -> ItemTable:
        return self.model.items

    @property
    def retrievers(self) -> dict[str, Retriever]:
        return self.model.retrievers

    @property
    def shopper_index(self) -> dict[str, int]:
        return self.model.shopper_index

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def trained_until(self) -> float:
        return self.model.trained_until

    @property
    def ranker(self) -> Ranker | None:
        return self.model.ranker

    def placement(self, placement: str) -> PlacementSettings:
        try:
            return self.settings.placements[placement]
        except KeyError:
            raise ValueError(f"unknown placement {placement!r}; known: {sorted(self.settings.placements)}") from None

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    # ---- answering -----------------------------------------------------------------------------------
    def _run(self, batch: Batch, stages: Sequence[Stage]) -> None:
        guard = batch.guard = self.guard
        for stage in stages:
            if guard is not None:
                skip = guard.skip_stage(stage.name)
                if skip is not None:
                    batch.degraded.append(skip)
                    continue
            t0 = time.perf_counter()
            if guard is None:
                stage.run(batch)
            else:
                try:
                    stage.run(batch)
                except Exception as exc:
                    note = guard.stage_failed(stage.name, exc)
                    if note is None:  # a required stage: the service answers from its fallbacks
                        raise
                    batch.degraded.append(note)
                    continue
            dt = time.perf_counter() - t0
            batch.timings[stage.name] = dt
            if guard is not None:
                guard.stage_done(stage.name, dt)
            if self.observer is not None:
                self.observer(batch.placement, stage.name, dt)

    def _batches(self, requests: Sequence[RecRequest]) -> list[tuple[list[int], Batch]]:
        """One batch per placement (and per experiment variant's placement settings and ranker switch)."""
        groups: dict[tuple, list[int]] = {}
        confs: dict[tuple, PlacementSettings] = {}
        for i, r in enumerate(requests):
            conf = r.conf if r.conf is not None else self.placement(r.placement)
            key = (r.placement, id(conf), r.ranker)
            confs[key] = conf
            groups.setdefault(key, []).append(i)
        out = []
        for key, rows in groups.items():
            reqs = [requests[i] for i in rows]
            out.append((rows, Batch(key[0], confs[key], reqs, max(r.k for r in reqs), use_ranker=key[2])))
        return out

    def recommend(self, requests: Sequence[RecRequest]) -> list[Answer]:
        """Answer a batch of requests of possibly different placements."""
        answers: list[Answer | None] = [None] * len(requests)
        for rows, batch in self._batches(requests):
            self._run(batch, self.rerank_stages if batch.conf.kind == "rerank" else self.stages)
            for i, ans in zip(rows, batch.answers):
                answers[i] = replace(ans, degraded=ans.degraded + batch.degraded) if batch.degraded else ans
        return answers  # type: ignore[return-value]

    def candidates(self, requests: Sequence[RecRequest], n: int) -> tuple[list[Query], Candidates]:
        """The queries and the best ``n`` candidates by blended score of requests of one placement, exactly as
        serving generates them (the learned ranker's training rows are built from these)."""
        (_, batch), = self._batches(requests)
        self._run(batch, self.stages[:self._candidate_stages])
        assert batch.candidates is not None
        return batch.queries, batch.candidates.sorted(n)

    def query(self, req: RecRequest) -> Query:
        """One request resolved to model indices (what the stages see)."""
        (_, batch), = self._batches([req])
        self._run(batch, self.stages[:1])
        return batch.queries[0]

    def catalog_changed(self) -> None:
        """Prices, stock or availability changed (the item table is updated in place): drop derived caches."""
        for invalidate in self._on_catalog_change:
            invalidate()
