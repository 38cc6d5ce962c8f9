"""Candidate sources. Each is a ``Retriever`` (``base``): fit on ``TrainData``, score a batch of queries."""

from __future__ import annotations

from pathlib import Path

from shelfwise.retrieval.als import ALSRetriever
from shelfwise.retrieval.base import ItemTable, Query, Retriever, TrainData
from shelfwise.retrieval.covisit import CovisitRetriever
from shelfwise.retrieval.ease import EASERetriever
from shelfwise.retrieval.sequence import SequenceRetriever
from shelfwise.retrieval.trending import TrendingRetriever
from shelfwise.settings import ModelSettings

SOURCES = ("trending", "covisit", "copurchase", "als", "sequence")


def build_retrievers(settings: ModelSettings, names: tuple[str, ...] = SOURCES) -> dict[str, Retriever]:
    """Unfitted retrievers for the named sources, configured from settings."""
    make = {
        "trending": lambda: TrendingRetriever(settings.trending),
        "covisit": lambda: CovisitRetriever(settings.covisit, mode="view"),
        "copurchase": lambda: CovisitRetriever(settings.covisit, mode="purchase"),
        "als": lambda: ALSRetriever(settings.als),
        "ease": lambda: EASERetriever(settings.ease),  # optional source, not in SOURCES (n_items² memory)
        "sequence": lambda: SequenceRetriever(settings.sequence),
    }
    unknown = set(names) - set(make)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; known: {sorted(make)}")
    return {n: make[n]() for n in names}


def load_retriever(name: str, path: Path) -> Retriever:
    if name == "trending":
        return TrendingRetriever.load(path)
    if name == "covisit":
        return CovisitRetriever.load(path, mode="view")
    if name == "copurchase":
        return CovisitRetriever.load(path, mode="purchase")
    if name == "als":
        return ALSRetriever.load(path)
    if name == "ease":
        return EASERetriever.load(path)
    if name == "sequence":
        return SequenceRetriever.load(path)
    raise ValueError(f"unknown source {name!r} in model artefacts")


__all__ = ["ItemTable", "Query", "Retriever", "TrainData", "build_retrievers", "load_retriever", "SOURCES"]
