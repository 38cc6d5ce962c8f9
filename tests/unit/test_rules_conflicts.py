"""Conflicts between rules (rules/conflicts.py) and where the console places a document's errors (api/console/jsondoc.py)."""

from shelfwise.api.console import jsondoc
from shelfwise.items import ItemTable
from shelfwise.rules.compile import ItemFacts
from shelfwise.rules.conflicts import find_conflicts, involved
from shelfwise.rules.schema import parse_ruleset
from tests.conftest import tiny_catalog


def _world():
    catalog = {it.id: it for it in tiny_catalog()}
    items = ItemTable.build(sorted(catalog), catalog)
    return items, ItemFacts.build(items, catalog)


def _kinds(docs: dict[str, dict]) -> list[tuple[str, list[str]]]:
    items, facts = _world()
    found = find_conflicts([(rid, parse_ruleset(d)) for rid, d in docs.items()], items, facts)
    return [(c["kind"], c["rules"]) for c in found]


def test_each_kind_of_conflict_names_winner_and_loser():
    doc = {"rules": [
        {"id": "hero", "priority": 5, "action": {"type": "pin", "items": ["p1", "c1"], "slot": 1}},
        {"id": "lead", "priority": 9, "action": {"type": "slot", "position": 2}, "match": {"brands": ["Volt"]}},
        {"id": "phones-only", "priority": 5, "action": {"type": "filter"}, "match": {"categories": ["Phones"]}},
        {"id": "no-c1", "action": {"type": "block"}, "match": {"ids": ["c1"]}},
        {"id": "cases-up", "action": {"type": "boost", "multiply": 2}, "match": {"categories": ["Accessories"]}},
        {"id": "shield-down", "action": {"type": "bury", "multiply": 0.5}, "match": {"brands": ["Shield"]}}]}
    got = _kinds({"promo": doc})
    assert ("pin_blocked", ["promo/no-c1", "promo/hero"]) in got
    assert ("pin_removed", ["promo/phones-only", "promo/hero"]) in got  # equal priority: the filter wins
    assert ("slot_claim", ["promo/lead", "promo/hero"]) in got  # slot 2: higher priority first
    assert ("boost_blocked", ["promo/no-c1", "promo/cases-up"]) in got
    assert ("boost_bury", ["promo/cases-up", "promo/shield-down"]) in got
    assert [k for k, _ in got].index("boost_bury") > [k for k, _ in got].index("pin_blocked")  # conflicts first
    assert "promo/hero" in involved(find_conflicts([("promo", parse_ruleset(doc))], *_world()))


def test_rules_that_never_meet_do_not_conflict():
    docs = {"home": {"rules": [{"id": "hero", "priority": 50, "action": {"type": "pin", "items": ["c1"], "slot": 1},
                                "when": {"placements": ["homepage"]}}]},
            "pdp": {"rules": [{"id": "no-c1", "action": {"type": "block"}, "match": {"ids": ["c1"]},
                               "when": {"placements": ["pdp_similar"]}},
                              {"id": "later", "action": {"type": "block"}, "match": {"ids": ["c1"]},
                               "when": {"start": "2030-01-01T00:00:00Z"}},
                              {"id": "earlier", "action": {"type": "pin", "items": ["c1"], "slot": 1},
                               "when": {"end": "2029-01-01T00:00:00Z"}}]}}
    got = _kinds(docs)
    assert ("pin_blocked", ["pdp/no-c1", "home/hero"]) not in got
    assert ("pin_blocked", ["pdp/later", "pdp/earlier"]) not in got
    assert ("pin_blocked", ["pdp/later", "home/hero"]) in got  # the homepage pin runs forever
    assert _kinds({"x": {"rules": [{"id": "hi", "priority": 9, "action": {"type": "pin", "items": ["c1"], "slot": 1}},
                                   {"id": "f", "action": {"type": "filter"}, "match": {"ids": ["p1"]}}]}}) == []


def test_errors_sit_under_their_field_or_the_object_that_lacks_it():
    doc = {"rules": [{"id": "a", "action": {"type": "pin", "slot": 0}}]}
    lines = jsondoc.lines(doc)
    assert jsondoc.text(doc) == __import__("json").dumps(doc, indent=2)
    loose = jsondoc.place_errors(lines, [{"path": "rules[0].action.slot", "reason": "too small"},
                                         {"path": "rules[0].action.items", "reason": "required field is missing"},
                                         {"path": "", "reason": "whole document"}])
    by = {ln.path: ln.errors for ln in lines if ln.errors}
    assert by["rules[0].action.slot"] == ["rules[0].action.slot: too small"]
    assert by["rules[0].action"] == ["rules[0].action.items: required field is missing"]
    assert by[""] == ["(document): whole document"] and loose == []
    rows = jsondoc.diff({"a": 1}, {"a": 2}, "v1", "v2")
    assert ("del", '-  "a": 1') in rows and ("add", '+  "a": 2') in rows
