"""Evaluation splits of an event log: leave-one-out by position, and a global temporal split.

A split is a training log (what the model may see, also what each shopper's request state is built from) plus,
per evaluated shopper, the target items. Only positive-weight item events (views, carts, purchases; not removals)
form a shopper's sequence; the log must be ordered per shopper by time, as ``EventStore.scan`` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shelfwise.domain import EventType
from shelfwise.settings import EventWeights
from shelfwise.stores.protocols import EventLog


@dataclass
class Split:
    protocol: str  # "loo" or "temporal"
    target: str  # "valid" or "test"
    train: EventLog
    users: list[str]  # evaluated shoppers
    targets: list[list[str]]  # per evaluated shopper, the items to find (distinct, in order)
    now: float  # the time requests are made at
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.target}"


def positive_mask(log: EventLog, weights: EventWeights | None = None) -> np.ndarray:
    """Rows that are interactions a model should learn from and predict (event weight > 0)."""
    weights = weights or EventWeights()
    w = np.array([getattr(weights, t.name) for t in EventType], dtype=np.float64)
    return w[log.kind.astype(np.int64)] > 0


def shopper_bounds(log: EventLog) -> np.ndarray:
    """Start offsets of each shopper's contiguous block of rows, plus len(log) at the end."""
    n = len(log)
    if n == 0:
        return np.zeros(1, np.int64)
    change = np.flatnonzero(log.shopper[1:] != log.shopper[:-1]) + 1
    return np.concatenate([[0], change, [n]]).astype(np.int64)


def check_order(log: EventLog) -> None:
    bounds = shopper_bounds(log)
    shoppers = log.shopper[bounds[:-1]]
    if len(set(shoppers.tolist())) != len(shoppers):
        raise ValueError("the event log must be grouped by shopper (as EventStore.scan returns it)")
    same = np.ones(len(log), bool)
    same[bounds[:-1]] = False
    if len(log) > 1 and (np.diff(log.ts)[same[1:]] < 0).any():
        raise ValueError("the event log must be ordered by time within each shopper")


def leave_one_out(log: EventLog, target: str = "test", weights: EventWeights | None = None) -> Split:
    """Per shopper, the last interaction is the test target and the second-to-last the validation target.

    For ``test`` the model is trained on everything before the last interaction; for ``valid`` on everything
    before the second-to-last (the last is dropped too). Shoppers with too few interactions to have a target and
    a non-empty history are not evaluated; their events stay in the training log.
    """
    if target not in ("test", "valid"):
        raise ValueError(f"target must be 'test' or 'valid', not {target!r}")
    check_order(log)
    back = 1 if target == "test" else 2  # the target is the back-th last interaction
    pos = positive_mask(log, weights)
    bounds = shopper_bounds(log)
    keep = np.ones(len(log), bool)
    users: list[str] = []
    targets: list[list[str]] = []
    positives = np.flatnonzero(pos)
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        rows = positives[np.searchsorted(positives, lo):np.searchsorted(positives, hi)]
        if len(rows) < back + 1:  # needs a target and at least one interaction before it
            continue
        cut = rows[-back]
        keep[cut:hi] = False
        users.append(str(log.shopper[lo]))
        targets.append([str(log.item[cut])])
    train = log.take(keep)
    now = float(train.ts.max()) if len(train) else 0.0
    return Split("loo", target, train, users, targets, now,
                 notes={"evaluated": len(users), "shoppers": len(bounds) - 1})


def temporal(log: EventLog, split_time: float | None = None, test_fraction: float = 0.2,
             weights: EventWeights | None = None, exclude_history: bool = True) -> Split:
    """Train on events before ``split_time``, test on each known shopper's items after it.

    Without ``split_time``, it is the time that leaves ``test_fraction`` of the interactions after it. Targets are
    the distinct items a shopper interacted with after the split; with ``exclude_history`` (the protocol's
    default, as recommendations never repeat the history) items already in the training history are not
    targets, and shoppers left with no target are not evaluated. Shoppers without training history are cold and
    not evaluated (counted in ``notes``).
    """
    check_order(log)
    pos = positive_mask(log, weights)
    if split_time is None:
        if not pos.any():
            raise ValueError("no interactions to split")
        split_time = float(np.quantile(log.ts[pos], 1.0 - test_fraction, method="higher"))
    before = log.ts < split_time
    bounds = shopper_bounds(log)
    users: list[str] = []
    targets: list[list[str]] = []
    cold = 0
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        seg_pos, seg_before = pos[lo:hi], before[lo:hi]
        after_items = log.item[lo:hi][seg_pos & ~seg_before]
        if len(after_items) == 0:
            continue
        history = log.item[lo:hi][seg_pos & seg_before]
        if len(history) == 0:
            cold += 1
            continue
        seen = set(history.tolist()) if exclude_history else set()
        wanted: list[str] = []
        for it in after_items.tolist():
            if it not in seen:
                seen.add(it)
                wanted.append(str(it))
        if wanted:
            users.append(str(log.shopper[lo]))
            targets.append(wanted)
    train = log.take(before)
    return Split("temporal", "test", train, users, targets, float(split_time),
                 notes={"split_time": float(split_time), "evaluated": len(users), "cold_shoppers": cold,
                        "test_fraction": test_fraction})
