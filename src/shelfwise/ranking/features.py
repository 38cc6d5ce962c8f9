"""Per (request, candidate) features: ONE code path for training rows and for serving.

``compute_features(ctx, requests, queries, cand)`` returns a ``(B, N, F)`` float32 tensor. Training calls it on
requests rebuilt from the event history (``labels.py``), serving on live requests (the ranking stage); nothing
else computes features, so there is no training/serving skew. Everything is
vectorised over the (B × N) candidates (and the ≤ 50 history events of a request); the only Python loop is over
the requests of a batch, to pad their histories.

Inputs beyond the candidates themselves:
- ``ItemStats``: item statistics fitted on the same training data as the pipeline's sources (popularity, trend,
  conversion, first appearance, price band within the category, catalog tags) — aligned with the pipeline's
  item vocabulary, saved with the ranker.
- the live ``ItemTable`` (price, margin, stock, creation date, category, brand: catalog updates count at once),
  and the item embeddings of the ALS / sequence sources (cosine similarity to the shopper's items), all held by
  a ``FeatureContext``.
- each request's history (``Query``), its time ``now`` and device (``RecRequest.device``; 0 = unknown).

Missing values are NaN (LightGBM routes them natively): unknown price, never-seen category, no history, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from shelfwise.domain import EventType, Item
from shelfwise.items import ItemTable, pad_rows
from shelfwise.request import Candidates, Query, RecRequest
from shelfwise.retrieval.base import Retriever, TrainData

DAY = 86400.0
DEVICES = {"desktop": 1, "mobile": 2, "tablet": 3, "app": 4}  # anything else: 5; unknown: 0
EMBEDDINGS = {"als": "item_factors", "sequence": "item_vectors"}  # source -> attribute with item vectors
HISTORY = 50  # events of a request's history the features look at (most recent)
PROFILE = 20  # most recent history items forming the shopper's tag profile
EMB_HISTORY = 5  # most recent history items averaged for the embedding profile

ITEM_FEATURES = ["pop_log", "pop_recent", "trend", "conversion", "age_days", "price_log", "price_band",
                 "margin_rate", "margin_abs_log", "stock_log", "low_stock"]
SHOPPER_FEATURES = ["category_affinity", "top_category_affinity", "brand_affinity", "category_recency_h",
                    "brand_recency_h", "item_seen", "item_recency_h", "item_max_kind", "same_category_as_last",
                    "same_brand_as_last", "price_vs_history", "tag_sim_history", "tag_sim_last"]
SESSION_FEATURES = ["history_len_log", "session_len", "since_last_event_log", "device"]
# the search ranker's only (``FeatureSpec.search``): the shop's own list and the query, per (search, result)
SEARCH_FEATURES = ["shop_score", "shop_rank", "list_len_log", "query_match", "pop_rank_in_list", "pop_vs_list_best",
                   "price_band_vs_history", "brand_share_in_category", "search_shown_log", "search_picked_log",
                   "search_pick_rate"]
FEATURE_GROUPS = {"source": "<source>_score, <source>_rank, blend_score, blend_rank", "item": ITEM_FEATURES,
                  "shopper": SHOPPER_FEATURES, "embedding": "emb_sim_last_<source>, emb_sim_history_<source>",
                  "session": SESSION_FEATURES, "search": SEARCH_FEATURES}


@dataclass
class FeatureSpec:
    """Which sources the features describe (fixed at training time, saved with the model)."""

    sources: list[str]  # sources with a score and a rank feature (the placement's blend sources)
    embeddings: list[str]  # sources whose item vectors give similarity features
    session_gap_s: float = 1800.0
    search: bool = False  # the search ranker's: SEARCH_FEATURES too (the shop's list and the query)

    @classmethod
    def from_sources(cls, weights: dict[str, float], retrievers: dict[str, Retriever], items: ItemTable,
                     session_gap_s: float, search: bool = False) -> "FeatureSpec":
        # a new shoppers' source (cohort) is zero on every training request (they all have a history): no feature
        sources = [n for n, w in weights.items() if w and n in retrievers and not retrievers[n].new_shoppers_only]
        embeddings = [n for n in EMBEDDINGS if embedding_of(retrievers, n, len(items)) is not None]
        return cls(sources, embeddings, session_gap_s, search)


def feature_names(spec: FeatureSpec) -> list[str]:
    names = [f"{s}_{k}" for s in spec.sources for k in ("score", "rank")] + ["blend_score", "blend_rank"]
    names += ITEM_FEATURES + SHOPPER_FEATURES
    names += [f"emb_sim_{k}_{s}" for s in spec.embeddings for k in ("last", "history")]
    return names + SESSION_FEATURES + (SEARCH_FEATURES if spec.search else [])


def embedding_of(retrievers: dict[str, Retriever], source: str, n_items: int) -> np.ndarray | None:
    """The item vectors of an embedding source, when it has them for every item it was fitted on (zero vectors
    for items added to the catalog since)."""
    r = retrievers.get(source)
    e = getattr(r, EMBEDDINGS.get(source, ""), None) if r is not None else None
    if e is None or not hasattr(e, "shape") or e.ndim != 2 or e.shape[0] > n_items or e.shape[1] == 0:
        return None
    return pad_rows(e, n_items)


@dataclass
class ItemStats:
    """Item statistics from the training events (aligned with the pipeline's item vocabulary)."""

    pop_log: np.ndarray  # log1p(interactions)
    pop_recent: np.ndarray  # interactions decayed with a 7-day half-life, max 1
    trend: np.ndarray  # log((last 7 days + 1) / (the 28 days before, per week, + 1))
    conversion: np.ndarray  # (carts + purchases + 0.1) / (all interactions + 1)
    first_seen: np.ndarray  # unix seconds of the first interaction (nan never)
    price_band: np.ndarray  # price percentile within the item's category (nan unknown price)
    tags: sp.csr_matrix = field(repr=False)  # (n_items, n_tags) catalog tags, rows L2-normalised
    now: float = 0.0

    @classmethod
    def fit(cls, data: TrainData, catalog: dict[str, Item] | None = None) -> "ItemStats":
        n = data.n_items
        now = data.now
        pos = data.weight > 0
        item, ts, kind = data.item[pos], data.ts[pos], data.kind[pos]
        count = np.bincount(item, minlength=n).astype(np.float64)
        decayed = np.bincount(item, weights=np.power(0.5, (now - ts) / (7 * DAY)), minlength=n)
        recent = np.bincount(item[ts > now - 7 * DAY], minlength=n)
        prior = np.bincount(item[(ts <= now - 7 * DAY) & (ts > now - 35 * DAY)], minlength=n)
        basket = np.isin(kind, (EventType.add_to_cart, EventType.purchase_completed))
        baskets = np.bincount(item[basket], minlength=n)
        first = np.full(n, np.inf)
        np.minimum.at(first, item, ts)
        first[~np.isfinite(first)] = np.nan
        return cls(pop_log=np.log1p(count).astype(np.float32),
                   pop_recent=(decayed / max(decayed.max(initial=0), 1e-12)).astype(np.float32),
                   trend=np.log((recent + 1.0) / (prior / 4.0 + 1.0)).astype(np.float32),
                   conversion=((baskets + 0.1) / (count + 1.0)).astype(np.float32),
                   first_seen=first, price_band=_price_band(data.items.price, data.items.category),
                   tags=_tag_matrix(data.items.ids, catalog or {}), now=now)

    def padded(self, n: int) -> "ItemStats":
        """These statistics for a table of ``n`` items: the items added since training as items without
        interactions (what ``fit`` gives an item never seen)."""
        if len(self.pop_log) >= n:
            return self
        extra = n - self.tags.shape[0]
        tags = sp.vstack([self.tags, sp.csr_matrix((extra, self.tags.shape[1]), dtype=np.float32)]).tocsr()
        return ItemStats(pad_rows(self.pop_log, n), pad_rows(self.pop_recent, n), pad_rows(self.trend, n),
                         pad_rows(self.conversion, n, 0.1), pad_rows(self.first_seen, n, np.nan),
                         pad_rows(self.price_band, n, np.nan), tags, self.now)

    def save(self, path: Path, prefix: str = "ranker_stats") -> None:
        np.savez(path / f"{prefix}.npz", pop_log=self.pop_log, pop_recent=self.pop_recent, trend=self.trend,
                 conversion=self.conversion, first_seen=self.first_seen, price_band=self.price_band,
                 now=np.float64(self.now))
        sp.save_npz(path / f"{prefix}_tags.npz", self.tags)

    @classmethod
    def load(cls, path: Path, prefix: str = "ranker_stats") -> "ItemStats":
        z = np.load(path / f"{prefix}.npz")
        return cls(z["pop_log"], z["pop_recent"], z["trend"], z["conversion"], z["first_seen"], z["price_band"],
                   sp.load_npz(path / f"{prefix}_tags.npz").tocsr().astype(np.float32), float(z["now"]))


@dataclass
class SearchStats:
    """How each item fared in the logged searches before (``ranking.search.search_stats``): how often it was among
    the results shown, how often a shopper then acted on it (aligned with the pipeline's item vocabulary)."""

    shown: np.ndarray  # float32: logged searches that showed it
    picked: np.ndarray  # float32: ... and whose shopper viewed, carted or bought it next

    def padded(self, n: int) -> "SearchStats":
        return SearchStats(pad_rows(self.shown, n), pad_rows(self.picked, n))

    def save(self, path: Path, prefix: str) -> None:
        np.savez(path / f"{prefix}.npz", shown=self.shown, picked=self.picked)

    @classmethod
    def load(cls, path: Path, prefix: str) -> "SearchStats":
        z = np.load(path / f"{prefix}.npz")
        return cls(z["shown"], z["picked"])


def _price_band(price: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Percentile (0..1) of each item's price among the priced items of its category."""
    out = np.full(len(price), np.nan, np.float32)
    ok = np.isfinite(price)
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    cat, pr = category[idx], price[idx]
    order = np.lexsort((pr, cat))
    cs = cat[order]
    start = np.r_[0, np.flatnonzero(cs[1:] != cs[:-1]) + 1]
    size = np.diff(np.r_[start, len(cs)])
    group = np.repeat(np.arange(len(start)), size)
    within = np.arange(len(cs)) - start[group]
    out[idx[order]] = (within + 0.5) / size[group]
    return out


def _tag_matrix(ids: np.ndarray, catalog: dict[str, Item]) -> sp.csr_matrix:
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, iid in enumerate(ids):
        it = catalog.get(str(iid))
        if it is None:
            continue
        for t in set(it.tags):
            rows.append(i)
            cols.append(vocab.setdefault(t, len(vocab)))
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(ids), len(vocab)),
                      dtype=np.float32)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return (sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ m).tocsr()


def _ranks(s: np.ndarray) -> np.ndarray:
    """0-based rank of each candidate by a source's score among the request's candidates; N without evidence."""
    n = s.shape[1]
    rank = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1)  # the inverse permutation of the order
    return np.where(s > 0, rank, n).astype(np.float32)


def _match(cand: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """(B, N, H): candidate attribute equals a history event's attribute (both known)."""
    return (cand[:, :, None] == hist[:, None, :]) & (cand >= 0)[:, :, None]


def _hours_since(eq: np.ndarray, ts: np.ndarray, now: np.ndarray) -> np.ndarray:
    last = np.where(eq, ts[:, None, :], -np.inf).max(axis=2)
    return np.where(np.isfinite(last), (now[:, None] - last) / 3600.0, np.nan)


def _cos_rows(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.sqrt((v * v).sum(axis=-1, keepdims=True)), 1e-12)


def _gather(m: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zeros of the given CSR rows (flattened): (position in ``rows``, column, value) — plain numpy, no
    scipy object construction (this runs per request)."""
    rows = rows.ravel()
    start, count = m.indptr[rows], m.indptr[rows + 1] - m.indptr[rows]
    total = int(count.sum())
    owner = np.repeat(np.arange(len(rows)), count)
    at = np.arange(total) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
    return owner, m.indices[at], m.data[at]


def _tag_profiles(m: sp.csr_matrix, rows: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, n_tags) L2-normalised tag profiles of each request: of its (valid) items, and of its last item only
    (column -1 of ``rows``), from one gather."""
    b, h = rows.shape
    owner, col, val = _gather(m, np.where(valid, rows, 0))
    keep = valid.ravel()[owner]
    prof = np.zeros((b, m.shape[1]), np.float32)
    np.add.at(prof, (owner[keep] // h, col[keep]), val[keep])
    last = keep & (owner % h == h - 1)
    prof_last = np.zeros((b, m.shape[1]), np.float32)
    np.add.at(prof_last, (owner[last] // h, col[last]), val[last])
    return _cos_rows(prof), _cos_rows(prof_last)


def _tag_dots(m: sp.csr_matrix, cand: np.ndarray, *profiles: np.ndarray) -> list[np.ndarray]:
    """Dot of each candidate's tags (B, N) with its request's profiles (B, n_tags each), from one gather."""
    b, n = cand.shape
    owner, col, val = _gather(m, cand)
    req = owner // n
    return [np.bincount(owner, weights=val * p[req, col], minlength=b * n).reshape(b, n) for p in profiles]


def device_code(device: Any) -> int:
    if not device:
        return 0
    return DEVICES.get(str(device).lower(), 5)


@dataclass
class FeatureContext:
    """What features are computed from besides the requests: the live item table, the item statistics and
    feature spec the ranker was trained with, and the embedding sources' item vectors."""

    items: ItemTable
    stats: ItemStats
    spec: FeatureSpec
    embeddings: dict[str, np.ndarray]
    matcher: Any = None  # ``ranking.query.QueryMatcher`` over ``items`` (the search features' query match)
    searches: SearchStats | None = None  # the search features' logged-search statistics

    @classmethod
    def build(cls, items: ItemTable, stats: ItemStats, spec: FeatureSpec, retrievers: dict[str, Retriever],
              matcher: Any = None, searches: SearchStats | None = None) -> "FeatureContext":
        emb = {s: e for s in spec.embeddings if (e := embedding_of(retrievers, s, len(items))) is not None}
        return cls(items, stats.padded(len(items)), spec, emb, matcher,
                   searches.padded(len(items)) if searches is not None else None)


def compute_features(ctx: FeatureContext, requests: Sequence[RecRequest], queries: Sequence[Query],
                     cand: Candidates) -> np.ndarray:
    """The (B, N, F) feature tensor, columns in ``feature_names(spec)`` order."""
    stats, spec = ctx.stats, ctx.spec
    names = feature_names(spec)
    b, n = cand.shape
    X = np.empty((len(names), b, n), np.float32)  # one contiguous (B, N) plane per feature; transposed at the end
    col = iter(range(len(names)))

    def put(value: Any) -> None:
        X[next(col)] = value

    items = ctx.items
    c = np.where(cand.valid, cand.items, 0)
    # ---- history, right-aligned (column H-1 = most recent), padded with -1 / nan ----------------------
    h = max([min(len(q.history), HISTORY) for q in queries] + [1])
    hi = np.full((b, h), -1, np.int64)
    ht = np.full((b, h), np.nan)
    hk = np.full((b, h), -1, np.int8)
    now = np.empty(b)
    dev = np.empty(b, np.float32)
    for r, (req, q) in enumerate(zip(requests, queries)):
        L = min(len(q.history), HISTORY)
        if L:
            hi[r, h - L:] = q.history[-L:]
            ht[r, h - L:] = q.history_ts[-L:]
            hk[r, h - L:] = q.history_kind[-L:]
        now[r] = req.now or q.now or (q.history_ts.max() if len(q.history_ts) else stats.now)
        dev[r] = device_code(req.device)
    hv = hi >= 0
    hs = np.where(hv, hi, 0)
    hl = hv.sum(axis=1)
    has = hl > 0
    last = hs[:, -1]

    # ---- sources --------------------------------------------------------------------------------------
    for s in spec.sources:
        sc = cand.sources.get(s)
        if sc is None:
            sc = np.zeros((b, n), np.float32)
        put(sc)
        put(_ranks(sc))
    put(cand.blend)
    put(np.arange(n, dtype=np.float32)[None, :])

    # ---- item -----------------------------------------------------------------------------------------
    put(stats.pop_log[c])
    put(stats.pop_recent[c])
    put(stats.trend[c])
    put(stats.conversion[c])
    created = items.created_at[c]
    created = np.where(np.isfinite(created), created, stats.first_seen[c])
    put((now[:, None] - created) / DAY)
    price = items.price[c]
    put(np.log(price))
    put(stats.price_band[c])
    margin = items.margin[c]
    put(margin)
    put(np.log1p(np.maximum(price * margin, 0.0)))
    stock = items.stock[c]
    tracked = np.isfinite(stock)
    put(np.where(tracked, np.log1p(np.where(tracked, stock, 0.0)), np.nan))
    put(tracked & (stock < 5))

    # ---- shopper × candidate --------------------------------------------------------------------------
    denom = np.maximum(hl, 1)[:, None]
    hcat = np.where(hv, items.category[hs], -2)
    htop = np.where(hv, items.top_category[hs], -2)
    hbrand = np.where(hv, items.brand[hs], -2)
    ccat, ctop, cbrand = items.category[c], items.top_category[c], items.brand[c]
    cat_eq, brand_eq = _match(ccat, hcat), _match(cbrand, hbrand)
    put(cat_eq.sum(axis=2) / denom)
    put(_match(ctop, htop).sum(axis=2) / denom)
    put(brand_eq.sum(axis=2) / denom)
    put(_hours_since(cat_eq, ht, now))
    put(_hours_since(brand_eq, ht, now))
    item_eq = (c[:, :, None] == hi[:, None, :])
    put(item_eq.sum(axis=2))
    put(_hours_since(item_eq, ht, now))
    put(np.where(item_eq, hk[:, None, :], -1).max(axis=2))
    put(has[:, None] & (ccat >= 0) & (ccat == hcat[:, -1:]))
    put(has[:, None] & (cbrand >= 0) & (cbrand == hbrand[:, -1:]))
    hprice = np.where(hv, items.price[hs], np.nan)
    hp_ok = np.isfinite(hprice)
    hp_mean = np.where(hp_ok.any(axis=1), np.log(np.where(hp_ok, hprice, 1.0)).sum(axis=1)
                       / np.maximum(hp_ok.sum(axis=1), 1), np.nan)
    put(np.log(price) - hp_mean[:, None])
    tags = stats.tags
    if tags.shape[1] and tags.shape[0] == len(items):
        prof, prof_last = _tag_profiles(tags, hs[:, -PROFILE:], hv[:, -PROFILE:])
        for v in _tag_dots(tags, c, prof, prof_last):
            put(v)
    else:
        put(np.nan)
        put(np.nan)

    # ---- embeddings -----------------------------------------------------------------------------------
    for s in spec.embeddings:
        e = ctx.embeddings.get(s)
        if e is None:
            put(np.nan)
            put(np.nan)
            continue
        ec = _cos_rows(e[c])
        el = _cos_rows(e[last])
        put(np.where(has[:, None], np.matmul(ec, el[:, :, None])[:, :, 0], np.nan))
        recent = hs[:, -EMB_HISTORY:]
        eh = (_cos_rows(e[recent]) * hv[:, -EMB_HISTORY:, None]).sum(axis=1)
        put(np.where(has[:, None], np.matmul(ec, _cos_rows(eh)[:, :, None])[:, :, 0], np.nan))

    # ---- session --------------------------------------------------------------------------------------
    put(np.log1p(hl)[:, None])
    with np.errstate(invalid="ignore"):
        breaks = np.diff(ht, axis=1) > spec.session_gap_s
    start = np.maximum(np.where(breaks, np.arange(1, h), 0).max(axis=1, initial=0), h - hl)
    since = now - ht[:, -1]
    active = has & (since <= spec.session_gap_s)
    put(np.where(active, h - start, 0)[:, None])
    put(np.where(has, np.log1p(np.maximum(since, 0.0)), np.nan)[:, None])
    put(dev[:, None])

    # ---- search (the search ranker): the shop's list and the query ------------------------------------
    if spec.search:
        valid = cand.valid
        shop = cand.sources.get("shop")
        shop = np.where(valid, shop, 0.0) if shop is not None else np.zeros((b, n), np.float32)
        put(shop)
        put(_ranks(shop))
        put(np.log1p(valid.sum(axis=1))[:, None])
        match = np.zeros((b, n), np.float32)
        if ctx.matcher is not None:
            for r, req in enumerate(requests):
                if req.query:
                    match[r] = ctx.matcher.match(req.query, np.where(valid[r], cand.items[r], -1))
        put(match)
        pop = np.where(valid, stats.pop_log[c], -1.0)
        put(_ranks(pop + 1.0))  # items never seen (pop 0) share the last rank
        put(pop - pop.max(axis=1, keepdims=True, initial=0.0))
        hband = np.where(hv, stats.price_band[hs], np.nan)
        hb_ok = np.isfinite(hband)
        hb_mean = np.where(hb_ok.any(axis=1), np.where(hb_ok, hband, 0.0).sum(axis=1)
                           / np.maximum(hb_ok.sum(axis=1), 1), np.nan)
        put(stats.price_band[c] - hb_mean[:, None])
        in_cat = cat_eq.sum(axis=2)  # the shopper's events in the candidate's category, of its brand among them
        put(np.where(in_cat > 0, (cat_eq & brand_eq).sum(axis=2) / np.maximum(in_cat, 1), np.nan))
        st = ctx.searches
        if st is not None and len(st.shown) == len(items):
            shown, picked = st.shown[c], st.picked[c]
            put(np.log1p(shown))
            put(np.log1p(picked))
            put((picked + 0.05) / (shown + 1.0))
        else:
            put(np.nan)
            put(np.nan)
            put(np.nan)
    assert next(col, None) is None, "feature columns out of sync with feature_names"
    return np.ascontiguousarray(X.transpose(1, 2, 0))
