"""``ContentTower``: text encoder + content features + projection, with incremental encoding and save/load.

    tower = ContentTower(settings.models.content, cache_dir=settings.content_cache_dir)
    tower.fit(catalog_items, item_factors, warm)           # rows of item_factors / warm align with catalog_items
    ids, vectors = tower.encode_changed(upserted_items)     # only new or changed items; (n, d) unit vectors
    tower.save(version_dir); ContentTower.load(version_dir, settings.models.content, settings.content_cache_dir)

State per item: a content hash (every field the vector reads) and a text hash (what MiniLM reads), its content
vector and its projected vector. ``encode_changed`` re-encodes an item only when its content hash changed, and
runs MiniLM only when its text changed (a price change recomputes the cheap blocks, not the text); identical
texts within a batch are encoded once. MiniLM runs outside the tower's lock, so readers never wait for it.

Three spaces: ``projected`` (the collaborative space the projection was fitted into; cosine, unit vectors) for
candidate retrieval next to the collaborative vectors, ``content`` (the unit-normalised content vector) for
the content-similarity-to-history ranker feature, and ``blend`` (both, weighted by ``blend_weight``, which
``fit_blend`` chooses on the warm items' next interactions: ``content/blend.py``) for the content source.

Encoding never runs on the API's start-up path: ``ContentTower.load`` reads arrays only (the encoder is loaded at
the first encode), and ``BackgroundEncoder`` runs ``encode_changed`` on a worker thread and hands the result to a
sink (e.g. ``vector_index.add``) — see its docstring.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.content.encoder import DIM as TEXT_DIM
from shelfwise.content.encoder import ProgressFn, TextEncoder
from shelfwise.content.features import (FeatureLayout, content_hash, content_vectors, has_text, item_text,
                                        text_block, text_hash)
from shelfwise.content.blend import BlendChoice, blend_vectors, choose_blend_weight
from shelfwise.content.projection import Projection, fit_projection, unit_rows
from shelfwise.domain import Item

log = logging.getLogger(__name__)
Space = Literal["projected", "content", "blend"]
FORMAT_VERSION = 1
ARRAYS, META = "content_tower.npz", "content_tower.json"


def interaction_counts(item_index: np.ndarray, n_items: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Interactions per item from an event array of item indices (e.g. ``TrainData.item``), optionally only
    those with a positive weight (``TrainData.weight``: views, carts, purchases; not removals or searches)."""
    items = np.asarray(item_index)
    if weights is not None:
        items = items[np.asarray(weights) > 0]
    return np.bincount(items, minlength=n_items).astype(np.int64)


def warm_mask(counts: np.ndarray, min_interactions: int) -> np.ndarray:
    """Items with at least ``min_interactions`` interactions: the projection's training set."""
    return np.asarray(counts) >= min_interactions


@contextlib.contextmanager
def progress_bar(enabled: bool = True, label: str = "content") -> Iterator[ProgressFn | None]:
    """A ``progress(done, total)`` callback drawing a rich bar on a terminal (nested under a live CLI display),
    or printing a line every 10 % to a log; ``None`` when disabled."""
    if not enabled:
        yield None
        return
    if not getattr(sys.stderr, "isatty", lambda: False)():
        state = {"next": 0.0}

        def lines(done: int, total: int) -> None:
            if total and (done / total >= state["next"] or done == total):
                state["next"] = done / total + 0.1
                print(f"{label}: encoded {done}/{total} texts", file=sys.stderr, flush=True)

        yield lines
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = getattr(sys.stderr, "_FileProxy__console", None) or Console(stderr=True)
    bar = Progress(TextColumn(f"[bold]{label}[/bold] texts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True)
    task = bar.add_task("texts", total=None)
    bar.start()
    try:
        yield lambda done, total: bar.update(task, completed=done, total=total)
    finally:
        bar.stop()


class _Rows:
    """Append-or-overwrite float32 row storage with amortised growth."""

    def __init__(self, dim: int, data: np.ndarray | None = None) -> None:
        self.dim = dim
        self._a = np.zeros((0, dim), np.float32) if data is None else np.ascontiguousarray(data, np.float32)
        self.n = len(self._a)

    def reserve(self, n: int) -> None:
        if n > len(self._a):
            grown = np.zeros((max(n, 2 * len(self._a), 64), self.dim), np.float32)
            grown[: self.n] = self._a[: self.n]
            self._a = grown

    def view(self) -> np.ndarray:
        return self._a[: self.n]


class ContentTower:
    """Item content vectors (text + catalog fields) and their projection into a collaborative space.

    Thread-safe for concurrent ``encode_changed`` / ``encode`` / reads. ``fit`` replaces the projection: run it on
    a tower that serves no traffic (training: a new or freshly loaded tower, saved and then loaded by the API)."""

    def __init__(self, settings: Any = None, cache_dir: Path | str | None = None,
                 encoder: TextEncoder | None = None) -> None:
        from shelfwise.settings import ContentSettings

        self.settings = settings or ContentSettings()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path("./data/cache/content")
        self.layout = FeatureLayout.from_settings(self.settings)
        self._encoder = encoder
        self._lock = threading.RLock()
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.content_hashes: list[str] = []
        self.text_hashes: list[str] = []
        self._text = _Rows(TEXT_DIM)
        self._content = _Rows(self.layout.dim)
        self._projected: _Rows | None = None
        self.projection: Projection | None = None
        self.meta: dict[str, Any] = {}
        self._by_text: dict[str, int] = {}  # text hash -> a row whose text vector it is
        self._encoder_checked = True  # False after load until the saved encoder is compared with the installed one
        self._saved_encoder: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "ContentTower":
        """From the whole ``Settings`` (its ``models.content`` section and ``content_cache_dir``)."""
        return cls(settings.models.content, cache_dir=settings.content_cache_dir)

    # -- encoder ------------------------------------------------------------------------------------------------
    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder.from_settings(self.settings, self.cache_dir)
        return self._encoder

    def warm_up(self) -> None:
        """Load the text encoder now (export the ONNX model if it is not cached): call it off the request path."""
        self.encoder.load()
        self._check_encoder()

    def _check_encoder(self) -> None:
        """After load: texts encoded by another model (package upgraded) are re-encoded at the next encode."""
        if self._encoder_checked:
            return
        now = self.encoder.describe()
        with self._lock:
            if self._saved_encoder and self._saved_encoder != now:
                log.warning("content tower: the text encoder changed since the save (%s -> %s); texts will be "
                            "re-encoded", self._saved_encoder.get("weights"), now.get("weights"))
                self.text_hashes = [""] * len(self.ids)
                self.content_hashes = [""] * len(self.ids)
                self._by_text = {}
            self._encoder_checked = True

    # -- state --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.index

    @property
    def fitted(self) -> bool:
        return self.projection is not None

    @property
    def dim(self) -> int:
        """Dimension of the projected vectors (the collaborative space)."""
        if self.projection is None:
            raise RuntimeError("the content tower is not fitted: call fit() or load()")
        return self.projection.out_dim

    def space_dim(self, space: Space) -> int:
        """Dimension of the vectors of ``space``."""
        if space == "content":
            return self.layout.dim
        if space not in ("projected", "blend"):
            raise ValueError(f"unknown space {space!r} (projected, content or blend)")
        return self.dim + (self.layout.dim if space == "blend" else 0)

    @property
    def blend_weight(self) -> float:
        """w of the ``blend`` space (``content/blend.py``): 1 = the projection alone (before ``fit_blend``)."""
        return float(self.meta.get("blend_weight", 1.0))

    def changed(self, items: Iterable[Item]) -> list[Item]:
        """The items that are new or whose content changed since they were last encoded (last version of an id)."""
        latest = {it.id: it for it in items}
        with self._lock:
            return [it for iid, it in latest.items()
                    if (r := self.index.get(iid)) is None or self.content_hashes[r] != content_hash(it)]

    def _encode_texts(self, items: Sequence[Item], progress: ProgressFn | None) -> tuple[list[str], np.ndarray]:
        """Text hashes and text vectors of items (zeros without text), reusing stored vectors of unchanged
        texts and encoding each distinct new text once."""
        hashes = [text_hash(it) for it in items]
        out = np.zeros((len(items), TEXT_DIM), np.float32)
        if self.layout.text_weight == 0:  # the text block is off: MiniLM never runs
            return hashes, out
        todo: dict[str, list[int]] = {}
        texts: dict[str, str] = {}
        with self._lock:
            known = self._by_text  # any stored item with the same text (size / colour variants share theirs)
            text_rows = self._text.view()
            for i, (it, h) in enumerate(zip(items, hashes)):
                if not has_text(it):
                    continue
                if h in known:
                    out[i] = text_rows[known[h]]
                else:
                    todo.setdefault(h, []).append(i)
                    texts.setdefault(h, item_text(it))
        if todo:
            keys = list(todo)
            vecs = self.encoder.encode([texts[h] for h in keys], progress=progress)
            for h, v in zip(keys, vecs):
                out[todo[h]] = v
        elif progress is not None:
            progress(0, 0)
        return hashes, out

    def _content_rows(self, items: Sequence[Item], text_vectors: np.ndarray) -> np.ndarray:
        return content_vectors(items, text_vectors, self.layout)

    def _store(self, items: Sequence[Item], text_h: list[str], text_v: np.ndarray, content: np.ndarray) -> np.ndarray:
        """Write rows (new ids appended); returns their row indices."""
        projected = self.projection.transform(content) if self.projection is not None else None
        with self._lock:
            rows = np.empty(len(items), np.int64)
            new = [it.id for it in items if it.id not in self.index]
            n_after = len(self.ids) + len(dict.fromkeys(new))
            for store in (self._text, self._content, self._projected):
                if store is not None:
                    store.reserve(n_after)
            for i, it in enumerate(items):
                r = self.index.get(it.id)
                if r is None:
                    r = len(self.ids)
                    self.index[it.id] = r
                    self.ids.append(it.id)
                    self.content_hashes.append("")
                    self.text_hashes.append("")
                    for store in (self._text, self._content, self._projected):
                        if store is not None:
                            store.n = r + 1
                rows[i] = r
                self.content_hashes[r] = content_hash(it)
                old_text = self.text_hashes[r]
                self.text_hashes[r] = text_h[i] if has_text(it) else ""
                if old_text and old_text != self.text_hashes[r] and self._by_text.get(old_text) == r:
                    del self._by_text[old_text]
                if self.text_hashes[r]:
                    self._by_text[self.text_hashes[r]] = r
                self._text._a[r] = text_v[i]
                self._content._a[r] = content[i]
                if projected is not None and self._projected is not None:
                    self._projected._a[r] = projected[i]
            return rows

    def _update(self, items: Sequence[Item], progress: ProgressFn | None) -> list[Item]:
        self._check_encoder()
        todo = self.changed(items)
        if todo:
            text_h, text_v = self._encode_texts(todo, progress)
            self._store(todo, text_h, text_v, self._content_rows(todo, text_v))
        elif progress is not None:
            progress(0, 0)
        return todo

    # -- public API ---------------------------------------------------------------------------------------------
    def fit(self, items: Sequence[Item], embeddings: np.ndarray, warm: np.ndarray,
            progress: ProgressFn | None = None, embedding: str = "") -> "ContentTower":
        """Encode every item (incrementally) and fit the projection on the warm ones. Without a ``progress``
        callback, a progress bar is shown when ``settings.progress``.

        ``embeddings[i]`` is the collaborative vector of ``items[i]`` (e.g. ``ALSRetriever.item_factors`` reordered
        to the items), ``warm[i]`` whether it has enough interactions to be trusted (``warm_mask``)."""
        embeddings = np.asarray(embeddings, np.float32)
        warm = np.asarray(warm, bool)
        if embeddings.ndim != 2 or len(embeddings) != len(items) or len(warm) != len(items):
            raise ValueError("embeddings must be (len(items), d) and warm a mask of len(items)")
        if len({it.id for it in items}) != len(items):
            raise ValueError("item ids must be unique")
        ok = warm & np.isfinite(embeddings).all(axis=1) & (np.linalg.norm(embeddings, axis=1) > 0)
        if ok.sum() < 2:
            raise ValueError(f"the projection needs at least 2 warm items with a non-zero embedding "
                             f"({int(ok.sum())} given)")
        t0 = time.perf_counter()
        if progress is None:
            with progress_bar(self.settings.progress) as bar:
                self._update(items, bar)
        else:
            self._update(items, progress)
        t_encode = time.perf_counter() - t0
        with self._lock:
            rows = np.array([self.index[it.id] for it in items], np.int64)
            x = self._content.view()[rows[ok]].copy()
        t1 = time.perf_counter()
        projection = fit_projection(x, embeddings[ok], self.settings)
        with self._lock:
            self.projection = projection
            self._projected = _Rows(projection.out_dim, projection.transform(self._content.view()))
            norms = np.linalg.norm(embeddings[ok], axis=1)
            self.meta = {"embedding": embedding, "embedding_dim": int(embeddings.shape[1]),
                         "target_norm_median": float(np.median(norms)),
                         "warm_items": int(ok.sum()), "items": len(self.ids), "projection": projection.kind,
                         "projection_report": projection.report, "encode_s": round(t_encode, 2),
                         "fit_s": round(time.perf_counter() - t1, 2), "fitted_at": time.time()}
        return self

    def fit_blend(self, items: Sequence[Item], embeddings: np.ndarray, warm: np.ndarray, user: np.ndarray,
                  item: np.ndarray, ts: np.ndarray, positive: np.ndarray) -> BlendChoice:
        """After ``fit`` (same ``items``, ``embeddings``, ``warm``): choose ``blend_weight`` by how well each blend
        of projected and content similarity predicts held-out warm items as shoppers' next items. Events are row
        indices into ``items`` (``user``, ``item``, ``ts``; ``positive``: which count as interactions)."""
        if self.projection is None:
            raise RuntimeError("the content tower is not fitted: call fit() first")
        embeddings = np.asarray(embeddings, np.float32)
        ok = np.asarray(warm, bool) & np.isfinite(embeddings).all(axis=1) & (np.linalg.norm(embeddings, axis=1) > 0)
        with self._lock:
            x = self._content.view()[[self.index[it.id] for it in items]].copy()
        t0 = time.perf_counter()
        choice = choose_blend_weight(x, embeddings, ok, self.projection, np.asarray(user), np.asarray(item),
                                     np.asarray(ts), np.asarray(positive, bool), self.settings)
        with self._lock:
            self.meta["blend_weight"] = choice.weight
            self.meta["blend"] = {**choice.report(), "fit_s": round(time.perf_counter() - t0, 2)}
        return choice

    def encode_changed(self, items: Iterable[Item], progress: ProgressFn | None = None,
                       space: Space = "projected") -> tuple[list[str], np.ndarray]:
        """Encode the new or changed items among ``items``; (their ids, their vectors in ``space``).

        The hook for catalog upserts: call it off the request path (``BackgroundEncoder``) and add the result to
        the vector index. Unchanged items are skipped (empty answer when nothing changed)."""
        if space != "content" and self.projection is None:
            raise RuntimeError("the content tower is not fitted: call fit() or load()")
        items = list(items)
        todo = self._update(items, progress)
        ids = [it.id for it in todo]
        return ids, self.vectors(ids, space)

    def encode(self, items: Sequence[Item], progress: ProgressFn | None = None,
               space: Space = "projected") -> np.ndarray:
        """Vectors of ``items`` in order (``(len(items), d)``), encoding only those new or changed."""
        if space != "content" and self.projection is None:
            raise RuntimeError("the content tower is not fitted: call fit() or load()")
        items = list(items)
        self._update(items, progress)
        return self.vectors([it.id for it in items], space)

    def vectors(self, ids: Sequence[str], space: Space = "projected") -> np.ndarray:
        """Stored vectors of known ids (KeyError for an unknown one): projected (unit), content (unit) or blend
        (``[√w · projected ‖ √(1−w) · content]``, w = ``blend_weight``)."""
        with self._lock:
            rows = np.array([self.index[i] for i in ids], np.int64)
            if space in ("projected", "blend"):
                if self._projected is None:
                    raise RuntimeError("the content tower is not fitted: call fit() or load()")
                projected = self._projected.view()[rows].copy()
                if space == "projected":
                    return projected
                return blend_vectors(projected, self._content.view()[rows], self.blend_weight)
            if space == "content":
                return unit_rows(self._content.view()[rows])
        raise ValueError(f"unknown space {space!r} (projected, content or blend)")

    @property
    def target_norm(self) -> float:
        """Median norm of the warm items' collaborative vectors the projection was fitted on. Projected vectors
        are unit (cosine search); multiply by this before mixing them into an inner-product index whose vectors
        carry norms (ALS factors, sequence-model item vectors), so a new item scores like a typical warm one."""
        return float(self.meta.get("target_norm_median", 1.0))

    def aligned(self, ids: Sequence[str], space: Space = "projected") -> tuple[np.ndarray, np.ndarray]:
        """(``(len(ids), d)`` matrix, known mask) aligned to a vocabulary (e.g. ``ItemTable.ids``): row i is the
        vector of ids[i], zeros where the tower does not know it. For vectorised ranker features."""
        with self._lock:
            rows = np.array([self.index.get(str(i), -1) for i in ids], np.int64)
            known = rows >= 0
            dim = self.space_dim(space)
            out = np.zeros((len(ids), dim), np.float32)
            if known.any():
                out[known] = self.vectors([self.ids[r] for r in rows[known]], space)
            return out, known

    def all_vectors(self, space: Space = "projected") -> tuple[list[str], np.ndarray]:
        """Every known item: (ids, vectors) — to (re)build a vector index."""
        with self._lock:
            return list(self.ids), self.vectors(list(self.ids), space)

    def similarity_to_history(self, history: Sequence[str], candidates: Sequence[str],
                              weights: Sequence[float] | None = None, space: Space = "content") -> np.ndarray:
        """Ranker feature: cosine between each candidate's vector and the (weighted) mean of the history's vectors.
        Unknown ids are skipped in the history and score 0 as candidates; an empty history gives zeros."""
        out = np.zeros(len(candidates), np.float32)
        with self._lock:
            hist = [(i, w) for i, w in zip(history, weights if weights is not None else [1.0] * len(history))
                    if i in self.index]
            if not hist:
                return out
            h = self.vectors([i for i, _ in hist], space)
            profile = (h * np.asarray([w for _, w in hist], np.float32)[:, None]).sum(axis=0)
            n = np.linalg.norm(profile)
            if n == 0:
                return out
            known = [r for r, c in enumerate(candidates) if c in self.index]
            if known:
                out[known] = self.vectors([candidates[r] for r in known], space) @ (profile / n)
        return out

    def remove(self, ids: Iterable[str]) -> int:
        """Forget items (their rows are compacted away); returns how many were known."""
        gone = set(ids) & set(self.index)
        if not gone:
            return 0
        with self._lock:
            keep = np.array([r for r, i in enumerate(self.ids) if i not in gone], np.int64)
            self.ids = [self.ids[r] for r in keep]
            self.content_hashes = [self.content_hashes[r] for r in keep]
            self.text_hashes = [self.text_hashes[r] for r in keep]
            self.index = {i: r for r, i in enumerate(self.ids)}
            self._reindex_texts()
            self._text = _Rows(TEXT_DIM, self._text.view()[keep])
            self._content = _Rows(self.layout.dim, self._content.view()[keep])
            if self._projected is not None:
                self._projected = _Rows(self._projected.dim, self._projected.view()[keep])
        return len(gone)

    def _reindex_texts(self) -> None:
        self._by_text = {h: r for r, h in enumerate(self.text_hashes) if h}

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """Write ``content_tower.npz`` (arrays; no pickles) and ``content_tower.json`` into a model version dir."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            t = self.layout.blocks()["text"]
            content = self._content.view()
            structured = sp.csr_matrix(content[:, t.stop:])
            arrays: dict[str, np.ndarray] = {
                "ids": np.array(self.ids, dtype=str), "content_hashes": np.array(self.content_hashes, dtype=str),
                "text_hashes": np.array(self.text_hashes, dtype=str), "text": self._text.view().copy(),
                "structured_data": structured.data, "structured_indices": structured.indices,
                "structured_indptr": structured.indptr}
            if self._projected is not None and self.projection is not None:
                arrays["projected"] = self._projected.view().copy()
                arrays.update(self.projection.arrays())
            meta = {"format": FORMAT_VERSION, "layout": self.layout.to_json(),
                    "encoder": self._saved_encoder or self.encoder.describe(),
                    "projection": self.projection.kind if self.projection else None,
                    "projection_report": self.projection.report if self.projection else {},
                    "settings": self.settings.model_dump(mode="json"), **{k: v for k, v in self.meta.items()
                                                                          if k not in ("projection",
                                                                                       "projection_report")}}
        tmp_npz, tmp_json = path / f".{ARRAYS}.{os.getpid()}.tmp", path / f".{META}.{os.getpid()}.tmp"
        with open(tmp_npz, "wb") as f:
            np.savez(f, **arrays)
        tmp_json.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp_npz, path / ARRAYS)
        os.replace(tmp_json, path / META)
        return path

    @classmethod
    def load(cls, path: Path | str, settings: Any = None, cache_dir: Path | str | None = None,
             encoder: TextEncoder | None = None) -> "ContentTower":
        """Read a saved tower (arrays only: no model is loaded here). The saved feature layout wins over the
        settings' (the projection was fitted on it); encoder knobs (backend, threads, batch) come from
        ``settings``."""
        from shelfwise.settings import ContentSettings

        path = Path(path)
        meta = json.loads((path / META).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path / META}: unsupported content tower format {meta.get('format')!r}")
        base = settings or ContentSettings.model_validate(meta["settings"])
        obj = cls(base.model_copy(update=meta["layout"]), cache_dir, encoder)
        with np.load(path / ARRAYS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        obj.ids = [str(x) for x in arrays["ids"].tolist()]  # tolist: Python strings in one call, not one by one
        obj.index = {i: r for r, i in enumerate(obj.ids)}
        obj.content_hashes = [str(x) for x in arrays["content_hashes"].tolist()]
        obj.text_hashes = [str(x) for x in arrays["text_hashes"].tolist()]
        n = len(obj.ids)
        obj._text = _Rows(TEXT_DIM, arrays["text"].reshape(n, TEXT_DIM))
        obj._reindex_texts()
        structured = sp.csr_matrix((arrays["structured_data"], arrays["structured_indices"],
                                    arrays["structured_indptr"]), shape=(n, obj.layout.dim - TEXT_DIM))
        content = np.zeros((n, obj.layout.dim), np.float32)
        content[:, :TEXT_DIM] = text_block(obj._text.view(), obj.layout)
        content[:, TEXT_DIM:] = structured.toarray()
        obj._content = _Rows(obj.layout.dim, content)
        if meta.get("projection"):
            obj.projection = Projection.from_arrays(meta["projection"], arrays, meta.get("projection_report"))
            obj._projected = _Rows(obj.projection.out_dim, arrays["projected"].reshape(n, -1))
        obj.meta = {k: v for k, v in meta.items() if k not in ("format", "layout", "encoder", "settings")}
        obj._saved_encoder = meta.get("encoder", {})
        obj._encoder_checked = False
        return obj


Sink = Callable[[list[str], np.ndarray], None]


class BackgroundEncoder:
    """Runs ``tower.encode_changed`` on a daemon thread and hands ``(ids, vectors)`` to ``sink``.

    The catalog-upsert hook: ``submit(items)`` only enqueues (never blocks a request). The worker drains
    everything queued (the last version of an id wins), encodes what changed, and calls ``sink(ids, vectors)``
    — e.g. ``lambda ids, v: index.add(keys_of(ids), v)``. ``warm_up=True`` loads the text encoder on the
    worker first, so the first upsert does not pay for it (and start-up never does). On a 2-core machine one
    new item takes ~10-20 ms to encode (BENCHMARKS.md, Content tower). Errors are logged and counted
    (``errors``, ``last_error``); the worker keeps going. ``flush(timeout)`` waits until everything submitted
    so far (and the warm-up) is handed to the sink; ``close()`` stops the worker.
    """

    def __init__(self, tower: ContentTower, sink: Sink, space: Space = "projected", warm_up: bool = True,
                 name: str = "content-encoder") -> None:
        self.tower, self.sink, self.space = tower, sink, space
        self._queue: queue.Queue[list[Item] | None] = queue.Queue()
        self._cond = threading.Condition()
        self.errors = 0
        self.last_error: str = ""
        self.encoded = 0
        self._warm_up = warm_up
        self._pending = 1 if warm_up else 0  # flush() also waits for the warm-up
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, items: Iterable[Item]) -> None:
        batch = list(items)
        if not batch:
            return
        with self._cond:
            self._pending += 1
        self._queue.put(batch)

    def _run(self) -> None:
        if self._warm_up:
            try:
                self.tower.warm_up()
            except Exception as e:  # noqa: BLE001 - reported, and encode retries the load
                self._fail(e)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
        while True:
            first = self._queue.get()
            if first is None:
                return
            batches, stop = [first], False
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batches.append(nxt)
            latest = {it.id: it for b in batches for it in b}
            try:
                ids, vecs = self.tower.encode_changed(list(latest.values()), space=self.space)
                if ids:
                    self.sink(ids, vecs)
                    self.encoded += len(ids)
            except Exception as e:  # noqa: BLE001 - a bad batch must not kill the worker
                self._fail(e)
            finally:
                with self._cond:
                    self._pending -= len(batches)
                    self._cond.notify_all()
            if stop:
                return

    def _fail(self, e: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        log.exception("content encoder: %s", self.last_error)

    @property
    def pending(self) -> bool:
        """Submitted batches (or the warm-up) not yet handed to the sink."""
        with self._cond:
            return self._pending > 0

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted batch has been handed to the sink; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
