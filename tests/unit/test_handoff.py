import threading
import time

from shelfwise.stores.handoff import Handoff


def test_items_arrive_in_order_in_batches_and_a_full_queue_refuses_and_counts():
    q = Handoff(max_items=5)
    assert all(q.put(i) for i in range(5))
    assert q.put(99) is False and q.dropped == 1 and len(q) == 5
    assert q.take(3) == [0, 1, 2] and q.take(3) == [3, 4] and len(q) == 0
    assert q.put(5) and q.take(10) == [5]


def test_take_waits_for_the_first_item_then_lingers_to_gather_more():
    q = Handoff(max_items=100, linger_s=0.3)
    got: list = []
    t = threading.Thread(target=lambda: got.append((q.take(100), time.monotonic())))
    t.start()
    time.sleep(0.1)
    assert not got  # nothing queued: still waiting
    t0 = time.monotonic()
    q.put("a")
    time.sleep(0.05)
    q.put("b")  # arrives while the writer lingers: same batch
    t.join(5)
    items, at = got[0]
    assert items == ["a", "b"] and at - t0 >= 0.25


def test_a_control_item_cuts_the_linger_short_and_is_never_refused():
    q = Handoff(max_items=1, linger_s=30.0)
    assert q.put("row") and not q.put("refused")
    q.put_control("flush")
    t0 = time.monotonic()
    assert q.take(10) == ["row", "flush"] and time.monotonic() - t0 < 5


def test_a_backlog_beyond_one_batch_is_taken_without_lingering_again():
    q = Handoff(max_items=100, linger_s=30.0)
    for i in range(5):
        q.put(i)
    q.put_control("flush")
    assert q.take(4) == [0, 1, 2, 3]
    t0 = time.monotonic()
    assert q.take(4) == [4, "flush"] and time.monotonic() - t0 < 5


def test_many_producers_lose_nothing():
    q = Handoff(max_items=1_000_000, linger_s=0.01)
    out: list = []
    stop = threading.Event()

    def writer():
        while not (stop.is_set() and not len(q)):
            out.extend(q.take(500)) if len(q) or not stop.is_set() else None

    producers = [threading.Thread(target=lambda k=k: [q.put((k, i)) for i in range(20_000)]) for k in range(4)]
    w = threading.Thread(target=writer)
    w.start()
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    q.put_control("end")
    w.join(10)
    rows = [x for x in out if x != "end"]
    assert len(rows) == 80_000 and len(set(rows)) == 80_000
    for k in range(4):  # each producer's items in its own order
        mine = [i for kk, i in rows if kk == k]
        assert mine == sorted(mine)
