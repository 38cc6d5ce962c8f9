"""Erasure on the scale-out backends: PostgreSQL event store, Redis online state and a Redis stream bus (and a
Kafka topic for queued events). After the erasure, every table, every Redis key and stream entry, and every file
under the data directory is searched for the shopper's id (raw and pseudonymised): nothing may be found."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from contract_helpers import kafka_dsn, redis_prefix
from shelfwise.domain import ConsentUpdate, Event, Preferences
from shelfwise.request import RecRequest
from shelfwise.privacy.pseudonym import Pseudonymizer
from shelfwise.service import Shelfwise
from shelfwise.settings import load_settings
from shelfwise.training import train
from shelfwise.worker import Worker
from tests.conftest import tiny_catalog, tiny_events

WHO = "shopper/Ä-42 😀"
KEY = "k" * 24


def ev(i: int, user: str = WHO, item: str = "p1", minute: int = 0) -> Event:
    return Event(event_id=f"so-{i}", type="product_viewed", user_id=user,
                 session_id="sess/7" if user == WHO else f"{user}-s", item_id=item,
                 timestamp=f"2026-11-20T10:{minute:02d}:00Z")


def forms(needles: list[str]) -> set[str]:
    out = set()
    for n in needles:
        out |= {n, json.dumps(n).strip('"'), json.dumps(n, ensure_ascii=False).strip('"')}
    return out


def postgres_hits(dsn: str, needles: list[str]) -> list[str]:
    """Every row of every table of the database, as text, that contains a needle."""
    hits = []
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for t in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{t}" t'):
                hits += [f"{t}: {row[:200]}" for n in forms(needles) if n in row]
    return hits


def redis_hits(url: str, prefix: str, needles: list[str]) -> list[str]:
    """Every key under the test's prefix (names and values: strings, streams, lists, hashes)."""
    r = redis.Redis.from_url(url.split("?")[0])
    hits = []
    wanted = [n.encode() for n in forms(needles)]
    for key in r.scan_iter(match=prefix + "*", count=1000):
        kind = r.type(key)
        if kind == b"string":
            values = [r.get(key) or b""]
        elif kind == b"stream":
            values = [orjson.dumps({k.decode(): v.decode() for k, v in f.items()}) for _, f in r.xrange(key)]
        elif kind == b"list":
            values = r.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [k + b"=" + v for k, v in r.hgetall(key).items()]
        else:
            values = []
        for blob in [key, *values]:
            hits += [f"{key!r}: {blob[:200]!r}" for n in wanted if n in blob]
    r.close()
    return hits


def file_hits(root: Path, needles: list[str]) -> list[str]:
    wanted = [n.encode() for n in forms(needles)]
    return [str(p) for p in root.rglob("*") if p.is_file() for n in wanted if n in p.read_bytes()]


@pytest.mark.parametrize("pseudonymize", [False, True], ids=["raw ids", "pseudonymised"])
def test_erasure_on_postgres_redis_and_the_stream(pg_dsn, redis_url, tmp_path, pseudonymize):
    prefix = redis_prefix(redis_url)
    bus = f"redis-stream{redis_url.split('?')[0][len('redis'):]}?stream={prefix}events&claim_idle_ms=1000"
    privacy = {"pseudonymize": True, "pseudonym_key": KEY} if pseudonymize else {}
    settings = load_settings(data_dir=tmp_path / "data", privacy=privacy,
                             stores={"events": pg_dsn, "online": redis_url, "bus": bus})
    stored = Pseudonymizer(KEY).shopper(WHO) if pseudonymize else WHO
    needles = [WHO, stored, "sess/7", Pseudonymizer(KEY).session("sess/7")]
    eng = Shelfwise(settings)
    worker = Worker(settings)
    try:
        eng.upsert_items(tiny_catalog())
        eng.ingest(tiny_events() + [ev(i, item=it, minute=i) for i, it in enumerate(["p3", "c3", "p2", "c2"])])
        worker.run(max_idle_s=0.5)  # the stream into PostgreSQL and Redis
        assert eng.store.count() == len(tiny_events()) + 4
        train(eng.store, eng.catalog, eng.models, settings.models)
        eng.refresh_model(min_interval_s=0)
        eng.set_consent(WHO, ConsentUpdate(analytics="granted"))
        eng.set_preferences(WHO, Preferences(brands=["Volt"], sizes=["M"]))  # in PostgreSQL (stores.preferences)
        eng.recommend(RecRequest("homepage", shopper=WHO, k=4))  # online state cached in Redis, exposure logged
        assert eng.online.get([stored])[stored] is not None and stored in eng.pipeline.shopper_index
        eng.ingest([ev(50, item="h1", minute=50), ev(51, user="u3", item="h0", minute=51)])  # queued, not processed
        eng.bus.redis.xadd(eng.bus.dead, {"e": eng.pseudonyms.event(ev(52)).model_dump_json(), "reason": "test"})
        eng.merch.log.flush()
        assert postgres_hits(pg_dsn, needles) and redis_hits(redis_url, prefix, needles)
        assert file_hits(settings.data_dir, needles)
        if pseudonymize:
            assert not postgres_hits(pg_dsn, [WHO, "sess/7"]) and not redis_hits(redis_url, prefix, [WHO, "sess/7"])
            assert not file_hits(settings.data_dir, [WHO, "sess/7"])

        receipt = eng.forget_shopper(WHO)

        got = {p["place"]: p["removed"] for p in receipt["places"]}
        assert got[f"event bus: queued events ({prefix}events)"] == 1
        assert got[f"event bus: dead letters ({prefix}events:dead)"] == 1
        assert got["event store: events (and their purchase lines)"] == 4
        # one answer logged (a row per answer, its 4 slots in it)
        assert got["online state"] == 1 and got["exposure log"] == 1 and got["consent record"] == 1
        assert got["shopper preferences"] == 1 and eng.preferences(WHO) is None
        assert got["model store: shopper index rows and ALS user factors"] == 1
        assert got["running model: shopper index"] == 1
        assert {p["backend"] for p in receipt["places"]} >= {"postgresql", "redis", "redis-stream"}
        # the exposure and shadow logs live in PostgreSQL too (rules/pg.py), searched by postgres_hits below
        assert {p["backend"] for p in receipt["places"] if p["place"] in ("exposure log", "shadow log")} == {"postgresql"}
        assert not (hits := postgres_hits(pg_dsn, needles)), hits
        assert not (hits := redis_hits(redis_url, prefix, needles)), hits
        assert not (hits := file_hits(settings.data_dir, needles)), hits
        worker.run(max_idle_s=0.5)  # the rest of the queue: the other shopper's event arrives, nothing of WHO's
        u3 = eng.pseudonyms.shopper("u3")
        assert eng.store.history([u3], 50)[u3].recent[-1].item_id == "h0"
        assert not postgres_hits(pg_dsn, needles)
    finally:
        worker.close()
        eng.close()


@pytest.mark.parametrize("kind", ["redis-stream", "kafka"])
def test_queued_events_of_an_erased_shopper_are_dropped_by_the_worker(kind, pg_dsn, redis_url, tmp_path,
                                                                      request):
    """What the erasure cannot delete from the queue (a Kafka topic; an entry a consumer holds right now) the
    worker drops: it was queued before the erasure marker."""
    if kind == "kafka":
        bus = kafka_dsn(request.getfixturevalue("kafka_bootstrap"))
    else:
        bus = f"redis-stream{redis_url.split('?')[0][len('redis'):]}?stream={redis_prefix(redis_url)}q"
    settings = load_settings(data_dir=tmp_path / "data", stores={"events": pg_dsn, "online": redis_url, "bus": bus})
    eng = Shelfwise(settings)
    eng.ingest([ev(1), ev(2, user="u3")])
    worker = Worker(settings)  # after the first publish: a Kafka consumer then finds the topic at once
    try:
        eng.privacy_store.forget(WHO, time.time() + 0.001)  # the marker only: the queue stays
        deadline = time.monotonic() + 30
        while eng.store.count() < 1:
            assert time.monotonic() < deadline
            worker.consumer.poll(timeout_s=0.5)
        worker.run(max_idle_s=1.0)
        assert eng.store.history([WHO, "u3"], 50)[WHO].recent == [] and eng.store.count() == 1
        eng.ingest([ev(3, minute=5)])  # after the erasure the shopper may come back: new events are kept
        deadline = time.monotonic() + 30
        while eng.store.count() < 2:
            assert time.monotonic() < deadline
            worker.consumer.poll(timeout_s=0.5)
        assert [i.item_id for i in eng.store.history([WHO], 50)[WHO].recent] == ["p1"]
        purge = eng.bus.purge_shopper(WHO)
        assert purge and all(isinstance(n, int) for _, n, _ in purge)
    finally:
        worker.close()
        eng.close()


@pytest.mark.parametrize("kind", ["redis-stream", "kafka"])
def test_an_erasure_landing_while_the_worker_stores_the_shoppers_events_wins(kind, pg_dsn, redis_url, tmp_path,
                                                                           request):
    """The worker checked the erasure markers (none yet), then the shopper is erased — marker written, events
    deleted — before the worker's append commits: the events it just stored are removed again, nothing of the
    shopper stays in the event store or the online state, and the other shoppers of the batch are kept."""
    if kind == "kafka":
        bus = kafka_dsn(request.getfixturevalue("kafka_bootstrap"))
    else:
        bus = f"redis-stream{redis_url.split('?')[0][len('redis'):]}?stream={redis_prefix(redis_url)}q"
    settings = load_settings(data_dir=tmp_path / "data", stores={"events": pg_dsn, "online": redis_url, "bus": bus})
    eng = Shelfwise(settings)
    eng.ingest([ev(1), ev(2, user="u3"), ev(3, item="p2")])
    worker = Worker(settings)
    real_append = worker.store.append
    erasures: list[dict] = []

    def append_racing_an_erasure(events, known_items=None):
        if not erasures:  # the erasure runs to completion between the worker's marker check and its commit
            erasures.append(eng.forget_shopper(WHO))
        return real_append(events, known_items=known_items)

    worker.store.append = append_racing_an_erasure
    try:
        deadline = time.monotonic() + 30
        while eng.store.count() < 1 or not erasures:
            assert time.monotonic() < deadline
            worker.consumer.poll(timeout_s=0.5)
        worker.run(max_idle_s=1.0)
        assert eng.store.history([WHO], 50)[WHO].recent == [] and eng.online.get([WHO])[WHO] is None
        assert [i.item_id for i in eng.store.history(["u3"], 50)["u3"].recent] == ["p1"]
        assert eng.store.count() == 1
    finally:
        worker.close()
        eng.close()
