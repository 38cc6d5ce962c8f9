"""The ranker's candidates: exactly what the API's blend proposes for a placement, cut to the top N.

``generate_candidates`` runs the pipeline's own ``blend`` and ``exclusion_mask`` (used to build training rows);
``candidates_from_scores`` is the part shared with serving, where ``Pipeline.recommend`` has already blended and
masked. Both hand the ranker the same thing: the N best servable items by blended score, and each source's
row-normalised score for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from shelfwise.retrieval.base import Query, top_k

if TYPE_CHECKING:  # pragma: no cover
    from shelfwise.pipeline import Pipeline, RecRequest


@dataclass
class Candidates:
    items: np.ndarray  # (B, N) int64 item indices, best blend first; -1 pads rows with fewer servable items
    valid: np.ndarray  # (B, N) bool
    blend: np.ndarray  # (B, N) float32 blended score (0 on pads)
    sources: dict[str, np.ndarray]  # name -> (B, N) float32 score normalised to the row max (in [0, 1])

    @property
    def shape(self) -> tuple[int, int]:
        return self.items.shape  # type: ignore[return-value]


def candidates_from_scores(total: np.ndarray, parts: dict[str, np.ndarray], weights: dict[str, float],
                           n: int) -> Candidates:
    """Top-``n`` of masked blended scores (``-inf`` = not servable) with each source's normalised score.

    ``parts`` are the blend's weighted, row-normalised contributions; dividing by the weight gives back the
    source's own normalised score, so no source is scored twice.
    """
    idx, score = top_k(total, n)
    valid = np.isfinite(score)
    items = np.where(valid, idx, -1).astype(np.int64)
    safe = np.where(valid, idx, 0)
    blend = np.where(valid, score, 0.0).astype(np.float32)
    sources = {}
    for name, p in parts.items():
        w = weights.get(name, 0.0)
        s = np.take_along_axis(p, safe, axis=1) / (w if w else 1.0)
        sources[name] = np.where(valid, s, 0.0).astype(np.float32)
    return Candidates(items, valid, blend, sources)


def generate_candidates(pipe: "Pipeline", requests: Sequence["RecRequest"], queries: Sequence[Query],
                        placement: str, n: int) -> Candidates:
    """What ``Pipeline.recommend`` would hand the ranker for these requests (one placement)."""
    total, parts = pipe.blend(queries, placement)
    conf = pipe.placement(placement)
    for r, (req, q) in enumerate(zip(requests, queries)):
        total[r, pipe.exclusion_mask(req, q, conf)] = -np.inf
    return candidates_from_scores(total, parts, conf.weights, n)
