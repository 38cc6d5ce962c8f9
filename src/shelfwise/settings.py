"""The one settings object: a TOML file plus ``SHELFWISE_*`` environment variables.

Precedence (highest first): explicit keyword arguments, environment variables (nested keys joined by ``__``,
e.g. ``SHELFWISE_MODELS__ALS__FACTORS=128``), the TOML file named by ``SHELFWISE_CONFIG`` (default
``./shelfwise.toml`` when it exists), then the defaults below. Code outside this module never reads the
environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from shelfwise.domain import EventTypeName


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """DSN per storage role; the scheme picks the backend. Empty strings take data-dir defaults."""

    events: str = Field("", description="event store + catalog; sqlite:///path or postgresql://...")
    online: str = Field("memory://", description="online state (session last-N, counters): memory:// or redis://")
    vectors: str = Field("hnsw://?m=32&ef_construction=200&ef_search=500",
                         description="vector index of the embedding sources (ALS, sequence model) for catalogs "
                                     "above models.candidates.exact_max_items: hnsw://?m=&ef_construction=&"
                                     "ef_search= (in process, built once per model version and saved beside it; "
                                     "recall@200 0.988 on Beauty at these values, benchmarks/ann_recall.py), "
                                     "exact://, or pgvector://… (shared by every replica)")
    bus: str = Field("inprocess://", description="event bus: inprocess:// or redis-stream:// or kafka://")
    preferences: str = Field("", description="shoppers' explicit preferences: sqlite:///path or postgresql://...; "
                                             "empty = the event store's database")
    models: str = Field("", description="model store: a directory (file:///path), shared by every replica")
    registry: str = Field("", description="model registry (versions, offline metrics, gate results, the staged "
                                          "rollout): sqlite:///path or postgresql://...; empty = registry.db in the "
                                          "model store's directory, or the event store's database when that is "
                                          "PostgreSQL (so every replica reads the same rollout)")
    ack: Literal["stream", "commit"] = Field(
        "stream", description="when POST /v1/events answers on a stream bus: after the durable append to the stream "
                              "(durable as far as Redis persists: use appendonly yes), or after a worker committed "
                              "the events to the event store")
    ack_timeout_s: float = Field(10.0, gt=0, description="ack=commit: how long the API waits for the worker")


class EventWeights(_Section):
    """Implicit-feedback weight of each event type (purchase > add_to_cart > view)."""

    product_viewed: float = 1.0
    add_to_cart: float = 4.0
    purchase_completed: float = 8.0
    recommendation_clicked: float = 1.0
    remove_from_cart: float = Field(0.0, description="training weight; negative values subtract from the shopper's "
                                                    "summed weight of the item (clipped at 0). Request time treats "
                                                    "a recent removal as negative evidence either way "
                                                    "(models.caps.removed_penalty)")
    search: float = 0.0
    wishlist_added: float = Field(2.0, ge=0, description="an item added to the wishlist: interest between a view "
                                                          "and a cart (data without wishlist events trains as "
                                                          "before)")
    wishlist_removed: float = Field(0.0, le=0, description="an item taken off the wishlist (0 or negative, like "
                                                           "remove_from_cart)")

    @model_validator(mode="after")
    def _ordered(self) -> "EventWeights":
        if not (self.purchase_completed >= self.add_to_cart >= self.product_viewed >= 0):
            raise ValueError("event weights must satisfy purchase_completed >= add_to_cart >= product_viewed >= 0")
        return self


class TrendingSettings(_Section):
    half_life_days: float = Field(7.0, gt=0)


class CovisitSettings(_Section):
    session_gap_minutes: float = Field(30.0, gt=0, description="a gap longer than this starts a new session")
    # Defaults tuned on leave-one-out validation targets (Beauty, Sports, MovieLens 100K; see BENCHMARKS.md).
    window: int = Field(5, ge=1, description="pairs are counted between events at most this many steps apart")
    half_life_days: float = Field(60.0, gt=0, description="time decay of co-visitation pairs")
    top_per_item: int = Field(200, ge=1, description="neighbours kept per item")
    last_n: int = Field(5, ge=1, description="a shopper is scored from their last N items")
    recency_decay: float = Field(0.35, gt=0, le=1, description="weight of the j-th most recent item is decay**j")
    forward_weight: float = Field(1.0, ge=0, description="weight of pairs where the neighbour came later")
    backward_weight: float = Field(0.25, ge=0, description="weight of pairs where the neighbour came earlier")
    normalize: Literal["cosine", "none"] = Field(
        "none", description="none: raw (decayed) pair counts; cosine: divided by sqrt of both items' occurrences")


class ALSSettings(_Section):
    factors: int = Field(64, ge=2)
    iterations: int = Field(15, ge=1)
    regularization: float = Field(0.05, ge=0)
    alpha: float = Field(10.0, gt=0, description="confidence = 1 + alpha * weight")
    random_state: int = 0


class EASESettings(_Section):
    """EASE item-item model (``retrieval/ease.py``): an n_items² dense matrix, so for catalogs up to max_items."""

    l2: float = Field(500.0, gt=0, description="L2 regularisation λ added to the Gram diagonal")
    max_items: int = Field(40_000, ge=1, description="refuse to fit above this many items (memory grows as n²)")


class SequenceSettings(_Section):
    """SASRec-style causal transformer over a shopper's recent events (``retrieval/sequence.py``), served by ANN."""

    dim: int = Field(64, ge=8, description="embedding / hidden size (item embeddings are tied in and out)")
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1, description="attention heads; must divide dim")
    dropout: float = Field(0.3, ge=0, lt=1, description="embedding, attention and residual dropout; 0.3 reaches "
                                                        "Sports' best validation score in half the epochs of 0.5 "
                                                        "(BENCHMARKS.md, Sequence model)")
    lr: float = Field(5e-3, gt=0, description="Adam; 5e-3 reached the best validation score in half the "
                                              "epochs of 1e-3 (BENCHMARKS.md)")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1, description="sequences per training step")
    negatives: int = Field(0, ge=0, description="0 = full-softmax cross-entropy over the catalog; N = sampled "
                                                "softmax over N uniform negatives per batch (faster on big "
                                                "catalogs; logQ-corrected)")
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(6, ge=1, description="stop after this many validations without a better NDCG@10")
    max_len: int = Field(50, ge=2, description="the last max_len events of a shopper are encoded")
    finetune_epochs: int = Field(3, ge=0,
                                 description="epochs on the full sequences (held-out items included) after "
                                             "early stopping")
    max_train_minutes: float = Field(15.0, gt=0, description="wall-time cap of one fit")
    val_users: int = Field(10_000, ge=0, description="at most this many shoppers' last items validate an epoch")
    threads: int = Field(0, ge=0, description="torch threads for training and big batches; 0 = every core")
    seed: int = 0
    progress: bool = Field(True, description="show a progress bar while training")
    runtime: Literal["onnx", "torch"] = Field("onnx", description="what encodes the request path's small batches "
                                                                   "(up to 64 shoppers): ONNX Runtime (3x faster "
                                                                   "than torch for one shopper, 1.5x for eight: "
                                                                   "BENCHMARKS.md, Serving) or torch; big offline "
                                                                   "batches always use torch")
    candidates: int = Field(200, ge=1, description="the model's evidence: its top-N items per query, scored "
                                                   "exp(s - s_best) (their softmax probability relative to the "
                                                   "best); every other item has none")


class CandidateSettings(_Section):
    """Candidate generation (``stages/candidates.py``): each source proposes its top ``per_source`` items, the
    union (at most ``limit``) is scored by every source and blended; the ranker and merchandising work on it."""

    per_source: int = Field(300, ge=1, description="top-K items each source proposes per request")
    limit: int = Field(1000, ge=1, description="at most this many candidates per request after the union")
    dense_max_items: int = Field(30_000, ge=0, description="catalogs up to this size take the exact path: every "
                                                           "source scores every item and the blend's best `limit` "
                                                           "are the candidates (faster than a union there: "
                                                           "BENCHMARKS.md, Serving); larger ones the union")
    exact_max_items: int = Field(30_000, ge=0, description="embedding sources search catalogs up to this size "
                                                           "exactly (a matmul beats graph search there: 12k items "
                                                           "0.2 ms vs HNSW 0.6 ms a query); larger ones through "
                                                           "the vector index of stores.vectors")
    ann_max_batch: int = Field(64, ge=0, description="batches larger than this are searched exactly even above "
                                                     "exact_max_items (offline evaluation)")
    cold_transfer: float = Field(0.5, ge=0, le=1, description="an item added after training: this share of the "
                                                              "placement's weight of each source fitted without it "
                                                              "goes to the content source's score of it (items "
                                                              "the sources know are unaffected)")


class ScoreWeights(_Section):
    """Weights of the final business score of a placement: ``relevance`` (the blended sources, normalised so the
    request's best item is 1) plus business signals, each in [0, 1] (``rerank/business.py``). Relevance-only:
    set every other weight to 0 (answers are then exactly the blend's ranking)."""

    relevance: float = Field(1.0, ge=0, description="the blended candidate sources, row-normalised to [0, 1]")
    trend: float = Field(0.0, ge=0, description="time-decayed popularity (the trending source, max 1)")
    stock: float = Field(0.0, ge=0, description="log stock relative to business.stock_reference (untracked = 1)")
    margin: float = Field(0.0, ge=0, description="gross margin (price - cost) / price (unknown = catalog median)")
    freshness: float = Field(0.0, ge=0, description="0.5 ** (age / business.freshness_half_life_days)")
    seasonality: float = Field(0.0, ge=0, description="1 while one of business.seasons covers the item")

    @property
    def relevance_only(self) -> bool:
        return not (self.trend or self.stock or self.margin or self.freshness or self.seasonality)


class DiversitySettings(_Section):
    """MMR re-ranking of a placement (``rerank/mmr.py``): each slot takes the item maximising
    ``mmr_lambda * score - (1 - mmr_lambda) * max similarity to the items already placed``."""

    mmr_lambda: float = Field(1.0, ge=0, le=1, description="1 = relevance only (off); lower = more diverse")
    category: float = Field(0.5, ge=0, description="similarity weight of the same leaf category")
    price_band: float = Field(0.2, ge=0, description="similarity weight of the same price band")
    embedding: float = Field(0.3, ge=0, description="similarity weight of ALS item-factor cosine (when trained)")
    pool: int = Field(100, ge=1, description="candidates considered (the best by score)")


class Season(_Section):
    """A yearly window (``MM-DD`` to ``MM-DD``, inclusive, UTC; may wrap the new year) when items are in season."""

    name: str = ""
    start: str = Field(pattern=r"^\d{2}-\d{2}$")
    end: str = Field(pattern=r"^\d{2}-\d{2}$")
    categories: list[str] = Field(default_factory=list, description="category path prefixes, e.g. 'TVs'")
    tags: list[str] = Field(default_factory=list, description="item tags (any of)")


class BusinessSignals(_Section):
    """How the business signals of ``ScoreWeights`` are computed from the catalog."""

    freshness_half_life_days: float = Field(30.0, gt=0)
    stock_reference: float = Field(50.0, gt=0, description="stock at which the stock signal reaches 1")
    price_band_ratio: float = Field(1.6, gt=1, description="diversity price bands: prices within this ratio")
    seasons: list[Season] = Field(default_factory=list)


PlacementKind = Literal["homepage", "item", "cart", "rerank"]
PLACEMENT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_KINDS = {"pdp_similar": "item", "pdp_fbt": "item", "cart_upsell": "cart", "search": "rerank",
                 "category": "rerank"}  # the kind of a placement configured without one, by its name
PLACEMENT_KINDS: dict[str, str] = {
    "homepage": "a rail about the shopper (user_id or session_id, optional): homepage, email",
    "item": "a product page's rail: needs item_id (the page's item is the anchor)",
    "cart": "a cart's rail: cart item ids are the anchors",
    "rerank": "the shop's own list re-ranked for the shopper (POST /v1/rerank: search results, a category page)",
}


class PlacementSettings(_Section):
    """One touchpoint, configured by name (``models.placements.<name>``): what it needs (``kind``), the blend
    weights of its candidate sources, its default size, score and diversity (a learned ranker re-scores the
    placements of ``models.ranker.placements``, and those with ``ranker = true``)."""

    kind: PlacementKind = Field("homepage", description="which inputs the placement needs: " + "; ".join(
        f"{k}: {v}" for k, v in PLACEMENT_KINDS.items()))
    weights: dict[str, float]
    k: int | None = Field(None, ge=1, le=1000, description="items answered when the request gives no k (None: "
                                                           "api.default_k; a rerank placement: the whole list)")
    ranker: bool = Field(False, description="re-score with the learned ranker trained for models.ranker.placements "
                                            "even though this placement is not listed there (its features are the "
                                            "ranker's sources: weigh them here)")
    popularity_weight: float = Field(0.0, ge=0, le=1, description="rerank placements: share of the personal order "
                                                                  "given to the items' popularity (the trending "
                                                                  "source's order of the list); the rest is the "
                                                                  "ranker or blend (and the query's text match)")
    query_weight: float = Field(0.0, ge=0, le=1, description="rerank placements: share of the personal score given "
                                                             "to the query-item text match when a query is sent "
                                                             "(title, category, brand; the rest is the ranker or "
                                                             "blend)")
    shown: int | None = Field(None, ge=1, le=1000, description=(
        "how many of an answer's first slots count as shown to the shopper (impressions for the caps, the "
        "exposure log); unset: every slot (a rail shows them all). The shop's own lists default to 48, a page of "
        "results: a 200-item re-rank is not 200 impressions, and logging them all took a fifth of the API's time"))
    impact: float = Field(0.75, ge=0, le=1, description="rerank placements: the personalization_impact of a "
                                                        "request that sends none (how far the personal order moves "
                                                        "the shop's)")
    exclude_history: Literal["purchased", "all", "none"] = "purchased"
    score: ScoreWeights = ScoreWeights()
    diversity: DiversitySettings = DiversitySettings()
    explore: float = Field(0.0, ge=0, le=0.5, description="share of the rail's slots given to new items "
                                                          "(models.explore; 1/12 = one slot of 12; a fractional "
                                                          "slot is a coin flip per request); 0 = none")


class ExploreSettings(_Section):
    """Exploration slots for new items (``stages/explore.py``): each placement's ``explore`` share of its slots
    goes to items younger than ``max_age_days`` with fewer than ``max_impressions`` impressions, drawn by content
    match to the shopper or page (softmax at ``temperature``), so they gather feedback before any model knows
    them. Rules win: only items the request may show, never in a slot a rule claims."""

    enabled: bool = Field(True, description="false = no exploration slots on any placement")
    max_age_days: float = Field(14.0, gt=0, description="an item is new this long after it came to the shop: its "
                                                        "catalog created_at, else when Shelfwise first saw it "
                                                        "(first stored in the catalog, or its first event)")
    max_impressions: int = Field(1000, ge=1, description="a new item leaves exploration once shown this often "
                                                         "(counted from the exposure log, rules.exposure_log)")
    temperature: float = Field(0.1, gt=0, description="softmax temperature over the content cosine of new items "
                                                      "with the shopper's recent items or the page's item: lower "
                                                      "picks the best match more often, higher spreads slots "
                                                      "more evenly")
    seed: int = Field(0, description="with the request id, seeds each request's draw (the same request id and "
                                     "seed draw the same slots)")
    refresh_s: float = Field(10.0, gt=0, description="how often impression counts are re-read from the exposure "
                                                     "log, which other processes writing it share")


WISHLIST_ALERTS = "wishlist_alerts"  # the placement answered from the shopper's wishlist, not by the sources


def _default_placements() -> dict[str, PlacementSettings]:
    # homepage: BENCHMARKS.md (Offline quality; Sequence model); `cohort` speaks only for a shopper without history
    # (a new shopper's first request), where the other sources have nothing. `content` (items like the page's or
    # cart's, by catalog data: the only evidence about an item added after training) weighs in on the item pages
    # and the cart, not on the homepage, whose measured ranking (and the ranker trained on its sources) it would
    # change. explore: one slot of 12 for new items on the homepage and similar-items rail, where a content match
    # to the shopper or page is a fair guess; none on "bought together" and the cart, which sell complements.
    rerank = {"sequence": 1.0, "covisit": 1.0, "als": 0.3, "content": 0.1, "trending": 0.02}
    return {
        "homepage": PlacementSettings(weights={"sequence": 1.0, "covisit": 1.0, "als": 0.3, "cohort": 1.0,
                                               "trending": 0.02}, explore=1 / 12),
        "pdp_similar": PlacementSettings(kind="item", weights={"covisit": 1.0, "als": 0.5, "content": 0.3,
                                                                 "trending": 0.02}, explore=1 / 12),
        "pdp_fbt": PlacementSettings(kind="item", weights={"copurchase": 1.0, "covisit": 0.3, "content": 0.05,
                                                             "trending": 0.02}),
        "cart_upsell": PlacementSettings(kind="cart", weights={"copurchase": 1.0, "covisit": 0.5, "als": 0.2,
                                                                 "content": 0.05, "trending": 0.02}),
        # the shop's own lists (POST /v1/rerank): the homepage's sources re-scored by its learned ranker, content
        # for items the other sources do not know (added after training, never interacted with)
        # popularity_weight: BENCHMARKS.md, Search re-ranking (the homepage ranker's order alone ranked the picked
        # search result below the shop's order; popularity with a fifth of the ranker's order, above it)
        # impact 1: the search ranker (trained on logged searches) weighs the shop's position itself, and without
        # one the personal order alone did as well (BENCHMARKS.md, Search re-ranking: +16.0 % at 1, +13.6 % at 0.75)
        "search": PlacementSettings(kind="rerank", weights=dict(rerank), exclude_history="none", ranker=True,
                                    popularity_weight=0.8, query_weight=0.1, impact=1.0, shown=48),
        "category": PlacementSettings(kind="rerank", weights=dict(rerank), exclude_history="none", ranker=True,
                                      popularity_weight=0.8, shown=48),
        # the weekly email (`shelfwise campaign run`): the homepage's sources, no exploration slots; its caps
        # (models.caps) keep it from repeating itself or what the shop showed lately
        "email_weekly": PlacementSettings(weights={"sequence": 1.0, "covisit": 1.0, "als": 0.3, "cohort": 1.0,
                                                   "trending": 0.02}),
        # "back in stock / price drop from your wishlist": the shopper's wishlisted items that came back in stock
        # or got cheaper since they were wishlisted (service.wishlist_alerts; no candidate sources)
        WISHLIST_ALERTS: PlacementSettings(weights={}, exclude_history="none"),
    }


class RankerSettings(_Section):
    """Learning-to-rank stage (``ranking/``): LightGBM LambdaMART re-scores the blend's top-N candidates.

    Trained by ``shelfwise train`` when enabled: the sources are refit on the events before a cut, requests after
    it are labelled by what the shopper did next (purchase 3 > add to cart 2 > view 1), see ``ranking/labels.py``.
    """

    enabled: bool = Field(True, description="train the ranker with the pipeline (shelfwise train) and use it for "
                                            "`placements` (+40% NDCG@10 on the synthetic storefront, +13% on Amazon "
                                            "Beauty/Sports: BENCHMARKS.md, Learning to rank)")
    placements: list[str] = Field(default_factory=lambda: ["homepage"],
                                  description="placements re-ranked (training requests are history-based, "
                                              "like the homepage); the first one's sources become features")
    candidates: int = Field(120, ge=1, description="top-N blended candidates re-scored per request")
    search_placements: list[str] = Field(default_factory=lambda: ["search"],
                                         description="rerank placements scored by the search ranker: a second "
                                                     "booster trained on logged searches (search events with "
                                                     "properties.results; a view, cart or purchase of a result "
                                                     "after it is the label) with query-item and shop-order "
                                                     "features (ranking/search.py); empty = none. Trained only "
                                                     "when the log has min_requests such searches after the cut")
    search_booster: dict[str, float | int | str] = Field(
        default_factory=lambda: {"max_depth": 3, "learning_rate": 0.03, "early_stopping_rounds": 100},
        description="the search ranker's LightGBM settings that differ from the ranker's (any of objective, "
                    "learning_rate, num_boost_round, early_stopping_rounds, num_leaves, max_depth, min_data_in_leaf, "
                    "feature_fraction, lambda_l2, valid_fraction): one labelled result per search is noisier than "
                    "the homepage's sessions; shallow trees learned the synthetic storefront's picks better "
                    "(BENCHMARKS.md, Search re-ranking)")
    margin_weight: float = Field(0.0, ge=0, description="final = minmax(ranker score) + margin_weight · "
                                                        "price×margin / max over the candidates; 0 = relevance "
                                                        "only (see BENCHMARKS.md, Learning to rank)")
    # training data
    split: Literal["auto", "time", "last"] = Field("auto", description="time: label the interactions after a "
                                                                       "global time cut; last: each shopper's "
                                                                       "last one (leave-one-out data without real "
                                                                       "time); auto: last when the log's times are "
                                                                       "order-only (imported sequences), else time")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="split=time: share of interactions after the cut")
    label_horizon: int = Field(5, ge=1, description="the next N interactions of the session are labelled")
    max_requests: int = Field(10_000, ge=1, description="at most this many labelled requests (sampled): bounds "
                                                        "training time (~N×120 rows)")
    min_requests: int = Field(50, ge=1, description="train no ranker (serve the blend order) with fewer labelled "
                                                    "requests whose next item is among the candidates")
    valid_fraction: float = Field(0.2, ge=0, lt=1, description="latest requests (or shoppers) for early stopping")
    ipw_eta: float = Field(1.0, ge=0, description="logged impressions: propensity (1/(position+1))**eta")
    ipw_max_weight: float = Field(20.0, ge=1, description="clip of inverse-propensity weights")
    exposure_log: str = Field("", description="SQLite file, or PostgreSQL DSN, with the exposure log "
                                              "(rules/log.py, rules/pg.py); its requests "
                                              "after the cut become training points with IPW by position "
                                              "(split=time only); empty = not used")
    # LightGBM
    objective: Literal["lambdarank", "rank_xendcg"] = "lambdarank"
    learning_rate: float = Field(0.05, gt=0)
    num_boost_round: int = Field(400, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    num_leaves: int = Field(31, ge=2)
    max_depth: int = Field(6, ge=-1, description="tree depth cap (-1 none): depth 6 halves serving predict time "
                                                 "for the same validation NDCG on the synthetic storefront")
    min_data_in_leaf: int = Field(100, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    bagging_freq: int = Field(1, ge=0)
    lambda_l2: float = Field(1.0, ge=0)
    max_bin: int = Field(255, ge=2)
    truncation_level: int = Field(20, ge=1, description="lambdarank_truncation_level")
    label_gain: list[float] = Field(default_factory=lambda: [0.0, 1.0, 3.0, 7.0],
                                    description="gain of relevance grades 0 (nothing), 1 view, 2 cart, 3 purchase")
    threads: int = Field(1, ge=0, description="LightGBM training threads (0 = every core). 1 by default: OpenMP "
                                             "threads spin, and on a busy 2-core machine 2 threads ran 15x slower")
    compile: bool = Field(True, description="serve the booster as native code compiled with lleaves (LLVM), cached "
                                            "beside the model per CPU: the same scores, about 5x faster than "
                                            "LightGBM's predict on 120-candidate batches (BENCHMARKS.md, Serving)")
    seed: int = 0

    @field_validator("search_booster")
    @classmethod
    def _search_booster(cls, value: dict[str, float | int | str]) -> dict[str, float | int | str]:
        allowed = {"objective", "learning_rate", "num_boost_round", "early_stopping_rounds", "num_leaves",
                   "max_depth", "min_data_in_leaf", "feature_fraction", "lambda_l2", "valid_fraction"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown search_booster settings {unknown}; known: {sorted(allowed)}")
        return value

    def for_search(self) -> "RankerSettings":
        """The search ranker's settings: these with ``search_booster`` applied, its placements the search ones."""
        return RankerSettings.model_validate({**self.model_dump(), **self.search_booster,
                                              "placements": list(self.search_placements)})


class ContentSettings(_Section):
    """Item content tower (``content/``): a vector per item from its catalog data, projected into the space of the
    collaborative item embeddings so that an item without interactions lands near the warm items it resembles.

    content vector = [MiniLM(title + description) ‖ hashed category path (every level) ‖ hashed brand ‖ price
    band ‖ hashed attributes and tags], each block L2-normalised then weighted; see ``content/features.py``."""

    # text encoder (content/encoder.py)
    backend: Literal["onnx", "torch"] = Field(
        "onnx", description="runtime of the MiniLM text encoder: onnx (ONNX Runtime over a one-time export cached "
                            "in cache_dir; measured faster here: BENCHMARKS.md, Content tower) or torch")
    cache_dir: str = Field("", description="where the ONNX export is cached; empty = <data_dir>/cache/content")
    batch_size: int = Field(64, ge=1, description="texts per encoder call")
    max_tokens: int = Field(256, ge=8, le=512, description="word pieces kept per text (the model was trained "
                                                           "with 256; longer texts are truncated)")
    max_chars: int = Field(4000, ge=16, description="characters of title + description tokenised (bounds the "
                                                    "tokeniser's work on a 20,000-character description; 256 "
                                                    "word pieces rarely need more than ~1,500)")
    threads: int = Field(0, ge=0, description="intra-op threads of the encoder; 0 = every core (ONNX Runtime: "
                                               "2 threads 102 texts/s vs 1 thread 84 on this busy 2-core machine; "
                                               "BENCHMARKS.md, Content tower)")
    # features (content/features.py)
    category_buckets: int = Field(256, ge=8, description="hashed buckets of the category path block")
    brand_buckets: int = Field(128, ge=8, description="hashed buckets of the brand block")
    attribute_buckets: int = Field(512, ge=8, description="hashed buckets of attributes (key=value) and tags")
    price_bands: int = Field(16, ge=2, description="log-spaced price bands between price_min and price_max")
    price_min: float = Field(1.0, gt=0)
    price_max: float = Field(10_000.0, gt=0)
    price_kernel: float = Field(1.0, gt=0, description="width (in bands) of the Gaussian kernel over price bands: "
                                                      "prices d bands apart have cosine exp(-d²/4) at width 1")
    text_weight: float = Field(1.0, ge=0, description="weight of the (unit) text block in the content vector; 0 = "
                                                     "no text block (the encoder never runs: catalogs without text)")
    category_weight: float = Field(1.0, ge=0)
    brand_weight: float = Field(0.5, ge=0)
    price_weight: float = Field(0.5, ge=0)
    attribute_weight: float = Field(1.0, ge=0)
    # projection into the collaborative space (content/projection.py)
    projection: Literal["ridge", "mlp", "knn"] = Field(
        "knn", description="content → collaborative map: ridge regression (closed form), a 2-layer MLP, or knn "
                           "(the ridge map, then a softmax-weighted vote of the true collaborative vectors of the "
                           "nearest warm items); knn mapped best on the synthetic storefront and Amazon Beauty "
                           "(BENCHMARKS.md, Content tower)")
    ridge_alphas: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
                                      description="ridge penalties tried; the best on a validation slice of "
                                                  "the warm items is kept")
    knn_neighbours: list[int] = Field(default_factory=lambda: [10, 20, 30],
                                      description="knn: warm items voting (the best on validation is kept)")
    knn_temperatures: list[float] = Field(default_factory=lambda: [0.02, 0.05, 0.1],
                                          description="knn: softmax temperatures of the vote over cosine "
                                                      "similarities (the best on validation is kept)")
    mlp_hidden: int = Field(512, ge=8)
    mlp_epochs: int = Field(60, ge=1)
    mlp_lr: float = Field(1e-3, gt=0)
    mlp_weight_decay: float = Field(1e-4, ge=0)
    mlp_dropout: float = Field(0.1, ge=0, lt=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="warm items held out to choose the ridge "
                                                                    "penalty / stop the MLP")
    min_interactions: int = Field(5, ge=1, description="items with at least this many interactions are warm "
                                                       "(the projection's training set)")
    seed: int = 0
    progress: bool = Field(True, description="show a progress bar while encoding (command line)")
    # the content candidate source (retrieval/content.py)
    source: bool = Field(True, description="`shelfwise train` fits the content candidate source with every full "
                                           "model (encoding is incremental across trainings: only new or changed "
                                           "items); false = no content source, no encoding")
    max_items: int = Field(200_000, ge=0, description="catalogs larger than this train without the content source: "
                                                      "the first encoding runs at about 70 texts a second on 2 "
                                                      "cores (1M items: about 4 hours); raise it where that is "
                                                      "affordable")
    space: Literal["projected", "content"] = Field(
        "projected", description="the source's item vectors: projected into the ALS space (needs the als source; "
                                 "falls back to content without it; blended with the content vectors by the "
                                 "weight blend_weights chooses) or the content vectors themselves")
    blend_weights: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0],
        description="weights w tried for the source's item similarity w · projected cosine + (1 − w) · content "
                    "cosine; the best at predicting held-out warm items as a shopper's next item is kept "
                    "(content/blend.py); [1.0] = the projection alone")
    history: int = Field(20, ge=1, description="a shopper's most recent items forming their content profile")
    neighbours: int = Field(300, ge=0, description="each item's top neighbours kept as a list (product pages and "
                                                    "carts are scored from their items' lists instead of a product "
                                                    "with every item; 0 = no lists)")
    neighbours_max_items: int = Field(30_000, ge=0, description="catalogs up to this size keep neighbour lists "
                                                                "(built with every model version: 12k items about "
                                                                "5 s); larger ones search the vector index")
    relist_share: float = Field(0.1, gt=0, le=1, description="the lists are rebuilt (on the live-item thread) when "
                                                             "this share of the items was added or changed since")
    recency_decay: float = Field(0.8, gt=0, le=1, description="weight of each older item of the profile")

    @model_validator(mode="after")
    def _prices(self) -> "ContentSettings":
        if self.price_max <= self.price_min:
            raise ValueError("price_max must be greater than price_min")
        for name, values in (("ridge_alphas", self.ridge_alphas), ("knn_neighbours", self.knn_neighbours),
                             ("knn_temperatures", self.knn_temperatures)):
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive numbers")
        if not self.blend_weights or any(not 0 <= w <= 1 for w in self.blend_weights):
            raise ValueError("blend_weights must be a non-empty list of numbers between 0 and 1")
        return self

COHORT_DIMENSIONS = ("device", "placement", "category", "segment")


def _default_cohort_levels() -> list[list[str]]:
    return [["segment", "device", "category"], ["segment", "device"], ["segment", "category"], ["segment"],
            ["device", "placement", "category"], ["device", "category"], ["category"], ["device", "placement"],
            ["device"]]


class CohortSettings(_Section):
    """Cohort centroids for a new shopper's first request (``retrieval/cohort.py``): shoppers are grouped by what
    their first events said (device, placement, segments; ``context`` of events) and the root category of the first
    item they looked at; a cohort's centroid is the mean of its shoppers' (time-decayed, event-weighted) interest
    in each item, every shopper counting once. A request without history, product page or cart is answered from
    the first level of ``levels`` at which its own device / placement / segments / category (the root of its
    ``category`` filter) name a cohort of at least ``min_support`` shoppers; with none, trending answers."""

    source: bool = Field(True, description="`shelfwise train` fits the cohort source with every model (it scores "
                                           "only requests without history, product page or cart)")
    levels: list[list[Literal["device", "placement", "category", "segment"]]] = Field(
        default_factory=_default_cohort_levels, min_length=1,
        description="cohort definitions tried in order, finest first; a request with several segments takes the "
                    "smallest of its segments' cohorts that is large enough (the most specific)")
    min_support: int = Field(50, ge=1, description="a cohort with fewer shoppers is too small to answer: the next "
                                                   "(coarser) level is tried, finally trending")
    half_life_days: float = Field(30.0, gt=0, description="time decay of the events forming the centroids")
    top_items: int = Field(500, ge=1, description="items kept per cohort centroid")

    @model_validator(mode="after")
    def _distinct(self) -> "CohortSettings":
        for level in self.levels:
            if not level or len(set(level)) != len(level):
                raise ValueError(f"a cohort level names each dimension at most once and at least one, got {level}")
        return self


class PreferenceSettings(_Section):
    """How a shopper's explicit preferences (``PUT /v1/shoppers/{id}/preferences``) shape their rails
    (``rules/preferences.py``; the merchandise stage boosts, the resolve stage filters)."""

    hard: list[Literal["categories", "brands", "sizes", "price", "style_tags"]] = Field(
        default_factory=lambda: ["sizes", "price"],
        description="fields that are hard constraints: an item with a value for the field that matches none of the "
                    "shopper's (a size attribute not in their sizes, a price outside their range, ...) is never "
                    "shown to them, not even when pinned; items without a value for the field are kept. The other "
                    "fields given are soft: a boost")
    boost: float = Field(1.0, ge=0, description="the lift of an item matching every soft field, as a share of the "
                                                "spread of the request's scores (best minus worst candidate): at 1 "
                                                "it ranks level with the best item matching none, so stated "
                                                "preferences outrank older implicit evidence; an item matching some "
                                                "of the soft fields gets that share of it")
    session_boost: float = Field(0.15, ge=0, description="the lift instead while the shopper is in a session (an "
                                                         "event within session_minutes): what they are doing now "
                                                         "stays in front, preferences break near ties")
    session_minutes: float = Field(30.0, gt=0, description="events this recent are the current session")
    size_attributes: list[str] = Field(default_factory=lambda: ["size"], min_length=1,
                                       description="item attributes holding a size (a value or a list of values), "
                                                   "compared with the shopper's sizes without regard to case")
    candidates: int = Field(100, ge=0, description="the most popular items matching the shopper's soft preferences "
                                                   "join the request's candidates, so preferences can show items no "
                                                   "source proposed (a new shopper's, say)")


class CapSettings(_Section):
    """Frequency cap and fatigue of one placement (``models.caps.placements.<name>``; ``stages/caps.py``). An
    impression counts until the shopper engages with the item (``models.caps.reset_on``): "at most 3 impressions in
    24 h without a click" is ``max_impressions = 3``, ``window_hours = 24``."""

    max_impressions: int = Field(0, ge=0, description="hard cap: an item shown to the shopper this many times within "
                                                      "window_hours (since they last engaged with it) is not shown "
                                                      "again on this placement until the window lets it go; the "
                                                      "next eligible item takes its slot. 0 = no hard cap")
    window_hours: float = Field(24.0, gt=0, description="the cap's window")
    scope: Literal["placement", "all"] = Field("placement", description="impressions counted: on this placement only, "
                                                                        "or on every placement")
    penalty: float = Field(0.0, ge=0, description="soft fatigue: each impression of an item (within window_hours, "
                                                  "since the shopper last engaged with it) lowers its score by this "
                                                  "share of the request's score spread (best minus worst), halving "
                                                  "every half_life_hours; 0 = none")
    half_life_hours: float = Field(6.0, gt=0, description="how fast an impression's penalty fades")
    seen_elsewhere_hours: float = Field(0.0, ge=0, description="items shown to the shopper on any other placement "
                                                               "within this many hours are not shown here (an email "
                                                               "repeats nothing the shop showed them lately); 0 = off")


def _default_caps() -> dict[str, CapSettings]:
    # site placements: no cap unless configured (their measured ranking stays as it is); the weekly email repeats
    # an item at most once in four weeks and nothing the shop showed the shopper in the last three days
    return {"email_weekly": CapSettings(max_impressions=1, window_hours=28 * 24, seen_elsewhere_hours=72)}


class CapsSettings(_Section):
    """Frequency caps, fatigue and seen-item suppression (``stages/caps.py``), from each shopper's impressions kept in
    online state (read with the shopper's state: no extra round trip)."""

    placements: dict[str, CapSettings] = Field(default_factory=_default_caps,
                                               description="caps by placement name (a placement without an entry "
                                                           "has none)")
    record: bool = Field(True, description="count the impressions of every rail served to a known shopper in online "
                                           "state (one write per micro-batch); false: caps see no impressions")
    reset_on: list[EventTypeName] = Field(
        default_factory=lambda: ["product_viewed", "recommendation_clicked", "add_to_cart", "purchase_completed",
                                 "wishlist_added"],
        description="event types that count as engaging with an item: its impressions before them no longer count")
    keep_days: float = Field(30.0, gt=0, description="impressions are kept this long (at least the longest window)")
    max_items: int = Field(200, ge=1, description="items with impressions kept per shopper (least recently shown "
                                                  "go first); each costs the online-state read of every request of "
                                                  "the shopper (BENCHMARKS.md, Frequency caps)")
    max_shown: int = Field(5, ge=1, description="impressions kept per item and shopper: at least every placement's "
                                                "max_impressions (older ones no longer add fatigue worth keeping)")
    removed_penalty: float = Field(0.3, ge=0, description="negative evidence: an item the shopper took out of the "
                                                          "cart (and has not carted or bought since) is lowered by "
                                                          "this share of the request's score spread, halving every "
                                                          "removed_half_life_hours; 0 = off")
    removed_half_life_hours: float = Field(72.0, gt=0, description="how fast a removal's penalty fades")

    @model_validator(mode="after")
    def _windows(self) -> "CapsSettings":
        longest = max([max(c.window_hours, c.seen_elsewhere_hours) for c in self.placements.values()] + [0.0])
        if longest > self.keep_days * 24:
            raise ValueError(f"keep_days ({self.keep_days}) must cover the longest cap window ({longest} hours)")
        most = max([c.max_impressions for c in self.placements.values()] + [0])
        if most > self.max_shown:
            raise ValueError(f"max_shown ({self.max_shown}) must be at least the largest max_impressions ({most})")
        return self


class ModelSettings(_Section):
    event_weights: EventWeights = EventWeights()
    trending: TrendingSettings = TrendingSettings()
    covisit: CovisitSettings = CovisitSettings()
    als: ALSSettings = ALSSettings()
    ease: EASESettings = EASESettings()
    sequence: SequenceSettings = SequenceSettings()
    placements: dict[str, PlacementSettings] = Field(
        default_factory=_default_placements,
        description="touchpoints by name (1-64 letters, digits, '_' or '-'), each with its kind, sources and weights, "
                    "k, score and diversity: homepage, pdp_similar, pdp_fbt, cart_upsell, search and category by "
                    "default; add your own (homepage_hero, email_weekly, ...). A placement left without a kind takes "
                    "its name's (pdp_similar/pdp_fbt: item, cart_upsell: cart, search/category: rerank), else homepage")
    history_length: int = Field(50, ge=1, description="events kept per shopper in online state")
    business: BusinessSignals = BusinessSignals()
    ranker: RankerSettings = RankerSettings()
    candidates: CandidateSettings = CandidateSettings()
    content: ContentSettings = ContentSettings()
    preferences: PreferenceSettings = PreferenceSettings()
    cohort: CohortSettings = CohortSettings()
    explore: ExploreSettings = ExploreSettings()
    caps: CapsSettings = CapsSettings()

    @model_validator(mode="after")
    def _placement_kinds(self) -> "ModelSettings":
        for name, p in self.placements.items():
            if not PLACEMENT_NAME.fullmatch(name):
                raise ValueError(f"placements: name {name[:80]!r} must be 1-64 letters, digits, '_' or '-'")
            if "kind" not in p.model_fields_set:
                p.kind = DEFAULT_KINDS.get(name, "homepage")  # type: ignore[assignment]
        return self


class APISettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = Field(1000, ge=1)
    default_k: int = Field(12, ge=1, le=200)
    max_k: int = Field(200, ge=1)
    recommend_batch: int = Field(32, ge=1, description="concurrent recommendation requests answered by one "
                                                       "pipeline call (api/batcher.py); 1 = one at a time")
    recommend_workers: int | None = Field(None, ge=1, description=(
        "threads making pipeline calls for the micro-batcher; unset: 1 with the in-process online state, 2 with a "
        "networked one (Redis), where a call spends much of its time waiting for replies and a second thread "
        "computes meanwhile (12k demo shop, 2 processes: 248 -> 420 requests/s; 1 process in-process: 541 with "
        "one thread, 404 with two: BENCHMARKS.md, Serving)"))

    def batch_workers(self, online_dsn: str) -> int:
        """``recommend_workers``, or its default for this online state."""
        if self.recommend_workers is not None:
            return self.recommend_workers
        return 1 if online_dsn.startswith("memory:") else 2
    cache_ttl_s: float = Field(30.0, ge=0, description="computed answers are reused this long (0 = no cache); a "
                                                       "shopper's event, a catalog change, a new model or rule "
                                                       "version makes a new answer at once (src/shelfwise/cache.py)")
    cache_max_entries: int = Field(50_000, ge=0, description="answers kept per API process (least recently used "
                                                             "go first)")
    freeze_heap_s: float = Field(0.25, ge=0, description="every this many seconds (and after start-up and each "
                                 "model swap) the API moves the objects created since out of the garbage "
                                 "collector's reach (gc.freeze, which walks nothing), so that its passes stop "
                                 "walking the model, the online state and the answer cache and stop stalling "
                                 "requests (BENCHMARKS.md Serving); 0 = off")
    full_collect_s: float = Field(600.0, ge=0, description="every this many seconds a full garbage collection of "
                                  "everything, frozen or not (about 235 ms of CPU at 12k items, every request "
                                  "waiting), frees the reference cycles that died frozen; 0 = only at start-up")
    gc_young_threshold: int = Field(20_000, ge=100, description="allocations between the garbage collector's "
                                    "young passes in an API process (Python's default: 700); each pass stalls "
                                    "every request for as long as it walks the young objects, so a lower value "
                                    "means shorter, more frequent stalls")
    catalog_sync_s: float = Field(1.0, ge=0, description="how often each API process applies catalog changes made "
                                                         "through other replicas or the CLI (prices, stock, "
                                                         "availability, new and deleted items; its cached answers "
                                                         "follow); 0 = only its own changes")
    edge_ttl_s: int = Field(90, ge=0, description="Cache-Control max-age of non-personal rails (product pages "
                                                  "without a shopper): an edge cache or CDN may keep them this long; "
                                                  "their ETag changes with the model, rule sets and catalog")
    unknown_item: Literal["404", "fallback"] = Field(
        "404", description="a product page (pdp_similar, pdp_fbt) whose item_id, or a cart_upsell whose every cart "
                           "item, is unknown to both the catalog and the model: 404 naming the field and the id, or "
                           "`fallback`: the best sellers, marked fallback. An item in the catalog that the model "
                           "does not know yet (added after training) always gets its category's best sellers, "
                           "marked fallback")


class ResilienceSettings(_Section):
    """Graceful degradation while serving (``stages/budget.py``, ``stores/breaker.py``): time budgets for the request
    path's stages and candidate sources, and circuit breakers around what may fail. Offline evaluation runs
    without them."""

    stage_budget_ms: dict[str, float] = Field(
        default_factory=lambda: {"resolve": 20.0, "caps": 20.0, "rules": 20.0, "explore": 20.0, "candidates": 100.0,
                                 "rank": 50.0, "merchandise": 20.0, "slots": 50.0},
        description="per stage, for one micro-batch (about 10x what each takes on the 12k demo shop under load): "
                    "an optional stage (rank, explore) over its budget or failing `breaker_failures` times in a "
                    "row is skipped until its breaker's probe succeeds (without rank the answer keeps the blend's "
                    "order, without explore it has no exploration slots; either is named in `degraded`); a "
                    "required stage over its budget is logged")
    source_budget_ms: float = Field(50.0, gt=0, description="one candidate source for one micro-batch: over it, or "
                                    "failing, `breaker_failures` times in a row, the source is left out until its "
                                    "breaker's probe succeeds (the answer names it in `degraded`); the other "
                                    "sources and the best sellers fill the rail")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures (errors, or calls over budget) that "
                                  "open a circuit breaker")
    breaker_reset_s: float = Field(10.0, gt=0, description="an open breaker lets one probe call through after this "
                                   "long (half-open): success closes it")
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a 503 (the event store is down: events are "
                               "refused, never acknowledged and lost)")
    bestsellers: int = Field(200, ge=1, description="the static best-seller list kept in memory: the last fallback "
                             "when no model can answer")


class ObservabilitySettings(_Section):
    """Logs and traces (``observability/``); Prometheus metrics are always on at ``GET /metrics``."""

    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="log lines as JSON objects (one per line: time, level, logger, message, request_id, "
                            "trace ids, extra fields) or plain text; auto = JSON unless stderr is a terminal (a "
                            "container, systemd or a pipe gets JSON, a developer's shell gets text)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="lowest level logged")
    access_log: bool = Field(True, description="one INFO line per HTTP request (method, route template, status, "
                                               "duration, request id; never the query string or a shopper id)")
    otlp_endpoint: str = Field("", description="OpenTelemetry traces over OTLP/HTTP (protobuf) to this collector, "
                                               "e.g. http://otel-collector:4318 (/v1/traces is added when the URL "
                                               "has no path); empty = tracing off (no span is made at all)")
    otlp_headers: dict[str, str] = Field(default_factory=dict, description="extra headers of the OTLP export "
                                                                           "(e.g. an API key of the backend)")
    trace_sample_ratio: float = Field(1.0, ge=0, le=1, description="share of traces kept (parent-based: a request "
                                                                   "whose caller sent a sampled traceparent is "
                                                                   "always kept)")
    service_name: str = Field("shelfwise", description="service.name of the spans")


class RulesSettings(_Section):
    """Merchandising rules (``rules/``): shadow traffic, exposure log, reload."""

    shadow_share: float = Field(0.05, ge=0, le=1, description="share of requests a draft rule set shadows "
                                                               "(unless the rule set sets its own)")
    exposure_log: bool = Field(True, description="log what every served rail showed (request, items, positions)")
    exposure_retention_days: float = Field(30.0, gt=0)
    zero_impression_hours: float = Field(72.0, gt=0, description="default window of the zero-impression report")
    reload_interval_s: float = Field(0.0, ge=0, description="how often a replica checks the store for rule "
                                                             "changes (0 = every request; a check is a PRAGMA)")
    dsn: str = Field("", description="rule store + exposure/shadow log: sqlite:///path or postgresql://… (every "
                                     "replica then serves the same rule sets; DSN option refresh_s: how often a "
                                     "replica reads the store's generation, default 1 s); empty = the event "
                                     "store's database")


class SecuritySettings(_Section):
    """API keys, CORS, rate limits and request limits (``security/``, SECURITY.md)."""

    auth: Literal["required", "off"] = Field(
        "required", description="required: every /v1 request needs `Authorization: Bearer <key>` with the route's "
                                "scope (ingest, read, admin; keys made with `shelfwise keys create`); off: no "
                                "authentication at all (a local experiment only: anyone who reaches the port may "
                                "publish rule sets and erase shoppers)")
    key_cache_s: float = Field(5.0, ge=0, description="a verified key is trusted this long before the key store is "
                                                      "read again: the longest a revoked key keeps working")
    public_metrics: bool = Field(False, description="serve GET /metrics without a key (else it needs the admin "
                                                    "scope; Prometheus sends one with `authorization:`)")
    cors_origins: list[str] = Field(default_factory=list,
                                    description="browser origins (e.g. https://shop.example) allowed to call the "
                                                "API from JavaScript; '*' allows any. The origins of publishable keys "
                                                "are allowed as well, for the routes those keys may use")
    cors_max_age_s: int = Field(600, ge=0, description="how long browsers may cache a CORS preflight answer")
    rate_per_key: float = Field(1000.0, ge=0, description="sustained requests per second per API key, unless the key "
                                                          "sets its own (`keys create --rate`); 0 = no limit")
    burst_per_key: int = Field(2000, ge=1, description="requests a key may send at once above its sustained rate")
    rate_per_client: float = Field(300.0, ge=0, description="sustained requests per second per client address, "
                                                            "whatever the key (0 = no limit). Behind a proxy set "
                                                            "trusted_proxies, or every shopper shares the proxy's "
                                                            "bucket")
    burst_per_client: int = Field(600, ge=1, description="burst per client address")
    rate_limiter_max_entries: int = Field(100_000, ge=100, description="in-process limiter: buckets kept (least "
                                                                       "recently used dropped): bounds its memory")
    rate_limiter_lease: int = Field(16, ge=1, le=1000, description="Redis limiter: requests of one busy key and "
                                                                  "client a process may let through per call to "
                                                                  "Redis (a lease of at most 0.25 s; 1 = a call per "
                                                                  "request). Redis counts every one: replicas never "
                                                                  "exceed a limit, a client at its limit may be "
                                                                  "refused up to lease - 1 requests early")
    rate_limiter: Literal["auto", "memory", "redis"] = Field(
        "auto", description="where rate-limit buckets live: auto = Redis when stores.online is redis:// (shared by "
                            "every API replica), else in process")
    trusted_proxies: int = Field(0, ge=0, description="reverse proxies in front of the API that append to "
                                                      "X-Forwarded-For: the client address is the entry that many "
                                                      "hops from the right (0 = the TCP peer)")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="largest request body; larger ones get 413 before "
                                                                "they are read")


class PrivacySettings(_Section):
    """Consent, erasure and pseudonymisation (``privacy/``, SECURITY.md)."""

    default_consent: Literal["granted", "pending"] = Field(
        "granted", description="consent of a shopper for whom the storefront never sent one (per purpose: "
                               "personalisation, analytics, experiments). granted suits shops whose terms cover "
                               "personalisation; pending (opt-in, e.g. under the GDPR/ePrivacy) stores nothing "
                               "personal until the shopper decides")
    unconsented_events: Literal["count", "drop"] = Field(
        "count", description="events of shoppers without personalisation consent: count = only per-item daily "
                             "counts by event type, without any id or time of day (GET /v1/reports/anonymous-counts);"
                             " drop = nothing is kept")
    erase_on_withdrawal: bool = Field(True, description="withdrawing personalisation consent (granted → denied) "
                                                        "erases the shopper's events, online state and model rows, "
                                                        "as DELETE /v1/shoppers does (the consent record stays)")
    pseudonymize: bool = Field(False, description="store shopper ids (user and session ids) only as keyed hashes "
                                                  "(HMAC-SHA256 with pseudonym_key): the event store, online state, "
                                                  "logs, streams and models never hold the storefront's raw ids")
    pseudonym_key: str = Field("", description="the HMAC key (at least 16 characters; set it through the "
                                               "environment: SHELFWISE_PRIVACY__PSEUDONYM_KEY). Rotating it is a "
                                               "re-keying: see SECURITY.md")
    forgotten_retention_days: float = Field(
        30.0, gt=0, description="how long an erasure's keyed-hash marker is kept so that events still queued in "
                                "the bus and models trained before the erasure cannot bring the shopper back; keep "
                                "it above the Kafka topic's retention and the longest training")
    sqlite_secure_delete: bool = Field(True, description="SQLite: overwrite deleted rows with zeros "
                                                         "(PRAGMA secure_delete) and truncate the WAL after an "
                                                         "erasure, so erased data does not linger in the file")
class RegistrySettings(_Section):
    """Model registry and release (``release.py``, ``shelfwise models``, ``/v1/models``): every trained version is
    stored with offline metrics on a held-out slice; promoting one requires passing the gates, then it reaches the
    shoppers in stages (sticky hashing through an experiment in ``rollout_layer``) and is rolled back by itself when
    its CTR falls more than ``max_ctr_drop`` below the live model's (the experiments' CTR guardrail)."""

    max_ndcg_drop: float = Field(0.05, ge=0, lt=1, description="gate: a version's held-out NDCG@12 may be at most "
                                                                "this share below the live version's (0.05 = 5 % "
                                                                "relative)")
    min_coverage: float = Field(0.02, ge=0, le=1, description="gate: a version's held-out catalog coverage@12 (share "
                                                              "of the catalog in at least one top-12 list) must "
                                                              "be at least this")
    min_requests: int = Field(20, ge=1, description="gate: held-out requests a version's metrics need (fewer: the "
                                                    "metrics say too little, the version is not promoted)")
    rollout: Literal["staged", "immediate"] = Field(
        "staged", description="how a version that passed the gates reaches shoppers when a model is live: staged "
                              "(stages below, guarded by CTR) or immediate (every shopper at once). With no live "
                              "model it goes live at once")
    stages: list[float] = Field([0.1, 0.5, 1.0], description="shares of shoppers the candidate serves, stage by "
                                                             "stage; every share but the last at most 0.5, the last 1")
    stage_minutes: float = Field(60.0, ge=0, description="a stage lasts at least this long, and until the CTR "
                                                         "guardrail has min_units shoppers per arm and is not "
                                                         "breached, before the next one")
    max_ctr_drop: float = Field(0.03, gt=0, lt=1, description="roll back when the candidate's CTR is this share "
                                                              "below the live model's (and the experiments' "
                                                              "anytime-valid interval says it is worse)")
    min_units: int = Field(200, ge=1, description="shoppers per arm before the CTR guardrail judges")
    check_interval_s: float = Field(60.0, ge=0, description="how often a serving process advances or rolls back "
                                                            "the rollout (0 = never: `shelfwise models check`)")
    rollout_layer: str = Field("model-rollout", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
                               description="experiment layer of rollouts (other experiments of this layer never "
                                           "share a shopper with a rollout)")
    keep_versions: int = Field(10, ge=2, description="model versions kept on disk (the live one, the one rolling "
                                                     "out and the one before the live one are always kept)")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[float]) -> list[float]:
        if not v or v[-1] != 1.0 or any(not 0 < x <= 0.5 for x in v[:-1]) or v != sorted(set(v)):
            raise ValueError("stages: increasing shares, each but the last in (0, 0.5], the last 1.0 "
                             f"(got {v})")
        return v


class ExperimentSettings(_Section):
    """Online experiments (``experiments/``): assignment, exposure & outcome log, analysis, guardrails, bandits."""

    dsn: str = Field("", description="experiment store + exposure/outcome log; empty = the event store's database "
                                     "(its SQLite file, or its PostgreSQL database), so every replica shares them")
    identity: Literal["user", "first_seen"] = Field(
        "user", description="bucketing unit of a logged-in shopper: user = their user id (an anonymous shopper who "
                            "logs in may change variant once); first_seen = the unit they were first seen with, "
                            "kept for good through an identity map (stable across login, costs a lookup per new "
                            "shopper)")
    holdout_share: float = Field(0.0, ge=0, le=0.5, description="global holdout: this share of shoppers gets no "
                                                                 "experiment at all (changing it moves shoppers)")
    holdout_salt: str = Field("shelfwise-holdout", min_length=1, description="hash salt of the global holdout")
    reload_interval_s: float = Field(1.0, ge=0, description="how often a replica checks the store for experiment "
                                                             "changes (0 = every request)")
    exposure_log: bool = Field(True, description="log served rails under their variants (needed for analysis)")
    retention_days: float = Field(180.0, gt=0, description="exposures and outcomes older than this are deleted")
    attribution_window_hours: float = Field(24.0, gt=0, description="an outcome counts for an exposure of the same "
                                                                    "visit (or request) at most this long before it")
    pre_period_days: float = Field(14.0, ge=0, description="CUPED covariates: each shopper's outcomes in this many "
                                                           "days before the experiment started (0 = no CUPED)")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level of intervals, tests and sequences")
    planned_units: int = Field(10_000, ge=10, description="units per variant the confidence sequence is tuned for "
                                                          "when an experiment does not say (planned_units)")
    guardrail_interval_s: float = Field(300.0, ge=0, description="how often running experiments' guardrails are "
                                                                 "evaluated by a serving process (0 = never; "
                                                                 "`shelfwise experiments check` does it once)")
    explore_share: float = Field(0.0, ge=0, le=0.5, description="share of slots given to Thompson-sampling item "
                                                                "exploration when a variant does not set "
                                                                "`exploration` (0 = off; 0.05-0.10 typical)")
    bandit_draws: int = Field(200, ge=10, description="posterior draws that estimate a bandit choice's propensity")
    bandit_prior: tuple[float, float] = Field((1.0, 30.0), description="Beta prior (a, b) of an item's click rate "
                                                                       "in exploration slots (its mean starts the "
                                                                       "empirical-Bayes prior)")
    bandit_prior_strength: float = Field(30.0, ge=0, description="pseudo-impressions of the empirical-Bayes prior "
                                                                 "centred on the average shown item's click rate "
                                                                 "(0 = the fixed bandit_prior)")
    bandit_reward_window_s: float = Field(1800.0, gt=0, description="a bandit decision's reward is a click within "
                                                                    "this long")
    bandit_refresh_s: float = Field(60.0, gt=0, description="how often bandit posteriors take in new log rows")
    bandit_history_days: float = Field(7.0, gt=0, description="the item bandit starts from this much log history")


class MonitorSettings(_Section):
    """Drift monitoring (``monitor/``, ``shelfwise monitor``, ``GET /v1/monitor/drift``): a reference window of
    traffic against a current one, on the learned ranker's features, the served items' scores, the share of new
    items among impressions and the event mix. Each check's verdict is ok, drift or insufficient (too few samples).

    Which statistic decides: up to ``ks_max_samples`` values in the smaller window, a test (Kolmogorov-Smirnov for
    numbers, chi-square for categories) at ``ks_alpha`` for the whole report (Holm's correction over its tests);
    above it, an effect size against a threshold (``distance``: Wasserstein distance in reference standard
    deviations, or PSI over reference-quantile bins; categories always PSI), since a test flags shifts too small to
    matter once samples are large."""

    reference: Literal["training", "previous"] = Field(
        "training", description="the reference window: training = the reference_days before the live model's "
                                "newest training event (cut where the current window starts); previous = the "
                                "reference_days right before the current window")
    reference_days: float = Field(7.0, gt=0, description="length of the reference window")
    current_hours: float = Field(24.0, gt=0, description="length of the current window, ending now")
    sample_rows: int = Field(20_000, ge=100, description="exposure-log rows read per window (a uniform sample when "
                                                         "the window holds more): served scores, new items, and the "
                                                         "requests whose ranker features are computed")
    sample_requests: int = Field(2_000, ge=10, description="logged requests of the ranker's placements per window "
                                                           "whose features are computed (one random candidate row "
                                                           "each, so the values are independent)")
    scan_hours: float = Field(24.0, gt=0, description="hours of events read per window for the event mix at most: "
                                                      "a longer window is read as evenly spaced slices adding up "
                                                      "to this")
    history_events: int = Field(10_000, ge=50, description="events read per sampled shopper to rebuild their "
                                                           "history as it was at the logged request")
    new_item_days: float = Field(14.0, gt=0, description="an impression is of a new item when the item was created "
                                                         "(catalog created_at, else first shown) less than this "
                                                         "many days before it")
    max_features: int = Field(25, ge=0, description="ranker features checked: the most important ones by gain "
                                                    "(0 = every feature)")
    min_samples: int = Field(50, ge=2, description="fewer values than this in either window: verdict "
                                                   "insufficient, no statistic decides")
    ks_max_samples: int = Field(1_000, ge=0, description="up to this many values in the smaller window the test "
                                                         "decides; above it the effect size (0 = always the effect "
                                                         "size)")
    ks_alpha: float = Field(0.01, gt=0, lt=0.5, description="family-wise significance level of the tests of one "
                                                            "report (Holm)")
    distance: Literal["wasserstein", "psi"] = Field(
        "wasserstein", description="effect size deciding numeric checks on large samples: Wasserstein distance of "
                                   "values standardised by the reference's standard deviation, or PSI")
    wasserstein_threshold: float = Field(0.1, gt=0, description="drift above this many reference standard "
                                                                "deviations of Wasserstein distance")
    psi_threshold: float = Field(0.2, gt=0, description="drift above this population stability index (0.1 is "
                                                        "usually read as a small shift, 0.25 as a large one)")
    psi_bins: int = Field(10, ge=2, le=100, description="reference-quantile bins of the PSI of numbers")
    max_missing_delta: float = Field(0.1, gt=0, le=1, description="drift when a feature's share of missing values "
                                                                  "moves by more than this between the windows")
    seed: int = Field(0, description="seed of the samples (the same data give the same report)")


class EmailRail(_Section):
    """One rail of an email: a placement's top ``k`` (an item page placement is anchored on the shopper's most
    recently viewed item)."""

    title: str = Field(min_length=1, max_length=200)
    placement: str = Field(min_length=1, max_length=64)
    k: int = Field(8, ge=1, le=50)


def _default_emails() -> dict[str, list[EmailRail]]:
    return {"email_weekly": [EmailRail(title="Picked for you", placement="email_weekly", k=8),
                             EmailRail(title="More like what you viewed", placement="pdp_similar", k=4)]}


class CampaignSettings(_Section):
    """Email campaigns (``shelfwise campaign run``, ``GET /v1/email/{token}``; ``campaigns/``)."""

    emails: dict[str, list[EmailRail]] = Field(default_factory=_default_emails,
                                               description="each email (named by its placement, the name given to "
                                                           "--placement) and its rails, in order; an item is shown "
                                                           "once per email (the first rail that has it)")
    spares: int = Field(4, ge=0, le=20, description="further items per rail carried in the token: at open time a "
                                                    "sold-out or unavailable item is replaced by the next spare still "
                                                    "servable (then by the rail computed afresh)")
    token_ttl_days: float = Field(30.0, gt=0, description="an email's token (its link) expires this long after sending")
    secret: str = Field("", description="HMAC-SHA256 key of the email tokens (at least 32 characters); empty = "
                                        "secret_file. Set it with SHELFWISE_CAMPAIGN__SECRET, not in a committed file")
    secret_file: str = Field("", description="file holding the key; empty = <data_dir>/campaign.secret, created "
                                             "(mode 0600, 32 random bytes) on first use. Every API replica and the "
                                             "campaign command must read the same key")
    batch: int = Field(512, ge=1, le=10_000, description="shoppers per pipeline call")

    @model_validator(mode="after")
    def _secret(self) -> "CampaignSettings":
        if self.secret and len(self.secret) < 32:
            raise ValueError("campaign.secret must be at least 32 characters")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHELFWISE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Path("./data")
    datasets_dir: Path = Field(Path("../shared/datasets"), description="read-only public datasets")
    seed: int = 42
    stores: StoreSettings = StoreSettings()
    models: ModelSettings = ModelSettings()
    api: APISettings = APISettings()
    rules: RulesSettings = RulesSettings()
    security: SecuritySettings = SecuritySettings()
    privacy: PrivacySettings = PrivacySettings()
    resilience: ResilienceSettings = ResilienceSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @model_validator(mode="after")
    def _pseudonym_key(self) -> "Settings":
        if self.privacy.pseudonymize and len(self.privacy.pseudonym_key) < 16:
            raise ValueError("privacy.pseudonymize needs privacy.pseudonym_key of at least 16 characters "
                             "(set SHELFWISE_PRIVACY__PSEUDONYM_KEY)")
        return self

    @model_validator(mode="after")
    def _content_cache(self) -> "Settings":
        """The content source (built from the model settings alone) caches its encoder export in the data dir."""
        if not self.models.content.cache_dir:
            self.models.content = self.models.content.model_copy(
                update={"cache_dir": str(self.data_dir / "cache" / "content")})
        return self

    experiments: ExperimentSettings = ExperimentSettings()
    monitor: MonitorSettings = MonitorSettings()
    registry: RegistrySettings = RegistrySettings()
    campaign: CampaignSettings = CampaignSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("SHELFWISE_CONFIG", "shelfwise.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def events_dsn(self) -> str:
        return self.stores.events or f"sqlite:///{self.data_dir / 'shelfwise.db'}"

    @property
    def preferences_dsn(self) -> str:
        return self.stores.preferences or self.events_dsn

    @property
    def registry_dsn(self) -> str:
        if self.stores.registry:
            return self.stores.registry
        if self.events_dsn.startswith(("postgresql://", "postgres://")):
            return self.events_dsn
        return f"sqlite:///{self.models_dir / 'registry.db'}"

    @property
    def content_cache_dir(self) -> Path:
        """Where the content tower caches its ONNX export of the text encoder."""
        return Path(self.models.content.cache_dir)

    @property
    def models_dir(self) -> Path:
        dsn = self.stores.models
        if not dsn:
            return self.data_dir / "models"
        return Path(dsn.removeprefix("file://"))


def known_fields(model: type[BaseModel], data: object) -> object:
    """``data`` without the keys ``model`` does not define (recursively): settings saved by an older version with
    since-removed options (e.g. in a model's manifest) still load."""
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        f = model.model_fields.get(key)
        if f is None:
            continue
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            value = known_fields(ann, value)
        out[key] = value
    return out


def load_settings(**overrides: object) -> Settings:
    """Build settings from file + environment, with keyword overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
