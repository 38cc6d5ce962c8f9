"""Ranking metrics of top-k lists against each shopper's target items.

Conventions (as in S3-Rec / ICLRec / BSARec full-ranking tables, and ``seqbench.py``): a list is best first;
positions are 0-based; with one target, HR@k = [rank < k] and NDCG@k = 1 / log2(rank + 2). With several targets
(temporal split) HR@k is "any target in the top k", recall@k = found / |targets|, NDCG@k uses binary gains and
the ideal DCG of min(|targets|, k) hits, MRR is 1 / (position of the first target + 1) within the list (0 when
none is listed: MRR@len). Everything is averaged over shoppers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (5, 10, 20)


def hit_positions(lists: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Per shopper, the 0-based positions in the list holding a target item."""
    out = []
    for lst, tgt in zip(lists, targets):
        wanted = set(tgt)
        out.append(np.array([p for p, it in enumerate(lst) if it in wanted], np.int64))
    return out


def per_user(lists: Sequence[Sequence[str]], targets: Sequence[Sequence[str]],
             ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Per-shopper values of HR@k, NDCG@k, Recall@k and MRR (arrays aligned with the shoppers)."""
    if len(lists) != len(targets):
        raise ValueError("one list per target set")
    hits = hit_positions(lists, targets)
    n_targets = np.array([len(set(t)) for t in targets], np.float64)
    out: dict[str, np.ndarray] = {}
    discount = 1.0 / np.log2(np.arange(max(ks, default=0) + 2) + 2)
    for k in ks:
        found = np.array([np.count_nonzero(h < k) for h in hits], np.float64)
        dcg = np.array([discount[h[h < k]].sum() for h in hits], np.float64)
        ideal = np.array([discount[:int(min(t, k))].sum() for t in n_targets], np.float64)
        out[f"HR@{k}"] = (found > 0).astype(np.float64)
        out[f"NDCG@{k}"] = np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)
        out[f"Recall@{k}"] = np.divide(found, n_targets, out=np.zeros_like(found), where=n_targets > 0)
    out["MRR"] = np.array([1.0 / (h[0] + 1) if len(h) else 0.0 for h in hits], np.float64)
    return out


def summarise(values: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Means over shoppers (optionally only those in ``mask``)."""
    return {name: float(v[mask].mean() if mask is not None else v.mean()) if len(v) and (mask is None or mask.any())
            else 0.0 for name, v in values.items()}


def coverage(lists: Sequence[Sequence[str]], n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-k list."""
    if n_items <= 0:
        return 0.0
    shown = {it for lst in lists for it in lst[:k]}
    return len(shown) / n_items


def long_tail_items(popularity: dict[str, int], item_ids: Sequence[str], head_share: float = 0.2) -> set[str]:
    """The long tail: every item outside the ``head_share`` most-interacted items (ties by id)."""
    ordered = sorted(item_ids, key=lambda i: (-popularity.get(i, 0), i))
    head = int(round(head_share * len(ordered)))
    return set(ordered[head:])


def long_tail_share(lists: Sequence[Sequence[str]], tail: set[str], k: int) -> float:
    """Share of the recommended slots (top-k of every list) filled with long-tail items."""
    slots = [it for lst in lists for it in lst[:k]]
    return sum(1 for it in slots if it in tail) / len(slots) if slots else 0.0
