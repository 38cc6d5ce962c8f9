"""ALS matrix factorisation on event-type-weighted implicit feedback (the ``implicit`` library)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from shelfwise.retrieval.base import Query, Retriever, TrainData
from shelfwise.settings import ALSSettings


class ALSRetriever(Retriever):
    name = "als"

    def __init__(self, settings: ALSSettings | None = None) -> None:
        self.settings = settings or ALSSettings()
        self.user_factors = np.zeros((0, self.settings.factors), np.float32)
        self.item_factors = np.zeros((0, self.settings.factors), np.float32)
        self.kind_weight = np.ones(6, np.float32)

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
        kinds = np.zeros(6, np.float32)
        for k in range(6):
            sel = data.kind == k
            kinds[k] = data.weight[sel][0] if sel.any() else 0.0
        self.kind_weight = kinds
        self._gram = None
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

    def user_vectors(self, queries: Sequence[Query]) -> np.ndarray:
        out = np.zeros((len(queries), self.settings.factors), np.float32)
        for r, q in enumerate(queries):
            if len(q.anchors):
                v = self.item_factors[q.anchors]
                norms = np.linalg.norm(v, axis=1, keepdims=True)
                out[r] = (v / np.maximum(norms, 1e-9)).mean(axis=0)
            elif 0 <= q.user < len(self.user_factors) and not q.fresh:
                out[r] = self.user_factors[q.user]
            elif len(q.history):
                out[r] = self.fold_in(q.history, self.kind_weight[q.history_kind])
        return out

    def score(self, queries: Sequence[Query]) -> np.ndarray:
        vecs = self.user_vectors(queries)
        anchored = np.array([len(q.anchors) > 0 for q in queries])
        if anchored.any():  # product page / cart: cosine similarity to the anchor items
            item_norm = np.linalg.norm(self.item_factors, axis=1)
            out = vecs @ self.item_factors.T
            out[anchored] /= np.maximum(item_norm, 1e-9)
        else:
            out = vecs @ self.item_factors.T
        return np.maximum(out, 0.0).astype(np.float32, copy=False)

    def save(self, path: Path) -> None:
        np.savez(path / "als.npz", user_factors=self.user_factors, item_factors=self.item_factors,
                 kind_weight=self.kind_weight)
        (path / "als.json").write_text(self.settings.model_dump_json())

    @classmethod
    def load(cls, path: Path) -> "ALSRetriever":
        obj = cls(ALSSettings.model_validate_json((path / "als.json").read_text()))
        z = np.load(path / "als.npz")
        obj.user_factors, obj.item_factors, obj.kind_weight = z["user_factors"], z["item_factors"], z["kind_weight"]
        obj._gram = None
        return obj
