"""Cohort centroids: what a new shopper's first request is answered from.

Training groups shoppers into cohorts by their entry context (the device, placement and segments their first events
named: ``EventStore.entry_contexts``) and the root category of the first item they looked at, once per level of
``models.cohort.levels`` (e.g. segment + device, then segment, then device). A cohort's centroid is the mean of its
shoppers' interest vectors — each shopper's event-weighted, time-decayed interactions, normalised to sum 1, so
every shopper counts once however busy — cut to its best ``top_items``; cohorts of fewer than ``min_support``
shoppers are dropped.

A request without history, product page, cart or model row (``Query``) is placed by what it says about the visit
(``Visit``: the request's device, placement, segments and the root of its category filter) in the first level
whose cohort exists; several segments take the smallest such cohort (the most specific). Every other request gets
nothing from this source: from the first view on, the session-aware sources answer. Without a cohort, trending
fills the rail. Cohort slots are no evidence about the shopper (``fallback``), and say ``reason: cohort``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.items import category_path
from shelfwise.request import Query, Visit
from shelfwise.retrieval.base import Retriever, SourceScores, SparseScores, TrainData
from shelfwise.settings import CohortSettings, known_fields

SEP = "\x1f"


def cohort_keys(level: Sequence[str], visit: Visit) -> list[str]:
    """The keys of the cohorts a visit is in at one level (one per segment when the level has segments; none when
    the visit does not say one of the level's dimensions)."""
    values: dict[str, list[str]] = {"device": [visit.device], "placement": [visit.placement],
                                    "category": [visit.category], "segment": list(dict.fromkeys(visit.segments))}
    keys = [""]
    for dim in level:
        vals = [v for v in values[dim] if v]
        keys = [f"{k}{SEP if k else ''}{dim}={v}" for k in keys for v in vals]
    return keys


def describe(key: str) -> str:
    """A cohort key as people read it: ``segment=audio-fan, device=mobile``."""
    return key.replace(SEP, ", ")


class CohortRetriever(Retriever):
    name = "cohort"
    evidence = False  # the shopper's cohort is no evidence about the shopper
    fallback_reason = "cohort"
    new_shoppers_only = True

    def __init__(self, settings: CohortSettings | None = None) -> None:
        self.settings = settings or CohortSettings()
        self.levels: list[list[str]] = [list(lv) for lv in self.settings.levels]
        self.keys: list[str] = []
        self.support = np.zeros(0, np.int64)
        self.centroids = sp.csr_matrix((0, 0), dtype=np.float32)
        self._n_items = 0
        self.index: dict[str, int] = {}

    @property
    def n_items(self) -> int:
        return self._n_items

    # ---- training ------------------------------------------------------------------------------------------
    def visits(self, data: TrainData) -> list[Visit | None]:
        """Each training shopper's visit in cohort terms (None for shoppers without an interaction)."""
        out: list[Visit | None] = [None] * data.n_users
        if not len(data.user):
            return out
        order = np.lexsort((data.ts, data.user))
        first = order[np.r_[True, data.user[order][1:] != data.user[order][:-1]]]
        roots = [category_path(n)[0].casefold() for n in data.items.category_names]
        for row in first.tolist():
            u = int(data.user[row])
            code = int(data.items.category[data.item[row]])
            ctx = data.contexts.get(str(data.shoppers[u]))
            out[u] = Visit(ctx.device.casefold() if ctx else "", ctx.placement.casefold() if ctx else "",
                           roots[code] if code >= 0 else "", tuple(s.casefold() for s in ctx.segments) if ctx else ())
        return out

    def fit(self, data: TrainData) -> "CohortRetriever":
        s = self.settings
        self._n_items = data.n_items
        keep = data.weight > 0
        decay = np.power(0.5, (data.now - data.ts[keep]) / (s.half_life_days * 86400.0))
        m = sp.csr_matrix(((data.weight[keep] * decay).astype(np.float64), (data.user[keep], data.item[keep])),
                          shape=(data.n_users, data.n_items))
        m.sum_duplicates()
        totals = np.asarray(m.sum(axis=1)).ravel()
        active = totals > 0
        m = sp.diags(np.where(active, 1.0 / np.where(active, totals, 1.0), 0.0)) @ m  # each shopper sums to 1
        ids: dict[str, int] = {}
        pairs: set[tuple[int, int]] = set()
        for u, visit in enumerate(self.visits(data)):
            if visit is None or not active[u]:
                continue
            for level in self.levels:
                for key in cohort_keys(level, visit):
                    pairs.add((ids.setdefault(key, len(ids)), u))
        rows, cols = (np.array(x, np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
        members = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), data.n_users))
        support = np.asarray(members.sum(axis=1)).ravel().astype(np.int64)
        big = np.flatnonzero(support >= s.min_support)
        sums = (members[big] @ m).tocsr() if len(big) else sp.csr_matrix((0, data.n_items))
        self.keys = [k for k, i in sorted(ids.items(), key=lambda kv: kv[1])]
        self.keys = [self.keys[i] for i in big]
        self.support = support[big]
        self.centroids = self._top(sp.diags(1.0 / np.maximum(self.support, 1)) @ sums if len(big) else sums,
                                   s.top_items)
        self._reset()
        return self

    @staticmethod
    def _top(matrix: sp.spmatrix, k: int) -> sp.csr_matrix:
        """Each row's ``k`` largest entries (float32)."""
        m = sp.csr_matrix(matrix)
        indptr, indices, data = [0], [], []
        for r in range(m.shape[0]):
            lo, hi = m.indptr[r], m.indptr[r + 1]
            vals, cols = m.data[lo:hi], m.indices[lo:hi]
            if len(vals) > k:
                pick = np.argpartition(-vals, k - 1)[:k]
                vals, cols = vals[pick], cols[pick]
            order = np.argsort(cols, kind="stable")
            indices.append(cols[order])
            data.append(vals[order])
            indptr.append(indptr[-1] + len(order))
        cat = (lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t))
        return sp.csr_matrix((cat(data, np.float32), cat(indices, np.int32), np.array(indptr, np.int64)),
                             shape=m.shape)

    # ---- serving -------------------------------------------------------------------------------------------
    def cohort_of(self, q: Query) -> int | None:
        """The row of the cohort answering a query, None when it is not a new shopper's or no cohort fits."""
        if len(q.history) or len(q.anchors) or q.user >= 0:
            return None
        for level in self.levels:
            found = [self.index[k] for k in cohort_keys(level, q.visit) if k in self.index]
            if found:
                return min(found, key=lambda r: (self.support[r], r))
        return None

    def describe(self, q: Query) -> str | None:
        """The cohort answering a query, as people read it (explanations)."""
        r = self.cohort_of(q)
        return None if r is None else f"{describe(self.keys[r])} ({int(self.support[r])} shoppers)"

    def scores(self, queries: Sequence[Query]) -> SourceScores:
        c = self.centroids
        rows = []
        for q in queries:
            r = self.cohort_of(q)
            lo, hi = (c.indptr[r], c.indptr[r + 1]) if r is not None else (0, 0)
            rows.append((c.indices[lo:hi].astype(np.int64), c.data[lo:hi]))
        return SparseScores.from_rows(self.n_items, rows)

    def _reset(self) -> None:
        self.index = {k: i for i, k in enumerate(self.keys)}

    # ---- artefacts -----------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        c = self.centroids
        np.savez(path / "cohort.npz", indptr=c.indptr, indices=c.indices, data=c.data, support=self.support,
                 n_items=self._n_items, keys=json.dumps(self.keys), levels=json.dumps(self.levels),
                 settings=self.settings.model_dump_json())

    @classmethod
    def load(cls, path: Path) -> "CohortRetriever":
        z = np.load(path / "cohort.npz")
        obj = cls(CohortSettings.model_validate(known_fields(CohortSettings, json.loads(str(z["settings"])))))
        obj.levels = json.loads(str(z["levels"]))
        obj.keys = json.loads(str(z["keys"]))
        obj._n_items = int(z["n_items"])
        obj.support = z["support"].astype(np.int64)
        obj.centroids = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(len(obj.keys), obj._n_items))
        obj._reset()
        return obj
