"""Each action and condition on a tiny trained pipeline, conflicts between rules, campaign windows, explanations.

Anonymous homepage baseline (trending): p0 p2 c2 c0 p3 p1 c3 c1 h0 h1.
Margins: cases c* 0.70, chargers h0 0.67 (h1 unknown), phones p* ~0.10.
"""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from shelfwise.request import RecRequest
from shelfwise.rules import CompiledRules, ItemFacts, parse_ruleset
from tests.unit.test_rules_fixtures import NOW, ask, build_pipeline, ids, rule, with_rules

BASE = ["p0", "p2", "c2", "c0", "p3", "p1", "c3", "c1", "h0", "h1"]


@pytest.fixture(scope="module", params=["exact", "union"])
def built(request, tmp_path_factory):
    """The tiny trained pipeline on each candidate path: every rule and re-ranking test holds on both."""
    pipe, catalog = build_pipeline(tmp_path_factory.mktemp("rules"))
    if request.param == "union":
        pipe.settings.candidates.dense_max_items = 0
    return pipe, catalog


@pytest.fixture
def pipe(built):
    return built[0]


def run(built, rules, placement="homepage", **kw):
    p, cat = built
    return ask(with_rules(p, cat, {"rules": rules}), placement, **kw)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def test_baseline_and_no_rules_change_nothing(built, pipe):
    assert ids(ask(pipe)) == BASE
    assert ids(ask(with_rules(pipe, built[1], {"rules": []}))) == BASE
    assert ids(ask(with_rules(pipe, built[1], None))) == BASE  # no rule set at all


# ---- actions ------------------------------------------------------------------------------------------
def test_pin_puts_items_at_their_slot_in_order(built):
    got = ids(run(built, [rule("p", {"type": "pin", "items": ["h1", "h0"], "slot": 2})]))
    assert got[:4] == ["p0", "h1", "h0", "p2"] and len(got) == 10 and len(set(got)) == 10


def test_pin_skips_unknown_and_unservable_items_and_slots_beyond_k(built):
    p, cat = built
    p.items.update(cat["h0"].model_copy(update={"stock": 0}))  # out of stock
    try:
        a = run(built, [rule("p", {"type": "pin", "items": ["ghost", "h0", "h1"], "slot": 1})], explain=True)
        assert ids(a)[0] == "h1" and "h0" not in ids(a)
        notes = a.explanation["conflicts"]
        assert "pin test/p: item 'h0' not shown: out of stock" in notes
        assert any(c.startswith("pin test/p: item 'ghost' not shown: unknown to the model") for c in notes)
    finally:
        p.items.update(cat["h0"])
    got = ids(run(built, [rule("p", {"type": "pin", "items": ["h1"], "slot": 9})], k=5))
    assert "h1" not in got and len(got) == 5


def test_pin_never_shows_what_the_request_excludes(built):
    got = ids(run(built, [rule("p", {"type": "pin", "items": ["p1"], "slot": 1})], "pdp_similar", item_id="p1"))
    assert "p1" not in got


def test_boost_multiply_and_add_and_bury(built):
    got = ids(run(built, [rule("b", {"type": "boost", "multiply": 100}, {"ids": ["c1"]})]))
    assert got[0] == "c1"
    got = ids(run(built, [rule("b", {"type": "boost", "add": 1.0}, {"categories": ["Accessories > Chargers"]})]))
    assert got[:2] == ["h0", "h1"]
    got = ids(run(built, [rule("b", {"type": "bury", "multiply": 0.01}, {"ids": ["p0"]})]))
    assert got[0] == "p2" and got.index("p0") > 3
    got = ids(run(built, [rule("b", {"type": "bury", "subtract": 1.0}, {"brands": ["Nova"]})]))
    assert got[-4:] == ["p0", "p2", "p3", "p1"]  # phones last, in their old order


def test_block_by_ids_categories_and_brands(built):
    assert "c2" not in ids(run(built, [rule("b", {"type": "block"}, {"ids": ["c2"]})]))
    got = ids(run(built, [rule("b", {"type": "block"}, {"categories": ["Accessories"]})]))
    assert got == ["p0", "p2", "p3", "p1"]
    got = ids(run(built, [rule("b", {"type": "block"}, {"brands": ["Nova", "Volt"]})]))
    assert sorted(got) == ["c0", "c1", "c2", "c3"]


def test_filter_keeps_only_matching_items(built):
    got = ids(run(built, [rule("f", {"type": "filter"}, {"categories": ["Accessories > Phone Cases"]})]))
    assert got == ["c2", "c0", "c3", "c1"]
    got = ids(run(built, [rule("f", {"type": "filter"}, {"price": {"max": 25}})]))
    assert got == ["c2", "c0", "c3", "c1"]


def test_margin_floor_drop_bury_and_unknown(built):
    got = ids(run(built, [rule("m", {"type": "margin_floor", "min_margin": 0.5})]))
    assert got == ["c2", "c0", "c3", "c1", "h0", "h1"]  # phones (10%) dropped; h1 (unknown) kept
    got = ids(run(built, [rule("m", {"type": "margin_floor", "min_margin": 0.5, "unknown": "drop"})]))
    assert "h1" not in got
    got = ids(run(built, [rule("m", {"type": "margin_floor", "min_margin": 0.5, "mode": "bury", "multiply": 0.01})]))
    assert got[:2] == ["c2", "c0"] and len(got) == 10
    got = ids(run(built, [rule("m", {"type": "margin_floor", "min_margin": 0.5}, {"brands": ["Nova"]}, )]))
    assert "p0" not in got and "h0" in got  # the floor only applies to the matched items


def test_cap_per_category_brand_and_strictness(built):
    got = ids(run(built, [rule("c", {"type": "cap", "by": "top_category", "max": 1})], k=4))
    assert got[:2] == ["p0", "c2"]  # one phone, one accessory, then the cap gives way to fill the rail
    assert len(got) == 4
    got = ids(run(built, [rule("c", {"type": "cap", "by": "top_category", "max": 1, "strict": True})], k=4))
    assert got == ["p0", "c2"]
    got = ids(run(built, [rule("c", {"type": "cap", "by": "brand", "max": 2}, {"brands": ["Nova"]})], k=6))
    assert sum(g.startswith("p") for g in got) == 2 and got[:3] == ["p0", "p2", "c2"]


def test_slot_reservation_for_a_high_margin_accessory(built):
    match = {"categories": ["Accessories > Chargers"], "margin": {"min": 0.4}}
    got = ids(run(built, [rule("s", {"type": "slot", "position": 3}, match)], k=5))
    assert got == ["p0", "p2", "h0", "c2", "c0"]  # h1 has no known margin: not eligible
    got = ids(run(built, [rule("s", {"type": "slot", "position": 2, "count": 2},
                               {"categories": ["Accessories > Chargers"]})], k=5))
    assert got == ["p0", "h0", "h1", "p2", "c2"]
    a = run(built, [rule("s", {"type": "slot", "position": 1}, {"ids": ["ghost"]})], k=3, explain=True)
    assert ids(a) == BASE[:3] and "no eligible matching item" in a.explanation["conflicts"][0]


# ---- conditions ---------------------------------------------------------------------------------------
def test_placement_device_and_segment_conditions(built):
    block = {"type": "block"}
    r = [rule("b", block, {"ids": ["p0"]}, when={"placements": ["pdp_similar"]})]
    assert "p0" in ids(run(built, r)) and "p0" not in ids(run(built, r, "pdp_similar"))
    r = [rule("b", block, {"ids": ["p0"]}, when={"devices": ["mobile"]})]
    assert "p0" in ids(run(built, r, device="desktop")) and "p0" not in ids(run(built, r, device="mobile"))
    assert "p0" in ids(run(built, r))  # no device known: the condition does not hold
    r = [rule("b", block, {"ids": ["p0"]}, when={"segments": ["vip", "staff"]})]
    assert "p0" not in ids(run(built, r, segments=["staff"])) and "p0" in ids(run(built, r, segments=["new"]))
    r = [rule("b", block, {"ids": ["p0"]}, when={"exclude_segments": ["b2b"]})]
    assert "p0" not in ids(run(built, r)) and "p0" in ids(run(built, r, segments=["b2b", "vip"]))


def test_campaign_window_start_inclusive_end_exclusive(built):
    start, end = NOW - 3600, NOW + 3600
    r = [rule("bf", {"type": "pin", "items": ["h1"], "slot": 1}, when={"start": iso(start), "end": iso(end)})]
    assert ids(run(built, r, now=start - 1))[0] == "p0"
    assert ids(run(built, r, now=start))[0] == "h1"
    assert ids(run(built, r, now=end - 1))[0] == "h1"
    assert ids(run(built, r, now=end))[0] == "p0"
    r = [rule("open", {"type": "block"}, {"ids": ["p0"]}, when={"start": iso(start)})]
    assert "p0" not in ids(run(built, r, now=NOW + 10 * 86400))


def test_item_attribute_tag_price_stock_and_freshness_conditions(built):
    def kept(match):
        return sorted(ids(run(built, [rule("f", {"type": "filter"}, match)])))

    assert kept({"attributes": {"color": "Black"}}) == ["c0", "c2", "h1"]
    assert kept({"attributes": {"color": ["Red", "White"]}}) == ["c3", "h0"]
    assert kept({"attributes": {"compatible_with": {"contains": "p2"}}}) == ["c2"]
    assert kept({"attributes": {"storage_gb": {"min": 128, "max": 192}}}) == ["p1", "p2"]
    assert kept({"attributes": {"storage_gb": {"exists": True}}}) == ["p0", "p1", "p2", "p3"]
    assert kept({"tags": ["rugged"]}) == ["c0", "c3"]
    assert kept({"price": {"min": 501, "max": 502.5}}) == ["p1", "p2"]
    assert kept({"stock": {"min": 41}}) == ["c0", "c1", "c2", "c3"]
    assert kept({"margin": {"max": 0.2}}) == ["p0", "p1", "p2", "p3"]
    assert kept({"new_within_days": 7}) == ["c0"]
    assert kept({"categories": ["Accessories"], "not": {"tags": ["rugged"]}}) == ["c1", "c2", "h0", "h1"]


# ---- conflicts ----------------------------------------------------------------------------------------
def test_block_beats_pin_of_any_priority(built):
    a = run(built, [rule("pin", {"type": "pin", "items": ["c1"], "slot": 1}, priority=100),
                    rule("block", {"type": "block"}, {"ids": ["c1"]}, priority=-5)], explain=True)
    assert "c1" not in ids(a)
    assert any("blocked" in c for c in a.explanation["conflicts"])


def test_higher_priority_pin_overrides_a_filter_but_a_lower_one_does_not(built):
    flt = rule("only-cases", {"type": "filter"}, {"categories": ["Accessories > Phone Cases"]}, priority=10)
    assert ids(run(built, [flt, rule("pin", {"type": "pin", "items": ["h1"], "slot": 1}, priority=11)]))[0] == "h1"
    got = ids(run(built, [flt, rule("pin", {"type": "pin", "items": ["h1"], "slot": 1}, priority=10)]))
    assert "h1" not in got
    floor = rule("floor", {"type": "margin_floor", "min_margin": 0.5}, priority=0)
    assert ids(run(built, [floor, rule("pin", {"type": "pin", "items": ["p3"], "slot": 2}, priority=1)]))[1] == "p3"


def test_pins_on_the_same_slot_resolve_by_priority_then_document_order(built):
    a = run(built, [rule("low", {"type": "pin", "items": ["h0"], "slot": 1}, priority=1),
                    rule("high", {"type": "pin", "items": ["h1"], "slot": 1}, priority=5)], explain=True)
    assert ids(a)[:2] == ["h1", "h0"]
    assert any("moved to slot 2" in c for c in a.explanation["conflicts"])
    got = ids(run(built, [rule("first", {"type": "pin", "items": ["h0"], "slot": 1}),
                          rule("second", {"type": "pin", "items": ["h1"], "slot": 1})]))
    assert got[:2] == ["h0", "h1"]
    got = ids(run(built, [rule("a", {"type": "pin", "items": ["h0"], "slot": 1}),
                          rule("b", {"type": "pin", "items": ["h0"], "slot": 3}, priority=2)]))
    assert got.index("h0") == 2 and got.count("h0") == 1


def test_pin_and_slot_on_the_same_position(built):
    charger = {"categories": ["Accessories > Chargers"]}
    got = ids(run(built, [rule("slot", {"type": "slot", "position": 1}, charger, priority=3),
                          rule("pin", {"type": "pin", "items": ["c1"], "slot": 1}, priority=1)], k=4))
    assert got[:2] == ["h0", "c1"]
    got = ids(run(built, [rule("slot", {"type": "slot", "position": 1}, charger, priority=1),
                          rule("pin", {"type": "pin", "items": ["c1"], "slot": 1}, priority=3)], k=4))
    assert got[:2] == ["c1", "h0"]


def test_boost_and_bury_compose_and_rule_sets_combine(built):
    p, cat = built
    both = [rule("up", {"type": "boost", "multiply": 2}, {"ids": ["c1"]}),
            rule("down", {"type": "bury", "multiply": 0.5}, {"ids": ["c1"]})]
    assert ids(run(built, both)) == BASE
    from shelfwise.assemble import assemble
    from shelfwise.rules import RulesStage, StaticRules
    p = assemble(p.model, RulesStage(StaticRules({
        "a-campaign": {"rules": [rule("pin", {"type": "pin", "items": ["h0"], "slot": 1})]},
        "b-legal": {"rules": [rule("block", {"type": "block"}, {"ids": ["p0"]})]},
    }), cat))
    got = ids(ask(p))
    assert got[0] == "h0" and "p0" not in got


def test_answers_are_deterministic_and_batch_equals_single(built):
    p, cat = built
    doc = {"rules": [rule("cap", {"type": "cap", "by": "top_category", "max": 2}),
                     rule("slot", {"type": "slot", "position": 2}, {"categories": ["Accessories > Chargers"]}),
                     rule("boost", {"type": "boost", "multiply": 1.3}, {"brands": ["Shield"]}),
                     rule("pin", {"type": "pin", "items": ["c3"], "slot": 4}, when={"devices": ["mobile"]})]}
    p = with_rules(p, cat, doc)
    reqs = [RecRequest("homepage", shopper=f"u{i}", k=6, now=NOW, device=["mobile", None][i % 2])
            for i in range(8)]
    batch = [ids(a) for a in p.recommend(reqs)]
    single = [ids(p.recommend([r])[0]) for r in reqs]
    again = [ids(p.recommend([r])[0]) for r in reqs]
    assert batch == single == again
    assert all(b[3] == "c3" for b in batch[::2]) and all(b[1] in ("h0", "h1") for b in batch)


# ---- explanations and compiled form -------------------------------------------------------------------
def test_explanation_lists_reason_score_parts_and_rules(built):
    a = run(built, [rule("pin", {"type": "pin", "items": ["h1"], "slot": 1}, priority=2),
                    rule("boost", {"type": "boost", "multiply": 2}, {"brands": ["Shield"]})], k=4, explain=True)
    first, second = a.items[0].explanation, a.items[1].explanation
    assert first["reason"] == "pinned by test/pin" and first["position"] == 1
    assert first["rules"][0] == {"rule": "test/pin", "action": "pin", "priority": 2, "effect": "pinned from slot 1"}
    assert second["reason"] == "ranked by score"
    shield = next(r.explanation for r in a.items if r.item_id.startswith("c"))
    assert {"rule": "test/boost", "action": "boost", "priority": 0, "effect": "×2"} in shield["rules"]
    assert a.explanation["rulesets"] == "test@1" and a.explanation["conflicts"] == []
    assert ask(built[0]).items[0].explanation is None  # only on request


def test_compiled_rules_are_vectors_and_cached_per_signature(built):
    p, cat = built
    rs = parse_ruleset({"rules": [rule("b", {"type": "boost", "multiply": 2}, {"brands": ["Shield"]}),
                                  rule("k", {"type": "block"}, {"ids": ["p0"]}, when={"devices": ["mobile"]})]})
    world = CompiledRules([("x", rs)], p.items, ItemFacts.build(p.items, cat))
    desk = world.signature(RecRequest(device="desktop", now=NOW), "homepage")
    mob = world.signature(RecRequest(device="mobile", now=NOW), "homepage")
    assert desk != mob
    e1, e2 = world.effects(desk), world.effects(mob)
    assert world.effects(desk) is e1  # cached
    shield = np.array([str(x).startswith("c") for x in p.items.ids])
    assert np.allclose(e1.mult, np.where(shield, 2.0, 1.0)) and e1.drop is None
    assert [str(p.items.ids[j]) for j in e2.drop] == ["p0"]


def test_catalog_changes_recompile_in_the_background(built):
    p, cat = built
    from shelfwise.assemble import assemble
    from shelfwise.rules import RulesStage, StaticRules

    stage = RulesStage(StaticRules({"test": {"rules": [rule("low-stock", {"type": "block"},
                                                             {"stock": {"max": 45}})]}}), cat)
    p = assemble(p.model, stage)
    c1 = p.items.index["c1"]
    try:
        assert sorted(ids(ask(p))) == ["c0", "c1", "c2", "c3"]  # phones (10) and chargers (40) blocked
        p.items.update(cat["c1"].model_copy(update={"stock": 5}))
        stage.catalog_changed(p.items, [cat["c1"].model_copy(update={"stock": 5})])
        ask(p)  # answered at once with the previous compilation while the rules recompile
        stage.wait()
        assert sorted(ids(ask(p))) == ["c0", "c2", "c3"]
    finally:
        p.items.update(cat["c1"])


def test_a_new_item_table_compiled_ahead_keeps_the_serving_one_compiled(built, monkeypatch):
    """A model about to go live gets its rules compiled first (``Shelfwise._load_pipeline``); requests still on the
    model serving meanwhile keep its compilation, and a third table evicts the oldest."""
    import copy

    from shelfwise.rules import RulesStage, StaticRules

    p, cat = built
    stage = RulesStage(StaticRules({"test": {"rules": [rule("b", {"type": "block"}, {"ids": ["p0"]})]}}), cat)
    compiled = []
    real = stage._compile
    monkeypatch.setattr(stage, "_compile", lambda items, rulesets: compiled.append(id(items)) or real(items, rulesets))
    serving, next_model, third = p.items, copy.copy(p.items), copy.copy(p.items)
    a = stage.live(serving)
    b = stage.live(next_model)  # compiled ahead of its swap
    assert stage.live(serving) is a and stage.live(next_model) is b
    assert compiled == [id(serving), id(next_model)]
    stage.live(third)
    assert stage.live(next_model) is b and len(compiled) == 3
    stage.live(serving)  # the oldest was evicted: compiled again
    assert compiled[-1] == id(serving) and len(compiled) == 4


def test_a_model_goes_live_with_its_live_rules_already_compiled(trained_settings, monkeypatch):
    """A swapped-in model's first request does not compile the rule sets (1.1 s at 12k items, ~30 s at 1M):
    ``Shelfwise._load_pipeline`` compiles them before the swap."""
    import shutil

    from shelfwise.request import RecRequest
    from shelfwise.rules.admin import put_ruleset
    from shelfwise.service import Shelfwise

    eng = Shelfwise(trained_settings)
    try:
        put_ruleset(eng.merch.store, "shop", {"rules": [{"id": "no-p0", "action": {"type": "block"},
                                                         "match": {"ids": ["p0"]}}]}, "test", "", ["homepage"],
                    publish=True)
        eng.merch.rules_changed()
        old = eng.pipeline
        version, path = eng.models.new_version()
        shutil.copytree(eng.models.path(old.version), path, dirs_exist_ok=True)
        eng.models.publish(version)
        import threading

        compiled = []  # compilations on this thread (a catalog change recompiles on one of its own meanwhile)
        real = eng.merch.stage._compile
        me = threading.current_thread()
        monkeypatch.setattr(eng.merch.stage, "_compile", lambda items, rulesets: (
            compiled.append(id(items)) if threading.current_thread() is me else None) or real(items, rulesets))
        assert eng.refresh_model(min_interval_s=0) and eng.pipeline is not old  # (the copy keeps its label)
        assert compiled == [id(eng.pipeline.items)]  # at the swap, before serving
        answer = eng.recommend(RecRequest(placement="homepage", shopper="u1", k=4))
        assert answer.items and "p0" not in [r.item_id for r in answer.items]
        old.recommend([RecRequest(placement="homepage", shopper="u1", k=4, now=NOW)])  # a request still on it
        assert compiled == [id(eng.pipeline.items)]  # neither compiled again
    finally:
        eng.close()
