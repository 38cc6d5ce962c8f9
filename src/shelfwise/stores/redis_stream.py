"""Redis Streams event bus: ``XADD`` from the API, consumer groups in ``shelfwise worker``."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from typing import Callable, Sequence

import orjson
import redis
from pydantic import ValidationError

from shelfwise.domain import Event
from shelfwise.stores._dsn import split_options, with_scheme
from shelfwise.stores.bus import Backlog, BusTimeout, EventProcessor, consumer_name, dedupe, unknown_items
from shelfwise.stores.protocols import AppendResult

log = logging.getLogger("shelfwise.bus")


_STREAM_OPTIONS = {"stream", "group", "batch", "claim_idle_ms", "max_deliveries", "dead_maxlen"}


class RedisStreamBus:
    """Events appended to a Redis stream (``XADD`` in one ``MULTI``); ``shelfwise worker`` consumes them in a
    consumer group.

    ``ack="stream"``: ``publish`` returns once Redis holds the events — durable only as far as Redis persists
    them (``appendonly yes`` with ``appendfsync always`` survives a crash of the Redis host, ``everysec`` may lose
    the last second, no AOF loses everything since the last snapshot). ``ack="commit"``: ``publish`` waits until a
    worker committed the events to the event store (and reports the real duplicates), at the cost of the worker's
    latency; on timeout it raises ``BusTimeout`` and the events are still processed later.

    Consumers: ``XREADGROUP`` in batches; after the processor returns, ``XACK`` + ``XDEL`` (and dead letters,
    replies) in one ``MULTI``. Entries left pending by a dead consumer are taken over with ``XAUTOCLAIM`` once idle
    for ``claim_idle_ms``; entries that fail validation, or that failed ``max_deliveries`` times, go to the
    dead-letter stream ``<stream>:dead`` with the reason.

    DSN: ``redis-stream://host:6379/0?stream=shelfwise:events&group=shelfwise&batch=500&claim_idle_ms=30000``.
    """

    def __init__(self, dsn: str, processor: EventProcessor | None = None, ack: str = "stream",
                 ack_timeout_s: float = 10.0, known_items: Callable[[], set[str] | None] = lambda: None) -> None:
        url, opts = split_options(with_scheme(dsn, "redis"), _STREAM_OPTIONS)
        if ack not in ("stream", "commit"):
            raise ValueError(f"ack must be 'stream' or 'commit', not {ack!r}")
        self.stream = opts.get("stream", "shelfwise:events")
        self.dead = self.stream + ":dead"
        self.group = opts.get("group", "shelfwise")
        self.batch = int(opts.get("batch", 500))
        self.claim_idle_ms = int(opts.get("claim_idle_ms", 30_000))
        self.max_deliveries = int(opts.get("max_deliveries", 5))
        self.dead_maxlen = int(opts.get("dead_maxlen", 100_000))
        self.ack = ack
        self.ack_timeout_s = ack_timeout_s
        self.known_items = known_items
        self.url = url
        self.redis = redis.Redis.from_url(url, health_check_interval=30)
        self._probe: redis.Redis | None = None  # backlog reads: short timeouts, never behind a blocked publish
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def publish(self, events: Sequence[Event]) -> AppendResult:
        first, repeated = dedupe(events)
        if not first:
            return AppendResult(duplicates=repeated)
        reply = f"{self.stream}:reply:{uuid.uuid4().hex}" if self.ack == "commit" else None
        pipe = self.redis.pipeline(transaction=True)
        for ev in first:
            fields = {"e": ev.model_dump_json()}
            if reply:
                fields["r"] = reply
            pipe.xadd(self.stream, fields)
        pipe.execute()
        if reply is None:
            return AppendResult(stored=[ev.event_id for ev in first], duplicates=repeated,
                                unknown_items=unknown_items(first, self.known_items()))
        return self._await_commit(reply, [ev.event_id for ev in first], repeated)

    def _await_commit(self, reply: str, ids: list[str], repeated: list[str]) -> AppendResult:
        pending = set(ids)
        stored: set[str] = set()
        dupes: set[str] = set()
        unknown: set[str] = set()
        deadline = time.monotonic() + self.ack_timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusTimeout(f"{len(pending)} of {len(ids)} events were queued but not committed within "
                                 f"{self.ack_timeout_s:g} s; they will be processed (resending is safe)")
            got = self.redis.blpop([reply], timeout=max(0.01, min(left, 1.0)))
            if got is None:
                continue
            part = orjson.loads(got[1])
            stored.update(part["stored"])
            dupes.update(part["duplicates"])
            unknown.update(part["unknown"])
            pending -= set(part["stored"]) | set(part["duplicates"]) | set(part["dead"])
        self.redis.delete(reply)
        return AppendResult(stored=[i for i in ids if i in stored], duplicates=repeated + [i for i in ids if i in dupes],
                            unknown_items=sorted(unknown))

    def consumer(self, processor: EventProcessor, name: str | None = None) -> "RedisStreamConsumer":
        return RedisStreamConsumer(self, processor, name or consumer_name())

    def purge_shopper(self, shopper: str) -> list[tuple[str, int, str]]:
        """Delete a shopper's entries still in the stream (waiting, or pending in a consumer) and in its dead
        letters: [(place, removed, detail)]. Entries a consumer holds right now are also dropped by that consumer
        (the erasure marker is written before this runs)."""
        out = []
        for stream, place in ((self.stream, "event bus: queued events"),
                              (self.dead, "event bus: dead letters")):
            removed = 0
            start = "-"
            while True:
                batch = self.redis.xrange(stream, min=start, max="+", count=1000)
                if not batch:
                    break
                doomed = [entry_id for entry_id, fields in batch if _shopper(fields.get(b"e", b"")) == shopper]
                if doomed:
                    removed += self.redis.xdel(stream, *doomed)
                if len(batch) < 1000:
                    break
                start = "(" + batch[-1][0].decode()
            out.append((f"{place} ({stream})", removed, ""))
        return out

    def pending_count(self) -> int:
        return int(self.redis.xpending(self.stream, self.group)["pending"])

    def backlog(self, timeout_s: float = 2.0) -> Backlog:
        """One round trip: the stream's length (consumers delete what they acknowledge, so it holds what waits
        and what is pending), the group's pending count, the oldest entry (its id is the Redis time of its XADD)
        and the dead-letter stream's length."""
        if self._probe is None:
            self._probe = redis.Redis.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        pipe = self._probe.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xpending(self.stream, self.group)
        pipe.xrange(self.stream, count=1)
        pipe.xlen(self.dead)
        pipe.time()
        length, pending, first, dead, (sec, usec) = pipe.execute()
        waiting = int(pending["pending"])
        age = 0.0
        if first:
            age = max(0.0, sec + usec / 1e6 - int(first[0][0].split(b"-", 1)[0]) / 1000.0)
        return Backlog(waiting=max(0, int(length) - waiting), pending=waiting, oldest_age_s=age,
                       dead_letters=int(dead))

    def close(self) -> None:
        self.redis.close()
        if self._probe is not None:
            self._probe.close()


class RedisStreamConsumer:
    def __init__(self, bus: RedisStreamBus, processor: EventProcessor, name: str) -> None:
        self.bus = bus
        self.processor = processor
        self.name = name
        self.redis = redis.Redis.from_url(bus.url, health_check_interval=30, socket_timeout=None)
        self._next_claim = 0.0
        self._retry_own = True  # first poll re-reads this consumer's own pending entries (a restart)

    def _claim(self) -> list[tuple[bytes, dict]]:
        """Take over entries another consumer left pending for longer than claim_idle_ms."""
        b = self.bus
        res = self.redis.xautoclaim(b.stream, b.group, self.name, min_idle_time=b.claim_idle_ms, start_id="0-0",
                                    count=b.batch)
        entries, deleted = res[1], (res[2] if len(res) > 2 else [])  # Redis < 7 reports no deleted ids
        if deleted:  # pending but already deleted from the stream: nothing left to process
            self.redis.xack(b.stream, b.group, *deleted)
        return [(i, f) for i, f in entries if f is not None]

    def poll(self, timeout_s: float = 1.0) -> int:
        b = self.bus
        entries: list[tuple[bytes, dict]] = []
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(0.05, b.claim_idle_ms / 2000)
            entries = self._claim()
        if not entries and self._retry_own:
            got = self.redis.xreadgroup(b.group, self.name, {b.stream: "0"}, count=b.batch)
            entries = got[0][1] if got else []
            entries = [(i, f) for i, f in entries if f]
            self._retry_own = bool(entries)
        if not entries:
            try:
                got = self.redis.xreadgroup(b.group, self.name, {b.stream: ">"}, count=b.batch,
                                            block=max(1, int(timeout_s * 1000)))
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                b.ensure_group()
                return 0
            entries = got[0][1] if got else []
        if not entries:
            return 0
        try:
            self._handle(entries)
        except Exception:
            self._retry_own = True  # left pending: retried by this consumer, or claimed by another
            raise
        return len(entries)

    def _deliveries(self, ids: list[bytes]) -> dict[bytes, int]:
        rows = self.redis.xpending_range(self.bus.stream, self.bus.group, min=ids[0], max=ids[-1],
                                         count=len(ids) + 1000, consumername=self.name)
        return {r["message_id"]: int(r["times_delivered"]) for r in rows}

    def _handle(self, entries: list[tuple[bytes, dict]]) -> None:
        b = self.bus
        ids = [i for i, _ in entries]
        deliveries = self._deliveries(ids)
        events: list[Event] = []
        enqueued: list[float] = []
        replies: dict[str, list[str]] = defaultdict(list)
        dead: list[tuple[bytes, bytes, str]] = []  # (entry id, raw, reason)
        dead_replies: dict[str, list[str]] = defaultdict(list)
        for entry_id, fields in entries:
            raw = fields.get(b"e", b"")
            reply = fields.get(b"r")
            if deliveries.get(entry_id, 1) > b.max_deliveries:
                dead.append((entry_id, raw, f"failed {deliveries[entry_id] - 1} deliveries"))
                continue
            try:
                ev = Event.model_validate_json(raw)
            except ValidationError as exc:
                dead.append((entry_id, raw, "invalid event: " + "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in exc.errors())))
                if reply:
                    eid = _event_id(raw)
                    if eid:
                        dead_replies[reply.decode()].append(eid)
                continue
            events.append(ev)
            enqueued.append(int(entry_id.split(b"-", 1)[0]) / 1000.0)  # the entry id is the Redis time of XADD
            if reply:
                replies[reply.decode()].append(ev.event_id)
        result = self.processor.process(events, enqueued) if events else AppendResult()
        pipe = self.redis.pipeline(transaction=True)
        for entry_id, raw, reason in dead:
            pipe.xadd(b.dead, {"e": raw, "reason": reason, "id": entry_id, "consumer": self.name},
                      maxlen=b.dead_maxlen, approximate=True)
        pipe.xack(b.stream, b.group, *ids)
        pipe.xdel(b.stream, *ids)
        if replies or dead_replies:
            stored, dupes = set(result.stored), set(result.duplicates)
            unknown = set(result.unknown_items)
            by_id = {ev.event_id: ev for ev in events}
            for reply in set(replies) | set(dead_replies):
                mine = replies.get(reply, [])
                withheld = set(result.withheld)
                part = {"stored": [i for i in mine if i in stored], "duplicates": [i for i in mine if i in dupes],
                        "dead": dead_replies.get(reply, []) + [i for i in mine if i in withheld],
                        "unknown": sorted({it for i in mine for it, _, _ in by_id[i].lines() if it in unknown})}
                pipe.rpush(reply, orjson.dumps(part))
                pipe.expire(reply, 120)
        pipe.execute()
        if dead:
            log.warning("dead-lettered %d entries to %s", len(dead), b.dead)

    def close(self) -> None:
        self.redis.close()


def _event_id(raw: bytes) -> str | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    eid = doc.get("event_id") if isinstance(doc, dict) else None
    return eid if isinstance(eid, str) else None


def _shopper(raw: bytes) -> str | None:
    """The shopper key of a queued event (user id, else ``session:<id>``), without validating it."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("user_id"), str):
        return doc["user_id"]
    return f"session:{doc['session_id']}" if isinstance(doc.get("session_id"), str) else None
