"""How much of the projection to trust: the blend of projected and raw content similarity, chosen on warm items.

The projection (``projection.py``) is fitted to place an item near its collaborative neighbours; whether that
helps predict what a shopper takes *next* depends on the data (BENCHMARKS.md, Cold start: it helps on the
synthetic storefront, Amazon Beauty and MovieLens, and hurts on the Complete Journey, whose collaborative space
is weak). So the content source scores items by a blend of the two item-item similarities,

    sim(a, b) = w · cos(projected a, projected b) + (1 − w) · cos(content a, content b),

which is the inner product of the concatenated vectors ``[√w · projected ‖ √(1−w) · content]`` (``blend_vectors``:
one vector per item, searchable like any other), and ``w`` is chosen by ``choose_blend_weight`` on the training
data, never by dataset:

1. a validation slice of the warm items (``validation_fraction``, ``seed``) is treated as new: the projection is
   refitted on the other warm items (with the hyperparameters the full fit chose), so the slice's projected
   vectors come from their content alone, as a new item's would;
2. per shopper, the target is their first interaction with a slice item that follows at least one interaction
   with another item, and the profile their last ``history`` other items before it (recency-weighted, as the
   content source's profile) — the cold-item protocol (``evaluation/splits.cold_items``) on training data;
3. every item is ranked (the shopper's earlier items excluded; equal scores in item order, as served) for each
   ``w`` in ``blend_weights``; the ``w`` with the best NDCG@50 is kept (ties: the larger ``w``, the projection),
   if its gain over the largest ``w`` (the projection alone by default) is at least ``MIN_Z`` paired standard
   errors — else the largest ``w``: validation noise never overrules the projection. (NDCG@50 rather than @10:
   on sparse data such as the Complete Journey under 1 % of the targets reach a top 10, too few to tell the
   weights apart.)

``w = 1`` is the projected space alone (what the source served before this blend existed), ``w = 0`` the content
vectors alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from shelfwise.content.projection import Projection, fit_projection, split_validation, unit_rows

MIN_Z = 2.0  # the best weight replaces the projection's only when its paired gain is this many standard errors
MIN_QUERIES = 50  # fewer validation targets than this: too noisy to overrule the projection (w = 1)
MAX_QUERIES = 5000  # shoppers scored (a random sample above it)
MAX_RANKED = 50_000  # items ranked per query (a random sample, always with the targets, above it)
K = 50  # the validation's cut-off: deeper than the served 10, for resolution on sparse data (CJ: 0.2 % of
# targets in a top 10) -- a source proposes candidates to a blend, so reaching its top 50 matters too


def blend_vectors(projected: np.ndarray, content: np.ndarray, weight: float) -> np.ndarray:
    """``[√w · projected ‖ √(1−w) · content]`` of unit rows: inner products are the blended similarity."""
    w = float(weight)
    return np.hstack([np.sqrt(w) * unit_rows(projected), np.sqrt(1.0 - w) * unit_rows(content)]).astype(np.float32)


@dataclass
class BlendChoice:
    weight: float
    scores: dict[str, float] = field(default_factory=dict)  # validation NDCG@50 per weight tried
    queries: int = 0
    slice_items: int = 0
    reason: str = ""
    z: float | None = None  # paired z of the best weight's gain over the projection's, when they differ

    def report(self) -> dict[str, Any]:
        return {"weight": self.weight, "validation_ndcg50": self.scores, "queries": self.queries,
                "slice_items": self.slice_items, "reason": self.reason, "z": self.z}


def refit_without(projection: Projection, x: np.ndarray, y: np.ndarray, keep: np.ndarray, content: Any) -> Projection:
    """The projection's map refitted on rows ``keep`` only, with the hyperparameters ``projection`` chose."""
    report = projection.report
    update: dict[str, Any] = {}
    if "alpha" in report:
        update["ridge_alphas"] = [float(report["alpha"])]
    if projection.kind == "knn":
        update.update(knn_neighbours=[int(report["neighbours"])], knn_temperatures=[float(report["temperature"])])
    return fit_projection(x[keep], y[keep], content.model_copy(update=update), kind=projection.kind)


def validation_queries(user: np.ndarray, item: np.ndarray, ts: np.ndarray, positive: np.ndarray,
                       slice_mask: np.ndarray, history: int) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """(profiles' item rows, oldest first; target rows; excluded rows) per shopper whose first positive event on a
    slice item follows a positive event on another item."""
    order = np.lexsort((ts, user))
    u, it = user[order][positive[order]], item[order][positive[order]]
    bounds = np.flatnonzero(np.r_[True, u[1:] != u[:-1], True])
    hists, targets, excludes = [], [], []
    for b in range(len(bounds) - 1):
        seq = it[bounds[b]:bounds[b + 1]]
        hits = np.flatnonzero(slice_mask[seq])
        if not len(hits):
            continue
        before = seq[:hits[0]]
        before = before[~slice_mask[before]]
        if not len(before):
            continue
        hists.append(before[-history:])
        targets.append(int(seq[hits[0]]))
        excludes.append(np.unique(before))
    return hists, np.array(targets, np.int64), excludes


def gain(ranks: np.ndarray, k: int = K) -> np.ndarray:
    """NDCG@k of single-target ranks (0 = first)."""
    r = np.asarray(ranks)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def ranks_by_weight(projected: np.ndarray, content: np.ndarray, hists: Sequence[np.ndarray], targets: np.ndarray,
                   excludes: Sequence[np.ndarray], weights: Sequence[float], decay: float,
                   ranked: np.ndarray | None = None, chunk: int = 256) -> dict[float, np.ndarray]:
    """Per target, its rank (0 = first) under each blend weight (items ``ranked``, default all; ties in row
    order)."""
    p, c = unit_rows(projected), unit_rows(content)
    n = len(p)
    cand = np.arange(n) if ranked is None else np.asarray(ranked, np.int64)
    pc, cc = p[cand], c[cand]
    where = np.full(n, -1, np.int64)
    where[cand] = np.arange(len(cand))
    ranks = {float(w): np.zeros(len(targets), np.int64) for w in weights}
    for s in range(0, len(targets), chunk):
        qp = np.zeros((min(chunk, len(targets) - s), p.shape[1]), np.float32)
        qc = np.zeros((len(qp), c.shape[1]), np.float32)
        for j in range(len(qp)):
            h = hists[s + j]
            rw = decay ** np.arange(len(h) - 1, -1, -1, dtype=np.float32)
            qp[j], qc[j] = rw @ p[h], rw @ c[h]
        sp_, sc_ = qp @ pc.T, qc @ cc.T
        for j in range(len(qp)):
            t = where[targets[s + j]]
            drop = where[excludes[s + j]]
            drop = drop[drop >= 0]
            for w in ranks:
                score = w * sp_[j] + (1.0 - w) * sc_[j]
                score[drop] = -np.inf
                st = score[t]
                ranks[w][s + j] = int((score > st).sum()) + int((score[:t] == st).sum())
    return ranks


def choose_blend_weight(content_vectors: np.ndarray, embeddings: np.ndarray, warm: np.ndarray,
                        projection: Projection, user: np.ndarray, item: np.ndarray, ts: np.ndarray,
                        positive: np.ndarray, settings: Any) -> BlendChoice:
    """The blend weight for items whose rows are ``content_vectors[i]`` (raw content vectors, as fitted),
    ``embeddings[i]`` (collaborative) and ``warm[i]``; events as row indices into them (``user``, ``item``, ``ts``,
    ``positive``: which events are interactions). ``settings``: a ``ContentSettings`` section."""
    weights = sorted({float(w) for w in settings.blend_weights})
    if weights == [1.0] or not weights:
        return BlendChoice(1.0, reason="one weight configured")
    warm_rows = np.flatnonzero(warm)
    tr, va = split_validation(len(warm_rows), settings.validation_fraction, settings.seed)
    if len(va) == 0 or len(tr) < 2:
        return BlendChoice(1.0, reason="too few warm items for a validation slice")
    slice_mask = np.zeros(len(content_vectors), bool)
    slice_mask[warm_rows[va]] = True
    hists, targets, excludes = validation_queries(user, item, ts, positive, slice_mask, settings.history)
    rng = np.random.default_rng(settings.seed)
    if len(targets) > MAX_QUERIES:
        pick = np.sort(rng.choice(len(targets), MAX_QUERIES, replace=False))
        hists, targets, excludes = [hists[i] for i in pick], targets[pick], [excludes[i] for i in pick]
    if len(targets) < MIN_QUERIES:
        return BlendChoice(1.0, queries=len(targets), slice_items=int(len(va)),
                           reason=f"fewer than {MIN_QUERIES} validation targets")
    refit = refit_without(projection, content_vectors[warm_rows], embeddings[warm_rows], tr, settings)
    projected = refit.transform(content_vectors)
    ranked = None
    if len(content_vectors) > MAX_RANKED:
        others = np.setdiff1d(np.arange(len(content_vectors)), targets)
        ranked = np.union1d(rng.choice(others, MAX_RANKED - len(np.unique(targets)), replace=False), targets)
    ranks = ranks_by_weight(projected, content_vectors, hists, targets, excludes, weights, settings.recency_decay,
                           ranked)
    gains = {w: gain(r) for w, r in ranks.items()}
    scores = {w: float(g.mean()) for w, g in gains.items()}
    best = max(sorted(scores, reverse=True), key=lambda w: scores[w])
    choice = BlendChoice(best, {str(w): round(s, 5) for w, s in scores.items()}, len(targets), int(len(va)),
                         "validation NDCG@50")
    base = max(weights)  # the weight closest to the projection alone
    if best != base:  # overrule it only by more than the validation's noise (paired standard error)
        diff = gains[best] - gains[base]
        z = float(diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))) if diff.std() > 0 else 0.0
        choice.z = round(z, 2)
        if z < MIN_Z:
            choice.weight, choice.reason = base, f"validation NDCG@50 gain of w={best} within noise (z={z:.2f})"
    return choice
