"""Candidate sources. Each is a ``Retriever`` (``base``): fit on ``TrainData``, then score batches of queries.

``REGISTRY`` is the one list of sources: how to build each from settings and how to load it from a model
version's directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shelfwise.retrieval.als import ALSRetriever
from shelfwise.retrieval.base import Retriever, SourceScores, TrainData
from shelfwise.retrieval.cohort import CohortRetriever
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.retrieval.covisit import CovisitRetriever
from shelfwise.retrieval.ease import EASERetriever
from shelfwise.retrieval.sequence import SequenceRetriever
from shelfwise.retrieval.trending import TrendingRetriever
from shelfwise.settings import ModelSettings

SOURCES = ("trending", "covisit", "copurchase", "als", "sequence")  # the default pipeline's sources


@dataclass(frozen=True)
class SourceKind:
    build: Callable[[ModelSettings], Retriever]
    load: Callable[[Path], Retriever]


REGISTRY: dict[str, SourceKind] = {
    "trending": SourceKind(lambda s: TrendingRetriever(s.trending), TrendingRetriever.load),
    "covisit": SourceKind(lambda s: CovisitRetriever(s.covisit, mode="view"),
                          lambda p: CovisitRetriever.load(p, mode="view")),
    "copurchase": SourceKind(lambda s: CovisitRetriever(s.covisit, mode="purchase"),
                             lambda p: CovisitRetriever.load(p, mode="purchase")),
    "als": SourceKind(lambda s: ALSRetriever(s.als), ALSRetriever.load),
    # optional source, not in SOURCES (n_items² memory)
    "ease": SourceKind(lambda s: EASERetriever(s.ease), EASERetriever.load),
    "sequence": SourceKind(lambda s: SequenceRetriever(s.sequence), SequenceRetriever.load),
    # not in SOURCES: `shelfwise train` adds it to a full model when `models.content.source` (with_content)
    "content": SourceKind(lambda s: ContentRetriever(s.content), ContentRetriever.load),
    # not in SOURCES: `shelfwise train` adds it to every served model (with_cohort); new shoppers only
    "cohort": SourceKind(lambda s: CohortRetriever(s.cohort), CohortRetriever.load),
}


def _known(names: tuple[str, ...] | list[str]) -> None:
    unknown = set(names) - set(REGISTRY)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; known: {sorted(REGISTRY)}")


def with_content(sources: tuple[str, ...], settings: ModelSettings, n_items: int = 0) -> tuple[str, ...]:
    """The sources of a served model: the content source joins a full model (one with ALS, whose item space its
    vectors are projected into) of a catalog of at most ``models.content.max_items`` items, unless
    ``models.content.source`` is off. Offline evaluation of the default pipeline leaves it out: no placement it
    measures weighs it."""
    if (settings.content.source and "als" in sources and "content" not in sources
            and n_items <= settings.content.max_items):
        return (*sources, "content")
    return sources


def with_cohort(sources: tuple[str, ...], settings: ModelSettings) -> tuple[str, ...]:
    """The sources of a served model: the cohort source joins every one (unless ``models.cohort.source`` is off).
    Offline evaluation leaves it out: it answers only shoppers without history, whom no protocol asks about."""
    if settings.cohort.source and "cohort" not in sources:
        return (*sources, "cohort")
    return sources


def build_retrievers(settings: ModelSettings, names: tuple[str, ...] = SOURCES) -> dict[str, Retriever]:
    """Unfitted retrievers for the named sources, configured from settings."""
    _known(names)
    return {n: REGISTRY[n].build(settings) for n in names}


def load_retriever(name: str, path: Path) -> Retriever:
    if name not in REGISTRY:
        raise ValueError(f"unknown source {name!r} in model artefacts")
    return REGISTRY[name].load(path)


__all__ = ["Retriever", "SourceScores", "TrainData", "build_retrievers", "load_retriever", "REGISTRY", "SOURCES",
           "with_cohort", "with_content"]
