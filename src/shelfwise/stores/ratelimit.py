"""Rate limiting by GCRA (the generic cell rate algorithm: a token bucket kept as one number per bucket, the
"theoretical arrival time"). A bucket of ``rate`` requests/s and ``burst`` lets ``burst`` requests through at once,
then one every ``1/rate`` seconds; a refused request takes nothing, so a client that backs off recovers.

``MemoryRateLimiter``: one process, at most ``max_entries`` buckets (least recently used dropped: a dropped
bucket is full again, the memory stays bounded whatever the number of clients). ``RedisRateLimiter``: one Lua
call per request on the Redis of the online state, shared by every API replica, each bucket a key with a TTL
(``{prefix}rl:<bucket>``), times taken from the Redis server's clock.
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
local wait = 0
local new = {}
for i, key in ipairs(KEYS) do
  local interval = 1 / tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  new[i] = tat + interval
  local w = new[i] - burst * interval - now
  if w > wait then wait = w end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%.6f', new[i]), 'PX', math.ceil((new[i] - now) * 1000) + 1000)
end
return '0'
"""


class RedisRateLimiter:
    """DSN: the online state's ``redis://host:6379/0?prefix=shelfwise:`` (its other options are ignored). The
    buckets of one request are updated by one script on one server: with Redis Cluster, give each replica group a
    standalone Redis for the limiter."""

    def __init__(self, dsn: str) -> None:
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

    def _call(self, buckets: Sequence[tuple[str, float, int]]) -> tuple[list[str], list] | None:
        live = [(name, rate, burst) for name, rate, burst in buckets if rate > 0]
        if not live:
            return None
        args: list = []
        for _, rate, burst in live:
            args += [repr(float(rate)), int(burst)]
        return [self.prefix + name for name, _, _ in live], args

    @staticmethod
    def _wait(reply) -> float:
        wait = float(reply)
        return wait if math.isfinite(wait) and wait > 0 else 0.0

    def acquire(self, buckets: Sequence[tuple[str, float, int]]) -> float:
        call = self._call(buckets)
        if call is None:
            return 0.0
        try:
            return self._wait(self._acquire(keys=call[0], args=call[1]))
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
        loop = id(asyncio.get_running_loop())
        client = self._async.get(loop)
        if client is None:
            conn = aredis.Redis.from_url(self.url, health_check_interval=30, socket_timeout=2.0,
                                         socket_connect_timeout=2.0)
            client = self._async[loop] = (conn, conn.register_script(_ACQUIRE))
        try:
            return self._wait(await client[1](keys=call[0], args=call[1]))
        except Exception as exc:  # noqa: BLE001 - Redis down or unreachable
            return self._locally(buckets, exc)

    def close(self) -> None:
        self.redis.close()
