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
    reason: str = "reserved"  # what a slot it fills says (exploration slots are reservations too)


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
    reason: str  # "ranked" | "pinned" | a reservation's reason ("reserved", "exploration")
    rule: str | None = None
    penalty: float = 0.0  # (1 - lam) * max similarity to the items above, when diversity is on


def _top(values: np.ndarray, size: int) -> np.ndarray:
    """Positions of the ``size`` largest finite values, best first (ties: lower position first)."""
    n = len(values)
    if size < n:
        part = np.argpartition(-values, size - 1)[:size]
    else:
        part = np.arange(n)
    part = part[np.isfinite(values[part])]
    return part[np.lexsort((part, -values[part]))]


class _Pool:
    """The best ``size`` candidates of a row (optionally among ``members``), in score order."""

    def __init__(self, row: np.ndarray, size: int, members: np.ndarray | None = None,
                 start: np.ndarray | None = None):
        self.row, self.members = row, members
        if start is None:
            self.build(size)
        else:  # the matching part of a bigger pool: its best items are the best overall (no rebuild needed)
            self._set(start, size, complete=False)
            self.size = 0

    def _set(self, idx: np.ndarray, size: int, complete: bool) -> None:
        self.idx, self.score = idx, self.row[idx]
        self.ids = idx.tolist()
        self.size = size
        self.complete = complete
        self.cursor = 0  # plain ranking: every candidate before it is taken or capped (caps only tighten)
        self.capped = np.zeros(len(idx), bool)
        self.maxsim = np.zeros(len(idx), np.float32)
        self.cap_groups: list[list[int]] | None = None
        self.sim_matrix: np.ndarray | None = None  # pool × pool similarities (diversity), built on first use
        self.position: dict[int, int] | None = None
        self.relevance: np.ndarray | None = None  # the MMR's relevance term of each candidate (``fill``)

    def note_placed(self, j: int, sim: Similarity) -> None:
        """Raise every candidate's max similarity to the items placed so far by item j."""
        if not len(self.idx):
            return
        if self.sim_matrix is None and len(self.idx) <= 200:  # a grown pool computes columns on demand
            self.sim_matrix = sim.between(self.idx, self.idx)
            self.position = {x: b for b, x in enumerate(self.ids)}
        b = self.position.get(j) if self.position is not None else None
        col = self.sim_matrix[:, b] if b is not None else sim.between(self.idx, np.array([j]))[:, 0]
        np.maximum(self.maxsim, col, out=self.maxsim)

    def build(self, size: int) -> None:
        if self.members is None:
            idx = _top(self.row, size)
            total = len(self.row)
        else:
            idx = self.members[_top(self.row[self.members], size)]
            total = len(self.members)
        self._set(idx, size, size >= total)

    def grow(self, placed: list[int], sim: Similarity | None, caps: "_Caps") -> bool:
        if self.complete:
            return False
        self.build(max(self.size * 4, len(self.idx) + 1, 64))
        if sim is not None and placed:
            self.maxsim = sim.between(self.idx, np.array(placed)).max(axis=1)
        caps.mark(self)
        return True


class _Caps:
    """Cap counters. Each cap's groups are folded with its scope (-1 = not counted) and read per pool as Python
    lists, so checking a candidate costs a few list lookups; ``mark`` flags a pool's capped candidates at once."""

    def __init__(self, caps: list[CapSpec]):
        self.caps = caps
        self.groups = [_scoped_groups(cap) for cap in caps]
        self.counts: list[dict[int, int]] = [dict() for _ in caps]
        self.relaxed = False
        self.active = list(range(len(caps)))

    def relax(self) -> None:
        self.relaxed = True
        self.active = [i for i, cap in enumerate(self.caps) if cap.strict]

    def lists(self, p: "_Pool") -> list[list[int]]:
        got = p.cap_groups
        if got is None:
            got = p.cap_groups = [g[p.idx].tolist() for g in self.groups]
        return got

    def ok_at(self, p: "_Pool", b: int) -> bool:
        lists = self.lists(p)
        for i in self.active:
            g = lists[i][b]
            if g >= 0 and self.counts[i].get(g, 0) >= self.caps[i].max:
                return False
        return True

    def add(self, j: int, p: "_Pool | None" = None, b: int = -1) -> list[tuple[int, int]]:
        """Count a placed item (``j``; at position ``b`` of pool ``p`` when it came from one: its groups are read
        from the pool's lists); returns the (cap, group) pairs that just became full."""
        full = []
        lists = self.lists(p) if p is not None else None
        for i, cap in enumerate(self.caps):
            g = lists[i][b] if lists is not None else int(self.groups[i][j])
            if g >= 0:
                n = self.counts[i].get(g, 0) + 1
                self.counts[i][g] = n
                if n == cap.max:
                    full.append((i, g))
        return full

    def mark(self, p: "_Pool", which: list[tuple[int, int]] | None = None) -> None:
        active = set(self.active)
        pairs = which if which is not None else [(i, g) for i in active for g, n in self.counts[i].items()
                                                 if n >= self.caps[i].max]
        if which is None:
            p.capped[:] = False
        for i, g in pairs:
            if i in active:
                p.capped |= self.groups[i][p.idx] == g


def _scoped_groups(cap: CapSpec) -> np.ndarray:
    got = getattr(cap, "_scoped", None)
    if got is None:
        got = cap.group if cap.scope is None else np.where(cap.scope, cap.group, -1).astype(np.int32)
        cap._scoped = got  # cached with the (cached) effects of a signature
    return got


def fill(row: np.ndarray, k: int, c: Constraints | None = None, pre: np.ndarray | None = None,
         sim: Similarity | None = None, lam: float = 1.0, pool: int = 100) -> tuple[list[Placed], list[str]]:
    """The k slots of one request. ``row``: final scores (-inf = not allowed); ``pre``: the same before the rules'
    filters (a pin may override those). Returns the placed items and notes about conflicts."""
    c = c or Constraints()
    notes: list[str] = []
    diverse = sim is not None and lam < 1.0
    claims = _claims(row, k, c, pre, notes)
    taken = np.zeros(len(row), bool) if diverse else None  # the diverse pick's mask of placed and pinned items
    used: set[int] = set()  # the same, for the plain pick's one-at-a-time lookups
    for v in claims.values():
        if v[0] == "pin":
            used.add(v[1])
            if taken is not None:
                taken[v[1]] = True
    caps = _Caps(c.caps)
    size = max(pool, 4 * k)
    organic = _Pool(row, size)
    pools = [organic]
    slot_pools: dict[int, _Pool] = {}
    # a slot pool taken from the organic one: its items' positions there, and both pools' candidates at the time
    within: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    lo, hi = (float(organic.score.min()), float(organic.score.max())) if len(organic.idx) else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    placed: list[Placed] = []
    chosen: list[int] = []

    def pick(p: _Pool) -> tuple[int, float] | None:
        while True:
            if diverse:
                blocked = taken[p.idx] | p.capped
                if not blocked.all():
                    if chosen:
                        if p.relevance is None:
                            p.relevance = lam * (p.score - lo) / span
                        value = p.relevance - (1 - lam) * p.maxsim
                        value[blocked] = -np.inf
                        b = int(np.argmax(value))
                        return b, float((1 - lam) * p.maxsim[b])
                    return int(np.argmin(blocked)), 0.0
            else:
                ids, n = p.ids, len(p.ids)
                while p.cursor < n:
                    if ids[p.cursor] not in used and (not c.caps or caps.ok_at(p, p.cursor)):
                        return p.cursor, 0.0
                    p.cursor += 1
            if not p.grow(chosen, sim if diverse else None, caps):
                return None

    def place(j: int, score: float, reason: str, rule: str | None, penalty: float, p: _Pool | None = None,
              b: int = -1) -> None:
        placed.append(Placed(j, score, reason, rule, penalty))
        chosen.append(j)
        used.add(j)
        if taken is not None:
            taken[j] = True
        if c.caps:
            full = caps.add(j, p, b)
            if full and diverse:
                for p in pools:
                    caps.mark(p, full)
        if diverse:
            organic.note_placed(j, sim)  # slot pools are only used at their positions: updated there

    def relax() -> None:
        caps.relax()
        for p in pools:
            p.cursor = 0
            caps.mark(p)

    def pin_score(j: int) -> float:
        return float(row[j]) if np.isfinite(row[j]) else float(pre[j])

    pos = 0
    while len(placed) < k:
        claim = claims.pop(pos, None) if pos < k else None
        pos += 1
        if claim is not None and claim[0] == "pin":
            place(claim[1], pin_score(claim[1]), "pinned", claim[2], 0.0)
            continue
        got = None
        if claim is not None:  # a reserved slot
            spec: SlotSpec = claim[1]
            sp = slot_pools.get(id(spec))
            if sp is None:
                at = np.flatnonzero(spec.mask[organic.idx])
                sp = slot_pools[id(spec)] = _Pool(row, size, _members(spec), organic.idx[at] if len(at) else None)
                if len(at):
                    within[id(spec)] = (at, organic.idx, sp.idx)
                pools.append(sp)
                if c.caps:
                    caps.mark(sp)
            if diverse and chosen and len(sp.idx):
                at, base, own = within.get(id(spec), (None, None, None))
                if base is organic.idx and own is sp.idx:  # neither grew since: its items are organic candidates,
                    sp.maxsim = organic.maxsim[at]  # whose max similarity to the placed items is kept current
                else:
                    sp.maxsim = sim.between(sp.idx, np.array(chosen)).max(axis=1)
            got = pick(sp)
            if got is not None:
                b, pen = got
                place(sp.ids[b], float(sp.score[b]), spec.reason, spec.rule, pen, sp, b)
                continue
            notes.append(f"slot {spec.rule}: no eligible matching item left for position {pos}; filled by rank")
        got = pick(organic)
        if got is None and not caps.relaxed and any(not cap.strict for cap in c.caps):
            relax()  # nothing left within the caps: they give way so the rail stays full
            got = pick(organic)
            if got is not None:
                notes.append(f"caps {', '.join(cap.rule for cap in c.caps if not cap.strict)} relaxed from "
                             f"position {pos} on: no other eligible item left")
        if got is not None:
            b, pen = got
            place(organic.ids[b], float(organic.score[b]), "ranked", None, pen, organic, b)
            continue
        # nothing left to rank: later pins move up; otherwise the rail is shorter than k
        later = sorted((p, v) for p, v in claims.items() if v[0] == "pin")
        if not later:
            break
        p, v = later[0]
        del claims[p]
        place(v[1], pin_score(v[1]), "pinned", v[2], 0.0)
    return placed, notes


def _members(spec: SlotSpec) -> np.ndarray:
    got = getattr(spec, "_members", None)
    if got is None:
        got = np.flatnonzero(spec.mask)
        spec._members = got  # cached with the (cached) effects of a signature
    return got


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
