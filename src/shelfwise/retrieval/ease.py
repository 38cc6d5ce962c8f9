"""EASE (Steck, WWW 2019): a closed-form item-item linear model, B = I - P·diag(1/diag(P)), P = (XᵀX + λI)⁻¹.

X is the binarised shopper × item matrix. Memory and fit time grow with the square and cube of the catalog
(``max_items`` guards against fitting it on a catalog it cannot handle), so it is a baseline and an optional
source, not a default one. A shopper is scored from the distinct items of their history; a product page or
cart from its items. Negative scores are clipped to 0 ("no evidence"), as the pipeline expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from shelfwise.domain import EventType
from shelfwise.request import Query
from shelfwise.retrieval.base import DenseScores, Retriever, TrainData
from shelfwise.settings import EASESettings

_NOT_INTERACTIONS = np.array([EventType.remove_from_cart, EventType.search], np.int8)


class EASERetriever(Retriever):
    name = "ease"

    def __init__(self, settings: EASESettings | None = None) -> None:
        self.settings = settings or EASESettings()
        self.weights = np.zeros((0, 0), np.float32)

    def fit(self, data: TrainData) -> "EASERetriever":
        s = self.settings
        n = data.n_items
        if n > s.max_items:
            raise ValueError(f"EASE needs an n_items² matrix; {n} items is over models.ease.max_items={s.max_items}")
        X = data.user_item_matrix()
        X.data[:] = 1.0
        gram = (X.T @ X).toarray().astype(np.float32)
        gram[np.diag_indices(n)] += s.l2
        # inverse of a symmetric positive-definite matrix by Cholesky (LAPACK potrf + potri, in place)
        chol, info = lapack.spotrf(gram, lower=False, overwrite_a=True, clean=False)
        if info != 0:
            raise ValueError(f"EASE: Gram matrix not positive definite (LAPACK info {info}); raise models.ease.l2")
        inv, info = lapack.spotri(chol, lower=False, overwrite_c=True)
        if info != 0:
            raise ValueError(f"EASE: inversion failed (LAPACK info {info})")
        inv = np.triu(inv) + np.triu(inv, 1).T  # potri fills the upper triangle only
        diag = np.diag(inv).copy()
        inv /= -diag[None, :]
        inv[np.diag_indices(n)] = 0.0
        self.weights = np.ascontiguousarray(inv, dtype=np.float32)
        return self

    def _inputs(self, queries: Sequence[Query]) -> sp.csr_matrix:
        rows, cols = [], []
        for r, q in enumerate(queries):
            if len(q.anchors):
                items = np.unique(q.anchors)
            else:
                items = np.unique(q.history[~np.isin(q.history_kind, _NOT_INTERACTIONS)])
            rows.append(np.full(len(items), r))
            cols.append(items)
        n = self.weights.shape[0]
        if not rows:
            return sp.csr_matrix((len(queries), n), dtype=np.float32)
        cols_all = np.concatenate(cols)
        return sp.csr_matrix((np.ones(len(cols_all), np.float32), (np.concatenate(rows), cols_all)),
                             shape=(len(queries), n))

    @property
    def n_items(self) -> int:
        return self.weights.shape[0]

    def scores(self, queries: Sequence[Query]) -> DenseScores:
        """Dense (EASE is itself n_items²: it is for catalogs up to ``ease.max_items``)."""
        out = np.asarray(self._inputs(queries) @ self.weights, dtype=np.float32)
        return DenseScores(np.maximum(out, 0.0, out=out))

    def save(self, path: Path) -> None:
        np.save(path / "ease.npy", self.weights)
        (path / "ease.json").write_text(self.settings.model_dump_json())

    @classmethod
    def load(cls, path: Path) -> "EASERetriever":
        obj = cls(EASESettings.model_validate_json((path / "ease.json").read_text()))
        obj.weights = np.load(path / "ease.npy")
        return obj
