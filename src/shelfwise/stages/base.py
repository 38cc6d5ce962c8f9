"""What the stages of the request path share: the batch they pass along and the stage protocol.

A ``Batch`` is the requests of one placement on their way through the stages; each stage reads what earlier
stages put there and adds its own part (``queries``, ``exclusions`` and ``preferred`` → ``capped`` and
``fatigue`` → ``plans`` → ``explore``
→ ``candidates`` → re-scored ``candidates`` → ``answers``). A stage never reaches into another stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from shelfwise.request import Answer, Candidates, Exclusions, Query, RecRequest
from shelfwise.rules.compile import LocalEffects
from shelfwise.rules.stage import RequestRules
from shelfwise.settings import PlacementSettings
from shelfwise.stages.budget import StageGuard


@dataclass
class Explored:
    """An exploration slot of one request (``stages.explore``): where, and how its new item was drawn."""

    position: int  # 0-based
    propensity: float  # probability of this item given that the slot explores (and the request's earlier draws)
    match: float  # content cosine of the item with the request's profile
    evidence: bool  # the request had a content profile and the item a content vector (else a blind draw)


@dataclass
class Given:
    """A rerank request's list (``RecRequest.given``) in the item table's terms: the indices of its ids the table
    knows, in the shop's order, each with its position in the list as sent (ids unknown to the catalog skipped)."""

    items: np.ndarray  # int64
    positions: np.ndarray  # float32, 0-based
    length: int  # ids sent


@dataclass
class Batch:
    placement: str
    conf: PlacementSettings
    requests: list[RecRequest]
    kmax: int
    use_ranker: bool = True  # an experiment's variant may switch the learned ranker off
    queries: list[Query] = field(default_factory=list)
    exclusions: Exclusions | None = None
    preferred: list[np.ndarray | None] = field(default_factory=list)  # row -> soft preference match per item
    lift: np.ndarray | None = None  # (B,) score the preference boost added to a fully matching item
    plans: list[RequestRules] | None = None  # active merchandising rules per request (None: no rules at all)
    rulesets: str = ""  # the live rule set versions the plans come from ("id@v,...")
    extra: list[np.ndarray] | None = None  # per request: items rules need among the candidates (pins, slots)
    explore: list[dict[int, Explored] | None] | None = None  # per request: new item index -> its exploration slot
    given: list[Given] | None = None  # per request of a rerank placement: the shop's list (resolve)
    capped: list[dict[str, str] | None] = field(default_factory=list)  # per request: capped item id -> why
    fatigue: list[tuple[np.ndarray, np.ndarray] | None] = field(default_factory=list)  # per request: (sorted item
    # indices, penalty in units of the score spread) from ``stages.caps``, subtracted by the merchandise stage
    fatigue_scale: np.ndarray | None = None  # (B,) the score spread the penalties were scaled by
    candidates: Candidates | None = None
    learned: str = ""  # which learned ranker scored the candidates (``Ranker.name``; "" none: the blend's order)
    base: dict[int, np.ndarray] = field(default_factory=dict)  # row -> scores before rules (shadow answers)
    local: list[LocalEffects | None] = field(default_factory=list)  # row -> its rules over its candidates
    pre: list[np.ndarray | None] = field(default_factory=list)  # row -> scores before rules' drops (pins)
    relevance_best: np.ndarray | None = None  # (B,) best relevance per row (explanations, shadow records)
    answers: list[Answer] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds (whole batch)
    guard: StageGuard | None = None  # serving's budgets and breakers (stages/budget.py); None offline
    degraded: list[str] = field(default_factory=list)  # parts left out of this batch's answers, and why

    def __len__(self) -> int:
        return len(self.requests)


class Stage(Protocol):
    name: str

    def run(self, batch: Batch) -> None:
        """Read what earlier stages left on the batch, add this stage's part."""


def padded(rows: list[np.ndarray], fill: int = -1) -> np.ndarray:
    """(B, max len) int64 matrix of ragged rows, padded with ``fill``."""
    width = max([len(x) for x in rows] + [0])
    out = np.full((len(rows), width), fill, np.int64)
    for r, x in enumerate(rows):
        out[r, :len(x)] = x
    return out

