"""The cold-start protocols' pieces beside the runner: new items added to a trained model the way the API adds
them, and the two baselines that have no served counterpart.

* ``add_live_items`` — items the model was not trained with get a row in the item table (``assemble.with_items``,
  what ``Shelfwise.upsert_items`` calls) and their content vectors from the model's content tower through a
  ``BackgroundEncoder`` into the content source (``ContentRetriever.add_encoded``, the engine's encoder sink): the
  path a ``PUT /v1/items`` after training takes, so what the cold-item protocol measures is what runs online.
* ``popularity_among`` (``popularity-cold``) — the held-out items ordered by how often they were interacted with,
  counting every held-out event except the evaluated targets themselves: what the shop learns about them *later*,
  an oracle no model trained before they arrived can know.
* ``category_popularity`` (``popularity-category``) — the held-out items ordered by the training interactions of
  their category (their full category path; ties by id): the popularity a shop knows about an item on its first
  day, from its shelf.
* ``AttributeKNN`` — each item scored by its mean Jaccard overlap of catalog facts (every level of its category
  path, brand, ``key=value`` attributes, tags; facts no other item shares are dropped, as they only ever widen
  the union) with the shopper's last ``history`` items; ties by catalog order.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.assemble import with_items
from shelfwise.content.tower import BackgroundEncoder
from shelfwise.domain import Item
from shelfwise.evaluation.splits import Split, positive_mask
from shelfwise.pipeline import Pipeline
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.stores.protocols import EventLog

ENCODE_TIMEOUT_S = 3600.0


def add_live_items(pipeline: Pipeline, items: Sequence[Item]) -> tuple[Pipeline, int]:
    """``pipeline`` with ``items`` added after training, as the engine adds catalog upserts: a row each, and their
    content vectors encoded by a ``BackgroundEncoder`` on the model's content tower (when it has a content
    source). Returns the new pipeline and how many vectors the content source received."""
    grown = with_items(pipeline, items)
    content = grown.retrievers.get("content")
    if not isinstance(content, ContentRetriever) or content.tower is None or not items:
        return grown, 0
    received: list[int] = []

    def sink(ids: list[str], vectors: np.ndarray) -> None:
        received.append(content.add_encoded(grown.items.index, ids, vectors))

    encoder = BackgroundEncoder(content.tower, sink, space=content.space, warm_up=False, name="eval-encoder")
    try:
        encoder.submit(items)
        if not encoder.flush(ENCODE_TIMEOUT_S):
            raise RuntimeError("encoding the held-out items did not finish")
    finally:
        encoder.close()
    if encoder.errors:
        raise RuntimeError(f"encoding the held-out items failed: {encoder.last_error}")
    grown.items.touch()
    return grown, sum(received)


def popularity_among(split: Split, log: EventLog) -> list[str]:
    """The held-out items, most interacted first (ties by id), counted over the full log's held-out events except
    each evaluated shopper's target event."""
    held = set(split.held_out)
    pos = positive_mask(log)
    counts = dict.fromkeys(split.held_out, 0)
    for it in log.item[pos].tolist():
        if it in held:
            counts[it] += 1
    for tgt in split.targets:
        for it in tgt:
            if it in counts:
                counts[it] -= 1
    return sorted(counts, key=lambda i: (-counts[i], i))


def category_popularity(split: Split, items: Sequence[Item]) -> list[str]:
    """The held-out items, those of the most interacted category (their full category path, in training) first;
    an item whose category training never saw counts 0 (a coarser level's count would not compare); ties by id."""
    by_id = {it.id: it for it in items}
    counts: dict[tuple[str, ...], int] = {}
    train = split.train
    for it in train.item[positive_mask(train)].tolist():
        item = by_id.get(it)
        if item is not None and item.category:
            path = tuple(item.category)
            counts[path] = counts.get(path, 0) + 1
    score = {i: counts.get(tuple(by_id[i].category), 0) if i in by_id else 0 for i in split.held_out}
    return sorted(score, key=lambda i: (-score[i], i))


def facts(item: Item) -> set[str]:
    """An item's catalog facts as tokens: every category prefix, brand, ``key=value`` attributes, tags."""
    out = {"cat:" + " > ".join(item.category[:i + 1]) for i in range(len(item.category))}
    if item.brand:
        out.add("brand:" + item.brand.casefold())
    for k, v in (item.attributes or {}).items():
        for x in (v if isinstance(v, list) else [v]):
            out.add(f"attr:{k}={json.dumps(x, sort_keys=True) if isinstance(x, (dict, list)) else x}")
    out.update("tag:" + t.casefold() for t in (item.tags or []))
    return out


class AttributeKNN:
    """The attribute-overlap kNN baseline over a fixed list of items (the whole catalog)."""

    def __init__(self, items: Sequence[Item], history: int = 20) -> None:
        self.ids = [it.id for it in items]
        self.index = {i: r for r, i in enumerate(self.ids)}
        self.history = history
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for r, it in enumerate(items):
            for f in facts(it):
                rows.append(r)
                cols.append(vocab.setdefault(f, len(vocab)))
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(items), max(len(vocab), 1)))
        shared = np.flatnonzero(np.asarray((matrix > 0).sum(axis=0)).ravel() >= 2)  # a fact of one item never overlaps
        self.matrix = matrix[:, shared].tocsr()
        self.sizes = np.asarray(self.matrix.sum(axis=1)).ravel()

    def lists(self, histories: Sequence[Sequence[str]], excludes: Sequence[Iterable[str]], k: int,
              batch: int = 64, only: set[str] | None = None) -> list[list[str]]:
        """Per shopper, the top ``k`` items by mean Jaccard to their last ``history`` items (excluded ones
        left out; with ``only``, only those items); an empty list without a known history item."""
        out: list[list[str]] = []
        outside = np.array([i not in only for i in self.ids], bool) if only is not None else None
        for start in range(0, len(histories), batch):
            part = histories[start:start + batch]
            rows = [[self.index[h] for h in hist if h in self.index][-self.history:] for hist in part]
            uniq = sorted({r for rs in rows for r in rs})
            if not uniq:
                out += [[] for _ in part]
                continue
            col = {r: c for c, r in enumerate(uniq)}
            inter = (self.matrix @ self.matrix[uniq].T).toarray()  # (n_items, |uniq|)
            union = self.sizes[:, None] + self.sizes[uniq][None, :] - inter
            jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            for j, rs in enumerate(rows):
                if not rs:
                    out.append([])
                    continue
                score = jac[:, [col[r] for r in rs]].mean(axis=1)
                drop = [self.index[x] for x in excludes[start + j] if x in self.index]
                score[drop] = -1.0
                if outside is not None:
                    score[outside] = -1.0
                top = np.argsort(-score, kind="stable")[:k]
                out.append([self.ids[t] for t in top if score[t] > 0])
        return out
