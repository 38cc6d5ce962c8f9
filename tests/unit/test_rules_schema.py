"""The rule language: valid documents parse; invalid ones name the JSON path and a reason."""

import pytest

from shelfwise.rules.schema import RuleSetInvalid, json_path, lint, parse_ruleset

PLACEMENTS = ["homepage", "pdp_similar", "pdp_fbt", "cart_upsell"]


def errors(doc) -> list[tuple[str, str]]:
    with pytest.raises(RuleSetInvalid) as exc:
        parse_ruleset(doc, PLACEMENTS)
    return [(e["path"], e["reason"]) for e in exc.value.errors]


def one(doc) -> tuple[str, str]:
    got = errors(doc)
    assert len(got) == 1, got
    return got[0]


def test_every_action_and_condition_parses():
    doc = {"description": "all of it", "rules": [
        {"id": "pin", "priority": 9, "action": {"type": "pin", "items": ["a", "b"], "slot": 2}},
        {"id": "boost", "action": {"type": "boost", "multiply": 1.5, "add": 0.1}, "match": {"brands": ["Nova"]}},
        {"id": "bury", "action": {"type": "bury", "multiply": 0.5, "subtract": 0.1}, "match": {"tags": ["old"]}},
        {"id": "block", "action": {"type": "block"}, "match": {"categories": ["Knives"], "not": {"ids": ["x"]}}},
        {"id": "filter", "action": {"type": "filter"}, "match": {"price": {"min": 10, "max": 100}}},
        {"id": "floor", "action": {"type": "margin_floor", "min_margin": 0.15, "mode": "bury", "multiply": 0.3,
                                   "unknown": "drop"}},
        {"id": "cap", "action": {"type": "cap", "by": "brand", "max": 2, "strict": True}},
        {"id": "slot", "action": {"type": "slot", "position": 4, "count": 2},
         "match": {"margin": {"min": 0.4}, "stock": {"min": 5}, "new_within_days": 30,
                   "attributes": {"color": "Black", "size": ["S", "M"], "gb": {"min": 64}, "fits": {"contains": "p1"},
                                  "eol": {"exists": False}}}},
        {"id": "when", "enabled": False, "action": {"type": "block"}, "match": {"ids": ["y"]},
         "when": {"placements": ["homepage"], "devices": ["mobile"], "segments": ["vip"], "exclude_segments": ["b2b"],
                  "start": "2026-11-27T00:00:00Z", "end": "2026-12-01T00:00:00+01:00"}},
    ]}
    rs = parse_ruleset(doc, PLACEMENTS)
    assert [r.action.type for r in rs.rules] == ["pin", "boost", "bury", "block", "filter", "margin_floor", "cap",
                                                 "slot", "block"]
    attrs = rs.rules[7].match.attributes
    assert attrs["color"].equals == "Black" and attrs["size"].in_ == ["S", "M"] and attrs["gb"].min == 64
    assert rs.rules[8].when.end.utcoffset().total_seconds() == 0  # normalised to UTC
    assert parse_ruleset(rs.dump(), PLACEMENTS) == rs  # dump round-trips


@pytest.mark.parametrize("doc, path, reason", [
    ({"rules": [{"id": "a", "action": {"type": "pin", "items": ["x"], "slot": 0}}]},
     "rules[0].action.slot", "greater than or equal to 1"),
    ({"rules": [{"id": "a", "action": {"type": "pinn"}}]}, "rules[0].action", "'pinn'"),
    ({"rules": [{"id": "a", "action": {"type": "boost", "multiply": 0.5}, "match": {"ids": ["x"]}}]},
     "rules[0].action.multiply", "greater than 1"),
    ({"rules": [{"id": "a", "action": {"type": "boost"}, "match": {"ids": ["x"]}}]},
     "rules[0].action", "multiply (> 1) or add"),
    ({"rules": [{"id": "a", "action": {"type": "bury", "multiply": 1.5}, "match": {"ids": ["x"]}}]},
     "rules[0].action.multiply", "less than 1"),
    ({"rules": [{"id": "a", "action": {"type": "block"}}]}, "rules[0].match", "needs a non-empty match"),
    ({"rules": [{"id": "a", "action": {"type": "filter"}, "match": {}}]}, "rules[0].match", "non-empty match"),
    ({"rules": [{"id": "a", "action": {"type": "pin", "items": ["x"]}, "match": {"ids": ["y"]}}]},
     "rules[0].match", "use a slot action"),
    ({"rules": [{"id": "a", "action": {"type": "pin", "items": ["x", "x"]}}]}, "rules[0].action.items", "twice"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"price": {"min": 5, "max": 1}}}]},
     "rules[0].match.price", "min (5.0) is greater than max (1.0)"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"price": {}}}]},
     "rules[0].match.price", "give min, max or both"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"margin": {"min": 40}}}]},
     "rules[0].match.margin", "fraction"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"attributes": {"c": {"equals": "x", "min": 1}}}}]},
     "rules[0].match.attributes.c", "one kind of test"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"attributes": {"c": {"equals": [1]}}}}]},
     "rules[0].match.attributes.c", "string, number or boolean"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"ids": ["x"]},
                 "when": {"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}}]},
     "rules[0].when", "must be after start"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"ids": ["x"]},
                 "when": {"start": "2026-12-02T00:00:00"}}]}, "rules[0].when.start", "UTC offset"),
    ({"rules": [{"id": "a", "action": {"type": "block"}, "match": {"ids": ["x"]},
                 "when": {"placements": ["home"]}}]}, "rules[0].when.placements", "unknown placement(s) 'home'"),
    ({"rules": [{"id": "a", "action": {"type": "cap", "by": "colour", "max": 1}}]}, "rules[0].action.by",
     "'category', 'top_category' or 'brand'"),
    ({"rules": [{"id": "a", "action": {"type": "slot", "position": 3}, "match": {"ids": ["x"]}, "prio": 1}]},
     "rules[0].prio", "unknown field"),
    ({"rules": [{"id": "a", "action": {"type": "slot"}, "match": {"ids": ["x"]}}]}, "rules[0].action.position",
     "required field is missing"),
    ({"rules": [{"id": "has space", "action": {"type": "block"}, "match": {"ids": ["x"]}}]}, "rules[0].id",
     "pattern"),
    ({"rules": [{"action": {"type": "block"}, "match": {"ids": ["x"]}}]}, "rules[0].id", "required"),
    ({"rules": "nope"}, "rules", "valid list"),
    ({"ruls": []}, "ruls", "unknown field"),
    ([1, 2], "", "JSON object"),
    ({"rules": [{"id": "a", "action": {"type": "margin_floor", "min_margin": 1.5}}]},
     "rules[0].action.min_margin", "less than 1"),
    ({"rules": [{"id": "a", "priority": "high", "action": {"type": "block"}, "match": {"ids": ["x"]}}]},
     "rules[0].priority", "integer"),
])
def test_invalid_documents_name_path_and_reason(doc, path, reason):
    got_path, got_reason = one(doc)
    assert got_path == path
    assert reason in got_reason


def test_duplicate_rule_ids_and_several_errors_at_once():
    doc = {"rules": [{"id": "a", "action": {"type": "block"}, "match": {"ids": ["x"]}},
                     {"id": "a", "action": {"type": "block"}, "match": {"ids": ["y"]}}]}
    assert one(doc) == ("rules[1].id", "duplicate rule id 'a' (first used by rules[0])")
    doc = {"rules": [{"id": "a", "action": {"type": "pin", "items": [], "slot": 300}},
                     {"id": "b", "action": {"type": "cap", "by": "brand"}}]}
    paths = [p for p, _ in errors(doc)]
    assert paths == ["rules[0].action.items", "rules[0].action.slot", "rules[1].action.max"]


def test_json_path_formatting():
    assert json_path(("rules", 2, "action", "pin", "slot")) == "rules[2].action.slot"
    assert json_path(("rules", 0, "match", "attributes", "color")) == "rules[0].match.attributes.color"
    assert json_path(()) == ""


def test_lint_warns_about_unknown_ids_brands_and_categories():
    rs = parse_ruleset({"rules": [
        {"id": "a", "action": {"type": "pin", "items": ["p1", "ghost"]}},
        {"id": "b", "action": {"type": "boost", "add": 1}, "match": {"brands": ["Nova", "Acme"],
                                                                    "categories": ["Phones", "Garden"]}},
        {"id": "c", "action": {"type": "block"}, "match": {"ids": ["gone"]}},
    ]})
    got = lint(rs, known_items={"p1"}, brands={"Nova"}, categories={"Phones > Smartphones"})
    assert [w["path"] for w in got] == ["rules[0].action.items", "rules[1].match.brands", "rules[1].match.categories",
                                        "rules[2].match.ids"]
    assert "'ghost'" in got[0]["reason"] and "'Acme'" in got[1]["reason"] and "'Garden'" in got[2]["reason"]
