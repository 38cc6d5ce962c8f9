"""Slot filling: pins, reserved slots and caps, with MMR diversity, for one request's score row.

Placement claims are taken in priority order: each pin claims its slot (and the next ones for further items),
each slot reservation its positions; a claim on a taken position moves to the next free one. Then positions
are filled first to last: a pinned position shows its item; a reserved one the best eligible item matching the
reservation (or, when none is left, the best item overall); any other the best eligible item. "Best" is the
score, or with MMR ``lam * score - (1 - lam) * max similarity to the items above``. Caps skip an item whose
group already holds ``max`` items (pins count toward caps but are never removed by them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from shelfwise.rerank.mmr import Similarity
from shelfwise.retrieval.base import top_k


@dataclass
class PinSpec:
    rule: str
    items: np.ndarray  # item indices, in order
    slot: int  # 0-based position of the first item
    priority: int
    order: int  # global rule order (ties of priority)


@dataclass
class SlotSpec:
    rule: str
    mask: np.ndarray  # bool over items: eligible for the reserved positions
    position: int  # 0-based
    count: int
    priority: int
    order: int


@dataclass
class CapSpec:
    rule: str
    group: np.ndarray  # int32 group code per item (-1: never capped)
    max: int
    scope: np.ndarray | None  # bool over items, None = every item
    strict: bool = False  # when False the cap gives way rather than leave a slot empty


@dataclass
class Constraints:
    """What the rules ask of one request's slots; hard/soft masks decide whether a pin may show an item."""

    pins: list[PinSpec] = field(default_factory=list)
    slots: list[SlotSpec] = field(default_factory=list)
    caps: list[CapSpec] = field(default_factory=list)
    blocked: np.ndarray | None = None  # bool: never shown, not even pinned
    removed: np.ndarray | None = None  # bool: removed by filter / margin floor ...
    removed_priority: np.ndarray | None = None  # ... by a rule of this priority (a higher pin overrides)

    @property
    def empty(self) -> bool:
        return not (self.pins or self.slots or self.caps)


@dataclass
class Placed:
    item: int
    score: float
    reason: str  # "ranked" | "pinned" | "reserved"
    rule: str | None = None
    penalty: float = 0.0  # (1 - lam) * max similarity to the items above, when diversity is on


class _Pool:
    """The best ``size`` candidates of a row (optionally within a mask), in score order."""

    def __init__(self, row: np.ndarray, size: int, mask: np.ndarray | None = None):
        self.row, self.mask, self.size = row, mask, size
        self.build(size)

    def build(self, size: int) -> None:
        src = self.row if self.mask is None else np.where(self.mask, self.row, -np.inf)
        idx, s = top_k(src[None, :], size)
        keep = np.isfinite(s[0])
        self.idx, self.score = idx[0][keep], s[0][keep]
        self.size = size
        self.complete = size >= len(self.row) or len(self.idx) < size
        self.maxsim = np.zeros(len(self.idx), np.float32)

    def grow(self, placed: list[int], sim: Similarity | None) -> bool:
        if self.complete:
            return False
        self.build(self.size * 4)
        if sim is not None and placed:
            self.maxsim = sim.between(self.idx, np.array(placed)).max(axis=1)
        return True


def fill(row: np.ndarray, k: int, c: Constraints | None = None, pre: np.ndarray | None = None,
         sim: Similarity | None = None, lam: float = 1.0, pool: int = 100) -> tuple[list[Placed], list[str]]:
    """The k slots of one request. ``row``: final scores (-inf = not allowed); ``pre``: the same before the rules'
    filters (a pin may override those). Returns the placed items and notes about conflicts."""
    c = c or Constraints()
    notes: list[str] = []
    diverse = sim is not None and lam < 1.0
    claims = _claims(row, k, c, pre, notes)
    pinned = {v[1] for v in claims.values() if v[0] == "pin"}
    taken = np.zeros(len(row), bool)
    if pinned:
        taken[list(pinned)] = True
    organic = _Pool(row, max(pool, 4 * k))
    slot_pools: dict[int, _Pool] = {}
    finite = organic.score
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    counts = [np.zeros(int(cap.group.max(initial=-1)) + 1, np.int32) for cap in c.caps]
    placed: list[Placed] = []
    chosen: list[int] = []

    relaxed = [False]

    def cap_ok(idx: np.ndarray) -> np.ndarray:
        ok = np.ones(len(idx), bool)
        for cap, cnt in zip(c.caps, counts):
            if relaxed[0] and not cap.strict:
                continue
            g = cap.group[idx]
            full = (g >= 0) & (cnt[np.maximum(g, 0)] >= cap.max)
            if cap.scope is not None:
                full &= cap.scope[idx]
            ok &= ~full
        return ok

    def pick(p: _Pool) -> tuple[int, float] | None:
        while True:
            elig = ~taken[p.idx] & cap_ok(p.idx)
            if elig.any():
                if diverse and chosen:
                    value = lam * (p.score - lo) / span - (1 - lam) * p.maxsim
                    value = np.where(elig, value, -np.inf)
                    b = int(np.argmax(value))
                    return b, float((1 - lam) * p.maxsim[b])
                return int(np.argmax(elig)), 0.0
            if not p.grow(chosen, sim if diverse else None):
                return None

    def place(j: int, score: float, reason: str, rule: str | None, penalty: float) -> None:
        placed.append(Placed(j, score, reason, rule, penalty))
        chosen.append(j)
        taken[j] = True
        for cap, cnt in zip(c.caps, counts):
            g = cap.group[j]
            if g >= 0 and (cap.scope is None or cap.scope[j]):
                cnt[g] += 1
        if diverse:
            for p in [organic, *slot_pools.values()]:
                if len(p.idx):
                    p.maxsim = np.maximum(p.maxsim, sim.between(p.idx, np.array([j]))[:, 0])

    pos = 0
    while len(placed) < k:
        claim = claims.pop(pos, None) if pos < k else None
        pos += 1
        if claim is not None and claim[0] == "pin":
            j = claim[1]
            place(j, float(row[j]) if np.isfinite(row[j]) else float(pre[j]), "pinned", claim[2], 0.0)
            continue
        got = None
        if claim is not None:  # a reserved slot
            spec: SlotSpec = claim[1]
            key = id(spec)
            if key not in slot_pools:
                slot_pools[key] = _Pool(row, max(pool, 4 * k), spec.mask)
                if diverse and chosen:
                    sp_ = slot_pools[key]
                    if len(sp_.idx):
                        sp_.maxsim = sim.between(sp_.idx, np.array(chosen)).max(axis=1)
            sp = slot_pools[key]
            got = pick(sp)
            if got is not None:
                b, pen = got
                place(int(sp.idx[b]), float(sp.score[b]), "reserved", spec.rule, pen)
                continue
            notes.append(f"slot {spec.rule}: no eligible matching item left for position {pos}; filled by rank")
        got = pick(organic)
        if got is None and not relaxed[0] and any(not cap.strict for cap in c.caps):
            relaxed[0] = True  # nothing left within the caps: they give way so the rail stays full
            got = pick(organic)
            if got is not None:
                notes.append(f"caps {', '.join(cap.rule for cap in c.caps if not cap.strict)} relaxed from "
                             f"position {pos} on: no other eligible item left")
        if got is not None:
            b, pen = got
            place(int(organic.idx[b]), float(organic.score[b]), "ranked", None, pen)
            continue
        # nothing left to rank: later pins move up; otherwise the rail is shorter than k
        later = sorted((p, v) for p, v in claims.items() if v[0] == "pin")
        if not later:
            break
        p, v = later[0]
        del claims[p]
        j = v[1]
        place(j, float(row[j]) if np.isfinite(row[j]) else float(pre[j]), "pinned", v[2], 0.0)
    return placed, notes


def _claims(row: np.ndarray, k: int, c: Constraints, pre: np.ndarray | None,
            notes: list[str]) -> dict[int, tuple]:
    """Position → ("pin", item, rule) | ("slot", spec), claimed in priority order."""
    claims: dict[int, tuple] = {}
    pinned: set[int] = set()
    pre = row if pre is None else pre
    specs: list[tuple[int, int, object]] = [(-p.priority, p.order, p) for p in c.pins]
    specs += [(-s.priority, s.order, s) for s in c.slots]

    def free(at: int) -> int:
        while at in claims:
            at += 1
        return at

    for _, _, spec in sorted(specs, key=lambda t: (t[0], t[1])):
        if isinstance(spec, PinSpec):
            cursor = spec.slot
            for j in spec.items.tolist():
                why = _pin_refused(j, spec.priority, row, pre, c)
                if why is None and j in pinned:
                    why = "already pinned by a rule of higher priority"
                if why:
                    notes.append(f"pin {spec.rule}: item #{j} not shown ({why})")
                    continue
                at = free(cursor)
                if at >= k:
                    notes.append(f"pin {spec.rule}: item #{j} falls beyond the rail's {k} slots")
                    break
                if at != cursor:
                    notes.append(f"pin {spec.rule}: slot {cursor + 1} taken by a rule of higher priority; "
                                 f"item #{j} moved to slot {at + 1}")
                claims[at] = ("pin", j, spec.rule)
                pinned.add(j)
                cursor = at + 1
        else:
            assert isinstance(spec, SlotSpec)
            cursor = spec.position
            for _ in range(spec.count):
                at = free(cursor)
                if at >= k:
                    notes.append(f"slot {spec.rule}: position {cursor + 1} is beyond the rail's {k} slots")
                    break
                if at != cursor:
                    notes.append(f"slot {spec.rule}: position {cursor + 1} taken by a rule of higher priority; "
                                 f"reserved position {at + 1} instead")
                claims[at] = ("slot", spec)
                cursor = at + 1
    return claims


def _pin_refused(j: int, priority: int, row: np.ndarray, pre: np.ndarray, c: Constraints) -> str | None:
    if c.blocked is not None and c.blocked[j]:
        return "blocked"
    if not np.isfinite(pre[j]):
        return "not servable for this request (unavailable, out of stock, excluded or already bought)"
    if np.isfinite(row[j]):
        return None
    if c.removed is not None and c.removed[j] and c.removed_priority[j] >= priority:
        return "removed by a filter or margin floor of equal or higher priority"
    return None
