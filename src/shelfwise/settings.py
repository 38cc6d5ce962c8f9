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
    window: int = Field(5, ge=1, description="pairs are counted between events at most this many steps apart")
    half_life_days: float = Field(60.0, gt=0, description="time decay of co-visitation pairs")
    top_per_item: int = Field(100, ge=1, description="neighbours kept per item")
    last_n: int = Field(3, ge=1, description="a shopper is scored from their last N items")
    recency_decay: float = Field(0.5, gt=0, le=1, description="weight of the j-th most recent item is decay**j")
    forward_weight: float = Field(1.0, ge=0, description="weight of pairs where the neighbour came later")
    backward_weight: float = Field(0.5, ge=0, description="weight of pairs where the neighbour came earlier")
    normalize: Literal["cosine", "none"] = "cosine"


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


class PlacementSettings(_Section):
    """Blend weights of each candidate source for one placement (a learned ranker replaces this later)."""

    weights: dict[str, float]
    exclude_history: Literal["purchased", "all", "none"] = "purchased"


def _default_placements() -> dict[str, PlacementSettings]:
    return {
        "homepage": PlacementSettings(weights={"covisit": 1.0, "als": 0.3, "trending": 0.05}),
        "pdp_similar": PlacementSettings(weights={"covisit": 1.0, "als": 0.5, "trending": 0.02}),
        "pdp_fbt": PlacementSettings(weights={"copurchase": 1.0, "covisit": 0.3, "trending": 0.02}),
        "cart_upsell": PlacementSettings(weights={"copurchase": 1.0, "covisit": 0.5, "als": 0.2, "trending": 0.02}),
    }


class ModelSettings(_Section):
    event_weights: EventWeights = EventWeights()
    trending: TrendingSettings = TrendingSettings()
    covisit: CovisitSettings = CovisitSettings()
    als: ALSSettings = ALSSettings()
    ease: EASESettings = EASESettings()
    placements: dict[str, PlacementSettings] = Field(default_factory=_default_placements)
    history_length: int = Field(50, ge=1, description="events kept per shopper in online state")


class APISettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = Field(1000, ge=1)
    default_k: int = Field(12, ge=1, le=200)
    max_k: int = Field(200, ge=1)


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
