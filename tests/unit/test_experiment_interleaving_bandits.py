"""Team-draft interleaving and its analysis; Thompson-sampling item exploration (allowed mask, propensities that
match the actual choice frequencies, learning); the contextual variant bandit; off-policy evaluation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from scipy import stats

from shelfwise.experiments.bandits import (EpsilonGreedy, ItemBandit, VariantBandit, evaluate_policy, ipw_weights,
                                          logged_decisions)
from shelfwise.experiments.interleaving import analyze_interleaving, credit, outcomes_from_requests, team_draft
from shelfwise.experiments.log import LoggedRequest

rankings = st.lists(st.sampled_from("abcdefghijklmnop"), min_size=0, max_size=12, unique=True)


@hsettings(max_examples=200, deadline=None)
@given(a=rankings, b=rankings, k=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_team_draft_properties(a, b, k, seed):
    items, teams = team_draft(a, b, k, seed)
    assert len(items) == len(set(items)) == min(k, len(set(a) | set(b)))
    assert set(items) <= set(a) | set(b)
    na = nb = 0
    for item, team in zip(items, teams):
        na += team == "a"
        nb += team == "b"
        assert item in (a if team == "a" else b)
        if set(a) - set(items) and set(b) - set(items):
            assert abs(na - nb) <= 1  # balanced while both rankings still have unseen items
    for team, ranking in (("a", a), ("b", b)):
        picked = [i for i, t in zip(items, teams) if t == team]
        assert picked == sorted(picked, key=ranking.index)  # a team's items keep its ranker's order
    assert team_draft(a, b, k, seed) == (items, teams)  # reproducible


def test_team_draft_is_fair_on_identical_rankings():
    first = Counter(team_draft(list("abcdef"), list("abcdef"), 6, f"req-{i}")[1][0] for i in range(4000))
    assert abs(first["a"] - 2000) < 150


def test_credit_and_analysis():
    assert credit(["a", "b", "a"], ["x", "y", "z"], ["y", "z", "z", "q"]) == (2, 1)
    # B is clearly better: its items get clicked 60 % of decided impressions
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(3000):
        r = rng.random()
        outcomes.append((f"u{i % 800}", 1 if 0.4 <= r < 0.6 else 0, 1 if r < 0.3 else 0))
    by_imp = analyze_interleaving(outcomes, by="impression")
    assert by_imp.impressions == 3000 and by_imp.winner == "b" and by_imp.p_value < 1e-6
    assert by_imp.p_value == pytest.approx(stats.binomtest(by_imp.wins_b, by_imp.wins_a + by_imp.wins_b).pvalue)
    assert by_imp.b_share_ci[0] < by_imp.b_share < by_imp.b_share_ci[1]
    by_unit = analyze_interleaving(outcomes, by="unit")
    assert by_unit.impressions == 800 and by_unit.winner == "b"
    null = analyze_interleaving([(i, int(rng.random() < 0.2), int(rng.random() < 0.2)) for i in range(2000)])
    assert null.p_value > 0.01
    reqs = [LoggedRequest("r1", 0, "homepage", "u1", "s", ["x", "y"], None, ["a", "b"], clicks=["y"]),
            LoggedRequest("r2", 0, "homepage", "u2", "s", ["x"], None, None, clicks=["x"])]
    assert outcomes_from_requests(reqs) == [("u1", 0, 1)]
    with pytest.raises(ValueError):
        analyze_interleaving([], by="day")


def test_item_bandit_respects_the_allowed_mask_and_the_rail():
    bandit = ItemBandit(draws=100)
    rng = np.random.default_rng(1)
    cands = [f"i{j}" for j in range(30)]
    for _ in range(300):
        allowed = rng.random(30) < 0.5
        picks = bandit.choose(cands, allowed, 3, rng, exclude=["i0", "i1"])
        for item, p in picks:
            j = cands.index(item)
            assert allowed[j] and item not in ("i0", "i1") and 0 < p <= 1
        assert len({i for i, _ in picks}) == len(picks)
    assert bandit.choose(cands, np.zeros(30, bool), 2, rng) == []
    with pytest.raises(ValueError, match="one flag per candidate"):
        bandit.choose(cands, np.ones(3, bool), 1, rng)


def test_item_bandit_propensities_match_choice_frequencies():
    bandit = ItemBandit(draws=400)
    cands = [f"i{j}" for j in range(6)]
    bandit.update(cands * 50, [j % 6 < 2 and (k % 3 == 0) for k, j in enumerate(range(300))])  # uneven posteriors
    rng = np.random.default_rng(2)
    chosen, estimates = Counter(), {c: [] for c in cands}
    for _ in range(3000):
        (item, p), = bandit.choose(cands, None, 1, rng)
        chosen[item] += 1
        estimates[item].append(p)
    for c in cands:
        if chosen[c] > 100:
            assert np.mean(estimates[c]) == pytest.approx(chosen[c] / 3000, abs=0.04)


def test_item_bandit_fill_and_learning():
    bandit = ItemBandit(draws=50)
    rng = np.random.default_rng(3)
    ranked = [f"r{j}" for j in range(12)]
    cands = [f"c{j}" for j in range(20)]
    explored = 0
    for _ in range(2000):
        items, props = bandit.fill(ranked, cands, None, 12, 0.08, rng)
        assert len(items) == 12 and len(set(items)) == 12
        det = [i for i, p in zip(items, props) if p == 1.0]
        assert det == ranked[: len(det)]  # the pipeline's order around the explored slots
        explored += sum(p < 1.0 for p in props)
    assert explored / 2000 == pytest.approx(12 * 0.08, abs=0.06)
    true = {c: 0.02 + 0.1 * (c == "c7") for c in cands}
    for _ in range(4000):
        (item, _), = bandit.choose(cands, None, 1, rng, propensities=False)
        bandit.update([item], [rng.random() < true[item]])
    late = Counter(bandit.choose(cands, None, 1, rng, propensities=False)[0][0] for _ in range(500))
    assert late.most_common(1)[0][0] == "c7" and late["c7"] > 300


def test_item_bandit_refreshes_from_logged_requests():
    bandit = ItemBandit()
    reqs = [LoggedRequest("r1", 0, "homepage", "u", "s", ["a", "b", "c"], [1.0, 0.2, 1.0], None, clicks=["b"]),
            LoggedRequest("r2", 0, "homepage", "u", "s", ["a", "d"], [1.0, 0.5], None, clicks=["a"]),
            LoggedRequest("r3", 0, "homepage", "u", "s", ["a"], None, None, clicks=["a"])]
    assert bandit.refresh_from_requests(reqs) == 2
    got = [(d.request_id, d.position, d.item, d.propensity, d.clicked) for d in logged_decisions(reqs)]
    assert got == [("r1", 1, "b", 0.2, True), ("r2", 1, "d", 0.5, False)]
    a, b = bandit.posterior(["b", "d", "a"])
    assert a.tolist() == [2.0, 1.0, 1.0] and b.tolist() == [30.0, 31.0, 30.0]


def test_variant_bandit_learns_per_context_with_shrinkage():
    vb = VariantBandit(["control", "fast", "wide"], draws=200)
    rng = np.random.default_rng(4)
    rate = {("home", "vip"): {"control": 0.1, "fast": 0.1, "wide": 0.3},
            ("home", "-"): {"control": 0.1, "fast": 0.25, "wide": 0.1}}
    picks = Counter()
    for t in range(6000):
        ctx = ("home", "vip") if t % 3 == 0 else ("home", "-")
        arm, p = vb.choose(ctx, rng)
        assert 0 < p <= 1
        vb.update(ctx, arm, float(rng.random() < rate[ctx][arm]))
        if t > 4000:
            picks[(ctx, arm)] += 1
    assert picks[(("home", "vip"), "wide")] > 0.8 * sum(v for (c, _), v in picks.items() if c == ("home", "vip"))
    assert picks[(("home", "-"), "fast")] > 0.8 * sum(v for (c, _), v in picks.items() if c == ("home", "-"))
    probs = vb.probabilities(("pdp", "-"), rng)  # unseen context: borrows the pooled posterior
    assert probs.sum() == pytest.approx(1.0) and probs[0] < probs.max()
    reqs = [LoggedRequest("r", 0, "home", "u", "s", ["x"], None, None, {"exp": ("wide", 0.4)}, clicks=["x"])]
    assert vb.refresh_from_requests("exp", reqs, lambda r: (r.placement, "-")) == 1


def test_off_policy_evaluation_recovers_a_new_policys_value():
    rng = np.random.default_rng(5)
    k, n = 5, 40_000
    true = np.array([0.05, 0.10, 0.02, 0.20, 0.08])
    logging = np.array([0.4, 0.2, 0.2, 0.1, 0.1])
    actions = rng.choice(k, n, p=logging)
    rewards = (rng.random(n) < true[actions]).astype(float)
    target = np.array([0.0, 0.2, 0.0, 0.8, 0.0])  # mostly the best arm
    got = evaluate_policy(rewards, logging[actions], target[actions])
    value = float(target @ true)
    for est in ("ips", "snips"):
        lo, hi = got[est]["ci"]
        assert lo < value < hi
    assert got["effective_sample_size"] < n and got["max_weight"] == pytest.approx(8.0)
    clipped = evaluate_policy(rewards, logging[actions], target[actions], clip=2.0)
    assert clipped["max_weight"] == 2.0
    with pytest.raises(ValueError, match="propensities must be in"):
        evaluate_policy(rewards[:2], np.array([0.0, 0.5]), np.array([1.0, 1.0]))
    assert ipw_weights(np.array([0.5, 0.01]), clip=20).tolist() == [2.0, 20.0]


def test_epsilon_greedy_baseline_explores_and_exploits():
    eg = EpsilonGreedy(0.1)
    rng = np.random.default_rng(6)
    cands = ["a", "b", "c"]
    for _ in range(3000):
        item = eg.choose(cands, np.ones(3, bool), rng)
        eg.update(item, rng.random() < {"a": 0.05, "b": 0.3, "c": 0.1}[item])
    picks = Counter(eg.choose(cands, np.ones(3, bool), rng) for _ in range(1000))
    assert 0.85 < picks["b"] / 1000 < 0.99
    assert eg.choose(cands, np.array([True, False, False]), rng) == "a"
