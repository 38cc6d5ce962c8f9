"""The content vector of an item: its text embedding beside hashed catalog fields, deterministic.

    [ text (384) ‖ category path (every level, hashed) ‖ brand (hashed) ‖ price band ‖ attributes + tags (hashed) ]

Each block is L2-normalised (an item without that field gets a zero block, never a made-up value) and then
multiplied by its weight (``ContentSettings.*_weight``), so no block dominates by its width. Hashing is blake2b of
``field=value`` strings (never Python's salted ``hash``): the same item gives the same vector in every process.

* text: MiniLM of ``item_text(item)`` (title, then description); an item with neither gets a zero block.
* category: every level of the path as its prefix (``Audio``, ``Audio > Headphones``), so siblings share the
  root's bucket and differ at the leaf; deeper levels weigh more (level i has weight i + 1).
* brand: case-folded and trimmed.
* price band: log-spaced bands between ``price_min`` and ``price_max``, a Gaussian kernel over the bands so that
  close prices are similar even across a band edge, and similarity falls with the price ratio.
* attributes: ``key=value`` per scalar, ``key=element`` per list element, ``key.sub=value`` for nested
  objects; numbers are written with 4 significant digits (``4.5``, ``128``), booleans as ``true``/``false``,
  nulls are skipped; tags as ``tag=value``. Keys and string values are case-folded and trimmed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from shelfwise.content.projection import unit_rows
from shelfwise.domain import Item

TEXT_DIM = 384
MAX_ATTRIBUTE_TOKENS = 256  # per item: bounds the work on a pathological attributes object


def item_text(item: Item) -> str:
    """What the text encoder reads: the title, then the description (whitespace collapsed)."""
    parts = [" ".join(p.split()) for p in (item.title, item.description) if p and p.strip()]
    return ". ".join(parts)


def _norm(s: str) -> str:
    return " ".join(str(s).split()).casefold()


def _bucket(token: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little") % n


def _scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return f"{value:.4g}"
    if isinstance(value, str):
        v = _norm(value)
        return v or None
    return None


def attribute_tokens(attributes: dict[str, Any], tags: Iterable[str] = ()) -> list[str]:
    """The ``key=value`` strings an item's attributes and tags hash into (deterministic order, deduplicated)."""
    out: list[str] = []

    def walk(key: str, value: Any, depth: int) -> None:
        if len(out) >= MAX_ATTRIBUTE_TOKENS or depth > 4:
            return
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                walk(f"{key}.{_norm(k)}", value[k], depth + 1)
        elif isinstance(value, (list, tuple, set, frozenset)):
            elems = sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=str)) \
                if isinstance(value, (set, frozenset)) else value
            for v in elems:
                walk(key, v, depth + 1)
        else:
            s = _scalar(value)
            if s is not None:
                out.append(f"{key}={s}")

    for k in sorted(attributes, key=str):
        walk(_norm(k), attributes[k], 0)
    for t in tags:
        s = _scalar(t)
        if s is not None:
            out.append(f"tag={s}")
    return list(dict.fromkeys(out))[:MAX_ATTRIBUTE_TOKENS]


@dataclass(frozen=True)
class FeatureLayout:
    """Widths and weights of the blocks (from ``ContentSettings``); part of a saved tower's identity."""

    category_buckets: int = 256
    brand_buckets: int = 128
    attribute_buckets: int = 512
    price_bands: int = 16
    price_min: float = 1.0
    price_max: float = 10_000.0
    price_kernel: float = 1.0
    text_weight: float = 1.0
    category_weight: float = 1.0
    brand_weight: float = 0.5
    price_weight: float = 0.5
    attribute_weight: float = 1.0

    @classmethod
    def from_settings(cls, content: Any) -> "FeatureLayout":
        return cls(**{k: getattr(content, k) for k in cls.__dataclass_fields__})

    @property
    def dim(self) -> int:
        return TEXT_DIM + self.category_buckets + self.brand_buckets + self.price_bands + self.attribute_buckets

    def blocks(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, width in (("text", TEXT_DIM), ("category", self.category_buckets), ("brand", self.brand_buckets),
                            ("price", self.price_bands), ("attributes", self.attribute_buckets)):
            out[name] = slice(start, start + width)
            start += width
        return out

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _unit(block: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(block)
    return block / n if n > 0 else block


def price_band_vector(price: float | None, layout: FeatureLayout) -> np.ndarray:
    """Gaussian kernel (width ``price_kernel`` bands) of log(price) over ``price_bands`` log-spaced band centres,
    zeros when unknown. Two prices ``d`` bands apart have cosine ``exp(-d² / (4 · width²))``."""
    v = np.zeros(layout.price_bands, np.float32)
    if price is None or not math.isfinite(price) or price <= 0:
        return v
    lo, hi = math.log(layout.price_min), math.log(layout.price_max)
    pos = (min(max(math.log(price), lo), hi) - lo) / (hi - lo) * (layout.price_bands - 1)
    d = (np.arange(layout.price_bands) - pos) / layout.price_kernel
    v[:] = np.exp(-0.5 * d * d)
    return v


def structured_vector(item: Item, layout: FeatureLayout) -> np.ndarray:
    """Every block but the text one (zeros there), weighted."""
    b = layout.blocks()
    v = np.zeros(layout.dim, np.float32)
    cat = np.zeros(layout.category_buckets, np.float32)
    path = [_norm(c) for c in item.category if c and c.strip()]
    for level in range(len(path)):
        cat[_bucket("cat:" + " > ".join(path[: level + 1]), layout.category_buckets)] += level + 1.0
    v[b["category"]] = layout.category_weight * _unit(cat)
    if item.brand and item.brand.strip():
        v[b["brand"].start + _bucket("brand:" + _norm(item.brand), layout.brand_buckets)] = layout.brand_weight
    v[b["price"]] = layout.price_weight * _unit(price_band_vector(item.price, layout))
    attrs = np.zeros(layout.attribute_buckets, np.float32)
    for tok in attribute_tokens(item.attributes, item.tags):
        attrs[_bucket("attr:" + tok, layout.attribute_buckets)] += 1.0
    v[b["attributes"]] = layout.attribute_weight * _unit(attrs)
    return v


def content_vectors(items: Sequence[Item], text_vectors: np.ndarray, layout: FeatureLayout) -> np.ndarray:
    """``(len(items), layout.dim)`` float32: structured blocks plus the given text embeddings (one row per item;
    a row for an item without text must be zero, see ``has_text``)."""
    if len(text_vectors) != len(items):
        raise ValueError("one text vector per item")
    out = np.zeros((len(items), layout.dim), np.float32)
    for r, it in enumerate(items):
        out[r] = structured_vector(it, layout)
    with_text = np.array([has_text(it) for it in items], bool)
    text = np.zeros((len(items), TEXT_DIM), np.float32)
    text[with_text] = np.asarray(text_vectors, np.float32)[with_text]
    out[:, layout.blocks()["text"]] = text_block(text, layout)
    return out


def text_block(text_vectors: np.ndarray, layout: FeatureLayout) -> np.ndarray:
    """The text block of content vectors from raw encoder rows (zero rows stay zero)."""
    return layout.text_weight * unit_rows(text_vectors)


def has_text(item: Item) -> bool:
    return bool(item_text(item))


def text_hash(item: Item) -> str:
    """Identity of what the text encoder reads (an unchanged text is never re-encoded)."""
    return hashlib.blake2b(item_text(item).encode("utf-8"), digest_size=12).hexdigest()


def content_hash(item: Item) -> str:
    """Identity of every field the content vector reads (stock, cost, availability and dates are not)."""
    doc = {"text": item_text(item), "category": list(item.category), "brand": item.brand, "price": item.price,
           "attributes": attribute_tokens(item.attributes, item.tags)}
    return hashlib.blake2b(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                           digest_size=12).hexdigest()
