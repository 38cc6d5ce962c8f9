"""ALS matrix factorisation on event-type-weighted implicit feedback (the ``implicit`` library).

A shopper's score of an item is ``max(0, user · item)`` (the trained user vector, or an exact fold-in of a
history the model has not seen); a product page's or cart's is the cosine of the item with the mean of the
anchors' unit vectors. Both are searched through ``ItemVectors`` (exact for small catalogs, else the vector
index): one space over the raw item factors, one over unit factors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from shelfwise.domain import EventType
from shelfwise.request import Query
from shelfwise.retrieval.base import Retriever, SourceScores, TrainData, stack_rows
from shelfwise.retrieval.embedding import IndexFactory, ItemVectors, vector_scores
from shelfwise.settings import ALSSettings, CandidateSettings


class ALSRetriever(Retriever):
    name = "als"

    def __init__(self, settings: ALSSettings | None = None) -> None:
        self.settings = settings or ALSSettings()
        self.user_factors = np.zeros((0, self.settings.factors), np.float32)
        self.item_factors = np.zeros((0, self.settings.factors), np.float32)
        self.kind_weight = np.ones(len(EventType), np.float32)

    def fit(self, data: TrainData) -> "ALSRetriever":
        from implicit.cpu.als import AlternatingLeastSquares

        s = self.settings
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads only slow it
            model = AlternatingLeastSquares(factors=s.factors, iterations=s.iterations,
                                            regularization=s.regularization, alpha=s.alpha,
                                            random_state=s.random_state, calculate_training_loss=False)
            model.fit(data.user_item_matrix(), show_progress=False)
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        kinds = np.zeros(len(EventType), np.float32)
        for k in range(len(EventType)):
            sel = data.kind == k
            kinds[k] = data.weight[sel][0] if sel.any() else 0.0
        self.kind_weight = kinds
        self._gram = None
        self._spaces = None
        return self

    @property
    def gram(self) -> np.ndarray:
        if getattr(self, "_gram", None) is None:
            self._gram = self.item_factors.T @ self.item_factors
        return self._gram

    def fold_in(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """User vector for an unseen or changed history, by one exact ALS half-step (Hu et al. 2008)."""
        s = self.settings
        if len(items) == 0:
            return np.zeros(s.factors, np.float32)
        uniq, inv = np.unique(items, return_inverse=True)
        conf = s.alpha * np.bincount(inv, weights=weights, minlength=len(uniq))
        keep = conf > 0
        uniq, conf = uniq[keep], conf[keep]
        Y = self.item_factors[uniq].astype(np.float64)
        A = self.gram + (Y.T * conf) @ Y + s.regularization * np.eye(s.factors)
        b = (Y.T * (1.0 + conf)).sum(axis=1)
        return np.linalg.solve(A, b).astype(np.float32)

    @property
    def n_items(self) -> int:
        return len(self.item_factors)

    def spaces(self) -> tuple[ItemVectors, ItemVectors]:
        """(inner product over the raw factors, cosine over unit factors)."""
        got = getattr(self, "_spaces", None)
        if got is None or len(got[0]) != len(self.item_factors):
            unit = self.item_factors / np.maximum(np.linalg.norm(self.item_factors, axis=1, keepdims=True), 1e-9)
            got = (ItemVectors("als_ip", self.item_factors), ItemVectors("als_cos", unit))
            self._spaces = got
        return got

    @property
    def unit_factors(self) -> np.ndarray:
        """Item factors scaled to unit length (product pages' cosine; the diversity similarity)."""
        return self.spaces()[1].vectors

    def attach_index(self, factory: IndexFactory | None, settings: CandidateSettings) -> None:
        for space in self.spaces():
            space.attach(factory, settings)

    def user_vectors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        """(B, factors) query vectors and whether each is a product page / cart (cosine) query."""
        out = np.zeros((len(queries), self.settings.factors), np.float32)
        anchored = np.zeros(len(queries), bool)
        for r, q in enumerate(queries):
            if len(q.anchors):
                v = self.item_factors[q.anchors]
                norms = np.linalg.norm(v, axis=1, keepdims=True)
                out[r] = (v / np.maximum(norms, 1e-9)).mean(axis=0)
                anchored[r] = True
            elif 0 <= q.user < len(self.user_factors) and not q.fresh:
                out[r] = self.user_factors[q.user]
            elif len(q.history):
                out[r] = self.fold_in(q.history, self.kind_weight[q.history_kind])
        return out, anchored

    def scores(self, queries: Sequence[Query]) -> SourceScores:
        vecs, anchored = self.user_vectors(queries)
        ip, cos = self.spaces()
        present = np.abs(vecs).sum(axis=1) > 0
        if not anchored.any():
            return vector_scores(ip, vecs, present)
        if anchored.all():
            return vector_scores(cos, vecs, present)
        return stack_rows(len(queries), [(np.flatnonzero(~anchored), vector_scores(ip, vecs[~anchored],
                                                                                  present[~anchored])),
                                         (np.flatnonzero(anchored), vector_scores(cos, vecs[anchored],
                                                                                 present[anchored]))])

    def save(self, path: Path) -> None:
        np.savez(path / "als.npz", user_factors=self.user_factors, item_factors=self.item_factors,
                 kind_weight=self.kind_weight)
        (path / "als.json").write_text(self.settings.model_dump_json())

    @classmethod
    def load(cls, path: Path) -> "ALSRetriever":
        obj = cls(ALSSettings.model_validate_json((path / "als.json").read_text()))
        z = np.load(path / "als.npz")
        obj.user_factors, obj.item_factors, obj.kind_weight = z["user_factors"], z["item_factors"], z["kind_weight"]
        if len(obj.kind_weight) < len(EventType):  # saved before the wishlist types: they weigh nothing there
            obj.kind_weight = np.pad(obj.kind_weight, (0, len(EventType) - len(obj.kind_weight)))
        obj._gram = None
        obj._spaces = None
        return obj
