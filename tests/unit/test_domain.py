from datetime import datetime

import pytest
from pydantic import ValidationError

from shelfwise.domain import Event, Item


def ev(**kw):
    base = {"event_id": "e1", "type": "product_viewed", "user_id": "u1", "item_id": "i1",
            "timestamp": "2026-11-01T10:00:00Z"}
    return Event.model_validate(base | kw)


def test_event_minimal_and_shopper_key():
    e = ev()
    assert e.shopper == "u1"
    assert e.timestamp.utcoffset().total_seconds() == 0
    anon = ev(user_id=None, session_id="s9")
    assert anon.shopper == "session:s9"


@pytest.mark.parametrize("kw, field", [
    ({"type": "clicked"}, "type"),
    ({"timestamp": "2026-11-01T10:00:00"}, "timestamp"),  # no offset
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"user_id": None}, ""),  # neither user nor session
    ({"item_id": None}, ""),
    ({"type": "search", "item_id": None}, ""),  # needs properties.query
    ({"type": "purchase_completed", "item_id": None}, ""),
    ({"items": [{"item_id": "i1"}]}, ""),  # items only on purchases
    ({"type": "purchase_completed", "item_id": None, "items": [{"item_id": "i1", "quantity": 0}]}, "items.0.quantity"),
    ({"context": {"position": -1}}, "context.position"),
    ({"colour": "red"}, "colour"),
])
def test_event_rejections_name_the_field(kw, field):
    with pytest.raises(ValidationError) as exc:
        ev(**kw)
    locs = [".".join(map(str, e["loc"])) for e in exc.value.errors()]
    assert field in locs


def test_purchase_lines_and_search():
    p = ev(type="purchase_completed", item_id=None, items=[{"item_id": "a", "quantity": 2, "price": 3.5},
                                                           {"item_id": "b"}])
    assert p.lines() == [("a", 2, 3.5), ("b", 1, None)]
    s = ev(type="search", item_id=None, properties={"query": "usb-c cable"})
    assert s.lines() == []
    s = ev(type="search", item_id=None, properties={"query": "usb-c cable", "results": ["a", "b"]})
    assert s.properties["results"] == ["a", "b"] and s.lines() == []  # results shown are not interactions


@pytest.mark.parametrize("results", ["a", [1, 2], [""], ["x" * 257], ["a"] * 1001])
def test_search_results_must_be_a_list_of_ids(results):
    with pytest.raises(ValueError, match="properties.results"):
        ev(type="search", item_id=None, properties={"query": "q", "results": results})


@pytest.mark.parametrize("kw, field", [
    ({"price": 0}, "price"), ({"price": -3}, "price"), ({"price": float("nan")}, "price"),
    ({"stock": -1}, "stock"), ({"cost": -1}, "cost"), ({"id": ""}, "id"),
])
def test_item_rejections(kw, field):
    with pytest.raises(ValidationError) as exc:
        Item.model_validate({"id": "x", "price": 10.0} | kw)
    assert field in [".".join(map(str, e["loc"])) for e in exc.value.errors()]


def test_item_margin_and_stock():
    it = Item(id="x", price=20.0, cost=5.0, stock=0, created_at=datetime(2026, 1, 1))
    assert it.margin == pytest.approx(0.75)
    assert not it.in_stock
    assert it.created_at.tzinfo is not None
    with pytest.raises(ValidationError):
        Item(id="y", cost=3.0)  # cost without price
