"""The cold-start evaluation protocols: the cold-item and cold-shopper splits, their baselines, and both protocols
end to end on a tiny synthetic storefront (held-out items added to the trained model through the live-item path)."""

import numpy as np
import pytest

from shelfwise.domain import EventType, Item
from shelfwise.evaluation.coldstart import AttributeKNN, category_popularity, facts, popularity_among
from shelfwise.evaluation.data import Dataset
from shelfwise.evaluation.runner import evaluate_dataset, shopper_views
from shelfwise.evaluation.splits import cold_items, cold_shoppers
from shelfwise.stores.protocols import EventLog

from tests.unit.test_eval_splits import make_log

P, V, R = EventType.purchase_completed, EventType.product_viewed, EventType.remove_from_cart


def shop_log(n_shoppers=60, n_items=30, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_shoppers):
        for t, it in enumerate(rng.choice(n_items, size=rng.integers(2, 8), replace=False)):
            rows.append((f"u{u:03d}", f"i{it:02d}", V if t % 3 else P, float(t)))
    return make_log(rows)


def test_cold_items_hold_out_items_with_every_event():
    log = shop_log()
    catalog = [f"i{i:02d}" for i in range(30)] + ["never-bought"]
    s = cold_items(log, catalog, fraction=0.2, seed=7)
    held = set(s.held_out)
    assert len(held) == 6 and held <= set(catalog) - {"never-bought"}
    assert not held & set(s.train.item.tolist())  # no event of a held-out item is trained on
    assert len(s.train) + s.notes["held_out_events"] == len(log)
    assert s.users and len(s.users) == len(set(s.users)) == len(s.targets) == len(s.history)
    for u, (tgt,), hist in zip(s.users, s.targets, s.history):
        assert tgt in held
        assert hist and not {e.item_id for e in hist} & held  # the request knows only kept items
        rows = [(str(i), int(k)) for sh, i, k in zip(log.shopper, log.item, log.kind) if sh == u]
        first_held = next(n for n, (i, _) in enumerate(rows) if i in held)
        assert rows[first_held][0] == tgt and [(e.item_id, e.kind) for e in hist] == rows[:first_held]
    skipped = {str(sh) for sh, i in zip(log.shopper, log.item) if i in held} - set(s.users)
    assert len(skipped) == s.notes["not_evaluated_first_event_cold"]
    for u in skipped:  # their first event names a held-out item
        assert next(str(i) for sh, i in zip(log.shopper, log.item) if sh == u) in held
    assert cold_items(log, catalog, fraction=0.2, seed=7).held_out == s.held_out  # seeded
    assert cold_items(log, catalog, fraction=0.2, seed=8).held_out != s.held_out
    with pytest.raises(ValueError, match="between 0 and 1"):
        cold_items(log, catalog, fraction=1.0)


def test_cold_shoppers_are_asked_with_zero_and_one_prior_event():
    log = make_log([
        ("a", "x", V, 1), ("a", "x", P, 2), ("a", "y", V, 3), ("a", "z", V, 4),
        ("b", "x", V, 1), ("b", "y", R, 2), ("b", "w", P, 3),
        ("c", "q", V, 1), ("c", "q", V, 2),  # one distinct item: never a cold shopper
    ] + [(f"d{i}", it, V, t) for i in range(3) for t, it in ((1, "x"), (2, "y"))])
    s = cold_shoppers(log, fraction=0.9, seed=0)
    chosen = sorted(set(s.users))
    assert "c" not in chosen and len(chosen) == 4  # round(0.9 * 5 candidates)
    assert not set(chosen) & set(s.train.shopper.tolist())  # all their events are out of training
    assert s.users == [u for u in chosen for _ in range(2)]
    for i, u in enumerate(s.users):
        assert len(s.history[i]) == i % 2  # 0 prior events, then 1
    if "a" in chosen:
        i = s.users.index("a")
        assert s.targets[i] == ["x"] and s.targets[i + 1] == ["y"]  # the repeat of x is skipped
        assert [e.item_id for e in s.history[i + 1]] == ["x"]
    if "b" in chosen:
        i = s.users.index("b")
        assert s.targets[i + 1] == ["w"]  # a removal is not an interaction
    views = shopper_views(s, 50)
    assert views.history_len.tolist() == [i % 2 for i in range(len(s.users))]
    assert all(v.recent == [] for v in views.states[::2])


def test_popularity_among_cold_items_leaves_out_the_targets():
    log = make_log([("a", "n1", V, 1), ("a", "n2", V, 2), ("b", "n1", V, 1), ("b", "n2", V, 2),
                    ("c", "n1", V, 1), ("c", "w", V, 3)])
    s = cold_items(log, ["n1", "n2", "w"], fraction=0.5, seed=0)
    s.held_out, s.targets = ["n1", "n2"], [["n1"], ["n1"]]
    assert popularity_among(s, log) == ["n2", "n1"]  # n1: 3 - 2 target events = 1 < n2: 2


def test_category_popularity_ranks_new_items_by_their_shelf():
    log = make_log([("a", "w1", V, 1), ("a", "w2", V, 2), ("b", "w1", V, 1), ("b", "n1", V, 2),
                    ("c", "w3", V, 1), ("c", "n2", V, 2)])
    items = [Item(id="w1", category=["Audio", "Headphones"]), Item(id="w2", category=["Audio", "Speakers"]),
             Item(id="w3", category=["TV"]), Item(id="n1", category=["TV"]),
             Item(id="n2", category=["Audio", "Headphones"]), Item(id="n3", category=["Audio"])]
    s = cold_items(log, [it.id for it in items], fraction=0.5, seed=0)
    s.held_out = ["n1", "n2", "n3"]
    s.train = log.take(np.array([not str(i).startswith("n") for i in log.item]))
    # n2's shelf Audio > Headphones: 2 training events; n1's TV: 1; n3's "Audio" alone: never seen, 0 (not the 3
    # events of its sub-categories)
    assert category_popularity(s, items) == ["n2", "n1", "n3"]


def test_attribute_knn_ranks_by_jaccard_overlap():
    items = [Item(id="a", category=["Audio", "Headphones"], brand="Pulse", attributes={"colour": "black"}),
             Item(id="b", category=["Audio", "Headphones"], brand="Pulse", attributes={"colour": "white"}),
             Item(id="c", category=["Audio", "Speakers"], brand="Pulse"),
             Item(id="d", category=["TV"], brand="Vista", attributes={"colour": "black", "serial": "only-d"}),
             Item(id="e", category=["Audio", "Headphones"], brand="Other")]
    assert "attr:colour=black" in facts(items[0]) and "cat:Audio > Headphones" in facts(items[0])
    knn = AttributeKNN(items)
    # facts shared by two items or more: Audio, Audio > Headphones, brand Pulse, colour black (one item's only —
    # "serial", the TV category, brand Vista, colour white, Speakers — are dropped)
    assert knn.matrix.shape[1] == 4
    got = knn.lists([["a"], [], ["zzz"]], [["a"], [], []], k=10)
    assert got[0] == ["b", "c", "e", "d"]  # 3/4, then 2/4 (a tie: catalog order), 1/4; "a" itself excluded
    assert got[1] == [] and got[2] == []


def test_cold_protocols_end_to_end_on_a_tiny_storefront(settings):
    from shelfwise.synthetic import generate_storefront

    shop = generate_storefront(n_items=150, n_shoppers=300, n_events=6000, seed=4)
    rows = sorted(((e.shopper, e.session_id or "", iid, int(EventType[e.type]), e.timestamp.timestamp())
                   for e in shop.events() for iid, _, _ in e.lines()), key=lambda r: (r[0], r[4]))
    c = list(zip(*rows))
    n = len(rows)
    log = EventLog(np.array(c[0], object), np.array(c[1], object), np.array(c[2], object),
                   np.array(c[3], np.int8), np.array(c[4]), np.full(n, "", object), np.ones(n, np.int32),
                   np.full(n, np.nan))
    data = Dataset("tiny", "store", "generated", log, shop.items)
    stages = []
    cache = settings.data_dir / "eval-cache"
    res = evaluate_dataset(data, settings.models, protocols=["cold-items", "cold-shoppers"], ks=[10],
                           report=lambda stage, done, total: stages.append(stage), cache=cache)
    items, shoppers = res["splits"]
    assert items["name"] == "cold-items" and shoppers["name"] == "cold-shoppers"
    assert list(items["models"]) == ["popularity-cold", "popularity-category", "attr-knn", "content"]
    assert list(shoppers["models"]) == ["popularity", "attr-knn", "covisit", "als", "content"]
    held = items["notes"]["held_out_items"]
    assert held == round(0.1 * items["notes"]["candidate_items"])
    content = items["models"]["content"]
    # the held-out items went through the live-item path: each got a content vector after training
    assert content["fit_detail"]["live_items_encoded"] == held
    assert any("adding" in s for s in stages)
    for split in (items, shoppers):
        for m in split["models"].values():
            assert 0 <= m["metrics"]["NDCG@10"] <= m["metrics"]["HR@10"] <= 1
    # the content path finds held-out items at all; popularity of the training log could not
    assert content["metrics"]["HR@10"] > 0
    assert items["models"]["popularity-cold"]["metrics"]["HR@10"] > 0
    seg = shoppers["models"]["popularity"]["segments"]
    assert seg["short"]["users"] == seg["long"]["users"] == shoppers["notes"]["held_out_shoppers"]
    assert shoppers["segment_threshold"] == 0
    # the tower is cached for the next run (fitted on the training catalog, without the held-out items)
    assert list(cache.glob("content-cold-items-*/content_tower.npz"))
