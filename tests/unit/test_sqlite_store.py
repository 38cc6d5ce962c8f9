import subprocess
import sys
import textwrap

from shelfwise.domain import EventType
from shelfwise.stores import open_event_store
from tests.conftest import buy, tiny_catalog, view


def test_append_is_idempotent_and_flags_unknown(tmp_path):
    store = open_event_store(f"sqlite:///{tmp_path}/a.db")
    r = store.append([view("e1", "u1", "p0", 0), view("e2", "u1", "zz", 1), view("e1", "u1", "p0", 0)],
                     known_items={"p0"})
    assert r.stored == ["e1", "e2"] and r.duplicates == ["e1"] and r.unknown_items == ["zz"]
    r2 = store.append([view("e2", "u1", "zz", 1), view("e3", "u1", "p1", 2)], known_items={"p0", "p1"})
    assert r2.stored == ["e3"] and r2.duplicates == ["e2"]
    assert store.count() == 3


def test_scan_expands_purchases_in_time_order(tmp_path):
    store = open_event_store(f"sqlite:///{tmp_path}/a.db")
    store.append([buy("e3", "u1", ["p1", "c1"], 5), view("e1", "u1", "p1", 1), view("e2", "u2", "p0", 0)])
    log = store.scan()
    assert list(log.shopper) == ["u1", "u1", "u1", "u2"]
    assert list(log.item) == ["p1", "p1", "c1", "p0"]
    assert list(log.kind) == [EventType.product_viewed, EventType.purchase_completed,
                              EventType.purchase_completed, EventType.product_viewed]
    assert log.order[1] == log.order[2] == "e3"
    assert len(store.scan(since=log.ts[1])) == 2


def test_history_and_delete_shopper(tmp_path):
    store = open_event_store(f"sqlite:///{tmp_path}/a.db")
    store.append([view(f"e{i}", "u1", f"p{i % 4}", i) for i in range(10)] + [buy("b", "u1", ["c1"], 20)])
    h = store.history(["u1", "nobody"], limit=3)
    assert [x.item_id for x in h["u1"].recent] == ["p0", "p1", "c1"]
    assert h["u1"].purchased == {"c1"}
    assert h["nobody"].recent == []
    assert store.delete_shopper("u1") == 11
    assert store.history(["u1"], 3)["u1"].recent == []


def test_catalog_roundtrip(tmp_path):
    store = open_event_store(f"sqlite:///{tmp_path}/a.db")
    items = tiny_catalog()
    store.upsert(items)
    assert store.ids() == {it.id for it in items}
    changed = items[0].model_copy(update={"stock": 0})
    store.upsert([changed])
    assert store.get(["p0"])["p0"].stock == 0
    assert store.delete("p0") and not store.delete("p0")
    assert len(store.all()) == len(items) - 1


def test_acknowledged_events_survive_a_killed_process(tmp_path):
    """Events acknowledged by append() are on disk even when the process dies without any cleanup."""
    db = tmp_path / "k.db"
    code = textwrap.dedent(f"""
        import os
        from shelfwise.stores import open_event_store
        from tests.conftest import view
        store = open_event_store("sqlite:///{db}")
        for b in range(5):
            store.append([view(f"e{{b}}-{{i}}", "u1", "p0", b * 10 + i) for i in range(100)])
        print("acked", flush=True)
        os._exit(9)  # no close(), no atexit: like a crash
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(
        __import__("pathlib").Path(__file__).resolve().parents[2]))
    assert "acked" in out.stdout, out.stderr
    store = open_event_store(f"sqlite:///{db}")
    assert store.count() == 500
