"""Contract of the shopper preference store: written once, run against the embedded backend (the event store's
SQLite file) and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from shelfwise.domain import Preferences
from shelfwise.stores.protocols import PreferenceStore, ShopperPreferences

QUIZ = Preferences(categories=["Audio > Headphones", "Cameras"], brands=["Pulse"], sizes=["M", "41mm"],
                   price={"min": 20, "max": 300}, style_tags=["minimal", "outdoor"])


def test_round_trip_replace_and_delete(open_preferences):
    store = open_preferences()
    assert isinstance(store, PreferenceStore)
    assert store.preferences(["u1"]) == {} and store.preferences([]) == {}
    store.set_preferences(ShopperPreferences("u1", QUIZ, 10.0))
    got = open_preferences().preferences(["u1", "u2", "u1"])  # another replica / a restart
    assert list(got) == ["u1"]
    assert got["u1"] == ShopperPreferences("u1", QUIZ, 10.0)
    assert got["u1"].preferences.price.min == 20 and got["u1"].preferences.sizes == ["M", "41mm"]
    # a PUT replaces the whole document: fields left out are gone
    store.set_preferences(ShopperPreferences("u1", Preferences(brands=["Nova"]), 20.0))
    again = store.preferences(["u1"])["u1"]
    assert again.preferences == Preferences(brands=["Nova"]) and again.updated_at == 20.0
    assert again.preferences.price is None and again.preferences.categories == []
    assert store.delete_preferences("u1") == 1 and store.delete_preferences("u1") == 0
    assert store.preferences(["u1"]) == {}


def test_shoppers_are_kept_apart_and_any_id_works(open_preferences):
    store = open_preferences()
    odd = "session:s/1 Ä 😀"
    store.set_preferences(ShopperPreferences(odd, Preferences(sizes=["XL"]), 1.0))
    store.set_preferences(ShopperPreferences("U1", Preferences(sizes=["S"]), 2.0))
    store.set_preferences(ShopperPreferences("u1", Preferences(sizes=["M"]), 3.0))
    got = store.preferences([odd, "u1", "U1", "nobody"])
    assert {s: r.preferences.sizes for s, r in got.items()} == {odd: ["XL"], "u1": ["M"], "U1": ["S"]}
    assert store.delete_preferences("U1") == 1
    assert set(store.preferences([odd, "u1", "U1"])) == {odd, "u1"}


def test_many_shoppers_in_one_read(open_preferences):
    store = open_preferences()
    for i in range(1200):  # more than one chunk of a backend's IN list
        store.set_preferences(ShopperPreferences(f"u{i}", Preferences(brands=[f"b{i % 7}"]), float(i)))
    got = store.preferences([f"u{i}" for i in range(0, 1300, 3)])
    assert len(got) == 400 and got["u999"].preferences.brands == ["b5"] and got["u999"].updated_at == 999.0


def test_concurrent_writers_leave_one_whole_document(open_preferences):
    docs = [Preferences(brands=[f"b{i}"], sizes=[f"s{i}"]) for i in range(4)]

    def go(i: int):
        open_preferences().set_preferences(ShopperPreferences("shared", docs[i], float(i)))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = open_preferences().preferences(["shared"])["shared"]
    assert got.preferences in docs  # never a mix of two documents
    i = docs.index(got.preferences)
    assert got.updated_at == float(i)


def test_erased_preferences_leave_no_bytes(open_preferences):
    store = open_preferences()
    store.set_preferences(ShopperPreferences("secret-shopper-77", Preferences(style_tags=["unmistakable-tag-77"]),
                                             1.0))
    store.delete_preferences("secret-shopper-77")
    note = store.checkpoint()
    assert note
    if open_preferences.backend == "sqlite":
        path = open_preferences.dsn.removeprefix("sqlite:///")
        raw = b"".join(open(p, "rb").read() for p in (path, path + "-wal") if __import__("os").path.exists(p))
        assert b"secret-shopper-77" not in raw and b"unmistakable-tag-77" not in raw


@pytest.mark.parametrize("bad", [{"sizes": [""]}, {"brands": ["  "]}, {"categories": ["Audio > "]},
                                 {"price": {}}, {"price": {"min": 5, "max": 1}}, {"price": {"min": -1}},
                                 {"colours": ["red"]}, {"sizes": ["x"] * 51}])
def test_invalid_documents_are_refused_before_any_store(bad):
    with pytest.raises(ValueError):
        Preferences.model_validate(bad)


def test_values_are_trimmed_and_kept_once():
    p = Preferences.model_validate({"brands": [" Nova", "nova", "Pulse "], "categories": ["Audio>Headphones",
                                                                                         "Audio > Headphones"]})
    assert p.brands == ["Nova", "Pulse"] and p.categories == ["Audio > Headphones"]
    assert Preferences().is_empty() and not p.is_empty()
