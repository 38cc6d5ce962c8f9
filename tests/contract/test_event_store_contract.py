"""EventStore + Catalog contract: written once, run against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import numpy as np
import pytest

from shelfwise.domain import Event, EventContext, EventType, Item
from shelfwise.stores.protocols import EntryContext, Interaction
from tests.conftest import T0, buy, tiny_catalog, tiny_events, view


def search(eid: str, shopper: str, minute: float) -> Event:
    return Event(event_id=eid, type="search", user_id=shopper, timestamp=T0 + timedelta(minutes=minute),
                 properties={"query": "phone"})


def test_append_is_idempotent_by_event_id(open_store):
    store = open_store()
    r = store.append([view("e1", "u1", "p0", 0), view("e2", "u1", "p1", 1), view("e1", "u1", "p0", 0)])
    assert r.stored == ["e1", "e2"] and r.duplicates == ["e1"]
    r2 = store.append([view("e2", "u1", "p1", 1), view("e3", "u1", "p2", 2), view("e1", "u1", "p0", 0)])
    assert r2.stored == ["e3"] and r2.duplicates == ["e2", "e1"]
    assert store.count() == 3
    r3 = store.append([view("e3", "u1", "p2", 2)])
    assert r3.stored == [] and r3.duplicates == ["e3"] and store.count() == 3
    assert store.append([]).stored == []


def test_batch_result_keeps_arrival_order_and_flags_unknown_items(open_store):
    store = open_store()
    events = [view(f"e{i:04d}", f"u{i % 7}", f"p{i % 3}", i) for i in range(2000)]
    events.insert(5, buy("b1", "u1", ["p0", "zz", "yy"], 3))
    r = store.append(events, known_items={"p0", "p1", "p2"})
    assert r.stored == [ev.event_id for ev in events]
    assert r.unknown_items == ["yy", "zz"] and store.unknown_count() == 1
    assert store.count() == 2001
    # unknown_items reports only what this batch named; known_items=None disables the check
    assert store.append([view("x", "u1", "qq", 1)]).unknown_items == []


def test_scan_orders_each_shopper_by_time_then_arrival_and_expands_purchases(open_store):
    store = open_store()
    store.append([
        view("a3", "u2", "p3", 30), view("a1", "u1", "p1", 10), buy("a2", "u1", ["c1", "p1", "h0"], 20),
        view("a0", "u1", "p0", 5), view("same1", "u1", "h1", 20), search("s", "u1", 21),
    ])
    log = store.scan()
    assert list(log.shopper) == ["u1"] * 6 + ["u2"]
    assert list(log.item) == ["p0", "p1", "c1", "p1", "h0", "h1", "p3"]
    assert list(log.kind[:6]) == [0, 0, 3, 3, 3, 0]
    assert list(log.order[2:5]) == ["a2"] * 3 and log.order[0] == ""
    assert list(log.quantity[:3]) == [1, 1, 1] and log.price[2] == 10.0 and np.isnan(log.price[0])
    assert np.all(np.diff(log.ts[:6]) >= 0)
    t20 = (T0 + timedelta(minutes=20)).timestamp()
    window = store.scan(since=t20, until=t20 + 60)
    assert list(window.item) == ["c1", "p1", "h0", "h1"]
    assert len(store.scan(since=t20 + 10_000)) == 0


def test_history_returns_last_n_and_every_purchase(open_store):
    store = open_store()
    store.append(tiny_events())
    states = store.history(["u0", "u1", "nobody"], limit=3)
    assert states["nobody"].recent == [] and states["nobody"].purchased == set()
    assert [i.item_id for i in states["u0"].recent] == ["p0", "p0", "c0"]
    assert states["u0"].purchased == {"p0", "c0"} and states["u1"].purchased == set()
    assert all(isinstance(i, Interaction) for i in states["u0"].recent)
    assert states["u0"].recent[-1].kind == EventType.purchase_completed
    full = store.history(["u0"], limit=100)["u0"].recent
    assert len(full) == 6 and [i.ts for i in full] == sorted(i.ts for i in full)
    many = store.history([f"u{i}" for i in range(40)] * 1, limit=2)
    assert len(many) == 40 and all(len(s.recent) == 2 for s in many.values())


def test_delete_shopper_removes_events_and_lines(open_store):
    store = open_store()
    store.append(tiny_events())
    before = store.count()
    assert store.delete_shopper("u0") == 5
    assert store.delete_shopper("u0") == 0
    assert store.count() == before - 5
    assert "u0" not in set(store.scan().shopper)
    assert store.history(["u0"], 5)["u0"].recent == []


def test_catalog_upsert_get_delete(open_store):
    store = open_store()
    assert store.upsert(tiny_catalog()) == 10
    assert store.ids() == {it.id for it in tiny_catalog()}
    changed = Item(id="p0", title="Phone zero", price=499, cost=400, stock=0)
    store.upsert([Item(id="p0", title="first"), changed])  # the last one in a batch wins
    got = store.get(["p0", "c1", "missing"])
    assert set(got) == {"p0", "c1"} and got["p0"] == changed
    assert [it.id for it in store.all()] == sorted(it.id for it in tiny_catalog())
    assert store.delete("p0") is True and store.delete("p0") is False
    assert "p0" not in store.ids() and store.get([]) == {}


def test_catalog_changed_since(open_store):
    store = open_store()
    store.upsert(tiny_catalog())
    time.sleep(0.05)
    mark = time.time()
    time.sleep(0.05)
    store.upsert([Item(id="c1", title="Case 1, new colour", stock=3), Item(id="new", title="A new item")])
    assert [it.id for it in store.changed_since(mark)] == ["c1", "new"]
    assert store.changed_since(mark)[0].stock == 3
    assert len(store.changed_since(0.0)) == 11 and store.changed_since(time.time() + 60) == []


def test_catalog_changes_list_upserts_and_deletions_seen_by_another_replica(open_store):
    writer, reader = open_store(), open_store()
    writer.upsert(tiny_catalog())
    time.sleep(0.01)  # the database clock counts milliseconds: a poll within the write's millisecond reads it again
    first = reader.changes(0.0)
    assert {it.id for it in first.upserted} == {it.id for it in tiny_catalog()} and first.deleted == []
    assert abs(first.as_of - time.time()) < 5  # the database's clock
    time.sleep(0.05)
    writer.upsert([Item(id="c1", title="Case 1", stock=0)])
    assert writer.delete("p2") and not writer.delete("nope")
    got = reader.changes(first.as_of)
    assert [(it.id, it.stock) for it in got.upserted] == [("c1", 0)] and got.deleted == ["p2"]
    assert got.as_of >= first.as_of
    time.sleep(0.05)
    writer.upsert([Item(id="p2", title="Phone 2 is back")])  # stored again: no longer a deletion
    again = reader.changes(first.as_of)
    assert [it.id for it in again.upserted] == ["c1", "p2"] and again.deleted == []
    later = reader.changes(time.time() + 60)
    assert later.upserted == [] and later.deleted == []


def test_catalog_first_seen_is_the_first_upsert(open_store):
    store = open_store()
    before = time.time()
    store.upsert(tiny_catalog())
    after = time.time()
    seen = store.first_seen()
    assert set(seen) == {it.id for it in tiny_catalog()}
    assert all(before - 1 <= t <= after + 1 for t in seen.values())
    time.sleep(0.05)
    store.upsert([Item(id="p1", title="Phone 1, new price", price=400), Item(id="new", title="A new item")])
    again = store.first_seen(["p1", "new", "nope"])
    assert set(again) == {"p1", "new"} and again["p1"] == seen["p1"]  # a later upsert keeps it
    assert again["new"] > seen["p1"]
    store.delete("p2")
    time.sleep(0.05)
    store.upsert([Item(id="p2", title="Phone 2 again")])
    assert store.first_seen(["p2"])["p2"] > seen["p2"]  # deleted, then stored anew
    assert store.first_seen([]) == {}
    assert set(store.first_seen(since=again["new"] - 0.001)) == {"new", "p2"}
    assert set(store.first_seen(["p1", "p2"], since=again["new"] - 0.001)) == {"p2"}


def test_catalog_from_before_first_seen_is_migrated(open_store):
    """A database whose items table has no first_seen column: opening it adds the column; the items already there
    have no first-seen time (unknown, not the migration's), items stored afterwards do."""
    store = open_store()
    store.upsert(tiny_catalog())
    store.close()
    if open_store.backend == "sqlite":
        import sqlite3

        db = sqlite3.connect(open_store.dsn.removeprefix("sqlite:///"))
        db.execute("ALTER TABLE items DROP COLUMN first_seen")
        db.commit()
        db.close()
    else:
        import psycopg

        from shelfwise.stores._dsn import split_options

        with psycopg.connect(split_options(open_store.dsn, {"pool_min", "pool_max"})[0], autocommit=True) as conn:
            conn.execute("ALTER TABLE items DROP COLUMN first_seen")
            conn.execute("DELETE FROM shelfwise_migrations WHERE version = 4")
    old = open_store()
    assert len(old.all()) == 10 and old.first_seen() == {}
    old.upsert([Item(id="p1", title="Phone 1"), Item(id="later", title="Stored after the migration")])
    assert set(old.first_seen()) == {"later"}


def test_concurrent_writers_store_each_event_once(open_store):
    store = open_store()
    events = [view(f"c{i}", f"u{i % 13}", f"p{i % 4}", i) for i in range(1200)]
    results: list = []
    errors: list = []

    def writer(offset: int) -> None:
        try:
            for start in range(offset, 1200, 150):  # overlapping batches: every event is sent by two writers
                results.append(store.append(events[start:start + 300]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 0, 75, 150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = [e for r in results for e in r.stored]
    assert len(stored) == len(set(stored)) == 1200
    assert store.count() == 1200


def test_restart_keeps_everything(open_store):
    store = open_store()
    store.upsert(tiny_catalog())
    store.append(tiny_events())
    log_before = store.scan()
    store.close()
    again = open_store()
    assert again.count() == len(tiny_events())
    assert again.append(tiny_events()[:5]).duplicates == [e.event_id for e in tiny_events()[:5]]
    log_after = again.scan()
    assert list(log_after.item) == list(log_before.item) and list(log_after.shopper) == list(log_before.shopper)
    assert len(again.all()) == 10
    if open_store.backend == "postgresql":
        assert again.applied_migrations == []  # versioned migrations ran once, on first start


def test_backends_agree_on_the_storefront(open_store, tmp_path):
    """Same input, same scan and history as the SQLite reference."""
    from shelfwise.stores.sqlite import SQLiteStore

    ref = SQLiteStore(f"sqlite:///{tmp_path / 'ref.db'}")
    store = open_store()
    events = tiny_events() + [buy("bb", "u3", ["h0", "h1"], 5000), view("vv", "session:x", "c2", 7)]
    known = {it.id for it in tiny_catalog()} - {"h1"}
    for s in (ref, store):
        s.append(events, known_items=known)
    a, b = store.scan(), ref.scan()
    for col in ("shopper", "session", "item", "kind", "ts", "order", "quantity"):
        assert list(getattr(a, col)) == list(getattr(b, col)), col
    assert np.array_equal(np.isnan(a.price), np.isnan(b.price))
    shoppers = sorted(set(b.shopper))
    assert store.history(shoppers, 4) == ref.history(shoppers, 4)
    assert store.unknown_count() == ref.unknown_count() == 1
    ref.close()


@pytest.mark.parametrize("n", [1, 5000])
def test_bulk_append_in_one_call(open_store, n):
    store = open_store()
    events = [view(f"bulk{i}", f"u{i % 97}", f"p{i % 4}", i / 10) for i in range(n)]
    assert len(store.append(events).stored) == n
    assert len(store.scan()) == n


def test_entry_contexts_are_each_field_as_first_said(open_store):
    store = open_store()

    def ev(eid, shopper, minute, **context):
        return view(eid, shopper, "p0", minute).model_copy(update={"context": EventContext(**context)})

    store.append([
        ev("c3", "u1", 30, device="desktop", segments=["late"], placement="pdp_similar"),
        ev("c1", "u1", 10, device="mobile"),  # u1's first event (arrived second): its device wins
        ev("c2", "u1", 20, segments=["vip", "student"]),  # the first segments said
        ev("c4", "u2", 5),  # u2's events say nothing: left out
        ev("c5", "session:s/1", 1, placement="homepage", device="tablet"),
        search("c6", "u3", 1).model_copy(update={"context": EventContext(device="app")}),  # any event counts
    ])
    got = open_store().entry_contexts()
    assert got == {"u1": EntryContext("mobile", "pdp_similar", ("vip", "student")),
                   "session:s/1": EntryContext("tablet", "homepage", ()), "u3": EntryContext("app", "", ())}
    store.delete_shopper("u1")
    assert "u1" not in store.entry_contexts()


def test_wishlist_is_the_additions_not_taken_back(open_store):
    store = open_store()

    def wish(eid: str, kind: str, item: str, minute: float, **props) -> Event:
        return Event(event_id=eid, type=kind, user_id="u1", item_id=item, timestamp=T0 + timedelta(minutes=minute),
                     properties=props)

    store.append([wish("w1", "wishlist_added", "p0", 1, price=500.0, in_stock=False),
                  wish("w2", "wishlist_added", "p1", 2),
                  wish("w3", "wishlist_removed", "p1", 3),
                  wish("w4", "wishlist_added", "c0", 4, price=20),
                  wish("w5", "wishlist_removed", "c0", 5), wish("w6", "wishlist_added", "c0", 6, price=18.5),
                  view("v1", "u1", "p2", 7)])
    got = store.wishlist("u1")
    assert sorted(got) == ["c0", "p0"] and store.wishlist("u2") == {}
    assert got["p0"].price == 500.0 and got["p0"].in_stock is False
    assert got["c0"].price == 18.5 and got["c0"].in_stock is None and got["c0"].added_at == (T0 + timedelta(
        minutes=6)).timestamp()
    # the new types are item interactions like the old ones (old rows keep their codes)
    kinds = {int(k) for k in store.scan().kind}
    assert {int(EventType.wishlist_added), int(EventType.wishlist_removed), int(EventType.product_viewed)} <= kinds


def test_searches_are_the_search_events_with_results_in_time_order(open_store):
    store = open_store()
    shown = search("q2", "u2", 3).model_copy(update={"properties": {"query": "case", "results": ["c2", "c1"]}})
    first = search("q1", "u1", 1).model_copy(update={"properties": {"query": "phone", "results": ["p0", "p1"]},
                                                      "session_id": "s1"})
    store.append([shown, search("q0", "u1", 0), view("v", "u1", "p0", 2), first])  # q0: no results, left out
    got = store.searches()
    assert [(s.shopper, s.session, s.query, s.results) for s in got] == [
        ("u1", "s1", "phone", ("p0", "p1")), ("u2", "", "case", ("c2", "c1"))]
    assert got[0].ts == pytest.approx((T0 + timedelta(minutes=1)).timestamp())
    assert [s.shopper for s in store.searches(since=got[1].ts)] == ["u2"]
