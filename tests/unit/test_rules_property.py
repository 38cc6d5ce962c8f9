"""Property: whatever else a rule set says (pins, slots, boosts, caps, filters, other rule sets, shadows), a blocked
item never appears in any placement, with any business weights and diversity setting."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from shelfwise.request import RecRequest
from shelfwise.assemble import assemble
from shelfwise.rules import RulesStage, StaticRules
from shelfwise.settings import DiversitySettings, ModelSettings, ScoreWeights
from tests.unit.test_rules_fixtures import NOW, build_pipeline, rich_catalog

CATALOG = {it.id: it for it in rich_catalog()}
ITEMS = sorted(CATALOG)
CATEGORIES = ["Phones", "Phones > Smartphones", "Accessories", "Accessories > Phone Cases", "Accessories > Chargers"]
BRANDS = ["Nova", "Shield", "Volt"]
PLACEMENTS = ["homepage", "pdp_similar", "pdp_fbt", "cart_upsell"]
DEVICES = [None, "mobile", "desktop"]


def _settings(diverse: bool, business: bool) -> ModelSettings:
    ms = ModelSettings()
    for conf in ms.placements.values():
        if diverse:
            conf.diversity = DiversitySettings(mmr_lambda=0.5)
        if business:
            conf.score = ScoreWeights(relevance=1.0, trend=0.2, margin=0.3, stock=0.1, freshness=0.1)
    return ms


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    out = {}
    for diverse in (False, True):
        for business in (False, True):
            out[(diverse, business)] = build_pipeline(tmp_path_factory.mktemp("prop"), _settings(diverse, business))[0]
    return out


matches = st.one_of(
    st.builds(lambda x: {"ids": x}, st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3, unique=True)),
    st.builds(lambda x: {"categories": x}, st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2, unique=True)),
    st.builds(lambda x: {"brands": x}, st.lists(st.sampled_from(BRANDS), min_size=1, max_size=2, unique=True)),
)
whens = st.one_of(st.none(), st.builds(lambda p: {"placements": p},
                                       st.lists(st.sampled_from(PLACEMENTS), min_size=1, max_size=2, unique=True)),
                  st.just({"devices": ["mobile"]}))
others = st.one_of(
    st.builds(lambda items, slot: {"action": {"type": "pin", "items": items, "slot": slot}},
              st.lists(st.sampled_from(ITEMS), min_size=1, max_size=3, unique=True), st.integers(1, 6)),
    st.builds(lambda m, f: {"action": {"type": "boost", "multiply": f}, "match": m}, matches, st.floats(1.1, 50)),
    st.builds(lambda m, a: {"action": {"type": "boost", "add": a}, "match": m}, matches, st.floats(0.01, 5)),
    st.builds(lambda m, pos, n: {"action": {"type": "slot", "position": pos, "count": n}, "match": m},
              matches, st.integers(1, 6), st.integers(1, 3)),
    st.builds(lambda by, n: {"action": {"type": "cap", "by": by, "max": n}},
              st.sampled_from(["category", "top_category", "brand"]), st.integers(1, 3)),
    st.builds(lambda m: {"action": {"type": "filter"}, "match": m}, matches),
    st.builds(lambda v: {"action": {"type": "margin_floor", "min_margin": v}}, st.floats(0, 0.8)),
)


def _blocked(match: dict) -> set[str]:
    out = set()
    for iid, it in CATALOG.items():
        path = " > ".join(it.category)
        if ("ids" in match and iid in match["ids"]) or ("brands" in match and it.brand in match["brands"]) or \
                ("categories" in match and any(path == c or path.startswith(c + " > ") for c in match["categories"])):
            out.add(iid)
    return out


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(st.tuples(matches, whens), min_size=1, max_size=3),
       rest=st.lists(st.tuples(others, st.integers(-5, 5), whens), max_size=6),
       priorities=st.lists(st.integers(-10, 10), min_size=3, max_size=3),
       placement=st.sampled_from(PLACEMENTS), shopper=st.sampled_from([None, "u1", "u6", "u13", "nobody"]),
       device=st.sampled_from(DEVICES), k=st.integers(1, 10), variant=st.tuples(st.booleans(), st.booleans()),
       split=st.booleans())
def test_a_blocked_item_never_appears(pipes, blocks, rest, priorities, placement, shopper, device, k, variant, split):
    pipe = pipes[variant]
    rules, forbidden = [], set()
    for i, (match, when) in enumerate(blocks):
        r = {"id": f"block{i}", "priority": priorities[i % 3], "action": {"type": "block"}, "match": match}
        if when:
            r["when"] = when
        rules.append(r)
        applies = when is None or (placement in when.get("placements", [placement])
                                   and device in when.get("devices", [device]))
        if applies:
            forbidden |= _blocked(match)
    for i, (other, prio, when) in enumerate(rest):
        rules.append({"id": f"r{i}", "priority": prio, **other, **({"when": when} if when else {})})
    # the blocks may live in another rule set than the pins, and a shadow draft may pin them: still never served
    live = {"a": {"rules": rules}} if not split else {"a": {"rules": rules[len(blocks):]},
                                                      "b": {"rules": rules[:len(blocks)]}}
    shadow = {"a": ({"rules": [{"id": "s", "action": {"type": "pin", "items": sorted(forbidden) or ["p0"],
                                                        "slot": 1}, "priority": 99}]}, 1.0)}
    ruled = assemble(pipe.model, RulesStage(StaticRules(live, shadow), CATALOG))
    req = RecRequest(placement, shopper=shopper, item_id="p1" if placement.startswith("pdp") else None,
                     cart=["p2"] if placement == "cart_upsell" else (), k=k, now=NOW, device=device,
                     request_id="r1")
    got = [r.item_id for r in ruled.recommend([req])[0].items]
    assert not forbidden & set(got), (forbidden, got)
    assert len(got) == len(set(got)) <= k
