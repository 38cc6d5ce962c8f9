"""Kafka event bus (confluent-kafka / librdkafka), for shops that already run Kafka.

Events are produced to one topic keyed by the shopper (user id, or ``session:<id>`` for anonymous shoppers) with
the murmur2 partitioner — the same partition for all of a shopper's events, compatible with Java clients — by an
idempotent producer with ``acks=all``: ``publish`` returns once every event of the batch is acknowledged by the
in-sync replicas. Consumers form a consumer group; offsets are committed synchronously only after the processor
returned (at-least-once; processing is idempotent by ``event_id``). A batch that failed is re-read from its first
offsets; invalid events go to the dead-letter topic ``<topic>.dead`` with the reason in a header.

DSN: ``kafka://broker1:9092,broker2:9092/shelfwise-events?group=shelfwise&batch=500`` — any other query parameter
is passed to librdkafka as is (e.g. ``security.protocol=SASL_SSL``, or ``group.protocol=consumer`` for the KIP-848
consumer groups of Kafka 4, which rebalance in well under a second). ``ack="commit"`` is not offered on Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence
from urllib.parse import parse_qsl, urlsplit

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from shelfwise.domain import Event
from shelfwise.stores.bus import Backlog, EventProcessor, consumer_name, dedupe, unknown_items
from shelfwise.stores.protocols import AppendResult

log = logging.getLogger("shelfwise.kafka")


def parse_kafka_dsn(dsn: str) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """(bootstrap servers, topic, shelfwise options, librdkafka config) of a kafka:// DSN."""
    parts = urlsplit(dsn)
    topic = parts.path.lstrip("/") or "shelfwise-events"
    ours, conf = {}, {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        (ours if k in {"group", "batch", "timeout_s"} else conf)[k] = v
    return parts.netloc, topic, ours, conf


class KafkaBus:
    def __init__(self, dsn: str, ack: str = "stream", known_items: Callable[[], set[str] | None] = lambda: None,
                 ack_timeout_s: float = 10.0) -> None:
        if ack != "stream":
            raise ValueError("the kafka:// bus acknowledges after the broker append only (ack='stream')")
        self.bootstrap, self.topic, opts, self.conf = parse_kafka_dsn(dsn)
        self.dead_topic = self.topic + ".dead"
        self.group = opts.get("group", "shelfwise")
        self.batch = int(opts.get("batch", 500))
        self.timeout_s = float(opts.get("timeout_s", ack_timeout_s))
        self.known_items = known_items
        self._producer: Producer | None = None
        self._probe: Consumer | None = None  # backlog reads (never subscribes: it does not join the group)
        self._lock = threading.Lock()

    def _base(self) -> dict:
        return {"bootstrap.servers": self.bootstrap, **self.conf}

    @property
    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = Producer({**self._base(), "acks": "all", "enable.idempotence": True,
                                           "linger.ms": 2, "partitioner": "murmur2_random",
                                           "compression.type": "lz4"})
            return self._producer

    def publish(self, events: Sequence[Event]) -> AppendResult:
        first, repeated = dedupe(events)
        if not first:
            return AppendResult(duplicates=repeated)
        produce_all(self.producer, self.topic, [(ev.shopper.encode(), ev.model_dump_json().encode(), None)
                                                for ev in first], self.timeout_s)
        return AppendResult(stored=[ev.event_id for ev in first], duplicates=repeated,
                            unknown_items=unknown_items(first, self.known_items()))

    def purge_shopper(self, shopper: str) -> list[tuple[str, int, str]]:
        """Kafka cannot delete single messages: the erasure marker (written first) makes every consumer drop the
        shopper's queued events; the messages themselves expire with the topic's retention.ms (keep it short, or
        turn on privacy.pseudonymize so the topic only ever holds keyed hashes)."""
        return [(f"event bus: queued events (Kafka topic {self.topic}, dead letters {self.dead_topic})", 0,
                 "Kafka cannot delete single messages: consumers drop this shopper's queued events (erasure "
                 "marker); they leave the topic with its retention.ms")]

    def consumer(self, processor: EventProcessor, name: str | None = None) -> "KafkaConsumer":
        return KafkaConsumer(self, processor, name or consumer_name())

    def backlog(self, timeout_s: float = 2.0) -> Backlog:
        """The group's lag (end offset minus committed offset, summed over the topic's partitions; a partition
        without a commit counts from its first offset) and the messages the dead-letter topic holds. Kafka has no
        per-message acknowledgement, hence no pending count, and reading the oldest waiting message's time would
        mean fetching it: both are None."""
        with self._lock:
            if self._probe is None:
                self._probe = Consumer({**self._base(), "group.id": self.group, "enable.auto.commit": False})
            probe = self._probe
        lag = 0
        topic = probe.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        if topic is not None and topic.error is None:
            committed = probe.committed([TopicPartition(self.topic, p) for p in topic.partitions], timeout=timeout_s)
            for tp in committed:
                low, high = probe.get_watermark_offsets(tp, timeout=timeout_s)
                lag += max(0, high - (tp.offset if tp.offset >= 0 else low))
        dead = 0
        topic = probe.list_topics(self.dead_topic, timeout=timeout_s).topics.get(self.dead_topic)
        if topic is not None and topic.error is None:
            for p in topic.partitions:
                low, high = probe.get_watermark_offsets(TopicPartition(self.dead_topic, p), timeout=timeout_s)
                dead += max(0, high - low)
        return Backlog(waiting=lag, pending=None, oldest_age_s=None, dead_letters=dead)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
        if self._probe is not None:
            self._probe.close()


def produce_all(producer: Producer, topic: str, messages: list[tuple[bytes, bytes, list | None]],
                timeout_s: float) -> None:
    """Produce and wait for every delivery report; raise if any message was not acknowledged."""
    state = {"left": len(messages), "error": None}

    def done(err, msg) -> None:
        state["left"] -= 1
        if err is not None and state["error"] is None:
            state["error"] = err

    for key, value, headers in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, on_delivery=done)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                producer.poll(0.05)
    deadline = time.monotonic() + timeout_s
    while state["left"] > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{state['left']} of {len(messages)} events not acknowledged by Kafka in {timeout_s} s")
        producer.poll(0.01)
    if state["error"] is not None:
        raise KafkaException(state["error"])


class KafkaConsumer:
    def __init__(self, bus: KafkaBus, processor: EventProcessor, name: str) -> None:
        self.bus = bus
        self.processor = processor
        conf = {**bus._base(), "group.id": bus.group, "client.id": name, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "enable.partition.eof": False}
        if conf.get("group.protocol", "classic") == "classic":  # KIP-848 groups set these on the broker
            conf.update({"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1_000})
        self.consumer = Consumer(conf)
        self.consumer.subscribe([bus.topic])
        self._dead: Producer | None = None

    def poll(self, timeout_s: float = 1.0) -> int:
        msgs = self.consumer.consume(num_messages=self.bus.batch, timeout=timeout_s)
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka consumer error: %s", err)
        if not good:
            return 0
        try:
            self._handle(good)
        except Exception:
            # Re-read the failed batch from its first offsets (the commit never happened).
            first: dict[tuple[str, int], int] = {}
            for m in good:
                key = (m.topic(), m.partition())
                first[key] = min(first.get(key, m.offset()), m.offset())
            for (topic, part), off in first.items():
                try:
                    self.consumer.seek(TopicPartition(topic, part, off))
                except KafkaException as exc:  # partition revoked meanwhile: its new owner re-reads it
                    log.warning("seek after failure: %s", exc)
            raise
        return len(good)

    def _handle(self, msgs) -> None:
        events: list[Event] = []
        enqueued: list[float] = []
        dead: list[tuple[bytes, bytes, list]] = []
        for m in msgs:
            try:
                events.append(Event.model_validate_json(m.value()))
                enqueued.append(m.timestamp()[1] / 1000.0)  # produce time (the API's clock)
            except ValidationError as exc:
                reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(event)'}: {e['msg']}" for e in exc.errors())
                dead.append((m.key() or b"", m.value() or b"",
                             [("reason", reason.encode()), ("source", f"{m.partition()}:{m.offset()}".encode())]))
        if events:
            self.processor.process(events, enqueued)
        if dead:
            if self._dead is None:
                self._dead = Producer({**self.bus._base(), "acks": "all", "enable.idempotence": True})
            produce_all(self._dead, self.bus.dead_topic, dead, self.bus.timeout_s)
            log.warning("dead-lettered %d events to %s", len(dead), self.bus.dead_topic)
        self.consumer.commit(asynchronous=False)

    def close(self) -> None:
        self.consumer.close()
