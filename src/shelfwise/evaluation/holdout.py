"""A trained version's offline metrics on its held-out slice (``training.Holdout``), for the model registry.

The metrics are the evaluation's own (``evaluation.metrics``): NDCG@12 and HR@12 against what each held-out
request's shopper did next, catalog coverage@12 (share of the model's items in at least one list) and the long-tail
share@12 (slots filled with items outside the prefix's most-interacted 20 %).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from shelfwise.evaluation import metrics as M
from shelfwise.release import Releases
from shelfwise.stores.protocols import EventLog
from shelfwise.training import Fitted, Holdout

K = 12


def holdout_metrics(holdout: Holdout, batch_size: int = 512) -> dict[str, float]:
    t0 = time.perf_counter()
    pipeline = holdout.pipeline
    lists: list[list[str]] = []
    for start in range(0, len(holdout.requests), batch_size):
        batch = [replace(r) for r in holdout.requests[start:start + batch_size]]  # the pipeline fills in requests
        lists += [[r.item_id for r in ans.items] for ans in pipeline.recommend(batch)]
    values = M.summarise(M.per_user(lists, holdout.targets, (K,)))
    ids = [str(x) for x in pipeline.items.ids]
    tail = M.long_tail_items(holdout.popularity, ids)
    return {f"NDCG@{K}": round(values[f"NDCG@{K}"], 6), f"HR@{K}": round(values[f"HR@{K}"], 6),
            f"coverage@{K}": round(M.coverage(lists, len(ids), K), 6),
            f"long_tail@{K}": round(M.long_tail_share(lists, tail, K), 6),
            "requests": len(lists), "seconds": round(time.perf_counter() - t0, 2)}


def released(releases: Releases, author: str = "training", into: dict | None = None
             ) -> Callable[[str, Fitted, EventLog], None]:
    """``training.train``'s ``release`` hook: the version's held-out metrics, then ``Releases.after_training``
    (registered, judged by the gates, released); what happened is put in ``into``."""
    def release(version: str, fitted: Fitted, log: EventLog) -> None:
        metrics: dict[str, Any] = {}
        if fitted.holdout is not None:
            metrics = holdout_metrics(fitted.holdout)
            metrics["slice"] = fitted.holdout.what
        got = releases.after_training(version, metrics, log, author)
        if into is not None:
            into.update(got)
    return release
