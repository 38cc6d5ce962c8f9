"""What an experiment is: its document (``ExperimentSpec``), its variants and their pipeline configuration.

A variant's ``config`` is a *declared* schema (``VariantConfig``): every key is known, so a typo such as
``{"blend": ...}`` is rejected with the path and the list of known settings instead of being silently ignored.
Values are validated twice: by type here, and against the running settings (known placements, blend sources,
score / diversity fields, ``k`` bounds) by ``config.validate_spec``, which also merges every placement override into
the placement's settings to prove the result is a valid ``PlacementSettings``.

Errors are ``ExperimentInvalid`` with ``errors: [{"path": "variants[1].config.placements.homepage.weights",
"reason": ...}]`` — the API answers them with ``422``; nothing is stored.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SLUG = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
SHARE_TOLERANCE = 1e-6
MAX_VARIANTS = 20

Kind = Literal["ab", "bandit", "interleave"]
Status = Literal["draft", "running", "stopped"]
METRICS = ("ctr", "add_to_cart_rate", "conversion", "revenue_per_shopper", "revenue_per_session",
           "p95_latency_ms", "error_rate")


class ExperimentInvalid(ValueError):
    """A document problem: ``errors`` name each JSON path and reason."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(document)'}: {e['reason']}" for e in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlacementOverride(_Strict):
    """Per-placement pipeline settings a variant changes; every field optional (absent = the running settings)."""

    weights: dict[str, float] | None = Field(None, description="blend weight of each candidate source "
                                                               "(replaces the placement's weights)")
    score: dict[str, float] | None = Field(None, description="business score weights (models.placements.*.score)")
    diversity: dict[str, float] | None = Field(None, description="MMR settings (models.placements.*.diversity)")
    exclude_history: Literal["purchased", "all", "none"] | None = None
    k: int | None = Field(None, ge=1, description="slots of this placement (overrides the request's k)")

    @field_validator("weights", "score", "diversity")
    @classmethod
    def _finite(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            for key, x in v.items():
                if not math.isfinite(x) or x < 0:
                    raise ValueError(f"{key}: must be a finite number >= 0")
        return v


class VariantConfig(_Strict):
    """The pipeline configuration of a variant. Empty = the running configuration (a typical control)."""

    model_version: str | None = Field(None, min_length=1, max_length=128,
                                      description="serve this trained model version instead of CURRENT")
    ruleset: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@[0-9]+)?$",
                                description="merchandising rule set id, optionally pinned: 'default@3'")
    k: int | None = Field(None, ge=1, description="slots per rail (every placement; overrides the request's k)")
    ranker: bool | None = Field(None, description="learning-to-rank stage on/off for its placements")
    exploration: float | None = Field(None, ge=0, le=0.5,
                                      description="share of slots given to Thompson-sampling item exploration")
    placements: dict[str, PlacementOverride] = Field(default_factory=dict)

    def is_empty(self) -> bool:
        return self == VariantConfig()


class Variant(_Strict):
    name: str = Field(pattern=SLUG)
    share: float = Field(gt=0, le=1, description="share of the experiment's shoppers (all shares sum to 1)")
    description: str = Field("", max_length=2000)
    config: VariantConfig = VariantConfig()


class Guardrail(_Strict):
    """A metric that must not get worse. Evaluated every ``experiments.guardrail_interval_s``; a breach stops the
    experiment and routes its shoppers to control.

    * ``ctr``, ``add_to_cart_rate``, ``conversion``, ``revenue_per_shopper``, ``revenue_per_session``: breached when
      a treatment's relative change against control is below ``-max_drop`` *and* the anytime-valid confidence
      sequence of the difference lies below zero (so noise on small samples does not roll back a good variant,
      and evaluating every interval does not inflate false alarms).
    * ``p95_latency_ms``: breached when a treatment's p95 exceeds ``max_value`` ms, or control's p95 by more than
      ``max_increase`` (relative), over the last ``window_minutes``.
    * ``error_rate``: breached when a treatment's error rate exceeds ``max_value``, or control's by more than
      ``max_increase`` (absolute points) with the anytime-valid sequence excluding zero.
    """

    metric: Literal["ctr", "add_to_cart_rate", "conversion", "revenue_per_shopper", "revenue_per_session",
                    "p95_latency_ms", "error_rate"]
    max_drop: float | None = Field(None, gt=0, lt=1, description="relative drop that breaches (0.03 = -3 %)")
    max_increase: float | None = Field(None, gt=0, description="latency: relative; error rate: absolute")
    max_value: float | None = Field(None, gt=0, description="absolute ceiling (ms for latency; a rate for errors)")
    min_units: int = Field(200, ge=1, description="shoppers per variant before the guardrail is evaluated")
    window_minutes: float = Field(60.0, gt=0, description="latency / error rate: the recent window evaluated")

    @model_validator(mode="after")
    def _threshold(self) -> "Guardrail":
        if self.metric in ("p95_latency_ms", "error_rate"):
            if self.max_value is None and self.max_increase is None:
                raise ValueError(f"guardrail {self.metric} needs max_value and/or max_increase")
            if self.max_drop is not None:
                raise ValueError(f"guardrail {self.metric}: max_drop does not apply (use max_increase / max_value)")
            if self.metric == "error_rate" and self.max_value is not None and self.max_value > 1:
                raise ValueError("guardrail error_rate: max_value is a rate in (0, 1]")
        else:
            if self.max_drop is None:
                raise ValueError(f"guardrail {self.metric} needs max_drop (a relative drop, e.g. 0.03)")
            if self.max_increase is not None or self.max_value is not None:
                raise ValueError(f"guardrail {self.metric}: only max_drop applies")
        return self


def default_guardrails() -> list[Guardrail]:
    """The design we follow: roll back when CTR drops by more than 3 %."""
    return [Guardrail(metric="ctr", max_drop=0.03)]


class ExperimentSpec(_Strict):
    """An experiment document (what ``POST /v1/experiments`` takes)."""

    id: str = Field(pattern=SLUG, description="unique forever; also the default hashing salt")
    name: str = Field("", max_length=200)
    description: str = Field("", max_length=5000)
    hypothesis: str = Field("", max_length=5000)
    owner: str = Field("", max_length=200)
    kind: Kind = Field("ab", description="ab: sticky shares; bandit: a contextual bandit picks the variant per "
                                         "request; interleave: two variants' rankings team-draft interleaved")
    layer: str = Field("default", pattern=SLUG, description="experiments of one layer never share a shopper")
    layer_range: tuple[float, float] = Field((0.0, 1.0), description="[from, to) slice of the layer's shoppers")
    salt: str | None = Field(None, min_length=1, max_length=128, description="hash salt (default: the id)")
    traffic: float = Field(1.0, gt=0, le=1, description="initial exposure (ramp) share of the slice")
    variants: list[Variant] = Field(min_length=2, max_length=MAX_VARIANTS)
    control: str | None = Field(None, description="the control variant (default: the first)")
    placements: list[str] = Field(default_factory=list, description="placements it applies to (empty: all)")
    guardrails: list[Guardrail] = Field(default_factory=default_guardrails)
    planned_units: int | None = Field(None, ge=10, description="shoppers per variant the experiment is planned "
                                                               "for (tunes the confidence sequence; see power)")
    primary_metric: Literal["ctr", "add_to_cart_rate", "conversion", "revenue_per_shopper",
                            "revenue_per_session"] = "conversion"

    @property
    def salt_value(self) -> str:
        return self.salt or self.id

    @property
    def control_name(self) -> str:
        return self.control or self.variants[0].name

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentSpec":
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"@variants: variant names must be unique; repeated: {dupes}")
        total = math.fsum(v.share for v in self.variants)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"@variants[*].share: variant shares must sum to 1; they sum to {total:.6g} "
                             f"({', '.join(f'{v.name}={v.share:g}' for v in self.variants)})")
        if self.control is not None and self.control not in names:
            raise ValueError(f"@control: control {self.control!r} is not a variant; variants: {names}")
        lo, hi = self.layer_range
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"@layer_range: layer_range must satisfy 0 <= from < to <= 1, got [{lo:g}, {hi:g})")
        if self.kind == "interleave" and len(self.variants) != 2:
            raise ValueError("@variants: an interleave experiment compares exactly 2 variants")
        return self


# ---- validation with readable errors ---------------------------------------------------------------------
def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


_KNOWN = {
    "config": sorted(VariantConfig.model_fields),
    "placement": sorted(PlacementOverride.model_fields),
    "variant": sorted(Variant.model_fields),
    "experiment": sorted(ExperimentSpec.model_fields),
    "guardrail": sorted(Guardrail.model_fields),
}


def _known_for(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    parent = [p for p in loc[:-1] if isinstance(p, str)]
    if "placements" in parent and "config" in parent:
        return "placement setting", _KNOWN["placement"]
    if "config" in parent:
        return "variant setting", _KNOWN["config"]
    if "guardrails" in parent:
        return "guardrail field", _KNOWN["guardrail"]
    if "variants" in parent:
        return "variant field", _KNOWN["variant"]
    return "experiment field", _KNOWN["experiment"]


def errors_of(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            what, known = _known_for(loc)
            reason = f"unknown {what} {loc[-1]!r}; known: {', '.join(known)}"
        else:
            reason = re.sub(r"^Value error, ", "", e["msg"])
            m = re.match(r"^@(\S+): (.*)$", reason, re.S)
            if m:  # a cross-field check that names its own path
                loc = loc + (m.group(1),)
                reason = m.group(2)
        out.append({"path": _path(loc), "reason": reason})
    return out


def parse_spec(document: Any) -> ExperimentSpec:
    """Type-check a document; raises ``ExperimentInvalid`` naming every problem."""
    if not isinstance(document, dict):
        raise ExperimentInvalid([{"path": "", "reason": "an experiment is a JSON object"}])
    try:
        return ExperimentSpec.model_validate(document)
    except ValidationError as e:
        raise ExperimentInvalid(errors_of(e)) from None


# ---- a stored experiment -----------------------------------------------------------------------------------
class Experiment(_Strict):
    """An experiment as the store holds it: the document plus its lifecycle state.

    Lifecycle: ``draft`` → ``running`` → ``stopped`` (terminal). ``traffic`` is the exposure (ramp) share of the
    experiment's layer slice; it only grows (a ramp adds shoppers, never moves one). ``serve`` is what a stopped
    experiment keeps serving to the shoppers it had exposed: ``None`` (the running configuration) or a variant —
    control after a guardrail rollback, or a winner being shipped."""

    spec: ExperimentSpec
    status: Status = "draft"
    traffic: float = Field(gt=0, le=1)
    serve: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    stopped_at: float | None = None
    stop_reason: str = ""
    revision: int = 1

    @property
    def id(self) -> str:
        return self.spec.id

    def view(self) -> dict[str, Any]:
        """JSON-ready, for the API and the CLI."""
        return {"id": self.id, "status": self.status, "traffic": self.traffic, "serve": self.serve,
                "created_at": self.created_at, "updated_at": self.updated_at, "started_at": self.started_at,
                "stopped_at": self.stopped_at, "stop_reason": self.stop_reason, "revision": self.revision,
                "spec": self.spec.model_dump(mode="json", exclude_none=True)}
