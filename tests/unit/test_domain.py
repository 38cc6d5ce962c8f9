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


def test_an_item_read_back_from_a_store_equals_the_validated_one():
    """``Item.stored`` builds what a store holds without validating it again: the same item, field by field and type
    by type, as validating the stored document would give (the synthetic storefront and awkward values)."""
    import orjson

    from shelfwise.synthetic import generate_storefront

    items = list(generate_storefront(n_items=300, n_shoppers=5, n_events=10, seed=5).items)
    items += [Item.model_validate(x) for x in (
        {"id": "näive ☃", "title": "日本語のタイトル", "price": 30, "cost": 12, "created_at": "2026-01-02T03:04:05Z",
         "attributes": {"size": ["M", "L"], "eco": {"rating": 4, "x": 1.5, "none": None}}, "tags": ["a", ""]},
        {"id": "bare"},
        {"id": "offset", "created_at": "2026-01-02T03:04:05+02:00", "available": False, "stock": 0})]
    for it in items:
        doc = orjson.loads(orjson.dumps(it.model_dump(mode="json")))
        got, want = Item.stored(doc), Item.model_validate(doc)
        assert got == want and got.model_dump() == want.model_dump()
        assert [type(v) for v in got.model_dump().values()] == [type(v) for v in want.model_dump().values()]
        assert got.margin == want.margin and got.in_stock == want.in_stock
    pg_like = {"id": "p", "price": 30, "cost": 3}  # PostgreSQL's jsonb gives a whole number back as an integer
    assert type(Item.stored(pg_like).price) is float and Item.stored(pg_like) == Item.model_validate(pg_like)
