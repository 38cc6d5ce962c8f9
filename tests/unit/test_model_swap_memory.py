"""A swapped-out model is freed by reference counting alone.

The API moves the loaded model out of the cyclic garbage collector's reach (``Shelfwise.settle_heap``: gc.freeze)
and after a model swap collects only what is new, never the frozen heap (a full pass stalls every request for a
quarter of a second at 12k items). That is only safe while nothing in a served model is part of a reference cycle:
a cycle would keep each swapped-out model alive, frozen, for good. This test fails on such a cycle.
"""

from __future__ import annotations

import gc
import time
import weakref

from shelfwise.request import RecRequest


def _serve(eng) -> None:
    for placement, kw in (("homepage", {"shopper": "u1"}), ("homepage", {}), ("pdp_similar", {"item_id": "p1"}),
                          ("cart_upsell", {"cart": ["p1"]})):
        eng.recommend(RecRequest(placement, k=4, **kw))


def _swap(eng) -> None:
    if eng.encoder is not None:
        assert eng.encoder.flush(30)
    new = eng._load_pipeline()
    eng.pipeline, eng.last_good = new, eng.pipeline  # as refresh_model does
    _serve(eng)


def test_a_swapped_out_model_leaves_no_reference_cycle(trained_engine):
    eng = trained_engine
    _serve(eng)  # every lazily built part of the served model exists
    first = eng.pipeline
    parts = {"pipeline": first, "model": first.model, "items": first.items,
             **{f"source {n}": r for n, r in first.retrievers.items()},
             **{f"stage {s.name}": s for s in first.stages}}
    refs = {name: weakref.ref(obj) for name, obj in parts.items()}
    del parts, first
    gc.collect()
    gc.disable()
    try:
        _swap(eng)  # the first model is the fallback (last_good) now
        assert refs["pipeline"]() is not None
        _swap(eng)  # ... and now nothing needs it
        deadline = time.monotonic() + 10  # a closed content encoder's thread lets go when it ends
        while any(r() is not None for r in refs.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [name for name, r in refs.items() if r() is not None]
        assert alive == [], f"kept alive by a reference cycle (or a global): {alive}"
    finally:
        gc.enable()
    # the check is not blind: a cycle through the model keeps it alive without the cyclic collector
    held = eng.pipeline
    held.model.__dict__["_cycle"] = held  # pipeline -> model -> pipeline
    ref = weakref.ref(held)
    gc.disable()
    try:
        _swap(eng)
        _swap(eng)
        del held
        assert ref() is not None
    finally:
        gc.enable()
    gc.unfreeze()  # an API started by an earlier test in this process may have frozen the heap meanwhile
    gc.collect()
    assert ref() is None


def test_requests_leave_no_cyclic_garbage(trained_engine):
    """The API settles its heap every ``api.freeze_heap_s`` by freezing what is new without walking it
    (``Shelfwise.settle_heap``): a reference cycle a request left behind would stay frozen until the next full pass
    (``api.full_collect_s``). The request path leaves none (the ranker's predict, which this tiny shop does not
    train, is checked in ``test_ranking.py``)."""
    eng = trained_engine
    _serve(eng)
    gc.unfreeze()  # what earlier tests in this process left frozen (an API's heap) is collected now, not counted
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            _serve(eng)
            eng.recommend(RecRequest("homepage", shopper="u1", k=3, given=["p1", "p2", "p3", "p4"]))  # a re-rank
        gc.unfreeze()  # nothing frozen meanwhile (an API of an earlier test in this process) escapes the check
        gc.collect()
        # counted: objects of this package, numpy and ctypes (other threads of this test process, such as an earlier
        # test's engine, may leave their own cycles meanwhile)
        left = [type(o).__qualname__ for o in gc.garbage
                if type(o).__module__.split(".")[0] in ("shelfwise", "numpy", "ctypes", "_ctypes")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


def test_settling_freezes_without_a_pass_and_the_full_pass_frees_frozen_cycles(trained_engine):
    class Node:
        pass

    eng = trained_engine
    try:
        eng.settle_heap(everything=True)
        assert gc.get_threshold()[0] == eng.settings.api.gc_young_threshold
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle
        alive = weakref.ref(a)
        c, d = Node(), Node()
        c.other, d.other = d, c
        dead = weakref.ref(c)
        del c, d  # dies young, before any settling
        walked = gc.get_stats()[0]["collections"]
        eng.settle_heap(everything=False)
        assert gc.get_stats()[0]["collections"] == walked  # no pass: only the freeze
        assert not any(o is a for o in gc.get_objects())  # frozen: the collector's passes no longer walk it
        assert dead() is not None  # frozen too, dead
        del a, b  # dies frozen
        eng.settle_heap(everything=False)
        assert alive() is not None and dead() is not None
        eng.settle_heap(everything=True)
        assert alive() is None and dead() is None  # the full pass (every api.full_collect_s) frees both
    finally:
        gc.unfreeze()
