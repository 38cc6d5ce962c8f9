"""Content: items like the page's (or the shopper's recent ones) by their catalog data, through the content tower.

The only source with evidence about an item added after training: its vector comes from its title, description,
category, brand, price and attributes (``content.ContentTower``), so it can be added while serving (``add``)
without retraining, and a brand-new item's page has neighbours.

Fitted from the catalog at training time: the tower encodes every catalog item (incrementally: texts encoded by
the model version serving now are reused, ``resume``) and, with ``content.space = "projected"`` and an ALS source
fitted before it (``link``), projects the content vectors into the ALS item space, fitted on the warm items, and
blends projected and content similarity by the weight that best predicts held-out warm items as shoppers' next
items (``content/blend.py``: projected alone, content alone, or both, the ``blend`` space); otherwise (no ALS,
fewer than two warm items) it uses the content vectors themselves. A product page or cart
scores items by the cosine of their vector with the mean of the anchors' vectors; a shopper by the cosine with
the recency-weighted mean of their last ``content.history`` items' vectors. Items without a vector (seen in
events but not in the catalog, or not encoded yet) have no evidence. Vectors are searched through ``ItemVectors``
(exact below ``exact_max_items``, else the vector index).

Catalogs up to ``neighbours_max_items`` keep each item's top ``neighbours`` as a list, built with the model
(saved beside it) and rebuilt on the live-item thread once ``relist_share`` of the items changed since: a product
page is scored from its item's list, a cart of several items exactly on the union of their lists (an item in
none of them has no evidence from this source), plus the items added or changed since, exactly. That takes a
product with every item off the request (12k items: 12,000 × 1,360 floats per product page or cart).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.content.features import FeatureLayout
from shelfwise.content.tower import ARRAYS, META, ContentTower, Space, interaction_counts, warm_mask
from shelfwise.items import pad_rows
from shelfwise.request import Query
from shelfwise.retrieval.base import Retriever, SourceScores, TrainData, recency_weights, stack_rows
from shelfwise.retrieval.embedding import IndexFactory, ItemVectors, vector_scores
from shelfwise.settings import CandidateSettings, ContentSettings, known_fields


LISTS = "content_lists.npz"  # the neighbour lists saved beside the vectors


class ContentRetriever(Retriever):
    name = "content"

    def __init__(self, settings: ContentSettings | None = None) -> None:
        self.settings = settings or ContentSettings()
        self.tower: ContentTower | None = None
        self.space: Space = "content"  # the tower's space the vectors are in
        self.vectors = ItemVectors("content", np.zeros((0, 1), np.float32))  # row i = item i (zeros: no vector)
        self._collaborative: np.ndarray | None = None
        self._lock = threading.Lock()

    # ---- training ------------------------------------------------------------------------------------
    def link(self, fitted: dict[str, Retriever]) -> None:
        als = fitted.get("als")
        self._collaborative = getattr(als, "item_factors", None)

    def warm_start(self, earlier: Retriever, earlier_items: object) -> None:
        if isinstance(earlier, ContentRetriever) and earlier.tower is not None:
            self.tower = earlier.tower  # its texts are encoded; fit re-fits the projection (a tower serving nothing)

    def resume(self, path: Path) -> None:
        if self.tower is None and (path / META).is_file() and (path / ARRAYS).is_file():
            tower = ContentTower.load(path, self.settings, self.settings.cache_dir or None)
            if tower.layout == FeatureLayout.from_settings(self.settings):  # else its vectors are of another layout
                self.tower = tower

    def fit(self, data: TrainData) -> "ContentRetriever":
        ids = [str(x) for x in data.items.ids]
        rows = np.array([r for r, i in enumerate(ids) if i in data.catalog], np.int64)
        items = [data.catalog[ids[r]] for r in rows]
        tower = self.tower or ContentTower(self.settings, self.settings.cache_dir or None)
        self.space = "content"
        emb = self._collaborative
        if self.settings.space == "projected" and emb is not None and len(emb) == data.n_items and len(rows):
            warm = warm_mask(interaction_counts(data.item, data.n_items, data.weight)[rows],
                             self.settings.min_interactions)
            warm &= np.linalg.norm(emb[rows], axis=1) > 0
            if warm.sum() >= 2:  # what the projection needs
                tower.fit(items, emb[rows], warm, embedding="als")
                self.space = self._blend(tower, items, emb[rows], warm, rows, data)
        if self.space == "content":
            tower.encode(items, space="content")
        self.tower = tower
        dim = tower.space_dim(self.space)
        vectors = np.zeros((data.n_items, dim), np.float32)
        if len(rows):
            vectors[rows] = tower.vectors([it.id for it in items], self.space)
        self.vectors = self._listed(ItemVectors("content", vectors, self.vectors.search_settings))
        self._collaborative = None
        return self

    def _listed(self, space: ItemVectors, lists: sp.csr_matrix | None = None) -> ItemVectors:
        """``space`` with its neighbour lists (``lists`` when they are of this catalog, else built) when the catalog
        is small enough to keep them."""
        n, s = len(space), self.settings
        if s.neighbours and 0 < n <= s.neighbours_max_items:
            if lists is not None and lists.shape == (n, n):
                space._set_lists(lists.tocsr(), np.ones(n, bool))
            else:
                space.build_lists(s.neighbours)
        return space

    @staticmethod
    def _blend(tower: ContentTower, items: list, emb: np.ndarray, warm: np.ndarray, rows: np.ndarray,
               data: TrainData) -> Space:
        """The space the fitted tower serves in: the blend of projected and content similarity whose weight
        predicts held-out warm items best as next items (``content/blend.py``); ``projected`` when that weight
        is 1, ``content`` when it is 0."""
        at = np.full(data.n_items, -1, np.int64)
        at[rows] = np.arange(len(rows))
        item = at[data.item]
        keep = item >= 0
        w = tower.fit_blend(items, emb, warm, data.user[keep], item[keep], data.ts[keep],
                            data.weight[keep] > 0).weight
        return "projected" if w >= 1.0 else "content" if w <= 0.0 else "blend"

    # ---- serving -------------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.vectors)

    def attach_index(self, factory: IndexFactory | None, settings: CandidateSettings) -> None:
        self.vectors.attach(factory, settings)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors (in ``space``) of items by row of the serving item table: items added or changed since
        training, searchable from the next request on. Requests running keep the vectors they started with."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return
        with self._lock:
            old = self.vectors
            grown = pad_rows(old.vectors, int(rows.max()) + 1)
            grown = grown.copy() if grown is old.vectors else grown
            grown[rows] = vectors
            space = old.updated(grown, rows)
            if space.lists is not None and space.unlisted_share > self.settings.relist_share:
                space = self._listed(space)  # on the live-item thread: requests keep the vectors they started with
            self.vectors = space

    def add_encoded(self, index: dict[str, int], ids: Sequence[str], vectors: np.ndarray) -> int:
        """``add`` by item id: the vectors of the ids the serving item table (``index``: id → row) holds; ids it
        does not hold are skipped. The engine's background encoder hands its results here (offline evaluation of
        new items too). Returns how many were added."""
        keep = [r for r, i in enumerate(ids) if i in index]
        self.add(np.array([index[ids[r]] for r in keep], np.int64), np.asarray(vectors)[keep])
        return len(keep)

    def profile(self, vectors: np.ndarray, q: Query) -> np.ndarray:
        """A query's vector (unit; zeros without evidence): its anchors' mean, else its recent history's."""
        anchors = q.anchors[q.anchors < len(vectors)]
        if len(anchors):
            v = vectors[anchors].sum(axis=0)
        else:
            hist = q.history[q.history < len(vectors)][-self.settings.history:]
            w = recency_weights(len(hist), self.settings.recency_decay)
            v = (vectors[hist] * w[:, None]).sum(axis=0) if len(hist) else np.zeros(vectors.shape[1], np.float32)
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else np.zeros_like(v)

    def scores(self, queries: Sequence[Query]) -> SourceScores:
        space = self.vectors  # one snapshot for the whole batch
        q = np.zeros((len(queries), space.vectors.shape[1]), np.float32)
        for r, query in enumerate(queries):
            q[r] = self.profile(space.vectors, query)
        present = np.abs(q).sum(axis=1) > 0
        # product pages and carts from their items' lists: q = Σ anchors' vectors / |Σ anchors' vectors|
        known = [query.anchors[query.anchors < len(space)].astype(np.int64) for query in queries]
        listed = [r for r, a in enumerate(known) if present[r] and space.can_combine(a)]
        if not listed:
            return vector_scores(space, q, present)
        anchors = [known[r] for r in listed]
        sizes = [len(a) for a in anchors]
        norms = np.array([np.linalg.norm(space.vectors[a].sum(axis=0)) for a in anchors], np.float32)
        from_lists = space.combined(q[listed], np.repeat(np.arange(len(listed)), sizes), np.concatenate(anchors),
                                    np.repeat(1.0 / norms, sizes).astype(np.float32))
        rest = np.setdiff1d(np.arange(len(queries)), listed)
        parts = [(np.array(listed, np.int64), from_lists)]
        if len(rest):
            parts.append((rest, vector_scores(space, q[rest], present[rest])))
        return stack_rows(len(queries), parts)

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        np.savez(path / "content.npz", vectors=self.vectors.vectors)
        if self.vectors.lists is not None and self.vectors.unlisted_share == 0:
            sp.save_npz(path / LISTS, self.vectors.lists)
        (path / "content.json").write_text(json.dumps({"space": self.space,
                                                       "settings": self.settings.model_dump(mode="json")}))
        if self.tower is not None:
            self.tower.save(path)

    @classmethod
    def load(cls, path: Path) -> "ContentRetriever":
        meta = json.loads((path / "content.json").read_text())
        obj = cls(ContentSettings.model_validate(known_fields(ContentSettings, meta["settings"])))
        obj.space = meta["space"]
        lists = sp.load_npz(path / LISTS) if (path / LISTS).is_file() else None
        obj.vectors = obj._listed(ItemVectors("content", np.load(path / "content.npz")["vectors"]), lists)
        if (path / META).is_file():
            obj.tower = ContentTower.load(path, obj.settings, obj.settings.cache_dir or None)
        return obj

    def use_cache_dir(self, path: Path) -> None:
        """Where this process keeps the text encoder's export (a model may come from a trainer elsewhere)."""
        self.settings = self.settings.model_copy(update={"cache_dir": str(path)})
        if self.tower is not None:
            self.tower.cache_dir = Path(path)
