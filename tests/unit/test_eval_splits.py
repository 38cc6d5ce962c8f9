"""Leave-one-out and temporal splits on a tiny hand-made log."""

import numpy as np
import pytest

from shelfwise.domain import EventType
from shelfwise.evaluation.splits import leave_one_out, temporal
from shelfwise.stores.protocols import EventLog

P, V, R = EventType.purchase_completed, EventType.product_viewed, EventType.remove_from_cart


def make_log(rows):
    """rows: (shopper, item, kind, ts), already ordered per shopper by time."""
    sh, it, kind, ts = zip(*rows)
    n = len(rows)
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    return EventLog(obj(sh), obj([""] * n), obj(it), np.array(kind, np.int8), np.array(ts, float), obj([""] * n),
                    np.ones(n, np.int32), np.full(n, np.nan))


LOG = make_log([
    ("u1", "a", P, 1), ("u1", "b", P, 2), ("u1", "c", P, 3), ("u1", "d", P, 4),
    ("u2", "a", V, 1), ("u2", "c", V, 2), ("u2", "c", R, 3), ("u2", "e", P, 5), ("u2", "x", R, 6),
    ("u3", "b", P, 1), ("u3", "e", P, 2),
    ("u4", "z", P, 1),
])


def items_of(log, shopper):
    return [str(i) for s, i in zip(log.shopper, log.item) if s == shopper]


def test_leave_one_out_test():
    s = leave_one_out(LOG, "test")
    assert s.users == ["u1", "u2", "u3"]  # u4 has one interaction: no history, not evaluated
    assert s.targets == [["d"], ["e"], ["e"]]
    assert items_of(s.train, "u1") == ["a", "b", "c"]
    # the removal (weight 0) is not an interaction; it stays in the history before the target and is dropped after
    assert items_of(s.train, "u2") == ["a", "c", "c"]
    assert items_of(s.train, "u3") == ["b"]
    assert items_of(s.train, "u4") == ["z"]  # kept for training
    assert s.now == 3.0  # requests are made at the newest training event


def test_leave_one_out_valid():
    s = leave_one_out(LOG, "valid")
    assert s.users == ["u1", "u2"]  # u3 has 2 interactions: no history before its second-to-last
    assert s.targets == [["c"], ["c"]]
    assert items_of(s.train, "u1") == ["a", "b"]
    assert items_of(s.train, "u2") == ["a"]
    assert items_of(s.train, "u3") == ["b", "e"]  # not evaluated: all its events train the model


def test_leave_one_out_rejects_unordered_log():
    bad = make_log([("u1", "a", P, 2), ("u1", "b", P, 1)])
    with pytest.raises(ValueError, match="ordered by time"):
        leave_one_out(bad)
    with pytest.raises(ValueError):
        leave_one_out(LOG, "train")


def test_temporal_split():
    s = temporal(LOG, split_time=3)
    # u1 after T: c, d; u2 after T: e (x is a removal); u3 has nothing after T; u4 neither
    assert s.users == ["u1", "u2"]
    assert s.targets == [["c", "d"], ["e"]]
    assert items_of(s.train, "u1") == ["a", "b"]
    assert s.now == 3


def test_temporal_excludes_known_items_and_counts_cold_shoppers():
    log = make_log([("u1", "a", P, 1), ("u1", "a", P, 5), ("u1", "b", P, 6), ("u2", "c", P, 7)])
    s = temporal(log, split_time=4)
    assert s.users == ["u1"] and s.targets == [["b"]]
    assert s.notes["cold_shoppers"] == 1
    keep = temporal(log, split_time=4, exclude_history=False)
    assert keep.targets == [["a", "b"]]


def test_temporal_default_time_leaves_the_test_fraction_after():
    log = make_log([("u1", f"i{t}", P, t) for t in range(10)])
    s = temporal(log, test_fraction=0.2)
    assert s.now == 8 and s.targets == [["i8", "i9"]]
