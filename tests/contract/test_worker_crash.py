"""Crash test: a `shelfwise worker` is SIGKILLed while it holds a batch; another worker takes over; every event the
API acknowledged is in the PostgreSQL event store exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from shelfwise.stores.bus import EventProcessor
from shelfwise.stores.redis_stream import RedisStreamBus
from shelfwise.stores.memory import MemoryOnlineState
from shelfwise.stores.postgres import PostgresStore
from tests.conftest import view

from contract_helpers import redis_prefix

N = 12_000
BATCH = 1500


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP, and wait until the kernel says the process is stopped (delivery is asynchronous)."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, "the worker did not stop"
        time.sleep(0.001)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shelfwise.cli", "worker", "--consumers", "1"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_sigkill_mid_batch_loses_and_duplicates_nothing(pg_dsn, redis_url, tmp_path):
    prefix = redis_prefix(redis_url)
    bus_dsn = (f"redis-stream{redis_url.split('?')[0][len('redis'):]}?stream={prefix}events&group=workers"
               f"&claim_idle_ms=500&batch={BATCH}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    env.update({"SHELFWISE_DATA_DIR": str(tmp_path / "data"), "SHELFWISE_STORES__EVENTS": pg_dsn,
                "SHELFWISE_STORES__ONLINE": redis_url, "SHELFWISE_STORES__BUS": bus_dsn,
                "PYTHONUNBUFFERED": "1"})
    store = PostgresStore(pg_dsn)
    api = RedisStreamBus(bus_dsn, EventProcessor(store, MemoryOnlineState()))  # what the API publishes with
    acknowledged: list[str] = []
    events = [view(f"k{i}", f"u{i % 500}", f"p{i % 40}", i / 60) for i in range(N)]
    for start in range(0, N, 500):
        acknowledged.extend(api.publish(events[start:start + 500]).stored)
    assert len(acknowledged) == N

    log = tmp_path / "worker.log"
    victim = start_worker(env, log)
    killed_holding = 0
    try:
        def mid_batch() -> bool:  # busy with a batch, some committed, and the batch in flight cannot be the last
            return api.pending_count() > 0 and N // 5 < store.count() < N - 2 * BATCH

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if mid_batch():
                # Frozen, the worker cannot acknowledge or take a batch between this check and the kill (it could,
                # between a check and a kill of a running process: then it held nothing when killed)
                freeze(victim)
                if mid_batch():
                    victim.send_signal(signal.SIGKILL)
                    break
                victim.send_signal(signal.SIGCONT)
            assert victim.poll() is None, log.read_text()
            time.sleep(0.002)
        victim.wait(10)
        assert victim.returncode == -signal.SIGKILL
        killed_holding = api.pending_count()  # entries the dead worker took and never acknowledged
        committed_at_kill = store.count()
        assert killed_holding > 0 and 0 < committed_at_kill < N
    finally:
        if victim.poll() is None:
            victim.kill()

    rescuer = start_worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while (store.count() < N or api.pending_count()) and time.monotonic() < deadline:
            assert rescuer.poll() is None, log.read_text()
            time.sleep(0.05)
    finally:
        rescuer.send_signal(signal.SIGTERM)  # graceful: finishes its batch and exits
        rescuer.wait(20)
    assert rescuer.returncode == 0, log.read_text()

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT event_id, count(*) FROM events GROUP BY event_id").fetchall()
    assert len(rows) == N and all(c == 1 for _, c in rows)
    assert {e for e, _ in rows} == set(acknowledged)
    assert api.pending_count() == 0 and api.redis.xlen(api.stream) == 0
    assert "Traceback" not in log.read_text()
    api.close()
    store.close()
