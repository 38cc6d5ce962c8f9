"""Rate limiter contract: the in-process GCRA and the Redis one (shared by replicas) behave the same."""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import pytest

from shelfwise.stores import open_rate_limiter
from shelfwise.stores.ratelimit import MemoryRateLimiter


@pytest.fixture(params=["memory", "redis"])
def limiter_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    yield "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")


def _name() -> str:
    return "t-" + uuid.uuid4().hex[:8]


def test_burst_then_429_then_recovery(limiter_dsn):
    rl = open_rate_limiter(limiter_dsn)
    b = _name()
    # 2 per second: a token comes back every 500 ms, so a stall of the test (a loaded machine) shorter than that
    # cannot refill the bucket between the calls (at 20 per second, one of 50 ms did: the refusal did not come)
    assert [rl.acquire([(b, 2.0, 3)]) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.acquire([(b, 2.0, 3)])
    assert 0.0 < wait <= 0.501  # one request every 500 ms once the burst is spent
    assert rl.acquire([(b, 2.0, 3)]) > 0.0  # a refused request takes nothing ...
    time.sleep(wait + 0.01)
    assert rl.acquire([(b, 2.0, 3)]) == 0.0  # ... so the client recovers after waiting
    assert rl.acquire([(_name(), 2.0, 3)]) == 0.0  # other buckets are independent


def test_all_or_nothing_across_buckets(limiter_dsn):
    rl = open_rate_limiter(limiter_dsn)
    tight, loose = _name(), _name()
    # one token per 100 s: no stall of the test refills a bucket between the calls
    assert rl.acquire([(tight, 0.01, 1), (loose, 0.01, 2)]) == 0.0
    assert rl.acquire([(tight, 0.01, 1), (loose, 0.01, 2)]) > 50  # refused by the tight bucket
    assert rl.acquire([(loose, 0.01, 2)]) == 0.0  # the loose one was not charged for the refused request
    assert rl.acquire([(loose, 0.01, 2)]) > 0.0


def test_zero_rate_means_unlimited(limiter_dsn):
    rl = open_rate_limiter(limiter_dsn)
    b = _name()
    assert all(rl.acquire([(b, 0.0, 1)]) == 0.0 for _ in range(50))
    assert rl.acquire([]) == 0.0


def test_memory_limiter_is_bounded():
    clock = [0.0]
    rl = MemoryRateLimiter(max_entries=100, clock=lambda: clock[0])
    for i in range(1000):
        rl.acquire([(f"client-{i}", 1.0, 1)])
    assert len(rl) == 100
    assert rl.acquire([("client-999", 1.0, 1)]) > 0  # recent buckets kept
    assert rl.acquire([("client-0", 1.0, 1)]) == 0.0  # the oldest were dropped (full again)
    clock[0] += 1.0
    assert rl.acquire([("client-999", 1.0, 1)]) == 0.0


def test_redis_async_path_shares_the_buckets(redis_url):
    """The API's event loop uses an asyncio client; it and the blocking client see the same buckets."""
    import asyncio

    rl = open_rate_limiter(redis_url)
    b = _name()

    async def go():
        return [await rl.acquire_async([(b, 1.0, 2)]) for _ in range(2)]

    assert asyncio.run(go()) == [0.0, 0.0]
    assert rl.acquire([(b, 1.0, 2)]) > 0.5
    assert asyncio.run(rl.acquire_async([])) == 0.0


def test_redis_leases_cut_round_trips_but_not_the_limit(redis_url):
    """Busy bucket sets are leased a few cells a call; Redis still counts every cell, so two replicas together never
    let more through than the bucket holds."""
    from shelfwise.stores.ratelimit import RedisRateLimiter

    a, b = RedisRateLimiter(redis_url, max_lease=16), RedisRateLimiter(redis_url, max_lease=16)
    name = _name()
    start = time.monotonic()
    admitted = sum(rl.acquire([(name, 100.0, 400)]) == 0.0 for _ in range(300) for rl in (a, b))
    elapsed = time.monotonic() - start
    # 600 requests: ~400 admitted in leases of up to 12 cells (a quarter-second's refill / 2), and a refusal is
    # remembered for its wait instead of asking Redis again
    assert a.calls + b.calls < 120
    assert admitted <= 400 + 100 * elapsed + 1  # never more than burst + refill, whatever the leases
    assert admitted >= 400 - 2 * 11  # at most a lease's worth lost per replica


def test_redis_lease_lapses_and_starts_small(redis_url):
    from shelfwise.stores.ratelimit import RedisRateLimiter

    clock = [0.0]
    rl = RedisRateLimiter(redis_url, max_lease=16, clock=lambda: clock[0])
    name = _name()
    assert rl.acquire([(name, 1000.0, 2000)]) == 0.0 and rl.calls == 1  # a new set asks for one cell
    for _ in range(40):
        assert rl.acquire([(name, 1000.0, 2000)]) == 0.0
    assert rl.calls <= 7  # 1, 2, 4, 8, 16, 16 ... cells a call
    clock[0] += 1.0  # the lease lapsed: its cells are not used, the next request asks Redis
    calls = rl.calls
    assert rl.acquire([(name, 1000.0, 2000)]) == 0.0 and rl.calls == calls + 1
    one = RedisRateLimiter(redis_url, max_lease=1)  # no lease: a call per request
    assert all(one.acquire([(_name(), 1000.0, 2000)]) == 0.0 for _ in range(5)) and one.calls == 5
