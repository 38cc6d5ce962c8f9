"""What the console's Models page shows about model versions: the model store's versions, which one is live
(``CURRENT``) and serving here, each version's manifest (sources, trained until) and the learned ranker's own
validation report, joined with the model registry (``release.Releases.status``, as ``GET /v1/models``): each
version's status, held-out metrics at training time (NDCG@12, HR@12, coverage@12, long-tail share), its gate result
against the live version, and the staged rollout. Promote and roll back go through ``Releases`` (the gates apply)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_SEEN: dict[str, dict[str, Any]] = {}  # a published version's files never change: read each once
REGISTRY_METRICS = ("NDCG@12", "HR@12", "coverage@12", "long_tail@12", "requests")


def _read(path: Path) -> dict[str, Any]:
    key = str(path)
    if key in _SEEN:
        return _SEEN[key]
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if len(_SEEN) < 1000:
        _SEEN[key] = out
    return out


def _gate(entry: dict[str, Any] | None) -> str | None:
    """The last gate evaluation in words (None: never judged, e.g. a version trained before the registry)."""
    gates = (entry or {}).get("gates") or {}
    if not gates:
        return None
    if gates.get("passed"):
        return "passed"
    return "blocked: " + str(gates.get("reason") or "a gate failed")


def versions(engine: Any, limit: int = 20) -> dict[str, Any]:
    """The newest ``limit`` versions of the model store, newest first, with what each one says about itself and
    what the registry holds about it."""
    store = engine.models
    live = store.current()
    serving = engine.pipeline.model.version
    status = engine.releases.status(limit=max(limit, 50))
    registered = {v["version"]: v for v in status["versions"]}
    rows = []
    for v in reversed(store.versions()[-limit:]):
        path = store.path(v)
        manifest = _read(path / "manifest.json")
        ranker = _read(path / "ranker.json").get("report", {}) if (path / "ranker.json").is_file() else None
        entry = registered.get(v)
        metrics = {k: (entry or {}).get("metrics", {}).get(k) for k in REGISTRY_METRICS} if entry else {}
        if ranker:
            metrics |= {"ranker valid NDCG@10": ranker.get("valid_ndcg10"),
                        "candidate recall": ranker.get("candidate_recall")}
        rows.append({"version": v, "live": v == live, "serving": v == serving,
                     "sources": manifest.get("retrievers", []), "trained_until": manifest.get("trained_until"),
                     "ranker": ranker is not None, "metrics": metrics,
                     "status": entry["status"] if entry else "not registered",
                     "note": entry["note"] if entry else "", "gate": _gate(entry),
                     "promotable": entry is not None and v != live})
    return {"live": live, "serving": serving, "versions": rows, "training": store.training(),
            "rollout": status["rollout"]}
