"""Rate limiting by GCRA (the generic cell rate algorithm: a token bucket kept as one number per bucket, the
"theoretical arrival time"). A bucket of ``rate`` requests/s and ``burst`` lets ``burst`` requests through at once,
then one every ``1/rate`` seconds; a refused request takes nothing, so a client that backs off recovers.

``MemoryRateLimiter``: one process, at most ``max_entries`` buckets (least recently used dropped: a dropped
bucket is full again, the memory stays bounded whatever the number of clients). ``RedisRateLimiter``: a Lua
call on the Redis of the online state, shared by every API replica, each bucket a key with a TTL
(``{prefix}rl:<bucket>``), times taken from the Redis server's clock.

**Leases.** A round trip to Redis for every request costs each API process as much as a small part of the request
path itself. So a process takes the cells of a busy bucket set a few at a time: the script charges every bucket for
``n`` requests at once (as many as fit, at most the ``n`` asked for) and the process lets the next ``n - 1``
requests of that set through without asking, for at most ``lease_s``. A set starts at one cell a call; while its
leases run out within ``lease_s`` the next one doubles, up to ``max_lease`` and to a quarter of the smallest burst
and half of what the slowest bucket refills in ``lease_s``; an idle set shrinks back. Redis still counts every cell,
so replicas together never let more through than the limit; a leased cell that expires unused is lost, so a client
right at its limit may be refused up to ``max_lease - 1`` requests early, never late.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from typing import Sequence

from shelfwise.stores._dsn import split_options
from shelfwise.stores.breaker import unavailable

log = logging.getLogger(__name__)


def gcra(tat: float | None, now: float, rate: float, burst: int) -> tuple[float, float]:
    """(new theoretical arrival time, wait): wait > 0 means refused (retry after ``wait`` seconds)."""
    interval = 1.0 / rate
    new = max(tat if tat is not None else now, now) + interval
    wait = new - burst * interval - now
    return new, (wait if wait > 0 else 0.0)


class MemoryRateLimiter:
    def __init__(self, max_entries: int = 100_000, clock=time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, buckets: Sequence[tuple[str, float, int]]) -> float:
        with self._lock:
            now = self.clock()
            taken, wait = [], 0.0
            for name, rate, burst in buckets:
                if rate <= 0:
                    continue
                new, w = gcra(self._tat.get(name), now, rate, burst)
                wait = max(wait, w)
                taken.append((name, new))
            if wait > 0:
                return wait
            for name, new in taken:
                self._tat[name] = new
                self._tat.move_to_end(name)
            while len(self._tat) > self.max_entries:
                self._tat.popitem(last=False)
            return 0.0

    def __len__(self) -> int:
        return len(self._tat)


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local want = tonumber(ARGV[1])
local grant = want
local wait = 0
local start = {}
for i, key in ipairs(KEYS) do
  local interval = 1 / tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  start[i] = tat
  local fits = math.floor(burst - (tat - now) / interval + 1e-9)
  if fits < grant then grant = fits end
  local w = tat + interval - burst * interval - now
  if w > wait then wait = w end
end
if grant < 1 then return {0, tostring(wait)} end
for i, key in ipairs(KEYS) do
  local new = start[i] + grant / tonumber(ARGV[2 * i])
  redis.call('SET', key, string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 1000)
end
return {grant, '0'}
"""


class _Lease:
    __slots__ = ("left", "until", "size", "refused_until")

    def __init__(self) -> None:
        self.left = 0
        self.until = 0.0
        self.size = 1
        self.refused_until = 0.0  # Redis said wait: until then refused here, without asking again


class RedisRateLimiter:
    """DSN: the online state's ``redis://host:6379/0?prefix=shelfwise:`` (its other options are ignored). The
    buckets of one request are updated by one script on one server: with Redis Cluster, give each replica group a
    standalone Redis for the limiter. ``max_lease`` = 1: one call per request, no lease."""

    def __init__(self, dsn: str, max_lease: int = 16, lease_s: float = 0.25, max_entries: int = 100_000,
                 clock=time.monotonic) -> None:
        import redis

        url, opts = split_options(dsn, {"prefix", "ttl", "max_purchased"})
        self.url = url
        self.prefix = opts.get("prefix", "shelfwise:") + "rl:"
        self.redis = redis.Redis.from_url(url, health_check_interval=30, socket_timeout=2.0,
                                          socket_connect_timeout=2.0)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._async: dict[int, tuple] = {}  # event loop id -> (asyncio client, script)
        # while Redis is down, each replica limits on its own (never unlimited, never an error for the request)
        self.local = MemoryRateLimiter()
        self._down_logged = 0.0
        self.max_lease, self.lease_s, self.max_entries, self.clock = max(1, max_lease), lease_s, max_entries, clock
        self._leases: OrderedDict[tuple, _Lease] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # round trips to Redis (leases make them fewer than requests)

    def _call(self, buckets: Sequence[tuple[str, float, int]]) -> tuple[tuple, list[str], list] | None:
        live = tuple((name, float(rate), int(burst)) for name, rate, burst in buckets if rate > 0)
        if not live:
            return None
        args: list = []
        for _, rate, burst in live:
            args += [repr(rate), burst]
        return live, [self.prefix + name for name, _, _ in live], args

    def _leased(self, live: tuple) -> tuple[int, float]:
        """(0, 0) when a leased cell lets this request through, (0, wait) when Redis refused this set less than
        ``wait`` ago (no replica can make room sooner), else (cells to ask Redis for, 0)."""
        with self._lock:
            now = self.clock()
            lease = self._leases.get(live)
            if lease is None:
                lease = self._leases[live] = _Lease()
                while len(self._leases) > self.max_entries:
                    self._leases.popitem(last=False)
            else:
                self._leases.move_to_end(live)
            if lease.left > 0 and now < lease.until:
                lease.left -= 1
                return 0, 0.0
            if now < lease.refused_until:
                return 0, lease.refused_until - now
            if now < lease.until:  # used up in time: a busy set, lease more
                cap = min(self.max_lease, *(max(1, min(burst // 4, int(rate * self.lease_s / 2)))
                                            for _, rate, burst in live))
                lease.size = min(lease.size * 2, cap)
            else:
                lease.size = max(1, lease.size // 2)
            return lease.size, 0.0

    def _granted(self, live: tuple, reply) -> float:
        granted, wait = int(reply[0]), float(reply[1])
        if granted < 1:
            wait = wait if math.isfinite(wait) and wait > 0 else 1e-3
            with self._lock:
                lease = self._leases.get(live)
                if lease is not None:
                    lease.refused_until = self.clock() + wait
            return wait
        with self._lock:
            lease = self._leases.get(live)
            if lease is not None:
                now = self.clock()
                lease.left = (lease.left if now < lease.until else 0) + granted - 1
                lease.until = now + self.lease_s
        return 0.0

    def acquire(self, buckets: Sequence[tuple[str, float, int]]) -> float:
        call = self._call(buckets)
        if call is None:
            return 0.0
        want, wait = self._leased(call[0])
        if want == 0:
            return wait
        try:
            self.calls += 1
            return self._granted(call[0], self._acquire(keys=call[1], args=[want, *call[2]]))
        except Exception as exc:  # noqa: BLE001 - Redis down or unreachable
            return self._locally(buckets, exc)

    def _locally(self, buckets: Sequence[tuple[str, float, int]], exc: Exception) -> float:
        if not unavailable(exc):
            raise exc
        if time.monotonic() - self._down_logged > 10.0:
            self._down_logged = time.monotonic()
            log.warning("rate limiter: Redis unavailable (%s); limiting in this process meanwhile", exc)
        return self.local.acquire(buckets)

    async def acquire_async(self, buckets: Sequence[tuple[str, float, int]]) -> float:
        """``acquire`` for the API's event loop: one round trip, without blocking the loop or a thread hop."""
        import asyncio

        import redis.asyncio as aredis

        call = self._call(buckets)
        if call is None:
            return 0.0
        want, wait = self._leased(call[0])
        if want == 0:
            return wait
        loop = id(asyncio.get_running_loop())
        client = self._async.get(loop)
        if client is None:
            conn = aredis.Redis.from_url(self.url, health_check_interval=30, socket_timeout=2.0,
                                         socket_connect_timeout=2.0)
            client = self._async[loop] = (conn, conn.register_script(_ACQUIRE))
        try:
            self.calls += 1
            return self._granted(call[0], await client[1](keys=call[1], args=[want, *call[2]]))
        except Exception as exc:  # noqa: BLE001 - Redis down or unreachable
            return self._locally(buckets, exc)

    def close(self) -> None:
        self.redis.close()
