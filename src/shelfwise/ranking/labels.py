"""Ranker training data from the event history, split by time so that no future leaks in.

The scheme (``split_history``), for a log of events up to now:

1. Pick a cut. ``split="time"``: the time leaving ``holdout_fraction`` of the interactions after it.
   ``split="last"`` (leave-one-out data without real time, e.g. the S3-Rec Amazon files): every shopper's last
   interaction is held out, the cut is per shopper. ``split="auto"`` (the default): "last" for such order-only
   logs (``auto_split``), "time" otherwise.
2. The candidate sources are fit on the events BEFORE the cut only (``prefix``). They never see a labelled event.
3. Training points are the held-out interactions (after the cut): a request made just before the event, by its
   shopper, whose history is everything the shopper did before it — exactly what online state would hold
   (events after the cut but before the point are history the sources did not train on: ``Query.fresh``, as for a
   live session). The point's labels are graded by what the shopper did next: the items of the next
   ``label_horizon`` interactions of the same session, purchase 3 > add to cart 2 > view 1 (the best grade per
   item); every other candidate is 0.
4. Candidates for a point come from the prefix-fit pipeline through the API's own stages (its ``candidates``:
   resolve, rules, candidate generation and blend); features from the one shared code path (``compute_features``).
5. The ranker's early-stopping validation split is the latest ``valid_fraction`` of the points by time
   (``split="last"``: a random share of the shoppers), so validation is also "future" relative to training rows.

At serving time the sources are refit on everything (``training.fit_pipeline``: the sequence model continues
from its prefix fit for a few epochs) and the ranker (trained on prefix-fit sources) is applied to
them — the one shift in this scheme: the sources have seen slightly more data than during ranker training. Source
scores enter as row-normalised values and ranks, which keeps that shift small.

Leave-one-out evaluation on the Amazon files (evaluate on the last item, models see ``seq[:-1]``) then gives:
sources for ranker rows fit on ``seq[:-2]``, rows labelled by ``seq[-2]``; final sources refit on ``seq[:-1]``
and the ranker ranks for the test item ``seq[-1]``, which no part of training saw.

Logged impressions (an exposure log: request time, shopper, shown items and their positions) become points the
same way, with each shown item's row weighted by ``ipw_weights`` of its position (position-bias correction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from shelfwise.domain import EventType
from shelfwise.ranking.features import FeatureContext, compute_features
from shelfwise.request import Candidates, Query, RecRequest
from shelfwise.settings import RankerSettings
from shelfwise.stores.protocols import EventLog, Interaction, ShopperState


class CandidateSource(Protocol):
    """What generates the candidates of requests exactly as serving does (``Pipeline.candidates``)."""

    def candidates(self, requests: Sequence[RecRequest], n: int) -> tuple[list[Query], Candidates]:
        """The queries of the requests (one placement) and their best ``n`` candidates by blended score."""

GRADES = {int(EventType.purchase_completed): 3, int(EventType.add_to_cart): 2, int(EventType.product_viewed): 1,
          int(EventType.recommendation_clicked): 1}


def grade_of(kind: np.ndarray) -> np.ndarray:
    table = np.zeros(max(int(k) for k in EventType) + 1, np.int8)
    for k, g in GRADES.items():
        table[k] = g
    return table[kind.astype(np.int64)]


def ipw_weights(positions: np.ndarray, clicked: np.ndarray | None = None, eta: float = 1.0,
                max_weight: float = 20.0, shown: np.ndarray | None = None) -> np.ndarray:
    """Inverse-propensity weights of logged impressions by 0-based position.

    Position-based examination model: P(examined | position k) = (1 / (k + 1)) ** eta (Joachims et al., 2017),
    so a click at position k is weighted (k + 1) ** eta, clipped at ``max_weight`` to bound the variance.
    ``shown`` is the probability that the item was placed in that slot at all: 1 for the ranked slots, the logged
    Thompson-sampling propensity for an exploration slot (``experiments.bandits``), so the item bandit's picks
    count as what they are, a draw from the policy. Rows that were not clicked (``clicked`` False) keep weight 1;
    ``positions < 0`` (not shown) weight 1.
    """
    pos = np.asarray(positions, np.float64)
    w = np.where(pos >= 0, np.power(np.maximum(pos, 0) + 1.0, eta), 1.0)
    if shown is not None:
        w = w / np.clip(np.asarray(shown, np.float64), 1e-6, 1.0)
    w = np.minimum(w, max_weight)
    if clicked is not None:
        w = np.where(np.asarray(clicked, bool), w, 1.0)
    return w.astype(np.float32)


@dataclass
class Point:
    """One training request: the shopper's state just before ``ts`` and what they did next."""

    shopper: str
    ts: float
    history: list[Interaction]  # oldest first
    purchased: set[str]
    labels: dict[str, int]  # item id -> grade
    positions: dict[str, int] = field(default_factory=dict)  # logged impressions: item id -> position shown
    shown: dict[str, float] = field(default_factory=dict)  # exploration slots: item id -> logged propensity (< 1)
    device: str | None = None
    given: tuple[str, ...] | None = None  # a logged search: the results the shop showed (a rerank request's list)
    query: str | None = None  # ... and its query

    def request(self, placement: str, k: int) -> RecRequest:
        return RecRequest(placement=placement, shopper=self.shopper, k=k, now=self.ts,
                          state=ShopperState(list(self.history), set(self.purchased)), device=self.device,
                          given=self.given, query=self.query)


def point_at(log: EventLog, lo: int, i: int, history_length: int = 50, ts: float | None = None) -> Point:
    """The request of shopper ``log.shopper[lo]`` just before row ``i`` (rows ``lo..i-1`` are their past).

    Its history is what online state / ``EventStore.history`` would hold: the last ``history_length`` item events
    of any kind (oldest first) and every purchased item. ``ts`` defaults to the time of row ``i`` (``i`` may be
    the end of the shopper's rows).
    """
    rows = np.arange(max(lo, i - history_length), i)
    history = [Interaction(str(log.item[j]), int(log.kind[j]), float(log.ts[j])) for j in rows]
    bought = np.flatnonzero(log.kind[lo:i] == EventType.purchase_completed) + lo
    when = float(log.ts[i]) if ts is None else float(ts)
    return Point(str(log.shopper[lo]), when, history, {str(log.item[j]) for j in bought}, {})


@dataclass
class HistorySplit:
    prefix: EventLog  # what the candidate sources are fit on
    points: list[Point]  # labelled requests, all after the prefix (per shopper for split="last")
    cut: float  # the time cut (split="time"), or nan


def _positive(log: EventLog) -> np.ndarray:
    return grade_of(log.kind) > 0


def auto_split(log: EventLog) -> str:
    """``split="auto"``: "last" when most shoppers' first event is at the importers' synthetic epoch (sequences
    imported with order-only times, e.g. the S3-Rec files), else "time"."""
    from shelfwise.importers.base import SYNTHETIC_EPOCH

    if not len(log):
        return "time"
    first = np.r_[True, log.shopper[1:] != log.shopper[:-1]]  # the log is grouped by shopper, in time order
    return "last" if np.mean(log.ts[first] == SYNTHETIC_EPOCH.timestamp()) >= 0.5 else "time"


def split_history(log: EventLog, settings: RankerSettings, history_length: int = 50,
                  session_gap_s: float = 1800.0) -> HistorySplit:
    """The prefix the sources are fit on and the labelled points after it (see the module docstring)."""
    rng = np.random.default_rng(settings.seed)
    pos = _positive(log)
    n = len(log)
    if n == 0 or not pos.any():
        return HistorySplit(log, [], float("nan"))
    change = np.flatnonzero(log.shopper[1:] != log.shopper[:-1]) + 1
    bounds = np.r_[0, change, n]
    block = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    how = auto_split(log) if settings.split == "auto" else settings.split
    if how == "time":
        cut = float(np.quantile(log.ts[pos], 1.0 - settings.holdout_fraction, method="higher"))
        held = log.ts >= cut
    else:
        cut = float("nan")
        held = np.zeros(n, bool)
        pidx = np.flatnonzero(pos)
        last_pos = np.full(len(bounds) - 1, -1)
        np.maximum.at(last_pos, block[pidx], pidx)
        # hold out each shopper's last interaction (and anything after it) if they have an earlier one
        first_pos = np.full(len(bounds) - 1, n)
        np.minimum.at(first_pos, block[pidx], pidx)
        ok = (last_pos >= 0) & (first_pos < last_pos)
        for b in np.flatnonzero(ok):
            held[last_pos[b]:bounds[b + 1]] = True
    # candidate points: held-out interactions with at least one earlier interaction of the same shopper
    cum = np.cumsum(pos) - pos  # positives strictly before each row (global)
    seen_before = (cum - cum[bounds[block]]) > 0
    cand = np.flatnonzero(held & pos & seen_before)
    if how == "last":
        cand = cand[np.r_[True, block[cand][1:] != block[cand][:-1]]] if len(cand) else cand  # one per shopper
    if len(cand) > settings.max_requests:
        cand = np.sort(rng.choice(cand, settings.max_requests, replace=False))
    grades = grade_of(log.kind)
    points: list[Point] = []
    for i in cand.tolist():
        b = block[i]
        lo, hi = bounds[b], bounds[b + 1]
        p = point_at(log, lo, i, history_length)
        taken = 0
        for j in range(i, hi):
            if j > i and (log.session[j] != log.session[i] or log.ts[j] - log.ts[j - 1] > session_gap_s):
                break
            if grades[j] == 0:
                continue
            item = str(log.item[j])
            p.labels[item] = max(p.labels.get(item, 0), int(grades[j]))
            taken += 1
            if taken >= settings.label_horizon:
                break
        points.append(p)
    return HistorySplit(log.take(~held), points, cut)


@dataclass
class RankRows:
    """Feature rows of labelled requests, grouped by request (only requests with a positive candidate)."""

    X: np.ndarray  # (rows, F) float32
    y: np.ndarray  # (rows,) int graded relevance
    group: np.ndarray  # (groups,) rows per request
    weight: np.ndarray  # (rows,) float32
    ts: np.ndarray  # (groups,) request time
    shopper: np.ndarray  # (groups,) object
    requests: int = 0  # requests processed (with or without a positive)
    with_positive: int = 0  # requests whose labelled items are among the N candidates

    def take_groups(self, mask: np.ndarray) -> "RankRows":
        starts = np.r_[0, np.cumsum(self.group)[:-1]]
        rows = np.concatenate([np.arange(s, s + g) for s, g in zip(starts[mask], self.group[mask])]) \
            if mask.any() else np.zeros(0, np.int64)
        return RankRows(self.X[rows], self.y[rows], self.group[mask], self.weight[rows], self.ts[mask],
                        self.shopper[mask], int(mask.sum()), int(mask.sum()))


def request_features(source: CandidateSource, ctx: FeatureContext, points: Sequence[Point], placement: str,
                     n: int) -> tuple[Candidates, np.ndarray]:
    """The training path: points → the API's requests → candidates → the shared features."""
    reqs = [p.request(placement, n) for p in points]
    queries, cand = source.candidates(reqs, n)
    return cand, compute_features(ctx, reqs, queries, cand)


def build_rows(source: CandidateSource, ctx: FeatureContext, points: Sequence[Point], placement: str,
               n: int, batch: int = 256, ipw_eta: float = 1.0, ipw_max: float = 20.0) -> RankRows:
    """Candidates (API's generation) + features (shared code path) + graded labels for each point."""
    Xs, ys, ws, groups, tss, shoppers = [], [], [], [], [], []
    with_pos = 0
    index = ctx.items.index
    for start in range(0, len(points), batch):
        part = points[start:start + batch]
        cand, X = request_features(source, ctx, part, placement, n)
        y = np.zeros(cand.shape, np.int8)
        w = np.ones(cand.shape, np.float32)
        for r, p in enumerate(part):
            for item, g in p.labels.items():
                j = index.get(item)
                if j is not None:
                    y[r][cand.items[r] == j] = g
            for item, position in p.positions.items():
                j = index.get(item)
                if j is not None:
                    hit = cand.items[r] == j
                    w[r][hit] = ipw_weights(np.array([position]), y[r][hit].max(initial=0) > 0, ipw_eta,
                                            ipw_max, np.array([p.shown.get(item, 1.0)]))[0]
        keep = (y * cand.valid).max(axis=1) > 0
        with_pos += int(keep.sum())
        for r in np.flatnonzero(keep):
            v = cand.valid[r]
            Xs.append(X[r][v])
            ys.append(y[r][v])
            ws.append(w[r][v])
            groups.append(int(v.sum()))
            tss.append(part[r].ts)
            shoppers.append(part[r].shopper)
    if not Xs:
        f = len(ctx.spec.sources) * 2
        return RankRows(np.zeros((0, f), np.float32), np.zeros(0, np.int8), np.zeros(0, np.int64),
                        np.zeros(0, np.float32), np.zeros(0), np.zeros(0, object), len(points), 0)
    return RankRows(np.concatenate(Xs), np.concatenate(ys), np.array(groups, np.int64), np.concatenate(ws),
                    np.array(tss), np.array(shoppers, dtype=object), len(points), with_pos)
