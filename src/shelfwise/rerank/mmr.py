"""MMR diversity (Carbonell & Goldstein 1998): similarity of items by leaf category, price band and embedding.

A slot takes the item maximising ``lam * score - (1 - lam) * max sim(item, items above)`` (scores min-max
normalised over the request's candidates); ``lam = 1`` is plain ranking. Similarity is a weighted sum, in [0, 1],
of the same leaf category, the same price band (log-price buckets of ``price_band_ratio``) and the cosine of ALS
item factors (when the pipeline has an ``als`` source; its weight is dropped otherwise).
"""

from __future__ import annotations

import numpy as np

from shelfwise.items import ItemTable, pad_rows
from shelfwise.settings import BusinessSignals, DiversitySettings


def price_bands(price: np.ndarray, ratio: float) -> np.ndarray:
    """Log-price bucket of each item (-1 when the price is unknown)."""
    out = np.full(len(price), -1, np.int32)
    ok = np.isfinite(price) & (price > 0)
    out[ok] = np.floor(np.log(price[ok]) / np.log(ratio)).astype(np.int32) + 1000
    return out


def unit_vectors(factors: np.ndarray | None) -> np.ndarray | None:
    if factors is None or len(factors) == 0:
        return None
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return (factors / np.maximum(norms, 1e-9)).astype(np.float32)


class Similarity:
    """sim(i, j) in [0, 1]: weighted same-leaf-category, same-price-band and item-embedding cosine."""

    def __init__(self, category: np.ndarray, band: np.ndarray, vectors: np.ndarray | None,
                 w_category: float, w_band: float, w_embedding: float):
        if vectors is None:
            w_embedding = 0.0
        total = w_category + w_band + w_embedding
        self.w = (w_category / total, w_band / total, w_embedding / total) if total > 0 else (0.0, 0.0, 0.0)
        self.category, self.band, self.vectors = category, band, vectors
        self._w32 = tuple(np.float32(w) for w in self.w)

    def between(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) similarities (float32; one request's pool against itself: one gather per item)."""
        wc, wb, we = self._w32
        square = b is a
        if we:
            va = self.vectors[a]
            out = va @ (va if square else self.vectors[b]).T
            np.maximum(out, 0.0, out=out)
            out *= we
        else:
            out = np.zeros((len(a), len(b)), np.float32)
        for w, codes in ((wc, self.category), (wb, self.band)):
            if w:
                ca = codes[a]
                same = np.equal.outer(ca, ca if square else codes[b])
                if (ca < 0).any():  # unknown (-1) is no match, not a shared value
                    same &= (ca >= 0)[:, None]
                np.add(out, w, out=out, where=same)  # the same sums as out += w * same, without the product
        return out

    @classmethod
    def build(cls, items: ItemTable, diversity: DiversitySettings, signals: BusinessSignals,
              unit: np.ndarray | None, bands: np.ndarray | None = None) -> "Similarity":
        """``unit``: unit-length item embeddings (row i = item i), or None; ``bands``: ``price_bands`` of the
        items when the caller keeps them (shared by every placement of a catalog)."""
        n = len(items)  # items added since the embedding was fitted: no embedding similarity
        vectors = pad_rows(unit, n) if unit is not None and 0 < len(unit) <= n else None
        bands = price_bands(items.price, signals.price_band_ratio) if bands is None else bands
        return cls(items.category, bands, vectors, diversity.category, diversity.price_band, diversity.embedding)
