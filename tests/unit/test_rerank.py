"""Re-ranking after the blend: weighted business score, MMR diversity, slot filling and the learned ranker glue."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelfwise.request import RecRequest
from shelfwise.rerank.business import BusinessScorer
from shelfwise.rerank.mmr import Similarity, price_bands
from shelfwise.rerank.slots import CapSpec, Constraints, PinSpec, SlotSpec, fill
from shelfwise.request import Candidates
from shelfwise.retrieval.base import top_k
from shelfwise.stages.base import Batch
from shelfwise.stages.rank import ranked_scores
from shelfwise.settings import BusinessSignals, DiversitySettings, ModelSettings, ScoreWeights, Season
from tests.unit.test_rules_fixtures import NOW, ask, build_pipeline, ids

BASE = ["p0", "p2", "c2", "c0", "p3", "p1", "c3", "c1", "h0", "h1"]


@pytest.fixture(scope="module", params=["exact", "union"])
def built(request, tmp_path_factory):
    """The tiny trained pipeline on each candidate path: every rule and re-ranking test holds on both."""
    pipe, catalog = build_pipeline(tmp_path_factory.mktemp("rerank"))
    if request.param == "union":
        pipe.settings.candidates.dense_max_items = 0
    return pipe, catalog


def configure(pipe, **placement_updates):
    """Change every placement's settings of a pipeline (and drop its cached reranker)."""
    for conf in pipe.settings.placements.values():
        for k, v in placement_updates.items():
            setattr(conf, k, v)
    pipe.catalog_changed()  # cached per placement settings (diversity similarity)


@pytest.fixture
def pipe(built):
    p = built[0]
    yield p
    configure(p, score=ScoreWeights(), diversity=DiversitySettings())
    p.settings.business = BusinessSignals()


def dense_blend(pipe, req):
    """The reference: every source scoring the whole catalog, each row divided by its max, weighted, summed, and
    the request's exclusions masked."""
    batch = Batch(req.placement, pipe.placement(req.placement), [req], req.k)
    pipe.stage("resolve").run(batch)
    total = np.zeros(len(pipe.items), np.float32)
    for name, w in batch.conf.weights.items():
        if w and name in pipe.retrievers:
            s = pipe.retrievers[name].score(batch.queries)[0]
            total += w * (s / s.max() if s.max() > 0 else 0 * s)
    total[batch.exclusions.dense()[0]] = -np.inf
    return total[None, :]


def test_defaults_are_exactly_the_blend_ranking(pipe):
    assert pipe.ranker is None  # the tiny log has too few labelled requests (ranker.min_requests) to train one
    reqs = [RecRequest(pl, shopper=s, item_id="p1", cart=["p2"], k=8, now=NOW)
            for pl in ("homepage", "pdp_similar", "pdp_fbt", "cart_upsell") for s in (None, "u3", "u8")]
    got = pipe.recommend(reqs)
    for req, ans in zip(reqs, got):
        t, s = top_k(dense_blend(pipe, req), 8)
        want = [str(pipe.items.ids[j]) for j, x in zip(t[0], s[0]) if np.isfinite(x)]
        assert ids(ans) == want
        # float32 sums of a batch and of a single query may differ in the last bits
        assert [r.score for r in ans.items] == pytest.approx([float(x) for x in s[0][: len(want)]], abs=1e-6)


def test_margin_weight_promotes_high_margin_items_and_relevance_only_restores(pipe):
    configure(pipe, score=ScoreWeights(relevance=1.0, margin=0.5))
    got = ids(ask(pipe))
    assert got[:3] == ["p0", "c2", "c0"]  # cases (70% margin) overtake the phones p2, p3, p1 (10%)
    assert got.index("c3") < got.index("p3") and got.index("h0") < got.index("p1")
    a = ask(pipe, explain=True, k=3)
    parts = a.items[1].explanation["components"]  # c2: 70% margin
    assert parts["margin"] == pytest.approx(0.35) and set(parts) == {"relevance", "margin"}
    assert a.items[1].score == pytest.approx(sum(parts.values()), abs=1e-5)
    configure(pipe, score=ScoreWeights(relevance=1.0))
    assert ids(ask(pipe)) == BASE


def test_relevance_stays_dominant_with_small_business_weights(pipe):
    configure(pipe, score=ScoreWeights(relevance=1.0, trend=0.02, margin=0.02, stock=0.01, freshness=0.01))
    got = ids(ask(pipe, shopper="u1"))
    configure(pipe, score=ScoreWeights())
    base = ids(ask(pipe, shopper="u1"))
    assert got[:2] == base[:2] and set(got[:4]) == set(base[:4])  # strong evidence keeps its place; near-ties move


def test_business_signals(built):
    pipe, _ = built
    items = pipe.items
    b = BusinessScorer(items, BusinessSignals(stock_reference=50, freshness_half_life_days=10), trend=None)
    i = items.index
    assert b.margin()[i["c0"]] == pytest.approx(0.7)
    assert b.margin()[i["h1"]] == pytest.approx(np.nanmedian(items.margin))  # unknown → median
    assert b.stock()[i["c0"]] == pytest.approx(1.0) and b.stock()[i["p0"]] == pytest.approx(np.log1p(10) / np.log1p(50))
    fresh = b.freshness(NOW)
    assert fresh[i["c0"]] == pytest.approx(0.5 ** 0.3, abs=0.03) and fresh[i["p0"]] < 0.01
    seasons = BusinessSignals(seasons=[Season(name="xmas", start="12-01", end="01-06", categories=["Accessories"]),
                                       Season(start="06-01", end="06-30", tags=["rugged"])])
    b = BusinessScorer(items, seasons, tags=lambda: [frozenset(["rugged"]) if x in ("c0", "c3") else frozenset()
                                                        for x in items.ids])
    dec = datetime(2026, 12, 24, tzinfo=timezone.utc).timestamp()
    jan = datetime(2027, 1, 3, tzinfo=timezone.utc).timestamp()
    june = datetime(2026, 6, 10, tzinfo=timezone.utc).timestamp()
    acc = np.array([str(x)[0] in "ch" for x in items.ids])
    assert (b.seasonality(dec) == acc).all() and (b.seasonality(jan) == acc).all()
    assert sorted(str(x) for x in items.ids[b.seasonality(june) > 0]) == ["c0", "c3"]
    assert b.seasonality(datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()).sum() == 0


def test_similarity_and_price_bands():
    bands = price_bands(np.array([11.0, 12.0, 30.0, np.nan]), 1.6)
    assert bands[0] == bands[1] != bands[2] and bands[3] == -1
    vec = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    sim = Similarity(np.array([0, 0, 1, 1]), np.array([5, 6, 5, -1]), vec / np.linalg.norm(vec, axis=1)[:, None],
                     w_category=0.5, w_band=0.2, w_embedding=0.3)
    m = sim.between(np.arange(4), np.arange(4))
    assert m[0, 1] == pytest.approx(0.5 + 0.3) and m[0, 2] == pytest.approx(0.2)
    assert m[0, 0] == pytest.approx(1.0) and m[3, 3] == pytest.approx(0.5 + 0.3)  # unknown band never matches
    no_vec = Similarity(np.array([0, 0]), np.array([1, 1]), None, 0.5, 0.2, 0.3)
    assert no_vec.between(np.array([0]), np.array([1]))[0, 0] == pytest.approx(1.0)  # weights renormalised


def test_mmr_diversifies_and_explains_the_penalty(pipe):
    base = ids(ask(pipe, shopper="u1", k=6))
    configure(pipe, diversity=DiversitySettings(mmr_lambda=0.3, category=1.0, price_band=0.0, embedding=0.0))
    a = ask(pipe, shopper="u1", k=6, explain=True)
    got = ids(a)
    assert got[0] == base[0] and got != base
    cats = [g[0] for g in got]
    assert cats[:2] == ["p", "c"]  # the second slot goes to another category
    pen = [r.explanation["diversity_penalty"] for r in a.items]
    assert pen[0] == 0 and all(p >= 0 for p in pen)
    assert a.explanation["mmr_lambda"] == 0.3 and "diversity" in a.items[1].explanation["reason"]
    configure(pipe, diversity=DiversitySettings(mmr_lambda=1.0))
    assert ids(ask(pipe, shopper="u1", k=6)) == base


def test_fill_with_pins_caps_and_diversity_on_a_plain_row():
    row = np.array([9, 8, 7, 6, 5, 4], np.float32)
    cat = np.array([0, 0, 0, 1, 1, 2], np.int32)
    c = Constraints(pins=[PinSpec("r/pin", np.array([5]), 0, 0, 0)], caps=[CapSpec("r/cap", cat, 1, None, True)])
    placed, notes = fill(row, 4, c)
    assert [p.item for p in placed] == [5, 0, 3]  # pinned 5 (cat 2), then one of cat 0 and one of cat 1; strict
    assert [p.reason for p in placed] == ["pinned", "ranked", "ranked"]
    sim = Similarity(cat, np.full(6, -1), None, 1.0, 0.0, 0.0)
    placed, _ = fill(row, 3, None, sim=sim, lam=0.5)
    assert [p.item for p in placed] == [0, 3, 5]
    placed, _ = fill(np.array([1, -np.inf, 2], np.float32), 5)
    assert [p.item for p in placed] == [2, 0]  # a short rail, never an excluded item


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(5, 260), k=st.integers(2, 12), pool=st.sampled_from([3, 8, 100]),
       lam=st.floats(0.05, 0.95), n_slots=st.integers(0, 3), pin=st.booleans())
def test_every_diverse_pick_is_the_best_mmr_value_of_its_pool(seed, n, k, pool, lam, n_slots, pin):
    """Each slot a diverse fill takes (ranked, or a reserved slot's) has the highest MMR value of the pool it was
    picked from, recomputed here from scratch against every item placed above it; its penalty is that item's."""
    rng = np.random.default_rng(seed)
    row = rng.normal(size=n).astype(np.float32)
    row[rng.random(n) < 0.1] = -np.inf
    cat, band = rng.integers(-1, 4, n), rng.integers(-1, 3, n)
    vec = rng.normal(size=(n, 5)).astype(np.float32)
    sim = Similarity(cat, band, vec / np.linalg.norm(vec, axis=1)[:, None], 0.5, 0.2, 0.3)
    slots = [SlotSpec(f"r/slot{s}", rng.random(n) < rng.uniform(0.05, 0.6), int(rng.integers(0, k)), 1 + s % 2, s, s)
             for s in range(n_slots)]
    pins = [PinSpec("r/pin", np.flatnonzero(np.isfinite(row))[:1], int(rng.integers(0, k)), 9, 9)] if pin else []
    placed, _ = fill(row, k, Constraints(pins=pins, slots=slots), sim=sim, lam=lam, pool=pool)
    size = max(pool, 4 * k)
    finite = np.flatnonzero(np.isfinite(row))
    top = finite[np.lexsort((finite, -row[finite]))]  # best first, ties to the lower index
    lo, hi = (float(row[top[:size]].min()), float(row[top[:size]].max())) if len(top) else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    pinned = {p.item for p in placed if p.reason == "pinned"}

    def pool_of(mask: np.ndarray | None, taken: set[int]) -> np.ndarray:
        """The candidates a pick chose among: the best `size` items (a reserved slot's: the matching ones among
        the organic pool's, else the best `size` matching), grown fourfold (at least 64) while all are taken."""
        reach = top if mask is None else top[mask[top]]
        start = top[:size] if mask is None else top[:size][mask[top[:size]]]
        got, grown = (start, size if mask is None else 0) if len(start) else (reach[:size], size)
        while all(int(x) in taken for x in got) and len(got) < len(reach):
            grown = max(grown * 4, len(got) + 1, 64)
            got = reach[:grown]
        return np.array([x for x in got if int(x) not in taken], np.int64)

    above: list[int] = []
    for p in placed:
        if p.reason != "pinned" and above:
            masks = [sl.mask for sl in slots if p.reason == "reserved" and sl.mask[p.item]] or [None]
            best = []
            for mask in masks:
                cands = pool_of(mask, set(above) | pinned)
                value = lam * (row[cands] - lo) / span - (1 - lam) * sim.between(cands, np.array(above)).max(axis=1)
                best.append(value.max())
            own_sim = sim.between(np.array([p.item]), np.array(above)).max()
            assert lam * (row[p.item] - lo) / span - (1 - lam) * own_sim >= min(best) - 1e-5
            assert p.penalty == pytest.approx((1 - lam) * own_sim, abs=1e-5)
        above.append(p.item)


def test_ranked_scores_keep_the_rankers_order_then_the_blend():
    blend = np.array([[5, 4, 3, 2, 1, 0.5, 0]], np.float32)
    items = np.array([[10, 11, 12, 13, 14, 15, -1]])
    cand = Candidates(items, {}, blend, np.where(items >= 0, blend, -np.inf))
    final = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)  # the ranker reverses the blend's top 4
    rows = ranked_scores(cand, 4, final)
    order = [int(items[0, j]) for j in np.argsort(-rows[0], kind="stable") if np.isfinite(rows[0][j])]
    assert order == [13, 12, 11, 10, 14, 15] and not np.isfinite(rows[0][6])
    assert rows[0, 4] < final.min() - 1 + 1e-6 and rows[0, 4] > rows[0, 5]


# ---- the rerank body's one-pass validation and the answer's slots (the hot path of POST /v1/rerank) -------------
def _outcome(validate, payload):
    from pydantic import ValidationError

    try:
        return validate(payload).model_dump()
    except ValidationError as exc:
        return [(e["loc"], e["msg"]) for e in exc.errors()]


@pytest.mark.parametrize("payload", [
    {"items": [f"i{n}" for n in range(200)], "user_id": "u1", "query": "case", "personalization_impact": 0.5},
    {"items": ["p0"]},
    {"items": [f"x{n}" for n in range(1000)], "k": 3},
    {"items": []},
    {"items": [f"x{n}" for n in range(1001)]},
    {"items": ["p0", "p1", "p0"]},
    {"items": ["p0", ""]},
    {"items": ["p0", "x" * 257]},
    {"items": ["p0", "x" * 256]},
    {"items": ["p0", "a\x00b"]},
    {"items": ["p0", "\ud800"]},
    {"items": ["p0", 7]},
    {"items": "p0"},
    {"items": ["p0"], "personalization_impact": 1.5},
    {"items": ["p0"], "user_id": "u1", "session_id": "s1"},
    {"items": ["p0"], "colour": "x"},
    {"user_id": "u1"},
    ["p0"],
    None,
])
def test_rerank_body_one_pass_validation_is_the_models(payload):
    """``RerankRequest.from_payload`` (plain checks of the id list, the model for the rest) accepts and refuses
    exactly what ``model_validate`` does, with the same errors."""
    from shelfwise.api.models import RerankRequest

    assert _outcome(RerankRequest.from_payload, payload) == _outcome(RerankRequest.model_validate, payload)


def test_answer_slots_name_their_sources_reason_and_fallback():
    """``SlotStage._slots`` (one source list per distinct pattern of contributions): strongest source first, only
    positive contributions, evidence vs fallback sources, stated preferences, and a rule's slot keeps its reason."""
    from shelfwise.rerank.slots import Placed
    from shelfwise.stages.slots import SlotStage

    class Table:
        ids = np.array(["a", "b", "c", "d", "e"], dtype=object)

    stage = SlotStage.__new__(SlotStage)
    stage.items, stage.fallbacks = Table(), {"trending": "popular", "cohort": "cohort"}
    names = ["als", "trending", "cohort"]
    contrib = np.array([[0.5, 0.9, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0], [0.2, 0.2, -1]],
                       np.float32)
    items = np.array([4, 3, 2, 1, 0])  # candidate column -> item index
    slate = [Placed(0, 1.0, "ranked"), Placed(1, 0.9, "ranked"), Placed(2, 0.8, "ranked"), Placed(3, 0.7, "ranked"),
             Placed(4, 0.6, "pinned", "r1")]
    stated = np.array([0, 0, 0, 1, 0], np.float32)  # item "d" (column 1) matches the stated preferences
    recs = stage._slots(slate, items, contrib, names, stated)
    got = [(r.item_id, r.sources, r.reason, r.fallback) for r in recs]
    assert got == [("e", ["trending", "als"], "evidence", False),
                   ("d", ["trending", "preferences"], "preference", False),
                   ("c", ["cohort"], "cohort", True),
                   ("b", ["fallback"], "popular", True),
                   ("a", ["als", "trending"], "pinned", False)]
    assert recs[0].sources is not recs[4].sources  # each slot its own list
