"""Bandits: Thompson sampling over candidate items for a share of the slots, a contextual Thompson-sampling bandit
choosing among pipeline variants per (placement, segment), and off-policy evaluation from their logs.

**Item exploration** (``ItemBandit``). A rail of k slots gives ``k × share`` slots (5–10 %, ``bandit.
explore_share``; the fractional part by a coin) to exploration: a Beta–Bernoulli posterior of each item's click
rate in exploration slots (prior ``Beta(a0, b0)``, a pessimistic mean of a few percent), one posterior draw per
request, the best *allowed* candidate not already on the rail wins the slot. ``allowed`` is the caller's mask —
stock, margin floor, merchandising rules — so exploration never shows what the shop forbids. The slot position is
drawn uniformly among the rail's positions; the deterministic items keep their order around it.

``explore_count``, ``explore_positions`` and ``weighted_draw`` are the pieces the new items' exploration slots
(``stages.explore``) share with it: how many slots, where, and a draw with exact propensities.

**Propensities.** The probability that TS picks item i is P(θ_i is the largest draw among the eligible items),
which has no closed form; it is estimated by Monte-Carlo over ``draws`` independent posterior samples, the
first of which *is* the sample that made the choice — so the chosen item's estimate is at least 1/draws (never 0,
IPW weights stay bounded by ``draws``). For a second exploration slot the estimate is conditional on the first
choice (argmax over the remaining items in the same draws). Deterministic slots carry propensity 1.

**Variant bandit** (``VariantBandit``). Arms are an experiment's variants, the context is (placement, segment);
each (context, arm) has a Beta posterior of its reward (a click on the rail within ``reward_window_s``) whose
prior is centred on the arm's rate in the *other* contexts, worth ``prior_weight`` pseudo-observations
(empirical-Bayes shrinkage: a rare segment borrows from the others until it has its own data). Propensities by Monte-Carlo
as above (cheap: a handful of arms).

**State.** Both keep their counts in process and are *rebuilt from the experiment log* (``refresh_from_log``),
which every replica shares: no extra store, no write on the request path, and every replica converges to the same
posterior. A refresh only adds requests older than the reward window (their rewards are final), from a watermark,
so it is incremental.

**Off-policy evaluation** (``evaluate_policy``): inverse propensity scoring ``V̂ = mean(w·r)`` with
``w = π_new(a|x)/p_log(a|x)`` (unbiased; CI from the terms' variance) and the self-normalised estimator
``Σ w r / Σ w`` (biased O(1/n) but far lower variance; CI by the delta method), with the effective sample size
``(Σw)²/Σw²`` and optional weight clipping. ``ipw_weights`` gives the ranker's training weights ``1/p`` (clipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np
from scipy import stats

from shelfwise.ranking import labels


# ---- item exploration ------------------------------------------------------------------------------------------
@dataclass
class ItemBandit:
    """``prior_strength`` > 0: empirical-Bayes prior — Beta centred on the average shown item's smoothed click rate
    (starting from ``prior_alpha / (prior_alpha + prior_beta)``), worth ``prior_strength`` pseudo-impressions; an unseen item then starts at the typical rate instead of an arbitrary guess (a
    too-optimistic prior makes Thompson sampling chase every rarely seen item). 0: the fixed Beta(prior_alpha,
    prior_beta)."""

    prior_alpha: float = 1.0
    prior_beta: float = 30.0
    draws: int = 200
    prior_strength: float = 0.0
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _shown: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _clicked: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _rate_sum: float = field(default=0.0, repr=False)  # Σ smoothed rate over shown items (the prior's centre)
    _n_seen: int = field(default=0, repr=False)

    def _ids(self, items: Sequence[str]) -> np.ndarray:
        idx = self._index
        new = [i for i in dict.fromkeys(items) if i not in idx]
        if new:
            for i in new:
                idx[i] = len(idx)
            grow = len(idx) - len(self._shown)
            self._shown = np.concatenate([self._shown, np.zeros(grow)])
            self._clicked = np.concatenate([self._clicked, np.zeros(grow)])
        return np.fromiter((idx[i] for i in items), np.int64, len(items))

    def _rates(self, ids: np.ndarray) -> np.ndarray:
        a, b = self.prior_alpha, self.prior_beta
        return np.where(self._shown[ids] > 0, (self._clicked[ids] + a) / (self._shown[ids] + a + b), 0.0)

    def update(self, items: Sequence[str], clicked: Sequence[bool] | np.ndarray) -> None:
        """Exploration-slot impressions and whether each was clicked."""
        ids = self._ids(list(items))
        uniq = np.unique(ids)
        before_seen = self._shown[uniq] > 0
        self._rate_sum -= float(self._rates(uniq).sum())
        np.add.at(self._shown, ids, 1.0)
        np.add.at(self._clicked, ids, np.asarray(clicked, float))
        self._rate_sum += float(self._rates(uniq).sum())
        self._n_seen += int((~before_seen).sum())

    def prior(self) -> tuple[float, float]:
        """The Beta prior of an item: centred on the *average item's* smoothed click rate (each shown item counts
        once, so the items exploitation favours do not make unseen items look better than they are)."""
        if self.prior_strength <= 0:
            return self.prior_alpha, self.prior_beta
        if self._n_seen:
            m = self._rate_sum / self._n_seen
        else:
            m = self.prior_alpha / (self.prior_alpha + self.prior_beta)
        return m * self.prior_strength, (1 - m) * self.prior_strength

    def posterior(self, items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = self._ids(list(items))
        a0, b0 = self.prior()
        return a0 + self._clicked[ids], b0 + self._shown[ids] - self._clicked[ids]

    def choose(self, candidates: Sequence[str], allowed: np.ndarray | None, n: int, rng: np.random.Generator,
               exclude: Iterable[str] = (), propensities: bool = True) -> list[tuple[str, float]]:
        """``n`` items by Thompson sampling among the allowed candidates not in ``exclude``, with their estimated
        propensities (conditional on the earlier picks of this call)."""
        cand = list(candidates)
        ok = np.ones(len(cand), bool) if allowed is None else np.asarray(allowed, bool).copy()
        if len(ok) != len(cand):
            raise ValueError("allowed must have one flag per candidate")
        ex = set(exclude)
        if ex:
            ok &= np.array([c not in ex for c in cand])
        if not ok.any() or n <= 0:
            return []
        a, b = self.posterior(cand)
        m = self.draws if propensities else 1
        theta = rng.beta(a, b, size=(m, len(cand)))
        theta[:, ~ok] = -1.0
        out = []
        for _ in range(min(n, int(ok.sum()))):
            winners = theta.argmax(axis=1)
            pick = int(winners[0])  # draw 0 is the Thompson sample that decides
            p = float((winners == pick).mean()) if propensities else float("nan")
            out.append((cand[pick], p))
            theta[:, pick] = -1.0
        return out

    def fill(self, ranked: Sequence[str], candidates: Sequence[str], allowed: np.ndarray | None, k: int,
             share: float, rng: np.random.Generator) -> tuple[list[str], list[float]]:
        """A rail of ``k``: ``ranked`` (the pipeline's order) with about ``k × share`` slots explored.
        Returns (items, per-slot propensities: 1 for deterministic slots)."""
        if not 0 <= share <= 1:
            raise ValueError("share must be in [0, 1]")
        base = list(ranked[:k])
        n_explore = explore_count(k, share, rng)
        picks = self.choose(candidates, allowed, n_explore, rng, exclude=ranked[:k]) if n_explore else []
        if not picks:
            return base, [1.0] * len(base)
        positions = explore_positions(k, len(picks), rng)
        items: list[str] = []
        props: list[float] = []
        rest = iter(base)
        pi = iter(picks)
        for pos in range(k):
            if positions and pos == positions[0]:
                positions.pop(0)
                item, p = next(pi)
                items.append(item)
                props.append(p)
            else:
                nxt = next(rest, None)
                if nxt is None:
                    break
                items.append(nxt)
                props.append(1.0)
        return items, props

    def refresh_from_requests(self, requests: Iterable[Any]) -> int:
        """Add the exploration slots (propensity < 1) of logged requests; returns how many slots were added."""
        items, clicked = [], []
        for r in requests:
            if not r.propensities:
                continue
            hit = set(r.clicks)
            for item, p in zip(r.items, r.propensities):
                if p < 1.0:
                    items.append(item)
                    clicked.append(item in hit)
        if items:
            self.update(items, clicked)
        return len(items)


def explore_count(k: int, share: float, rng: np.random.Generator) -> int:
    """How many of a rail's ``k`` slots explore: ``k × share``, its fractional part by a coin."""
    expected = k * share
    return int(expected) + int(rng.random() < expected - int(expected))


def explore_positions(k: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct positions of a rail of ``k``, uniformly drawn, ascending."""
    return sorted(rng.choice(k, size=n, replace=False).tolist())


def weighted_draw(weights: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, float]]:
    """``n`` distinct indices drawn one after the other with probability proportional to ``weights`` (>= 0; 0
    never drawn), each with its exact propensity: the probability of that draw given the earlier ones, like
    ``ItemBandit.choose``'s (no Monte-Carlo needed: the probabilities are the weights)."""
    w = np.asarray(weights, np.float64).copy()
    out: list[tuple[int, float]] = []
    for _ in range(n):
        total = float(w.sum())
        if total <= 0:
            break
        cum = np.cumsum(w)
        j = min(int(np.searchsorted(cum, rng.random() * total, side="right")), len(w) - 1)
        while w[j] <= 0:  # rounding at the very top of the range
            j -= 1
        out.append((j, float(w[j] / total)))
        w[j] = 0.0
    return out


# ---- contextual bandit over variants -----------------------------------------------------------------------------
@dataclass
class VariantBandit:
    arms: Sequence[str]
    prior_weight: float = 20.0
    draws: int = 1000
    _succ: dict[Hashable, np.ndarray] = field(default_factory=dict, repr=False)
    _fail: dict[Hashable, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.arms = list(self.arms)
        self._pos = {a: i for i, a in enumerate(self.arms)}

    def _row(self, table: dict[Hashable, np.ndarray], context: Hashable) -> np.ndarray:
        row = table.get(context)
        if row is None:
            row = table[context] = np.zeros(len(self.arms))
        return row

    def update(self, context: Hashable, arm: str, reward: float) -> None:
        i = self._pos[arm]
        self._row(self._succ, context)[i] += reward
        self._row(self._fail, context)[i] += 1.0 - reward

    def posterior(self, context: Hashable) -> tuple[np.ndarray, np.ndarray]:
        """Beta posterior per arm in ``context``: its own counts on a prior centred on the *other* contexts'
        pooled rate (leave-one-out, so a context's data is not counted twice), worth ``prior_weight``
        pseudo-observations at most."""
        k = len(self.arms)
        s = self._succ.get(context, np.zeros(k))
        f = self._fail.get(context, np.zeros(k))
        s_other = sum(self._succ.values(), np.zeros(k)) - s
        f_other = sum(self._fail.values(), np.zeros(k)) - f
        n_other = s_other + f_other
        mean = (1.0 + s_other) / (2.0 + n_other)
        weight = np.minimum(self.prior_weight, n_other + 2.0)
        return mean * weight + s, (1 - mean) * weight + f

    def choose(self, context: Hashable, rng: np.random.Generator) -> tuple[str, float]:
        a, b = self.posterior(context)
        theta = rng.beta(a, b, size=(self.draws, len(self.arms)))
        winners = theta.argmax(axis=1)
        pick = int(winners[0])
        return self.arms[pick], float((winners == pick).mean())

    def probabilities(self, context: Hashable, rng: np.random.Generator) -> np.ndarray:
        a, b = self.posterior(context)
        winners = rng.beta(a, b, size=(self.draws, len(self.arms))).argmax(axis=1)
        return np.bincount(winners, minlength=len(self.arms)) / self.draws

    def refresh_from_requests(self, experiment_id: str, requests: Iterable[Any],
                              context: Callable[[Any], Hashable]) -> int:
        n = 0
        for r in requests:
            got = r.experiments.get(experiment_id)
            if got is None or got[0] not in self._pos:
                continue
            self.update(context(r), got[0], 1.0 if r.clicks else 0.0)
            n += 1
        return n


# ---- off-policy evaluation -----------------------------------------------------------------------------------------
def evaluate_policy(rewards: np.ndarray, logged_propensity: np.ndarray, target_propensity: np.ndarray,
                    alpha: float = 0.05, clip: float | None = None) -> dict[str, Any]:
    """IPS and self-normalised IPS estimates of a target policy's mean reward from logged (reward, propensity)
    pairs; ``target_propensity[i]`` = π_new(logged action i | context i)."""
    r = np.asarray(rewards, float)
    p = np.asarray(logged_propensity, float)
    q = np.asarray(target_propensity, float)
    if len(r) == 0:
        raise ValueError("no logged decisions to evaluate")
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("logged propensities must be in (0, 1]")
    w = q / p
    if clip is not None:
        w = np.minimum(w, clip)
    n = len(r)
    z = float(stats.norm.ppf(1 - alpha / 2))
    terms = w * r
    ips = float(terms.mean())
    ips_se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    sw = w.sum()
    snips = float(terms.sum() / sw) if sw > 0 else float("nan")
    if sw > 0 and n > 1:
        resid = w * (r - snips)
        snips_se = float(math.sqrt((resid ** 2).sum()) / sw)
    else:
        snips_se = float("inf")
    return {"n": n, "ips": {"value": ips, "se": ips_se, "ci": [ips - z * ips_se, ips + z * ips_se]},
            "snips": {"value": snips, "se": snips_se, "ci": [snips - z * snips_se, snips + z * snips_se]},
            "effective_sample_size": float(sw ** 2 / (w ** 2).sum()) if sw > 0 else 0.0,
            "max_weight": float(w.max()), "mean_weight": float(w.mean()), "clip": clip}


@dataclass
class LoggedDecision:
    request_id: str
    unit: str | None
    placement: str
    position: int
    item: str
    propensity: float
    clicked: bool


def logged_decisions(requests: Iterable[Any]) -> list[LoggedDecision]:
    """The exploration decisions (slots with propensity < 1) of logged requests, with their rewards: the input of
    ``evaluate_policy`` (reward = clicked, logged propensity) and of IPW training (``ipw_weights``)."""
    out = []
    for r in requests:
        if not r.propensities:
            continue
        hit = set(r.clicks)
        for pos, (item, p) in enumerate(zip(r.items, r.propensities)):
            if p < 1.0:
                out.append(LoggedDecision(r.request_id, r.unit, r.placement, pos, item, float(p), item in hit))
    return out


def ipw_weights(propensities: np.ndarray, clip: float = 20.0) -> np.ndarray:
    """Training weights 1/p for logged exploration slots, clipped at ``clip``: the learned ranker's own weighting
    (``ranking.labels.ipw_weights`` with ``shown``), without its position part."""
    p = np.asarray(propensities, float)
    if np.any(p <= 0):
        raise ValueError("propensities must be > 0")
    return labels.ipw_weights(np.zeros(len(p)), eta=0.0, max_weight=clip, shown=p)


# ---- baselines for the regret benchmark ------------------------------------------------------------------------------
@dataclass
class EpsilonGreedy:
    """ε-greedy baseline: with probability ε a uniform allowed item, else the allowed item with the best estimated
    click rate — the sample mean shrunk by one pseudo-impression towards the pooled rate (so unseen items sit at
    the typical rate, neither chased nor never tried)."""

    epsilon: float = 0.1
    _shown: dict[str, float] = field(default_factory=dict)
    _clicked: dict[str, float] = field(default_factory=dict)
    _total: list[float] = field(default_factory=lambda: [0.0, 0.0])  # shown, clicked

    def choose(self, candidates: Sequence[str], allowed: np.ndarray, rng: np.random.Generator) -> str:
        ok = np.flatnonzero(allowed)
        if rng.random() < self.epsilon:
            return candidates[int(ok[rng.integers(len(ok))])]
        pooled = (self._total[1] + 1.0) / (self._total[0] + 2.0)
        means = np.array([(self._clicked.get(candidates[i], 0.0) + pooled) / (self._shown.get(candidates[i], 0.0) + 1.0)
                          for i in ok])
        return candidates[int(ok[int(means.argmax())])]

    def update(self, item: str, clicked: bool) -> None:
        self._shown[item] = self._shown.get(item, 0.0) + 1
        self._clicked[item] = self._clicked.get(item, 0.0) + float(clicked)
        self._total[0] += 1
        self._total[1] += float(clicked)
