"""The API's micro-batcher: concurrent requests share pipeline calls, each gets its own answer."""

import asyncio
import threading
import time

import pytest

from shelfwise.api.batcher import MicroBatcher


def test_requests_queued_behind_a_busy_call_are_answered_together():
    calls: list[list[int]] = []
    release = threading.Event()

    def answer(reqs):
        calls.append(list(reqs))
        if len(calls) == 1:
            release.wait(5)  # the first call is slow: the others queue up meanwhile
        return [r * 10 for r in reqs]

    batcher = MicroBatcher(answer, max_batch=4)

    async def main():
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 10)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest)

    got = asyncio.run(main())
    batcher.close()
    assert got == [i * 10 for i in range(10)]
    assert calls[0] == [0] and [len(c) for c in calls[1:]] == [4, 4, 1]  # max_batch bounds a call
    assert sorted(r for c in calls for r in c) == list(range(10))
    assert batcher.batches == 4 and batcher.requests == 10


def test_a_lone_request_is_answered_at_once_and_errors_reach_every_request_of_the_batch():
    def answer(reqs):
        if "bad" in reqs:
            raise ValueError("broken batch")
        return [r.upper() for r in reqs]

    batcher = MicroBatcher(answer)

    async def main():
        t0 = time.perf_counter()
        one = await batcher.submit("a")
        waited = time.perf_counter() - t0
        bad = await asyncio.gather(batcher.submit("bad"), return_exceptions=True)
        again = await batcher.submit("b")  # the worker survives a failed batch
        return one, waited, bad, again

    one, waited, bad, again = asyncio.run(main())
    batcher.close()
    assert one == "A" and waited < 0.5
    assert isinstance(bad[0], ValueError) and again == "B"


def test_requests_of_several_event_loops_are_answered_on_their_own_loop():
    batcher = MicroBatcher(lambda reqs: [r + 1 for r in reqs])
    out = {}

    def run(n):
        out[n] = asyncio.run(batcher.submit(n))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    batcher.close()
    assert out == {n: n + 1 for n in range(5)}


@pytest.mark.parametrize("bad", [0, -3])
def test_max_batch_is_at_least_one(bad):
    b = MicroBatcher(lambda reqs: list(reqs), max_batch=bad)
    assert b.max_batch == 1
    assert asyncio.run(b.submit(7)) == 7
    b.close()
