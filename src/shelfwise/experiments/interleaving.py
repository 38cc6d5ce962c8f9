"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008): compare two rankers on the same request.

Each request shows one list merged from ranking A and ranking B. The teams take turns picking their best item not
yet shown — the team with fewer picks goes next, a coin decides ties — and every slot remembers its team. A click
credits the team of the clicked slot; an impression is won by the team with more credited clicks (or tied).
Because both rankers face the same shopper at the same moment, the comparison is paired: it needs far fewer
sessions than an A/B test of the same two rankers (``benchmarks/experiments_interleaving.py``).

The coin is seeded by the request id, so a logged request can be replayed exactly. Analysis: wins of A and B over
the decided impressions (or per unit: each shopper's majority, which respects the clustering of impressions), a
two-sided sign test (exact binomial), and ΔAB = (wins_B − wins_A) / (all impressions) with a Wilson-style interval
on the B-share of decided impressions.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from scipy import stats


def _rng(seed: str | int | random.Random | None) -> random.Random:
    if isinstance(seed, random.Random):
        return seed
    if isinstance(seed, str):
        return random.Random(int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big"))
    return random.Random(seed)


def team_draft(a: Sequence[str], b: Sequence[str], k: int,
               seed: str | int | random.Random | None = None) -> tuple[list[str], list[str]]:
    """The interleaved list of at most ``k`` items and the team ("a"/"b") of each slot."""
    rng = _rng(seed)
    items: list[str] = []
    teams: list[str] = []
    seen: set[str] = set()
    ia = ib = 0
    na = nb = 0
    while len(items) < k:
        while ia < len(a) and a[ia] in seen:
            ia += 1
        while ib < len(b) and b[ib] in seen:
            ib += 1
        a_left, b_left = ia < len(a), ib < len(b)
        if not a_left and not b_left:
            break
        a_turn = (na < nb or (na == nb and rng.random() < 0.5)) if (a_left and b_left) else a_left
        if a_turn:
            item, team = a[ia], "a"
            na += 1
        else:
            item, team = b[ib], "b"
            nb += 1
        items.append(item)
        teams.append(team)
        seen.add(item)
    return items, teams


def credit(teams: Sequence[str], items: Sequence[str], clicked: Iterable[str]) -> tuple[int, int]:
    """(clicks credited to A, to B) for one impression."""
    team_of = dict(zip(items, teams))
    ca = cb = 0
    for c in clicked:
        t = team_of.get(c)
        if t == "a":
            ca += 1
        elif t == "b":
            cb += 1
    return ca, cb


@dataclass
class InterleavingResult:
    impressions: int
    wins_a: int
    wins_b: int
    ties: int
    delta_ab: float  # (wins_b - wins_a) / impressions: > 0 prefers B
    p_value: float  # two-sided sign test on the decided impressions
    b_share: float  # wins_b / (wins_a + wins_b)
    b_share_ci: list[float]
    unit: str  # "impression" or "unit"

    @property
    def winner(self) -> str | None:
        return None if self.wins_a == self.wins_b else ("b" if self.wins_b > self.wins_a else "a")

    def view(self) -> dict[str, Any]:
        return self.__dict__ | {"winner": self.winner}


def analyze_interleaving(outcomes: Iterable[tuple[Any, int, int]], by: str = "unit",
                         alpha: float = 0.05) -> InterleavingResult:
    """``outcomes``: (unit, credited clicks A, credited clicks B) per impression. ``by="unit"`` aggregates each
    unit's clicks first (one vote per shopper); ``by="impression"`` votes per impression."""
    if by not in ("unit", "impression"):
        raise ValueError("by must be 'unit' or 'impression'")
    votes: list[tuple[int, int]]
    if by == "unit":
        agg: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
        for u, ca, cb in outcomes:
            agg[u][0] += ca
            agg[u][1] += cb
        votes = [(x[0], x[1]) for x in agg.values()]
    else:
        votes = [(ca, cb) for _, ca, cb in outcomes]
    wa = sum(1 for ca, cb in votes if ca > cb)
    wb = sum(1 for ca, cb in votes if cb > ca)
    n = len(votes)
    decided = wa + wb
    p = float(stats.binomtest(wb, decided, 0.5).pvalue) if decided else 1.0
    if decided:
        ci = stats.binomtest(wb, decided, 0.5).proportion_ci(1 - alpha, method="wilson")
        share, lo, hi = wb / decided, float(ci.low), float(ci.high)
    else:
        share, lo, hi = 0.5, 0.0, 1.0
    return InterleavingResult(impressions=n, wins_a=wa, wins_b=wb, ties=n - decided,
                              delta_ab=(wb - wa) / n if n else 0.0, p_value=p, b_share=share, b_share_ci=[lo, hi],
                              unit=by)


def outcomes_from_requests(requests: Iterable[Any]) -> list[tuple[Any, int, int]]:
    """(unit, credit A, credit B) of logged interleaved requests (``log.LoggedRequest`` with ``teams``)."""
    out = []
    for r in requests:
        if not r.teams:
            continue
        ca, cb = credit(r.teams, r.items, r.clicks)
        out.append((r.unit, ca, cb))
    return out
