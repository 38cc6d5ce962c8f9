"""How a variant's configuration overrides the pipeline: the hook the request path calls.

``apply_config(models, config)`` returns a new, validated ``ModelSettings`` with the variant's per-placement
overrides merged in (weights replace the placement's weights; ``score`` / ``diversity`` fields are merged into
the placement's; ``exclude_history`` replaces). It is cached by the identity of both objects, so the request path
pays for a merge once per variant and settings object, not per request.

``merge_configs`` combines the variants a shopper gets from several layers: layers are meant to own different
settings (e.g. a ranking layer and a merchandising layer); when two do set the same field, the experiment of
the layer sorting first wins and the conflict is reported.

``effective_k(requested, placement, config)`` is the rail size to serve.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from pydantic import ValidationError

from shelfwise.experiments.schema import ExperimentInvalid, ExperimentSpec, PlacementOverride, VariantConfig, errors_of

_CACHE: dict[tuple[int, int], tuple[Any, VariantConfig, Any]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 256


def apply_config(models: Any, config: VariantConfig) -> Any:
    """``ModelSettings`` with ``config``'s placement overrides applied (the same object when there are none)."""
    if not config.placements:
        return models
    key = (id(models), id(config))  # both objects are kept alive by the entry, so their ids are not reused
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is models and hit[1] is config:
            return hit[2]
    placements = dict(models.placements)
    for name, po in config.placements.items():
        if name not in placements:
            raise ExperimentInvalid([{"path": f"placements.{name}", "reason": f"unknown placement {name!r}"}])
        placements[name] = _merge_placement(placements[name], po, name)
    merged = models.model_copy(update={"placements": placements})
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = (models, config, merged)
    return merged


def _merge_placement(current: Any, po: PlacementOverride, name: str) -> Any:
    unknown = []
    for part in ("score", "diversity"):
        known = type(getattr(current, part)).model_fields
        for key in getattr(po, part) or {}:
            if key not in known:
                unknown.append({"path": f"placements.{name}.{part}.{key}",
                                "reason": f"unknown {part} setting {key!r}; known: {', '.join(sorted(known))}"})
    if unknown:
        raise ExperimentInvalid(unknown)
    doc = current.model_dump()
    if po.weights is not None:
        doc["weights"] = dict(po.weights)
    if po.exclude_history is not None:
        doc["exclude_history"] = po.exclude_history
    if po.score is not None:
        doc["score"] = doc["score"] | po.score
    if po.diversity is not None:
        doc["diversity"] = doc["diversity"] | po.diversity
    try:
        return type(current).model_validate(doc)
    except ValidationError as e:
        raise ExperimentInvalid([{"path": f"placements.{name}.{x['path']}", "reason": x["reason"]}
                                 for x in errors_of(e)]) from None


_EMPTY = VariantConfig()
_MERGED: dict[tuple[int, ...], tuple[tuple[VariantConfig, ...], VariantConfig, list[str]]] = {}


def merge_configs(configs: Sequence[VariantConfig]) -> tuple[VariantConfig, list[str]]:
    """One configuration from several layers' variants (earlier wins on a conflict) and the conflicts found.
    Cached by the identity of the configurations (they live as long as the store snapshot)."""
    if not configs:
        return _EMPTY, []
    if len(configs) == 1:
        return configs[0], []
    key = tuple(id(c) for c in configs)
    hit = _MERGED.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], configs)):
        return hit[1], hit[2]
    merged, conflicts = _merge(configs)
    with _CACHE_LOCK:
        if len(_MERGED) >= 4096:
            _MERGED.clear()
        _MERGED[key] = (tuple(configs), merged, conflicts)
    return merged, conflicts


def _merge(configs: Sequence[VariantConfig]) -> tuple[VariantConfig, list[str]]:
    out: dict[str, Any] = {}
    placements: dict[str, dict[str, Any]] = {}
    conflicts: list[str] = []
    for c in configs:
        for field in ("model_version", "ruleset", "k", "ranker", "exploration"):
            value = getattr(c, field)
            if value is None:
                continue
            if field in out and out[field] != value:
                conflicts.append(field)
                continue
            out[field] = value
        for name, po in c.placements.items():
            slot = placements.setdefault(name, {})
            for field, value in po.model_dump(exclude_none=True).items():
                if field in slot and slot[field] != value:
                    conflicts.append(f"placements.{name}.{field}")
                    continue
                slot[field] = value
    out["placements"] = placements
    return VariantConfig.model_validate(out), conflicts


def effective_k(requested: int, placement: str, config: VariantConfig) -> int:
    po = config.placements.get(placement)
    if po is not None and po.k is not None:
        return po.k
    return config.k if config.k is not None else requested


# ---- validation against the running settings ----------------------------------------------------------------
def validate_spec(spec: ExperimentSpec, models: Any, max_k: int = 200,
                  sources: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    """Check a typed spec against the running settings (``ModelSettings``); raises ``ExperimentInvalid``.

    Returns warnings (e.g. a variant identical to control)."""
    if sources is None:
        sources = known_sources()
    errors: list[dict[str, str]] = []
    placements = set(models.placements)
    for i, p in enumerate(spec.placements):
        if p not in placements:
            errors.append({"path": f"placements[{i}]", "reason": f"unknown placement {p!r}; known: "
                                                                 f"{', '.join(sorted(placements))}"})
    for i, v in enumerate(spec.variants):
        base = f"variants[{i}].config"
        c = v.config
        if c.k is not None and c.k > max_k:
            errors.append({"path": f"{base}.k", "reason": f"at most api.max_k = {max_k}"})
        for name, po in c.placements.items():
            pbase = f"{base}.placements.{name}"
            if name not in placements:
                errors.append({"path": pbase, "reason": f"unknown placement {name!r}; known: "
                                                        f"{', '.join(sorted(placements))}"})
                continue
            if po.k is not None and po.k > max_k:
                errors.append({"path": f"{pbase}.k", "reason": f"at most api.max_k = {max_k}"})
            for src in (po.weights or {}):
                if src not in sources:
                    errors.append({"path": f"{pbase}.weights.{src}",
                                   "reason": f"unknown candidate source {src!r}; known: {', '.join(sources)}"})
            if po.weights is not None and not any(w > 0 for w in po.weights.values()):
                errors.append({"path": f"{pbase}.weights", "reason": "at least one source needs a weight > 0"})
        if not errors:
            try:
                apply_config(models, c)
            except ExperimentInvalid as e:
                errors.extend({"path": f"{base}.{x['path']}", "reason": x["reason"]} for x in e.errors)
    if errors:
        raise ExperimentInvalid(errors)
    warnings = []
    control = spec.variant(spec.control_name)
    for i, v in enumerate(spec.variants):
        if v.name != control.name and v.config == control.config and spec.kind != "bandit":
            warnings.append({"path": f"variants[{i}].config",
                             "reason": f"same configuration as control {control.name!r} (an A/A test?)"})
    return warnings


def known_sources() -> tuple[str, ...]:
    from shelfwise.retrieval import SOURCES

    return tuple(SOURCES) + tuple(s for s in ("ease",) if s not in SOURCES)
