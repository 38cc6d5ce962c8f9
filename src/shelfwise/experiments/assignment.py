"""Deterministic, sticky assignment of shoppers to experiment variants. Pure: no I/O, no clock, no randomness.

Bucket math (every hash is BLAKE2b over ``tag \\x1f salt \\x1f unit`` in UTF-8, read as big-endian unsigned
integers, so it is the same on every machine, Python version, process and replica — ``PYTHONHASHSEED`` plays
no part; a golden table in the tests pins it):

1. **Global holdout** — ``H = hash64("holdout", holdout_salt, unit)``; ``H < holdout_share·2⁶⁴`` → the shopper is
   in no experiment at all (they measure the cumulative effect of everything shipped).
2. **Layer** — ``L = hash64("layer", layer, unit)`` places the shopper in their layer position; an experiment owns
   the slice ``[from, to)`` of its layer and slices of one layer never overlap, so experiments of one layer
   never share a shopper, while layers are independent of each other (different hashes).
3. **Exposure gate** — ``G`` (first 64 bits of ``hash128("exp", salt, unit)``): the shopper is in the experiment
   iff ``G < traffic·2⁶⁴``. A ramp raises ``traffic``, so it only *adds* shoppers (those with ``G`` in the new
   range); nobody leaves.
4. **Variant** — ``V`` (last 64 bits of the same hash), compared with the cumulative shares. ``V`` does not depend
   on ``traffic``, so a ramp never changes anybody's variant, and because ``G`` and ``V`` are independent the
   shoppers a ramp adds are split by the same shares.

Shares, ranges and salt are fixed once an experiment starts (the store refuses to change them).

The unit is the user id of a logged-in shopper and ``session:<id>`` for an anonymous one (the same key as the
event store's shopper). ``bucketing_unit`` applies ``experiments.identity``: with ``first_seen`` a shopper who
logs in keeps the unit they were first seen with (the store's identity map links the user to it).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from shelfwise.experiments.schema import Experiment, Kind, VariantConfig

TWO64 = 1 << 64
_SEP = b"\x1f"


def _prefix(tag: str, salt: str) -> bytes:
    return tag.encode() + _SEP + salt.encode() + _SEP


def hash64(tag: str, salt: str, unit: str) -> int:
    """64-bit bucket hash (stable forever: BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(_prefix(tag, salt) + unit.encode(), digest_size=8).digest(), "big")


def hash128(tag: str, salt: str, unit: str) -> tuple[int, int]:
    d = hashlib.blake2b(_prefix(tag, salt) + unit.encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "big"), int.from_bytes(d[8:], "big")


def bucket(salt: str, unit: str) -> tuple[float, float]:
    """(gate, variant) positions in [0, 1) of a unit in the experiment salted ``salt`` (for tests and tools)."""
    g, v = hash128("exp", salt, unit)
    return g / TWO64, v / TWO64


def shopper_key(user_id: str | None, session_id: str | None) -> str | None:
    """The event store's shopper key: the user id, else ``session:<id>``; None for a request with neither."""
    if user_id:
        return user_id
    return f"session:{session_id}" if session_id else None


@dataclass(frozen=True, slots=True)
class Assignment:
    """A shopper's variant in one experiment.

    ``status`` "running": the experiment is live and this exposure is logged for analysis. "stopped": the
    experiment was stopped and keeps serving ``variant`` (control after a rollback, a shipped winner) to the
    shoppers it had; not analysed. ``propensity`` is the probability this variant was chosen (the share for
    sticky A/B assignment; the bandit's probability for a bandit experiment)."""

    experiment: str
    variant: str
    layer: str
    config: VariantConfig
    kind: Kind = "ab"
    status: str = "running"
    propensity: float = 1.0
    arms: tuple[str, ...] = ()  # every variant name, in document order (bandit arms / the interleaved pair)

    @property
    def logged(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class _Compiled:
    id: str
    layer: str
    lo: int
    hi: int
    gate: int
    prefix: bytes
    bounds: tuple[int, ...]  # cumulative share thresholds (last = 2**64)
    assignments: tuple[Assignment, ...]  # one per variant, prebuilt
    placements: frozenset[str] | None
    serve: Assignment | None = None  # stopped and serving


def _compile(e: Experiment) -> _Compiled:
    spec = e.spec
    bounds, acc = [], 0.0
    for v in spec.variants[:-1]:
        acc += v.share
        bounds.append(min(int(acc * TWO64), TWO64))
    bounds.append(TWO64)
    arms = tuple(v.name for v in spec.variants)
    status = "running" if e.status == "running" else "stopped"
    built = tuple(Assignment(spec.id, v.name, spec.layer, v.config, spec.kind, status, v.share, arms)
                  for v in spec.variants)
    serve = None
    if e.status == "stopped" and e.serve is not None:
        v = spec.variant(e.serve)
        serve = Assignment(spec.id, v.name, spec.layer, v.config, "ab", "stopped", 1.0, arms)
    lo, hi = spec.layer_range
    return _Compiled(id=spec.id, layer=spec.layer, lo=int(lo * TWO64), hi=min(int(hi * TWO64), TWO64),
                     gate=min(int(e.traffic * TWO64), TWO64), prefix=_prefix("exp", spec.salt_value),
                     bounds=tuple(bounds), assignments=built,
                     placements=frozenset(spec.placements) if spec.placements else None, serve=serve)


@dataclass
class Assigner:
    """Compiled experiments for fast assignment (build once per store snapshot; share between threads)."""

    experiments: Sequence[Experiment]
    holdout_share: float = 0.0
    holdout_salt: str = "shelfwise-holdout"
    _layers: list[tuple[bytes, list[_Compiled]]] = field(init=False, repr=False)
    _holdout: int = field(init=False, repr=False)
    _holdout_prefix: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError("holdout_share must be in [0, 1)")
        by_layer: dict[str, list[tuple[int, _Compiled]]] = {}
        for e in self.experiments:
            if e.status == "running":
                rank = 0
            elif e.status == "stopped" and e.serve is not None:
                rank = 1  # a stopped experiment serving a variant yields to a running one on the same slice
            else:
                continue
            by_layer.setdefault(e.spec.layer, []).append((rank, _compile(e)))
        self._layers = [(_prefix("layer", name), [c for _, c in sorted(exps, key=lambda x: (x[0], x[1].lo))])
                        for name, exps in sorted(by_layer.items())]
        self._holdout = int(self.holdout_share * TWO64)
        self._holdout_prefix = _prefix("holdout", self.holdout_salt)

    @property
    def empty(self) -> bool:
        return not self._layers

    def in_holdout(self, unit: str) -> bool:
        if not self._holdout:
            return False
        h = int.from_bytes(hashlib.blake2b(self._holdout_prefix + unit.encode(), digest_size=8).digest(), "big")
        return h < self._holdout

    def assign(self, unit: str | None, placement: str | None = None) -> list[Assignment]:
        """Every experiment variant of a shopper (at most one per layer), layers in name order.

        ``placement``: experiments scoped to other placements are left out (their bucketing is unaffected).
        A request without a unit (no user, no session) gets no experiment."""
        if unit is None or not self._layers:
            return []
        u = unit.encode()
        blake = hashlib.blake2b
        if self._holdout and int.from_bytes(blake(self._holdout_prefix + u, digest_size=8).digest(),
                                            "big") < self._holdout:
            return []
        out: list[Assignment] = []
        for layer_prefix, exps in self._layers:
            pos = int.from_bytes(blake(layer_prefix + u, digest_size=8).digest(), "big")
            for c in exps:
                if not (c.lo <= pos < c.hi):
                    continue
                d = blake(c.prefix + u, digest_size=16).digest()
                if int.from_bytes(d[:8], "big") >= c.gate:
                    if c.serve is None:
                        break  # in this running experiment's slice but not (yet) exposed: nothing in this layer
                    continue
                if c.placements is not None and placement is not None and placement not in c.placements:
                    break
                if c.serve is not None:
                    out.append(c.serve)
                else:
                    out.append(c.assignments[bisect_right(c.bounds, int.from_bytes(d[8:], "big"))])
                break
        return out


def assign(experiments: Iterable[Experiment], unit: str | None, placement: str | None = None,
           holdout_share: float = 0.0, holdout_salt: str = "shelfwise-holdout") -> list[Assignment]:
    """One-off assignment (compiles every call; the request path keeps an ``Assigner`` per store snapshot)."""
    return Assigner(list(experiments), holdout_share, holdout_salt).assign(unit, placement)
