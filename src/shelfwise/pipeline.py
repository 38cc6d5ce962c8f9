"""One pipeline for the API and offline evaluation: candidates → blend → filters → rerank (business score,
merchandising rules, diversity) → slots.

Every source scores the whole catalog for a batch of queries (dense rows); scores are normalised per row to
[0, 1], blended with the placement's weights, and masked by availability, stock, exclusions and filters.
The reranker (``shelfwise.rerank``) then applies the placement's business score weights, the live rules of
``rules`` (a ``shelfwise.rules.RulesStage``, when attached) and MMR diversity while filling the slots.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shelfwise.domain import EventType
from shelfwise.retrieval.base import ItemTable, Query, Retriever, top_k
from shelfwise.settings import ModelSettings, PlacementSettings
from shelfwise.stores.protocols import ShopperState

PLACEMENTS = ("homepage", "pdp_similar", "pdp_fbt", "cart_upsell")


def _new_id_source() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX, _ID_COUNTER = os.urandom(8).hex(), itertools.count()


_new_id_source()
os.register_at_fork(after_in_child=_new_id_source)  # forked API workers draw their own prefix


def new_request_id() -> str:
    """A unique request id: a random prefix drawn once per process, then a counter. (``uuid4`` reads the OS
    random source on every call: 0.44 ms a request on the benchmark VM, a tenth of the whole pipeline.)"""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"  # 32 hex characters, like uuid4().hex


@dataclass
class RecRequest:
    """A request in the storefront's terms (ids as strings)."""

    placement: str = "homepage"
    shopper: str | None = None
    item_id: str | None = None
    cart: Sequence[str] = ()
    k: int = 12
    exclude: Sequence[str] = ()
    category: str | None = None
    state: ShopperState | None = None  # the shopper's recent events (from online state)
    now: float = 0.0
    device: str | None = None  # desktop / mobile / tablet / app (a ranker feature)
    segments: Sequence[str] = ()  # shopper segments the storefront knows (e.g. "vip"), for rule conditions
    request_id: str | None = None  # exposure log and shadow sampling key
    explain: bool = False  # attach why each item is where it is (score parts, rules, diversity)


@dataclass
class Recommendation:
    item_id: str
    score: float
    sources: list[str]
    explanation: dict[str, Any] | None = None


@dataclass
class Answer:
    items: list[Recommendation]
    placement: str
    fallback: bool = False  # some slots were filled without any source evidence
    explanation: dict[str, Any] | None = None  # request-level part of explain (conflicts, weights, rule sets)


@dataclass
class Pipeline:
    settings: ModelSettings
    items: ItemTable
    retrievers: dict[str, Retriever]
    shopper_index: dict[str, int]
    version: str = "untrained"
    trained_until: float = float("inf")  # newest event the models were trained on
    ranker: Any = None  # ranking.Ranker: re-scores the blend's top N for its placements (None = blend order)
    rules: Any = None  # rules.RulesStage: live merchandising rules and shadow drafts (None = no rules)
    _reranker: Any = field(default=None, init=False, repr=False)

    @property
    def reranker(self):
        if self._reranker is None:
            from shelfwise.rerank import Reranker

            self._reranker = Reranker(self.items, self.retrievers, self.settings)
        return self._reranker

    # ---- request resolution --------------------------------------------------------------------------
    def query(self, req: RecRequest) -> Query:
        idx = self.items.index
        hist, kinds, ts = [], [], []
        if req.state is not None:
            for it in req.state.recent:
                j = idx.get(it.item_id)
                if j is not None:
                    hist.append(j)
                    kinds.append(it.kind)
                    ts.append(it.ts)
        anchors: list[int] = []
        if req.placement in ("pdp_similar", "pdp_fbt") and req.item_id is not None:
            anchors = [idx[req.item_id]] if req.item_id in idx else []
        elif req.placement == "cart_upsell":
            anchors = [idx[c] for c in req.cart if c in idx]
        user = self.shopper_index.get(req.shopper, -1) if req.shopper else -1
        fresh = bool(ts) and max(ts) > self.trained_until
        return Query(user=user, history=np.array(hist, np.int32), history_kind=np.array(kinds, np.int8),
                     history_ts=np.array(ts, np.float64), anchors=np.array(anchors, np.int32), fresh=fresh,
                     now=req.now)

    def exclusion_mask(self, req: RecRequest, q: Query, placement: PlacementSettings) -> np.ndarray:
        """True where an item must not be shown for this request."""
        idx = self.items.index
        banned = ~self.items.servable
        banned = banned.copy()
        drop = [idx[x] for x in req.exclude if x in idx]
        drop += list(q.anchors)
        if req.item_id in idx:
            drop.append(idx[req.item_id])
        drop += [idx[c] for c in req.cart if c in idx]
        if placement.exclude_history == "all":
            drop += list(q.history)
        elif placement.exclude_history == "purchased" and req.state is not None:
            drop += [idx[p] for p in req.state.purchased if p in idx]
            drop += list(q.history[q.history_kind == EventType.purchase_completed])
        if drop:
            banned[np.array(drop, np.int64)] = True
        if req.category:
            banned |= ~self.category_mask(req.category)
        return banned

    def category_mask(self, category: str) -> np.ndarray:
        wanted = [c.strip() for c in category.split(">")]
        names = self.items.category_names
        codes = [i for i, n in enumerate(names) if [c.strip() for c in n.split(">")][:len(wanted)] == wanted]
        return np.isin(self.items.category, codes)

    # ---- scoring -------------------------------------------------------------------------------------
    def blend(self, queries: Sequence[Query], placement: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Blended scores (B, n_items) and each source's weighted, row-normalised contribution."""
        weights = self.placement(placement).weights
        total = np.zeros((len(queries), len(self.items)), np.float32)
        parts: dict[str, np.ndarray] = {}
        for name, w in weights.items():
            src = self.retrievers.get(name)
            if src is None or w == 0:
                continue
            s = src.score(queries)
            row_max = s.max(axis=1, keepdims=True)
            s = np.divide(s, row_max, out=np.zeros_like(s), where=row_max > 0)
            s *= w
            parts[name] = s
            total += s
        return total, parts

    def placement(self, placement: str) -> PlacementSettings:
        try:
            return self.settings.placements[placement]
        except KeyError:
            raise ValueError(f"unknown placement {placement!r}; known: {sorted(self.settings.placements)}") from None

    def recommend(self, requests: Sequence[RecRequest]) -> list[Answer]:
        """Answer a batch of requests of possibly different placements."""
        answers: list[Answer | None] = [None] * len(requests)
        by_placement: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            self.placement(r.placement)
            by_placement.setdefault(r.placement, []).append(i)
        for placement, rows in by_placement.items():
            reqs = [requests[i] for i in rows]
            queries = [self.query(r) for r in reqs]
            total, parts = self.blend(queries, placement)
            conf = self.placement(placement)
            for r, (req, q) in enumerate(zip(reqs, queries)):
                banned = self.exclusion_mask(req, q, conf)
                total[r, banned] = -np.inf
            kmax = max(r.k for r in reqs)
            if self.ranker is not None and self.ranker.applies(placement):
                from shelfwise.rerank.reranker import ranked_rows

                total = ranked_rows(self, reqs, queries, total, parts, placement)
            # business score → rules → diversity and slot filling; exactly top_k when none is configured
            top, scores, notes = self.reranker.rank(reqs, total, parts, placement, kmax, self.rules)
            for r, i in enumerate(rows):
                recs: list[Recommendation] = []
                fallback = False
                for j, s in zip(top[r, : reqs[r].k], scores[r, : reqs[r].k]):
                    if not np.isfinite(s):
                        break
                    contrib = sorted(((p[r, j], n) for n, p in parts.items() if p[r, j] > 0), reverse=True)
                    sources = [n for _, n in contrib] or ["fallback"]
                    fallback |= not contrib
                    why = notes[r]["items"][len(recs)] if notes[r] else None
                    recs.append(Recommendation(str(self.items.ids[j]), float(s), sources, why))
                answers[i] = Answer(recs, placement, fallback,
                                    {k: v for k, v in notes[r].items() if k != "items"} if notes[r] else None)
        return answers  # type: ignore[return-value]

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        np.savez(path / "items.npz", **{k: v for k, v in self.items.arrays().items() if k != "ids"})
        (path / "item_ids.json").write_text(json.dumps([str(x) for x in self.items.ids]))
        (path / "shoppers.json").write_text(json.dumps(list(self.shopper_index)))
        manifest = {"version": self.version, "retrievers": list(self.retrievers), "trained_until": self.trained_until,
                    "category_names": self.items.category_names, "settings": self.settings.model_dump(mode="json")}
        (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
        for r in self.retrievers.values():
            r.save(path)
        if self.ranker is not None:
            self.ranker.save(path)

    @classmethod
    def load(cls, path: Path, settings: ModelSettings | None = None) -> "Pipeline":
        from shelfwise.retrieval import load_retriever

        manifest = json.loads((path / "manifest.json").read_text())
        z = np.load(path / "items.npz")
        ids = np.array(json.loads((path / "item_ids.json").read_text()), dtype=object)
        items = ItemTable(ids=ids, **{k: z[k] for k in z.files}, category_names=manifest["category_names"])
        shoppers = json.loads((path / "shoppers.json").read_text())
        retrievers = {name: load_retriever(name, path) for name in manifest["retrievers"]}
        model_settings = settings or ModelSettings.model_validate(manifest["settings"])
        from shelfwise.ranking.model import Ranker

        ranker = Ranker.load(path, model_settings.ranker) if Ranker.exists(path) else None
        return cls(model_settings, items, retrievers, {s: i for i, s in enumerate(shoppers)}, manifest["version"],
                   manifest["trained_until"], ranker)
