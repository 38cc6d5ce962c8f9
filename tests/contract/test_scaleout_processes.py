"""The multi-process deployment end to end: `shelfwise serve --workers 2` and `shelfwise worker --consumers 2`
against PostgreSQL, Redis online state and a Redis stream; plus the CLI's guard rails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from shelfwise.cli import app
from shelfwise.stores.postgres import PostgresStore
from shelfwise.stores.redis_state import RedisOnlineState
from tests.conftest import tiny_catalog, tiny_events, view

from contract_helpers import redis_prefix

CLI = [sys.executable, "-m", "shelfwise.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_what_cannot_work(settings, monkeypatch):
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--workers", "2"])
    assert r.exit_code == 2 and "redis://" in r.output  # in-process state is not shared between processes
    r = runner.invoke(app, ["worker"])
    assert r.exit_code == 2 and "needs no worker" in r.output


def test_api_replicas_and_workers_share_one_state(pg_dsn, redis_url, tmp_path: Path):
    prefix = redis_prefix(redis_url)
    bus = f"redis-stream{redis_url.split('?')[0][len('redis'):]}?stream={prefix}events&claim_idle_ms=1000"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    env.update({"SHELFWISE_DATA_DIR": str(tmp_path / "data"), "SHELFWISE_STORES__EVENTS": pg_dsn,
                "SHELFWISE_STORES__ONLINE": redis_url, "SHELFWISE_STORES__BUS": bus})
    port = free_port()
    log = tmp_path / "processes.log"
    key = subprocess.run(CLI + ["keys", "create", "--scope", "ingest", "--scope", "read", "--scope", "admin",
                                "--quiet"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    procs = [subprocess.Popen(CLI + ["worker", "--consumers", "2"], env=env, stdout=log.open("ab"),
                              stderr=subprocess.STDOUT),
             subprocess.Popen(CLI + ["serve", "--port", str(port), "--workers", "2"], env=env,
                              stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)]
    store = PostgresStore(pg_dsn)
    online = RedisOnlineState(redis_url, history_length=50)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                            headers={"Authorization": f"Bearer {key}"})
        deadline = time.monotonic() + 60
        while True:
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, log.read_text()
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert http.put("/v1/items", json=[it.model_dump(mode="json") for it in tiny_catalog()]).status_code == 200
        events = tiny_events()
        r = http.post("/v1/events", json=[ev.model_dump(mode="json") for ev in events])
        assert r.status_code == 202 and r.json()["stored"] == len(events)  # accepted: appended to the stream
        while store.count() < len(events):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Whichever API process answers, it reads the shopper through to PostgreSQL and caches it in Redis …
        assert http.get("/v1/recommendations/homepage", params={"user_id": "u1"}).status_code == 200
        assert [i.item_id for i in online.get(["u1"])["u1"].recent] == ["p1", "c1", "p2", "p0"]
        # … and a new event of that shopper, processed by a worker, lands in the shared online state.
        late = view("late-1", "u1", "h1", 10_000)
        assert http.post("/v1/events", json=[late.model_dump(mode="json")]).json()["stored"] == 1
        while (online.get(["u1"])["u1"].recent or [None])[-1] is None or \
                online.get(["u1"])["u1"].recent[-1].item_id != "h1":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert store.count() == len(events) + 1
        # /metrics adds up both API processes whichever one is scraped (prometheus-client multiprocess mode).
        # Each call on a new connection, so that both processes answer; a request id starts with its process's
        # random prefix.
        def fresh(path: str, **params: str) -> httpx.Response:
            r = httpx.get(f"http://127.0.0.1:{port}{path}", params=params, timeout=10,
                          headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            return r

        def scrape(name: str, **labels: str) -> tuple[float, str]:
            r = fresh("/metrics")
            return metric(r.text, name, **labels), r.headers["x-request-id"][:16]

        before, _ = scrape("shelfwise_recommendation_seconds_count", placement="pdp_similar")
        served, answered_by = 0, set()
        while len(answered_by) < 2 or served < 12:
            assert served < 80, "one API process answered every request"
            answered_by.add(fresh("/v1/recommendations/pdp_similar", item_id="p1").headers["x-request-id"][:16])
            served += 1
        scraped_by: set[str] = set()
        for _ in range(80):
            count, pid = scrape("shelfwise_recommendation_seconds_count", placement="pdp_similar")
            assert count - before == served, (pid, count - before, served)
            assert scrape("shelfwise_bus_up", bus="redis-stream")[0] == 1
            assert scrape("shelfwise_bus_waiting_entries", bus="redis-stream")[0] == 0
            assert scrape("shelfwise_events_total", outcome="stored")[0] == len(events) + 1
            scraped_by.add(pid)
            if len(scraped_by) == 2:
                break
        assert len(scraped_by) == 2, "one API process answered every scrape"
    finally:
        procs[0].send_signal(signal.SIGTERM)
        os.killpg(procs[1].pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        store.close()
        online.close()
    assert procs[0].returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    # services log JSON lines (stderr is not a terminal): every line of the API and worker processes parses
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    assert any(x["logger"] == "shelfwise.access" and x["route"] == "/v1/recommendations/{placement}" for x in lines)


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and s.labels == labels)


def test_two_replicas_follow_each_others_rules_and_catalog(pg_dsn, redis_url, tmp_path: Path):
    """Two API replicas (separate `shelfwise serve` processes, as behind a load balancer) on one PostgreSQL: a rule
    set published through replica A is served by replica B, and a catalog change made through A (stock, a new
    item, a deletion) reaches B's answers, its cached ones included, within seconds."""
    from shelfwise.rules.pg import drop_schema as drop_rules

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    env.update({"SHELFWISE_DATA_DIR": str(tmp_path / "data"), "SHELFWISE_STORES__EVENTS": pg_dsn,
                "SHELFWISE_STORES__ONLINE": redis_url, "SHELFWISE_API__CACHE_TTL_S": "300"})
    key = subprocess.run(CLI + ["keys", "create", "--scope", "read", "--scope", "admin", "--quiet"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    log = tmp_path / "replicas.log"
    ports = [free_port(), free_port()]
    # each replica with a data directory of its own, as on two machines: PostgreSQL and Redis are all they share
    procs = [subprocess.Popen(CLI + ["serve", "--port", str(p)], env=env | {"SHELFWISE_DATA_DIR": str(tmp_path / n)},
                              stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
             for p, n in zip(ports, ("a", "b"))]
    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=10, headers={"Authorization": f"Bearer {key}"})
            for p in ports)
    try:
        deadline = time.monotonic() + 90
        for http in (a, b):
            while True:
                assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, log.read_text()
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
        assert a.put("/v1/items", json=[it.model_dump(mode="json") for it in tiny_catalog()]).status_code == 200

        def shown(http: httpx.Client) -> tuple[list[str], str]:
            r = http.get("/v1/recommendations/homepage", params={"k": 20})
            assert r.status_code == 200, r.text
            return [x["item_id"] for x in r.json()["items"]], r.json()["rulesets"]

        def eventually(what: str, cond) -> None:  # within seconds: B polls every api.catalog_sync_s / refresh_s
            end = time.monotonic() + 15
            while not cond():
                assert time.monotonic() < end, f"replica B did not follow: {what}; shows {shown(b)}"
                time.sleep(0.1)

        eventually("the catalog written through A", lambda: "p0" in shown(b)[0] and "h1" in shown(b)[0])
        assert shown(b) == shown(b)  # the same answer again: from B's answer cache
        # stock, deletion and a new item, written through A
        assert a.put("/v1/items", json=[{"id": "p0", "title": "Phone 0", "stock": 0},
                                        {"id": "n1", "title": "New charger", "category": ["Accessories", "Chargers"],
                                         "stock": 5}]).status_code == 200
        assert a.delete("/v1/items/h1").status_code in (200, 204)
        eventually("p0 out of stock, h1 deleted, n1 added",
                   lambda: "p0" not in shown(b)[0] and "h1" not in shown(b)[0] and "n1" in shown(b)[0])
        assert b.get("/v1/items/n1").json()["title"] == "New charger"
        # a rule set published through A is served by B
        put = a.put("/v1/rulesets/main", params={"publish": "true", "author": "ann"},
                    json={"rules": [{"id": "no-cases", "action": {"type": "block"},
                                     "match": {"ids": ["c0", "c1", "c2", "c3"]}}]})
        assert put.status_code == 201, put.text
        eventually("rule set main@1", lambda: shown(b)[1] == "main@1" and not any(
            i.startswith("c") for i in shown(b)[0]))
        assert [v["version"] for v in b.get("/v1/rulesets/main/versions").json()["versions"]] == [1]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        drop_rules(pg_dsn)
    assert "Traceback" not in log.read_text(), log.read_text()
