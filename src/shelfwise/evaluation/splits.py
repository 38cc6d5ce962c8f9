"""Evaluation splits of an event log: leave-one-out by position, a global temporal split, and the two cold-start
protocols (cold items, cold shoppers).

A split is a training log (what the model may see, also what each shopper's request state is built from) plus,
per evaluated shopper, the target items. The cold-start splits also say what each request knows (``history``:
the shopper's events before the target, as online state would hold them) and, for cold items, which items were
held out of training (``held_out``: served as items added to the catalog after training). Only positive-weight
item events (views, carts, purchases; not removals) form a shopper's sequence; the log must be ordered per shopper
by time, as ``EventStore.scan`` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from shelfwise.domain import EventType
from shelfwise.settings import EventWeights
from shelfwise.stores.protocols import EventLog, Interaction


@dataclass
class Split:
    protocol: str  # "loo", "temporal", "cold-items" or "cold-shoppers"
    target: str  # "valid" or "test"
    train: EventLog
    users: list[str]  # evaluated shoppers (a cold shopper is asked twice: with 0 and with 1 prior event)
    targets: list[list[str]]  # per evaluated shopper, the items to find (distinct, in order)
    now: float  # the time requests are made at
    notes: dict[str, object] = field(default_factory=dict)
    # per evaluated shopper, the events the request knows, oldest first; None: their training events
    history: list[list[Interaction]] | None = None
    held_out: list[str] = field(default_factory=list)  # items left out of training, added to the model afterwards

    @property
    def name(self) -> str:
        return self.protocol if self.protocol.startswith("cold") else f"{self.protocol}-{self.target}"


def positive_mask(log: EventLog, weights: EventWeights | None = None) -> np.ndarray:
    """Rows that are interactions a model should learn from and predict (event weight > 0)."""
    weights = weights or EventWeights()
    w = np.array([getattr(weights, t.name) for t in EventType], dtype=np.float64)
    return w[log.kind.astype(np.int64)] > 0


def positive_kinds(weights: EventWeights | None = None) -> set[int]:
    """The event types that are interactions (event weight > 0), as ``positive_mask`` reads them."""
    weights = weights or EventWeights()
    return {int(t) for t in EventType if getattr(weights, t.name) > 0}


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


def _interactions(log: EventLog, rows: Iterable[int]) -> list[Interaction]:
    return [Interaction(str(log.item[i]), int(log.kind[i]), float(log.ts[i])) for i in rows]


def cold_items(log: EventLog, catalog: Iterable[str], fraction: float = 0.1, seed: int = 0,
               weights: EventWeights | None = None) -> Split:
    """Hold out ``fraction`` of the items, with every event naming them, and ask for them as new items.

    Candidates to hold out: catalog items (their content is known) with at least one interaction; ``fraction`` of
    them (at least one) are drawn with ``seed``. Training keeps every other event. Per shopper, the target is
    their first interaction with a held-out item that comes after at least one interaction with a kept item; the
    request knows the shopper's events before it (all of kept items) and is made at the end of the training log.
    Shoppers whose first held-out interaction is their first interaction are not evaluated (counted in
    ``notes``). The held-out items are known to the catalog, not to the model: the runner adds them to the
    trained model the way ``PUT /v1/items`` adds items after training.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    check_order(log)
    pos = positive_mask(log, weights)
    known = set(map(str, catalog))
    interacted = sorted({str(x) for x in log.item[pos].tolist()} & known)
    if len(interacted) < 2:
        raise ValueError("cold items: fewer than two catalog items have interactions")
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * len(interacted))))
    held = sorted(np.asarray(interacted, dtype=object)[rng.choice(len(interacted), n, replace=False)].tolist())
    held_set = set(held)
    is_held = np.fromiter((str(x) in held_set for x in log.item), bool, len(log))
    bounds = shopper_bounds(log)
    users: list[str] = []
    targets: list[list[str]] = []
    history: list[list[Interaction]] = []
    first_only = 0
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        hits = np.flatnonzero(is_held[lo:hi] & pos[lo:hi])
        if not len(hits):
            continue
        cut = lo + int(hits[0])
        if not (pos[lo:cut] & ~is_held[lo:cut]).any():
            first_only += 1
            continue
        users.append(str(log.shopper[lo]))
        targets.append([str(log.item[cut])])
        history.append(_interactions(log, (i for i in range(lo, cut) if not is_held[i])))
    train = log.take(~is_held)
    now = float(train.ts.max()) if len(train) else 0.0
    return Split("cold-items", "test", train, users, targets, now, history=history, held_out=held,
                 notes={"held_out_items": len(held), "candidate_items": len(interacted), "fraction": fraction,
                        "seed": seed, "evaluated": len(users), "held_out_events": int(is_held.sum()),
                        "not_evaluated_first_event_cold": first_only})


def cold_shoppers(log: EventLog, fraction: float = 0.1, seed: int = 0,
                  weights: EventWeights | None = None) -> Split:
    """Hold out ``fraction`` of the shoppers, with all their events, and ask for them as new shoppers.

    Candidates: shoppers with at least two distinct items among their interactions; ``fraction`` of them (at least
    one) are drawn with ``seed``, and training keeps every other shopper's events (so the model has no row, no
    history and no event of them). Each held-out shopper is asked twice, both at the end of the training log: with
    **0 prior events** (an empty request state; target: the item of their first interaction) and with **1 prior
    event** (the state holds their first event, whatever its type; target: the first item they interacted with
    after it that differs from it). ``history`` says which: its length is 0 or 1.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    check_order(log)
    pos = positive_mask(log, weights)
    bounds = shopper_bounds(log)
    eligible: list[int] = []
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        if len(set(log.item[lo:hi][pos[lo:hi]].tolist())) >= 2:
            eligible.append(b)
    if not eligible:
        raise ValueError("cold shoppers: no shopper has interactions with two different items")
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * len(eligible))))
    chosen = sorted(np.asarray(eligible)[rng.choice(len(eligible), n, replace=False)].tolist())
    keep = np.ones(len(log), bool)
    users: list[str] = []
    targets: list[list[str]] = []
    history: list[list[Interaction]] = []
    for b in chosen:
        lo, hi = bounds[b], bounds[b + 1]
        keep[lo:hi] = False
        rows = lo + np.flatnonzero(pos[lo:hi])
        first = int(rows[0])
        shopper = str(log.shopper[lo])
        users.append(shopper)
        targets.append([str(log.item[first])])
        history.append([])
        seen = str(log.item[first])
        nxt = next(int(r) for r in rows[1:] if str(log.item[r]) != seen)
        users.append(shopper)
        targets.append([str(log.item[nxt])])
        history.append(_interactions(log, [first]))
    train = log.take(keep)
    now = float(train.ts.max()) if len(train) else 0.0
    return Split("cold-shoppers", "test", train, users, targets, now, history=history,
                 notes={"held_out_shoppers": len(chosen), "candidate_shoppers": len(eligible), "fraction": fraction,
                        "seed": seed, "evaluated": len(users)})
