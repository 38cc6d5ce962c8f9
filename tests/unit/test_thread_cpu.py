"""Per-thread CPU time (observability/threads.py): what the API's thread CPU metric is read from."""

import sys
import threading
import time

import pytest

from shelfwise.observability.threads import ThreadCPU, thread_name

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread CPU is read from /proc (Linux)")


def test_a_pools_numbered_threads_count_under_one_name():
    assert thread_name("shelfwise-batch_0") == thread_name("shelfwise-batch_12") == "shelfwise-batch"
    assert thread_name("MainThread") == "MainThread"
    assert thread_name("AnyIO worker thread") == "AnyIO worker thread"


def _burn(seconds: float, done: threading.Event, hold: threading.Event) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(i * i for i in range(1000))
    done.set()
    hold.wait(10)  # alive until read: an ended thread is not seen


def test_cpu_is_counted_for_the_thread_that_spent_it_and_only_once():
    cpu = ThreadCPU()
    cpu.delta()  # from here on
    done, hold = [threading.Event(), threading.Event()], threading.Event()
    workers = [threading.Thread(target=_burn, args=(0.3, d, hold), name=f"burner_{i}") for i, d in enumerate(done)]
    for t in workers:
        t.start()
    try:
        assert all(d.wait(20) for d in done)
        first = cpu.delta()
        # two threads of one pool, 0.3 s each (clock ticks of 10 ms: allow a few)
        assert 0.5 <= first.get("burner", 0.0) <= 1.5, first
        assert first.get("MainThread", 0.0) < 0.5  # it slept
        again = cpu.delta()
        assert again.get("burner", 0.0) < 0.05, again  # counted once: the second read has only what came since
    finally:
        hold.set()
        for t in workers:
            t.join(10)
