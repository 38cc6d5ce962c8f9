"""Graceful degradation under injected faults (issue 16): PostgreSQL stopped, Redis stopped, a stage or source slower
than its budget, the vector index failing, the model failing on a request. Each answers 200 with a full rail and
`degraded` naming the cause (or, for ingestion with the event store down, 503 + Retry-After with nothing stored),
and recovers when the fault ends. The servers are cut by a TCP proxy in front of the real ones (faults.py)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from faults import TcpProxy
from shelfwise.request import RecRequest
from shelfwise.service import Shelfwise
from shelfwise.settings import ResilienceSettings
from shelfwise.training import train
from tests.conftest import api_client, tiny_catalog, tiny_events, view

FAST = {"breaker_failures": 2, "breaker_reset_s": 0.5}


def configured(settings, stores: dict | None = None, **resilience):
    """The test's settings with other stores and fast breakers."""
    return settings.model_copy(update={
        "stores": settings.stores.model_copy(update=stores or {}),
        "resilience": ResilienceSettings(**{**FAST, **resilience})})


def through(proxy: TcpProxy, dsn: str) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def trained(settings) -> None:
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, settings.models)
    eng.close()


def rail(client, **params) -> dict:
    r = client.get("/v1/recommendations/homepage", params={"k": 4, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 4  # never an empty or short rail
    return body


def wait_until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def degraded_count(client, placement: str, cause: str) -> float:
    """``shelfwise_recommendation_degraded_total`` of a placement and cause, as /metrics says."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if (s.name == "shelfwise_recommendation_degraded_total" and s.labels.get("placement") == placement
                    and s.labels.get("cause") == cause):
                return s.value
    return 0.0


@pytest.fixture
def redis_proxy(redis_url):
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield proxy, urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
    proxy.close()


@pytest.fixture
def pg_proxy(pg_dsn):
    parts = urlsplit(pg_dsn)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield proxy, through(proxy, pg_dsn), pg_dsn
    proxy.close()


def test_redis_down_answers_without_the_shoppers_state_and_recovers(settings, redis_proxy):
    proxy, url = redis_proxy
    settings = configured(settings, {"online": url})
    trained(settings)
    with api_client(settings) as client:
        whole = rail(client, user_id="u1")
        assert whole["degraded"] == []
        proxy.cut()
        t0 = time.monotonic()
        for _ in range(4):
            body = rail(client, user_id="u1")
            assert any(d.startswith("shopper state") for d in body["degraded"]), (body["degraded"], body["fallback"])
        assert time.monotonic() - t0 < 10  # failing fast, not waiting on timeouts
        assert degraded_count(client, "homepage", "shopper_state") == 4  # on /metrics, by cause
        ready = client.get("/readyz").json()
        assert ready["degraded"]["online_state"]["state"] == "open"
        # events still land in the event store (SQLite here): the online state is not where they are kept
        r = client.post("/v1/events", json=view("f1", "u1", "c2", 5000).model_dump(mode="json"))
        assert r.status_code in (202, 503)
        proxy.restore()
        back = wait_until(lambda: rail(client, user_id="u1")["degraded"] == [])
        assert back, "the answer stayed degraded after Redis came back"
        assert client.get("/readyz").json()["degraded"] == {}


def test_postgres_down_refuses_events_with_503_and_loses_none(settings, pg_proxy):
    proxy, dsn, real = pg_proxy
    settings = configured(settings, {"events": dsn})
    trained(settings)

    def stored() -> int:
        with psycopg.connect(real) as conn:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]

    with api_client(settings) as client:
        n0 = stored()
        assert rail(client, user_id="u2")["degraded"] == []  # (the key is verified: trusted while the store is down)
        proxy.cut()
        r = client.post("/v1/events", json=[view(f"pg{i}", "u2", "p1", 6000 + i).model_dump(mode="json")
                                           for i in range(3)])
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        assert "event store unavailable" in r.json()["detail"]
        r = client.post("/v1/events", json=view("pg9", "u2", "p1", 6100).model_dump(mode="json"))
        assert r.status_code == 503  # the breaker is open: refused at once
        # recommendations still answer (consent and history come from PostgreSQL: answered as anonymous)
        body = rail(client, user_id="u2")
        assert body["degraded"], "an answer computed without the shopper's consent must say so"
        proxy.restore()
        ok = wait_until(lambda: client.post("/v1/events", json=[view(f"pg{i}", "u2", "p1", 6000 + i).model_dump(
            mode="json") for i in range(3)]).status_code == 202)
        assert ok, "ingestion did not recover after PostgreSQL came back"
        assert stored() == n0 + 3  # the refused batch, resent, stored once; nothing else half-written
        assert wait_until(lambda: rail(client, user_id="u2")["degraded"] == [])


# ---- the request path's own parts (embedded backends) ------------------------------------------------------------
@pytest.fixture
def engine(settings):
    s = configured(settings, source_budget_ms=30.0, stage_budget_ms={"rank": 30.0})
    s = s.model_copy(update={"api": s.api.model_copy(update={"cache_ttl_s": 0.0})})  # every ask runs the path
    trained(s)
    eng = Shelfwise(s)
    yield eng
    eng.close()


def ask(eng, shopper: str = "u1", k: int = 4):
    ans = eng.recommend(RecRequest("homepage", shopper=shopper, k=k))
    assert len(ans.items) == k
    return ans


def test_a_slow_source_is_left_out_after_its_budget_and_comes_back(engine, monkeypatch):
    src = next(n for n in ("covisit", "als", "sequence") if n in engine.pipeline.retrievers)
    retriever = engine.pipeline.retrievers[src]
    original = type(retriever).scores
    slow = {"on": True}

    def scores(self, *a, **kw):
        if slow["on"]:
            time.sleep(0.05)
        return original(self, *a, **kw)

    monkeypatch.setattr(type(retriever), "scores", scores)
    assert ask(engine).degraded == []  # over budget once: still used
    ask(engine)
    skipped = ask(engine)
    assert any(d.startswith(f"source {src}: skipped") and "budget" in d for d in skipped.degraded), skipped.degraded
    t0 = time.perf_counter()
    ask(engine)
    assert time.perf_counter() - t0 < 0.05  # skipped: no waiting on it
    slow["on"] = False
    time.sleep(0.6)  # past breaker_reset_s: the next call probes
    assert wait_until(lambda: ask(engine).degraded == [], 5)


def test_a_failing_vector_index_leaves_its_source_out(engine, monkeypatch):
    from shelfwise.retrieval.embedding import ItemVectors

    def broken(self, *a, **kw):
        raise OSError("index file unreadable")

    monkeypatch.setattr(ItemVectors, "search", broken)
    ans = ask(engine)
    failed = [d for d in ans.degraded if "failed: OSError: index file unreadable" in d]
    assert failed, ans.degraded
    assert all(r.item_id for r in ans.items)


def test_a_slow_ranker_is_skipped_and_the_answer_says_so(engine):
    stages = engine.pipeline.stages
    at = next(i for i, s in enumerate(stages) if s.name == "candidates") + 1
    real = stages[at] if stages[at].name == "rank" else None  # the tiny shop trains no ranker: a stand-in

    class SlowRank:
        name = "rank"
        slow = True

        def run(self, batch):
            if self.slow:
                time.sleep(0.05)
            if real is not None:
                real.run(batch)

    slow = SlowRank()
    stages[at:at + (real is not None)] = [slow]
    assert ask(engine).degraded == []  # over budget, still used
    ask(engine)
    ans = ask(engine)
    assert any(d.startswith("rank: skipped") and "budget" in d for d in ans.degraded), ans.degraded
    slow.slow = False
    time.sleep(0.6)
    assert wait_until(lambda: ask(engine).degraded == [], 5)


def test_a_model_that_fails_falls_back_to_the_previous_one_then_to_best_sellers(engine, monkeypatch):
    good = ask(engine)
    assert good.degraded == []
    previous = engine.pipeline
    slots = next(s for s in previous.stages if s.name == "slots")
    # a second model version whose slot stage fails on every request; the previous one still works
    from shelfwise.assemble import with_items
    from shelfwise.domain import Item

    broken = with_items(previous, [Item(id="new1", title="New", category=["Phones"], price=9.0, stock=3)],
                        engine.merch.stage)
    broken_slots = next(s for s in broken.stages if s.name == "slots")
    assert broken_slots is not slots
    monkeypatch.setattr(broken_slots, "run", lambda batch: (_ for _ in ()).throw(RuntimeError("corrupt factors")))
    engine.pipeline, engine.last_good = broken, previous
    ans = ask(engine)
    assert any("failed (RuntimeError)" in d and f"previous model {previous.version}" in d for d in ans.degraded)
    assert [r.item_id for r in ans.items] == [r.item_id for r in good.items]
    engine.last_good = None
    last = ask(engine)
    assert any("best sellers" in d for d in last.degraded) and all(r.fallback for r in last.items)
    assert len({r.item_id for r in last.items}) == 4


def test_a_bad_request_is_still_an_error_not_a_fallback(engine):
    with pytest.raises(ValueError, match="unknown placement"):
        engine.recommend(RecRequest("checkout", k=3))


def copy_version(engine, source: str) -> tuple[str, object]:
    import json
    import shutil

    version, path = engine.models.new_version()
    shutil.copytree(engine.models.path(source), path, dirs_exist_ok=True)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    return version, path


def test_an_unreadable_model_version_leaves_the_current_one_serving(engine):
    live = engine.pipeline.version
    before = ask(engine)
    bad, path = copy_version(engine, live)
    (path / "items.npz").write_bytes(b"not a numpy archive")  # a torn copy, a full disk, a bad permission...
    engine.models.publish(bad)
    assert engine.refresh_model_safely() is False
    assert engine.pipeline.version == live
    assert [r.item_id for r in ask(engine).items] == [r.item_id for r in before.items]
    status = engine.breakers.all()["model_store"]
    assert status["consecutive_failures"] == 1 and bad in status["last_error"]
    good, _ = copy_version(engine, live)
    engine.models.publish(good)
    assert engine.refresh_model_safely() is True and engine.pipeline.version == good
    assert engine.breakers.all()["model_store"]["state"] == "closed"
    assert engine.last_good is not None and engine.last_good.version == live


def test_events_not_committed_in_time_answer_503_with_retry_after(settings, redis_url):
    from contract_helpers import redis_prefix

    base, prefix = redis_url.split("?")[0], redis_prefix(redis_url)
    bus = f"redis-stream{base[len('redis'):]}?stream={prefix}events&group=g"
    s = configured(settings, {"bus": bus, "ack": "commit", "ack_timeout_s": 0.3})  # and no worker running
    with api_client(s) as client:
        r = client.post("/v1/events", json=view("late1", "u1", "p1", 1).model_dump(mode="json"))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) == s.resilience.retry_after_s, r.text
