"""EventBus contract: written once, run against the in-process bus, Redis Streams and Kafka (librdkafka's mock
cluster on loopback). Each bus feeds an EventProcessor (SQLite event store + in-process online state here; the
crash test runs the PostgreSQL + Redis combination)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import orjson
import pytest

from shelfwise.stores import open_event_bus
from shelfwise.stores.bus import EventProcessor
from shelfwise.stores.memory import MemoryOnlineState
from shelfwise.stores.sqlite import SQLiteStore
from tests.conftest import buy, view

from contract_helpers import kafka_dsn, redis_prefix


class Recorder(EventProcessor):
    """The real processor, remembering the order in which events were processed; can be told to fail."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []
        self.fail_after_commit = 0  # process (commit) then raise, as a worker dying before its ack
        self.lock = threading.Lock()

    def process(self, events, enqueued_at=None):
        result = super().process(events, enqueued_at)
        with self.lock:
            self.seen.extend(ev.event_id for ev in events)
            if self.fail_after_commit > 0:
                self.fail_after_commit -= 1
                raise RuntimeError("simulated crash after the commit, before the acknowledgement")
        return result


class Harness:
    def __init__(self, kind: str, dsn: str, tmp: Path) -> None:
        self.kind = kind
        self.dsn = dsn
        self.store = SQLiteStore(f"sqlite:///{tmp / 'bus.db'}")
        self.online = MemoryOnlineState(history_length=1000)
        self.processor = Recorder(self.store, self.online)
        self.buses = []
        self.consumers = []
        self.bus = self.open_bus()

    def open_bus(self):
        bus = open_event_bus(self.dsn, self.processor)
        self.buses.append(bus)
        return bus

    def consumer(self, name: str = "c0", processor: EventProcessor | None = None):
        c = self.bus.consumer(processor or self.processor, name)
        self.consumers.append(c)
        return c

    def drain(self, expected: int, consumers=None, timeout_s: float = 20.0) -> None:
        """Poll the consumers until the store holds ``expected`` events (in-process: already there)."""
        consumers = consumers if consumers is not None else ([self.consumer()] if not self.consumers else
                                                             self.consumers)
        deadline = time.monotonic() + timeout_s
        while self.store.count() < expected:
            assert time.monotonic() < deadline, f"only {self.store.count()} of {expected} events processed"
            for c in consumers:
                c.poll(timeout_s=0.1)

    def inject_raw(self, raw: bytes, key: bytes = b"u1") -> None:
        """An entry that fails validation downstream (e.g. written by an older producer)."""
        if self.kind == "redis-stream":
            self.bus.redis.xadd(self.bus.stream, {"e": raw})
        else:
            from shelfwise.stores.kafka_bus import produce_all

            produce_all(self.bus.producer, self.bus.topic, [(key, raw, None)], 10)

    def dead_letters(self, expected: int, timeout_s: float = 10.0) -> list[tuple[bytes, str]]:
        if self.kind == "redis-stream":
            rows = self.bus.redis.xrange(self.bus.dead)
            return [(f[b"e"], f[b"reason"].decode()) for _, f in rows]
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": self.bus.bootstrap, "group.id": "dead-reader",
                      "auto.offset.reset": "earliest", "group.protocol": "consumer", "log_level": 2})
        c.subscribe([self.bus.dead_topic])
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for m in c.consume(10, 0.2):
                if not m.error():
                    out.append((m.value(), dict(m.headers())["reason"].decode()))
        c.close()
        return out

    def close(self) -> None:
        for c in self.consumers:
            c.close()
        for b in self.buses:
            b.close()
        self.store.close()


@pytest.fixture(params=["inprocess", "redis-stream", "kafka"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "inprocess":
        dsn = "inprocess://"
    elif request.param == "redis-stream":
        url = request.getfixturevalue("redis_url")
        base, prefix = url.split("?")[0], redis_prefix(url)
        dsn = (f"redis-stream{base[len('redis'):]}?stream={prefix}events&group=g&claim_idle_ms=300&batch=100"
               "&max_deliveries=3")
    else:
        dsn = kafka_dsn(request.getfixturevalue("kafka_bootstrap"), batch="100")
    h = Harness(request.param, dsn, tmp_path)
    yield h
    h.close()


def events(n: int, prefix: str = "e", shoppers: int = 7) -> list:
    return [view(f"{prefix}{i}", f"u{i % shoppers}", f"p{i % 5}", i) for i in range(n)]


def test_published_events_reach_store_and_online_state(harness):
    harness.online.put({"u1": harness.store.history(["u1"], 1000)["u1"]})  # u1 is cached, the others not
    batch = events(300) + [buy("b1", "u1", ["p1", "p2"], 400)]
    r = harness.bus.publish(batch)
    assert r.stored == [ev.event_id for ev in batch] and r.duplicates == []
    harness.drain(301)
    cached = harness.online.get(["u1"])["u1"]
    assert [i.item_id for i in cached.recent] == [i.item_id for i in harness.store.history(["u1"], 1000)["u1"].recent]
    assert cached.purchased == {"p1", "p2"} and harness.online.get(["u2"])["u2"] is None


def test_per_shopper_order_is_kept(harness):
    """One consumer sees each shopper's events in the order they were published (Kafka: one partition each)."""
    batch = events(400, shoppers=9)
    for start in range(0, 400, 50):
        harness.bus.publish(batch[start:start + 50])
    harness.drain(400)
    for s in range(9):
        mine = [ev.event_id for ev in batch if ev.user_id == f"u{s}"]
        assert [e for e in harness.processor.seen if e in set(mine)] == mine


def test_duplicates_are_processed_once(harness):
    batch = events(50)
    r = harness.bus.publish(batch + batch[:5])
    assert len(r.stored) == 50 and r.duplicates == [ev.event_id for ev in batch[:5]]
    harness.bus.publish(batch[10:20])  # a client retry
    harness.drain(50)
    if harness.kind != "inprocess":
        for c in harness.consumers:  # let the retried entries through too
            c.poll(timeout_s=0.5)
    assert harness.store.count() == 50


def test_concurrent_publishers(harness):
    batch = events(800, shoppers=31)
    publishers = [harness.open_bus() for _ in range(3)] + [harness.bus]

    def publish(i: int) -> None:
        for start in range(i * 200, i * 200 + 200, 40):
            publishers[i].publish(batch[start:start + 40])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    harness.drain(800)
    assert harness.store.count() == 800


def test_recovery_after_a_crash_between_commit_and_ack(harness):
    """The first processing commits, then dies before acknowledging; the events are redelivered (another
    consumer takes them over) and end up stored exactly once, with the online state not missing them."""
    harness.online.put({"u1": harness.store.history(["u1"], 1000)["u1"]})
    batch = events(60)
    harness.processor.fail_after_commit = 1
    if harness.kind == "inprocess":
        with pytest.raises(RuntimeError):
            harness.bus.publish(batch)  # nothing was acknowledged: the client retries
        harness.bus.publish(batch)
    else:
        harness.bus.publish(batch)
        doomed = harness.consumer("doomed")
        deadline = time.monotonic() + 20
        while harness.processor.fail_after_commit and time.monotonic() < deadline:
            try:
                doomed.poll(timeout_s=0.2)
            except RuntimeError:
                pass
        assert harness.processor.fail_after_commit == 0
        if harness.kind == "kafka":
            doomed.consumer.close()  # dies without committing: the group hands its partitions over
            harness.consumers.remove(doomed)
        harness.drain(60, consumers=[harness.consumer("rescuer")])
        rescuer = harness.consumers[-1]
        for _ in range(5):
            rescuer.poll(timeout_s=0.3)  # whatever is left of the dead batch is redelivered and acknowledged
        if harness.kind == "redis-stream":
            assert harness.bus.pending_count() == 0 and harness.bus.redis.xlen(harness.bus.stream) == 0
    assert harness.store.count() == 60
    cached = harness.online.get(["u1"])["u1"]
    truth = harness.store.history(["u1"], 1000)["u1"]
    assert cached is None or cached.recent == truth.recent  # forgotten (reloaded on read) or complete


@pytest.mark.parametrize("harness", ["redis-stream", "kafka"], indirect=True)  # in-process: the API validates
def test_invalid_events_go_to_the_dead_letter_stream(harness):
    bad = orjson.dumps({"event_id": "bad1", "type": "product_viewed", "timestamp": "2026-11-01T00:00:00Z",
                        "user_id": "u1"})  # no item_id
    harness.inject_raw(bad)
    harness.inject_raw(b"not json at all")
    harness.bus.publish(events(10))
    harness.drain(10)
    consumer = harness.consumers[0]
    for _ in range(3):
        consumer.poll(timeout_s=0.2)
    dead = harness.dead_letters(2)
    assert sorted(raw for raw, _ in dead) == sorted([bad, b"not json at all"])
    assert any("item_id" in reason for _, reason in dead)
    assert harness.store.count() == 10


@pytest.mark.parametrize("harness", ["redis-stream"], indirect=True)  # Kafka re-reads a failed batch by offset
def test_poison_entries_are_dead_lettered_after_max_deliveries(harness):

    class Broken(EventProcessor):
        def process(self, events, enqueued_at=None):
            raise RuntimeError("event store down")

    harness.bus.publish(events(5))
    broken = harness.consumer("broken", processor=Broken(harness.store, harness.online))
    deadline = time.monotonic() + 10
    while not harness.bus.redis.xlen(harness.bus.dead) and time.monotonic() < deadline:
        try:
            broken.poll(timeout_s=0.1)
        except RuntimeError:
            pass
    dead = harness.dead_letters(5)
    assert len(dead) == 5 and all("deliveries" in reason for _, reason in dead)
    assert harness.bus.pending_count() == 0


@pytest.mark.parametrize("harness", ["redis-stream"], indirect=True)  # in-process always answers after the commit
def test_ack_after_commit_reports_real_outcomes(harness):
    bus = open_event_bus(harness.dsn, harness.processor, ack="commit", ack_timeout_s=10)
    harness.buses.append(bus)
    worker = harness.consumer("w")
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            worker.poll(timeout_s=0.1)

    t = threading.Thread(target=work)
    t.start()
    try:
        first = bus.publish(events(20))
        assert len(first.stored) == 20 and harness.store.count() == 20  # committed when publish returned
        again = bus.publish(events(25))
        assert again.stored == [f"e{i}" for i in range(20, 25)] and len(again.duplicates) == 20
    finally:
        stop.set()
        t.join()
    slow = open_event_bus(harness.dsn, harness.processor, ack="commit", ack_timeout_s=0.3)
    harness.buses.append(slow)
    from shelfwise.stores.bus import BusTimeout

    with pytest.raises(BusTimeout):
        slow.publish(events(3, prefix="late"))  # no worker running: queued, not committed in time
    harness.drain(28)


@pytest.mark.parametrize("harness", ["redis-stream"], indirect=True)  # Kafka: the recovery test above
def test_a_restarted_consumer_resumes_its_own_pending_entries_at_once(harness):
    """A worker restarted under the same name (same host and pid slot) first re-reads what it held, without
    waiting for claim_idle_ms."""
    harness.bus.publish(events(30))
    b = harness.bus
    taken = b.redis.xreadgroup(b.group, "same-name", {b.stream: ">"}, count=30)  # then the process dies
    assert len(taken[0][1]) == 30 and b.pending_count() == 30
    b.claim_idle_ms = 3_600_000  # nobody else may take them over
    restarted = harness.consumer("same-name")
    assert restarted.poll(timeout_s=0.1) == 30
    assert harness.store.count() == 30 and b.pending_count() == 0


def backlog_when(harness, check, timeout_s: float = 10.0):
    """The bus's backlog once ``check`` holds for it (Kafka's committed offsets and watermarks settle within a
    moment of the commit)."""
    deadline = time.monotonic() + timeout_s
    got = harness.bus.backlog()
    while not check(got) and time.monotonic() < deadline:
        time.sleep(0.1)
        got = harness.bus.backlog()
    return got


def test_backlog_counts_what_waits_what_is_pending_and_the_dead_letters(harness):
    """What a metrics scrape reads: every published event waits until a consumer takes it; a batch a consumer
    holds without acknowledging is pending (Redis Streams); processed entries leave the backlog; invalid entries
    are counted as dead letters."""
    empty = harness.bus.backlog()
    assert (empty.waiting, empty.dead_letters) == (0, 0)
    harness.bus.publish(events(40))
    if harness.kind == "inprocess":  # processed before publish returned: nothing ever waits
        assert harness.bus.backlog() == empty and harness.store.count() == 40
        return
    waiting = backlog_when(harness, lambda b: b.waiting == 40)
    assert waiting.waiting == 40 and waiting.dead_letters == 0
    if harness.kind == "redis-stream":
        time.sleep(0.05)
        assert waiting.pending == 0 and harness.bus.backlog().oldest_age_s >= 0.05
        b = harness.bus
        b.redis.xreadgroup(b.group, "holder", {b.stream: ">"}, count=15)  # taken, not acknowledged
        held = harness.bus.backlog()
        assert (held.waiting, held.pending) == (25, 15)
        b.claim_idle_ms = 0  # let the test's consumer take the held entries over at once
    else:
        assert waiting.pending is None and waiting.oldest_age_s is None
    harness.inject_raw(b"not json at all")
    consumer = harness.consumer()
    harness.drain(40, [consumer])
    for _ in range(3):
        consumer.poll(timeout_s=0.2)
    done = backlog_when(harness, lambda b: b.waiting == 0 and b.dead_letters == 1)
    assert (done.waiting, done.dead_letters) == (0, 1)
    if harness.kind == "redis-stream":
        assert done.pending == 0 and done.oldest_age_s == 0.0
