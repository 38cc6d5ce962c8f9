"""The drift and catalog-health samples of the exposure log (``monitor/samples.py``): whole answers drawn at random,
their slots at most the limit, each slot a real one, one slot per request for the drift checks."""

from __future__ import annotations

import time

import numpy as np

from shelfwise.monitor.samples import read_exposures, sample_rows
from shelfwise.monitor.windows import Window
from shelfwise.rules.log import Exposure, SQLiteExposureLog


def logged(tmp_path, n: int, now: float) -> dict[str, list[str]]:
    """n answers of 3 to 6 slots each, the last one outside the window; returns request id -> shown items."""
    rng = np.random.default_rng(0)
    log = SQLiteExposureLog(tmp_path / "x.db")
    shown = {}
    for i in range(n):
        k = int(rng.integers(3, 7))
        items = [f"p{int(j)}" for j in rng.choice(50, k, replace=False)]
        shown[f"r{i}"] = items
        log.record([Exposure(f"r{i}", now - 1000 + i, f"u{i % 7}", "homepage", items,
                             [1.0 - 0.1 * s for s in range(k)])])
    log.record([Exposure("outside", now - 5000, "u1", "homepage", ["p0"], [1.0])])
    log.close()
    return shown


def test_a_sample_is_real_slots_at_most_the_limit(tmp_path):
    now = time.time()
    shown = logged(tmp_path, 300, now)
    window = Window(now - 2000, now, "w")
    total = sum(len(v) for v in shown.values())
    every, about = sample_rows(tmp_path / "x.db", window, 10_000, np.random.default_rng(1))
    assert about == total and len(every) == total  # a limit above the window's slots: every slot, once
    assert sorted((r[0], r[4], r[5]) for r in every) == sorted(
        (rid, pos, item) for rid, items in shown.items() for pos, item in enumerate(items))
    assert all(r[6] == 1.0 - 0.1 * r[4] for r in every)  # each slot's own score
    some, about = sample_rows(tmp_path / "x.db", window, 100, np.random.default_rng(2))
    assert len(some) == 100 and len({(r[0], r[4]) for r in some}) == 100
    assert all(shown[r[0]][r[4]] == r[5] for r in some)
    assert abs(about - total) / total < 0.2  # the window's slots, estimated from the answers drawn
    one = read_exposures(tmp_path / "x.db", window, 100, np.random.default_rng(3))
    assert len(set(one.request_id)) == len(one) > 10  # one slot per request
    assert all(item in shown[rid] for rid, item in zip(one.request_id, one.item))
