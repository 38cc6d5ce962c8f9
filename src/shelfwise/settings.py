"""The one settings object: a TOML file plus ``SHELFWISE_*`` environment variables.

Precedence (highest first): explicit keyword arguments, environment variables (nested keys joined by ``__``,
e.g. ``SHELFWISE_MODELS__ALS__FACTORS=128``), the TOML file named by ``SHELFWISE_CONFIG`` (default
``./shelfwise.toml`` when it exists), then the defaults below. Code outside this module never reads the
environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    """DSN per storage role; the scheme picks the backend. Empty strings take data-dir defaults."""

    events: str = Field("", description="event store + catalog; sqlite:///path or postgresql://...")
    online: str = Field("memory://", description="online state (session last-N, counters): memory:// or redis://")
    vectors: str = Field("hnsw://", description="vector index: hnsw:// (in-process) or pgvector://")
    bus: str = Field("inprocess://", description="event bus: inprocess:// or redis-stream:// or kafka://")
    models: str = Field("", description="model store: a directory (file:///path), shared by every replica")
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
    remove_from_cart: float = 0.0
    search: float = 0.0

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
    candidates: int = Field(200, ge=1, description="top-N items per query scattered into the dense score row")
    ann_max_batch: int = Field(64, ge=0, description="batches up to this size use the ANN index; larger ones "
                                                     "exact matmul over the same embeddings")
    exact_max_items: int = Field(30_000, ge=0, description="catalogs up to this size are searched exactly (a "
                                                           "matmul beats graph search there: 12k items "
                                                           "0.2 ms vs HNSW 0.6 ms a query, 8 queries 1.2 vs "
                                                           "4.6 ms); larger ones through the ANN index")
    hnsw_m: int = Field(32, ge=2, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(200, ge=1)
    hnsw_ef_search: int = Field(500, ge=1, description="HNSW query breadth (at least the requested k); "
                                                       "recall@200 0.988 on Beauty (benchmarks/ann_recall.py)")


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


class PlacementSettings(_Section):
    """Blend weights of each candidate source for one placement (a learned ranker replaces this later)."""

    weights: dict[str, float]
    exclude_history: Literal["purchased", "all", "none"] = "purchased"
    score: ScoreWeights = ScoreWeights()
    diversity: DiversitySettings = DiversitySettings()


def _default_placements() -> dict[str, PlacementSettings]:
    return {  # homepage: BENCHMARKS.md (Offline quality; Sequence model)
        "homepage": PlacementSettings(weights={"sequence": 1.0, "covisit": 1.0, "als": 0.3, "trending": 0.02}),
        "pdp_similar": PlacementSettings(weights={"covisit": 1.0, "als": 0.5, "trending": 0.02}),
        "pdp_fbt": PlacementSettings(weights={"copurchase": 1.0, "covisit": 0.3, "trending": 0.02}),
        "cart_upsell": PlacementSettings(weights={"copurchase": 1.0, "covisit": 0.5, "als": 0.2, "trending": 0.02}),
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
    exposure_log: str = Field("", description="SQLite file with the exposure log (rules/log.py); its requests "
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
    seed: int = 0


class ModelSettings(_Section):
    event_weights: EventWeights = EventWeights()
    trending: TrendingSettings = TrendingSettings()
    covisit: CovisitSettings = CovisitSettings()
    als: ALSSettings = ALSSettings()
    ease: EASESettings = EASESettings()
    sequence: SequenceSettings = SequenceSettings()
    placements: dict[str, PlacementSettings] = Field(default_factory=_default_placements)
    history_length: int = Field(50, ge=1, description="events kept per shopper in online state")
    business: BusinessSignals = BusinessSignals()
    ranker: RankerSettings = RankerSettings()


class APISettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = Field(1000, ge=1)
    default_k: int = Field(12, ge=1, le=200)
    max_k: int = Field(200, ge=1)
    recommend_batch: int = Field(32, ge=1, description="concurrent recommendation requests answered by one "
                                                       "pipeline call (api/batcher.py); 1 = one at a time")
    recommend_workers: int = Field(1, ge=1, description="threads making pipeline calls for the micro-batcher")


class RulesSettings(_Section):
    """Merchandising rules (``rules/``): shadow traffic, exposure log, reload."""

    shadow_share: float = Field(0.05, ge=0, le=1, description="share of requests a draft rule set shadows "
                                                               "(unless the rule set sets its own)")
    exposure_log: bool = Field(True, description="log what every served rail showed (request, items, positions)")
    exposure_retention_days: float = Field(30.0, gt=0)
    zero_impression_hours: float = Field(72.0, gt=0, description="default window of the zero-impression report")
    reload_interval_s: float = Field(0.0, ge=0, description="how often a replica checks the store for rule "
                                                             "changes (0 = every request; a check is a PRAGMA)")
    dsn: str = Field("", description="rule store + exposure log; empty = the event store's SQLite file")


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
    experiments: ExperimentSettings = ExperimentSettings()

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
    def models_dir(self) -> Path:
        dsn = self.stores.models
        if not dsn:
            return self.data_dir / "models"
        return Path(dsn.removeprefix("file://"))


def load_settings(**overrides: object) -> Settings:
    """Build settings from file + environment, with keyword overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
