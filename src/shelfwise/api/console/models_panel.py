"""What the console's Models page shows about model versions: the one place to extend when the model registry
(offline gates, promote / roll back) lands. Today it reads the model store as it is: its versions, which one is
live (``CURRENT``) and serving here, each version's manifest (sources, trained until) and the learned ranker's
own validation report (NDCG@10 on its held-out split, candidate recall), and the last training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Said on the page until a registry provides them (None = available).
NOT_YET = ("Offline gates (a candidate version checked against the live one before it may serve) and promote / "
           "roll back buttons come with the model registry; until then a version goes live when `shelfwise train` "
           "publishes it.")
REGISTRY_ACTIONS = False  # the lead turns this on with the registry: the page then shows its gate and buttons


_SEEN: dict[str, dict[str, Any]] = {}  # a published version's files never change: read each once


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


def versions(engine: Any, limit: int = 20) -> dict[str, Any]:
    """The newest ``limit`` versions of the model store, newest first, with what each one says about itself."""
    store = engine.models
    live = store.current()
    serving = engine.pipeline.model.version
    rows = []
    for v in reversed(store.versions()[-limit:]):
        path = store.path(v)
        manifest = _read(path / "manifest.json")
        ranker = _read(path / "ranker.json").get("report", {}) if (path / "ranker.json").is_file() else None
        rows.append({"version": v, "live": v == live, "serving": v == serving,
                     "sources": manifest.get("retrievers", []), "trained_until": manifest.get("trained_until"),
                     "ranker": ranker is not None,
                     "metrics": {"ranker valid NDCG@10": (ranker or {}).get("valid_ndcg10"),
                                 "candidate recall": (ranker or {}).get("candidate_recall"),
                                 "ranker train groups": (ranker or {}).get("train_groups")} if ranker else {},
                     "gate": None})
    return {"live": live, "serving": serving, "versions": rows, "training": store.training(),
            "not_yet": NOT_YET, "actions": REGISTRY_ACTIONS}
