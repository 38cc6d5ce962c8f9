"""Observability through the real API: metrics that move with what is served, JSON logs carrying request ids, the
span tree of a request, and the shipped Grafana dashboard, Prometheus rules and compose file checked against what
the API really exports and against the Compose specification."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shelfwise.api.metrics import Metrics
from shelfwise.api.telemetry import Telemetry
from shelfwise.observability import tracing
from shelfwise.observability.context import request_id
from shelfwise.observability.logs import configure_logging
from shelfwise.settings import ObservabilitySettings
from tests.conftest import api_client

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "shelfwise.json"
PIN_H1 = {"rules": [{"id": "hero", "priority": 10, "action": {"type": "pin", "items": ["h1"], "slot": 1},
                     "when": {"placements": ["homepage"]}}]}


def event(i, **kw):
    return {"event_id": f"obs-{i}", "type": "product_viewed", "user_id": "web1", "session_id": "w",
            "item_id": "p1", "timestamp": "2026-11-20T10:00:00Z"} | kw


def scrape(client) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) → value of a /metrics scrape."""
    r = client.get("/metrics")
    assert r.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def engine(trained_engine):
    return trained_engine


@pytest.fixture
def client(trained_settings, engine):
    with api_client(trained_settings, engine=engine) as c:
        yield c


# ---- metrics ----------------------------------------------------------------------------------------------------
def test_metrics_move_with_what_is_served(client, engine):
    stages = [s.name for s in engine.pipeline.stages]
    before = scrape(client)
    first = client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 5}).json()
    client.get("/v1/recommendations/homepage", params={"user_id": "u1", "k": 5})  # the same: from the cache
    client.get("/v1/recommendations/homepage", params={"user_id": "never-seen", "k": 5})
    client.get("/v1/recommendations/homepage", params={"k": 5})  # anonymous
    client.get("/v1/recommendations/pdp_similar", params={"item_id": "p1", "k": 3})
    assert client.get("/v1/recommendations/checkout").status_code == 404
    assert client.post("/v1/events", json=[event(1), event(1), event(2, type="recommendation_clicked"),
                                           event(3, type="teleported")]).status_code == 422
    engine.merch.log.flush()  # the writer drains on its own within 0.25 s: settle it, so the scrape and the log agree
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("shelfwise_recommendation_seconds_count", placement="homepage") == 4
    assert delta("shelfwise_recommendation_seconds_count", placement="pdp_similar") == 1
    # one pipeline call per request not answered from the cache, each stage observed once per call
    for stage in stages:
        assert delta("shelfwise_stage_seconds_count", placement="homepage", stage=stage) == 3, stage
        assert delta("shelfwise_stage_seconds_count", placement="pdp_similar", stage=stage) == 1, stage
    assert delta("shelfwise_stage_seconds_sum", placement="homepage", stage="candidates") > 0
    assert delta("shelfwise_pipeline_batch_requests_count") == 5  # the cached one passes the batcher too
    assert delta("shelfwise_answer_cache_lookups_total", result="hit") == 1
    assert delta("shelfwise_answer_cache_lookups_total", result="miss") == 4
    assert value(after, "shelfwise_answer_cache_entries") == len(engine.cache) >= 4
    # slots by reason add up to what was served; fallbacks by cause
    reasons = {r: delta("shelfwise_recommendation_slots_total", placement="homepage", reason=r)
               for r in ("evidence", "popular", "pinned", "reserved")}
    assert sum(reasons.values()) == 20 and reasons["evidence"] >= sum(x["reason"] == "evidence"
                                                                      for x in first["items"])
    assert delta("shelfwise_recommendation_fallbacks_total", placement="homepage", cause="new_shopper") == 1
    assert delta("shelfwise_recommendation_fallbacks_total", placement="homepage", cause="anonymous") == 1
    assert delta("shelfwise_recommendation_fallbacks_total", placement="homepage", cause="no_evidence") == 0
    # HTTP requests by route template and status; events by outcome and type
    route = "/v1/recommendations/{placement}"
    assert delta("shelfwise_http_requests_total", method="GET", route=route, status="200") == 5
    assert delta("shelfwise_http_requests_total", method="GET", route=route, status="404") == 1
    assert client.get("/nowhere/u1").status_code == 404  # no route: counted without its path
    assert value(scrape(client), "shelfwise_http_requests_total", method="GET", route="(unmatched)", status="404") >= 1
    assert delta("shelfwise_http_requests_total", method="POST", route="/v1/events", status="422") == 1
    assert delta("shelfwise_events_total", outcome="stored") == 2
    assert delta("shelfwise_events_total", outcome="duplicate") == 1
    assert delta("shelfwise_events_total", outcome="invalid") == 1
    assert delta("shelfwise_events_by_type_total", type="recommendation_clicked") == 1
    # the exposure log wrote the served rails (flushed above): its queue gauge is the log's own, 0; nothing dropped
    assert value(after, "shelfwise_log_queue_rows", log="exposure") == engine.merch.log.queued == 0
    assert value(after, "shelfwise_log_dropped_rows_total", log="exposure") == 0
    # read on the scrape: the model and rule sets served, the in-process bus (nothing ever waits)
    assert value(after, "shelfwise_model_info", version=first["model_version"], full="true",
                 ranker=str(engine.pipeline.ranker is not None).lower()) == 1
    assert value(after, "shelfwise_model_trained_until_seconds") == engine.pipeline.trained_until
    assert value(after, "shelfwise_bus_up", bus="inprocess") == 1
    for name in ("waiting_entries", "pending_entries", "oldest_entry_age_seconds", "dead_letters"):
        assert (f"shelfwise_bus_{name}", frozenset({("bus", "inprocess")})) in after
    assert not [k for k in after if k[0] == "shelfwise_ruleset_info"]
    assert client.put("/v1/rulesets/default", json=PIN_H1, params={"publish": "true"}).status_code == 201
    assert value(scrape(client), "shelfwise_ruleset_info", ruleset="default", version="1") == 1


def test_the_exposure_log_dropping_rows_shows(client, engine):
    lg = engine.merch.log
    before = scrape(client)
    lg._q.max_items, saved = 0, lg._q.max_items  # a full queue: every row is refused and counted
    try:
        client.get("/v1/recommendations/homepage", params={"user_id": "u2"})
    finally:
        lg._q.max_items = saved
    dropped = (value(scrape(client), "shelfwise_log_dropped_rows_total", log="exposure")
               - value(before, "shelfwise_log_dropped_rows_total", log="exposure"))
    assert dropped >= 1 and dropped == lg.dropped


def test_an_unreachable_bus_reads_as_down_and_the_scrape_still_answers(client, engine, monkeypatch):
    def down():
        raise ConnectionError("the bus is unreachable")

    monkeypatch.setattr(engine.bus, "backlog", down)
    got = scrape(client)
    assert value(got, "shelfwise_bus_up", bus="inprocess") == 0
    assert not [k for k in got if k[0].startswith("shelfwise_bus_") and k[0] != "shelfwise_bus_up"]
    assert value(got, "shelfwise_model_info", version=engine.pipeline.version, full="true",
                 ranker=str(engine.pipeline.ranker is not None).lower()) == 1


# ---- logs ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def log_lines():
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(ObservabilitySettings(log_format="json", log_level="INFO"), stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


def test_json_log_lines_carry_the_request_id(client, engine, log_lines, monkeypatch):
    stage = engine.pipeline.stage("candidates")
    run = stage.run
    stage_log = logging.getLogger("shelfwise.test.stage")

    def logging_run(batch):  # a log line from inside the request path, on the micro-batcher's thread
        stage_log.warning("candidates for %d request(s)", len(batch))
        return run(batch)

    monkeypatch.setattr(stage, "run", logging_run)
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u3", "k": 4})
    rid = r.json()["request_id"]
    assert r.headers["x-request-id"] == rid
    denied = client.get("/v1/recommendations/homepage", params={"user_id": "u3"}, headers={"Authorization": ""})
    assert denied.status_code == 401
    lines = log_lines()
    assert all({"ts", "level", "logger", "message", "pid"} <= set(x) for x in lines)
    inside = [x for x in lines if x["logger"] == "shelfwise.test.stage"]
    assert [x["request_id"] for x in inside] == [rid] and inside[0]["level"] == "warning"
    access = [x for x in lines if x["logger"] == "shelfwise.access"]
    ours = [x for x in access if x.get("request_id") == rid]
    assert len(ours) == 1 and ours[0]["route"] == "/v1/recommendations/{placement}" and ours[0]["status"] == 200
    assert ours[0]["duration_ms"] > 0
    refused = [x for x in access if x.get("request_id") == denied.headers["x-request-id"]]
    assert len(refused) == 1 and refused[0]["status"] == 401 and refused[0]["route"] == ours[0]["route"]
    leaked = [x for x in lines if "u3" in json.dumps(x) and not x["logger"].startswith("httpx")]  # the test client
    assert leaked == []  # query strings (shopper ids) are never logged


def test_a_crash_is_logged_under_its_request_id(trained_settings, engine, log_lines, monkeypatch):
    def broken(item_id):
        raise RuntimeError("catalog unreachable")

    monkeypatch.setattr(engine, "get_item", broken)
    with api_client(trained_settings, engine=engine) as c:  # started; a second client answers 500s as a server
        r = TestClient(c.app, raise_server_exceptions=False, headers=c.headers).get("/v1/items/p1")
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    lines = [x for x in log_lines() if x.get("request_id") == rid]
    crash = [x for x in lines if x["level"] == "error"]
    assert len(crash) == 1 and "RuntimeError: catalog unreachable" in crash[0]["exc"]
    assert [x["status"] for x in lines if x["logger"] == "shelfwise.access"] == [500]


def test_a_micro_batch_logs_under_every_request_id_it_answers(log_lines):
    contexts = []
    for rid in ("rid-a", "rid-b"):
        ctx = contextvars.copy_context()
        ctx.run(request_id.set, rid)
        contexts.append(ctx)
    telemetry = Telemetry(Metrics())

    def call():
        with telemetry.batch_scope(contexts):
            logging.getLogger("shelfwise.test.batch").warning("answering")

    contexts[0].run(call)
    (line,) = [x for x in log_lines() if x["logger"] == "shelfwise.test.batch"]
    assert line["request_id"] == "rid-a,rid-b"


def test_text_logs_and_the_format_default():
    stream = io.StringIO()
    handler = configure_logging(ObservabilitySettings(log_format="text"), stream)
    root = logging.getLogger()
    try:
        token = request_id.set("rid-text")
        logging.getLogger("shelfwise.test").warning("plain")
        request_id.reset(token)
        assert re.search(r" WARNING shelfwise\.test \[rid-text\] plain$", stream.getvalue().strip())
    finally:
        root.removeHandler(handler)
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    from shelfwise.observability.logs import use_json

    assert ObservabilitySettings().log_format == "auto"
    assert use_json("auto", io.StringIO()) and not use_json("auto", tty)  # services log JSON, a terminal text


# ---- traces -------------------------------------------------------------------------------------------------------
def test_a_request_is_one_trace_with_a_span_per_stage(client, engine, log_lines):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    assert tracing.tracer is None  # off by default: no span is made
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing(ObservabilitySettings(), exporter=exporter)
    try:
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        r = client.get("/v1/recommendations/pdp_fbt", params={"item_id": "p2", "user_id": "u5"},
                       headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        assert r.status_code == 200
    finally:
        tracing.shutdown_tracing()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "GET /v1/recommendations/{placement}"
    assert format(server.context.trace_id, "032x") == trace_id and format(server.parent.span_id, "016x") == parent
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["shelfwise.placement"] == "pdp_fbt"
    assert server.attributes["shelfwise.request_id"] == r.json()["request_id"] == r.headers["x-request-id"]
    (pipeline,) = [s for s in spans if s.name == "pipeline"]
    assert pipeline.parent.span_id == server.context.span_id and pipeline.attributes["shelfwise.batch_size"] == 1
    stages = sorted((s for s in spans if s.parent is not None and s.parent.span_id == pipeline.context.span_id),
                    key=lambda s: s.start_time)
    assert [s.name for s in stages] == [f"stage {st.name}" for st in engine.pipeline.stages]
    assert all(s.attributes["shelfwise.placement"] == "pdp_fbt" for s in stages)
    assert all(pipeline.start_time <= s.start_time <= s.end_time <= pipeline.end_time for s in stages)
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    (access,) = [x for x in log_lines() if x["logger"] == "shelfwise.access"]
    assert access["trace_id"] == trace_id and access["span_id"] == format(server.context.span_id, "016x")
    # off again: requests make no spans
    client.get("/v1/recommendations/pdp_fbt", params={"item_id": "p3"})
    assert len(exporter.get_finished_spans()) == len(spans) and tracing.tracer is None


def test_otlp_endpoint_setting():
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("https://x.example/otlp/v1/traces") == "https://x.example/otlp/v1/traces"
    assert not tracing.configure_tracing(ObservabilitySettings()) and tracing.tracer is None
    assert tracing.configure_tracing(ObservabilitySettings(otlp_endpoint="http://127.0.0.1:9/v1/traces"))
    try:  # a real OTLP exporter behind a batching processor: nothing is sent until a span ends
        assert tracing.tracer is not None
    finally:
        tracing.shutdown_tracing()


# ---- the dashboard, the alert rules and the compose file -----------------------------------------------------------
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def promql_selectors(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names matched per metric, label names of by/without/on clauses) of a PromQL
    expression."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\$\w+", "", e)  # Grafana variables ($__rate_interval)
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    matched: dict[str, set[str]] = {}
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", e):
        matched.setdefault(m.group(1), set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)))
    e = re.sub(r"\{[^}]*\}", "", e)
    grouped: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        grouped.update(x.strip() for x in m.group(1).split(",") if x.strip())
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", e):
        if m.group(0).lower() not in PROMQL_WORDS and not e[m.end():].lstrip().startswith("("):
            names.add(m.group(0))
    return names, matched, grouped


def exported(client) -> dict[str, set[str]]:
    """Sample name → label names, from a live scrape."""
    out: dict[str, set[str]] = {}
    for (name, labels), _ in scrape(client).items():
        out.setdefault(name, set()).update(k for k, _ in labels)
    return out


def unknown_references(exprs: list[str], live: dict[str, set[str]]) -> list[str]:
    problems = []
    for expr in exprs:
        names, matched, grouped = promql_selectors(expr)
        if not names:
            problems.append(f"no metric in {expr!r}")
        for name in names - set(live):
            problems.append(f"{name} (in {expr!r}) is not exported")
        for name, labels in matched.items():
            for label in labels - live.get(name, set()):
                problems.append(f"{name} has no label {label} (in {expr!r})")
        have = set().union(*(live.get(n, set()) for n in names))
        for label in grouped - have:
            problems.append(f"no metric of {expr!r} has the label {label}")
    return problems


@pytest.fixture
def live_metrics(client, engine, monkeypatch):
    """A scrape after recommendations (a fallback and a degraded answer among them), events, a published rule set
    and a model load."""
    for params in ({"user_id": "u1"}, {"user_id": "nobody"}):
        assert client.get("/v1/recommendations/homepage", params=params).status_code == 200
    retriever = engine.pipeline.retrievers["covisit"]  # fails once: that answer goes without it, and says so
    original = type(retriever).scores
    failing = {"left": 1}

    def scores(self, *a, **kw):
        if failing["left"]:
            failing["left"] -= 1
            raise OSError("covisit neighbours unreadable")
        return original(self, *a, **kw)

    monkeypatch.setattr(type(retriever), "scores", scores)
    body = client.get("/v1/recommendations/homepage", params={"user_id": "u2"}).json()
    assert any(d.startswith("source covisit: failed") for d in body["degraded"]), body["degraded"]
    monkeypatch.undo()
    assert client.get("/v1/recommendations/pdp_similar", params={"item_id": "p1"}).status_code == 200
    assert client.post("/v1/events", json=[event(10), event(11, type="recommendation_clicked")]).status_code == 202
    assert client.put("/v1/rulesets/default", json=PIN_H1, params={"publish": "true"}).status_code == 201
    assert client.get("/readyz").json()["model"]["full"]
    assert client.get("/v1/monitor/drift").status_code == 200  # a drift report sets the drift gauges
    return exported(client)


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            out.append((panel["title"], t["expr"]))
    return out


def test_every_dashboard_panel_queries_metrics_the_api_exports(live_metrics):
    exprs = [e for _, e in dashboard_exprs()]
    assert len(exprs) >= 20
    assert unknown_references(exprs, live_metrics) == []
    # every metric the API exports is on the dashboard somewhere
    shown = set().union(*(promql_selectors(e)[0] for e in exprs))
    families = {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in live_metrics}
    assert {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in shown} >= families - {"shelfwise_http_requests",
                                                                                         "shelfwise_events"} - {""}
    # the checker is not blind: a typo, an unknown label and a made-up grouping are all caught
    bad = ['rate(shelfwise_recomendation_seconds_count[5m])', 'sum(shelfwise_events_total{kind="x"})',
           'sum by (shop) (rate(shelfwise_events_total[5m]))']
    assert len(unknown_references(bad, live_metrics)) == 3


def test_dashboard_structure_and_provisioning():
    doc = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "shelfwise"
    for p in doc["panels"]:
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid and all(t["datasource"]["uid"] == uid for t in p["targets"])
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/shelfwise.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/shelfwise.json:{provider['providers'][0]['options']['path']}/shelfwise.json:ro" in mounts


def test_prometheus_alert_rules_query_exported_metrics(live_metrics):
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert unknown_references(exprs, live_metrics) == []
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert "ShelfwiseRailCTRDrop" in names


def compose_schema() -> dict:
    """The Compose specification's JSON schema (compose-spec/compose-spec, schema/compose-spec.json) as vendored
    by the check-jsonschema package (a pinned dev dependency): no download at test time."""
    return json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())


def test_the_compose_file_follows_the_compose_specification():
    schema = compose_schema()
    validator = jsonschema.Draft202012Validator(schema)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert [e.message for e in validator.iter_errors(compose)] == []
    # the validator is not blind either
    broken = json.loads(json.dumps(compose))
    broken["services"]["prometheus"]["volumez"] = []
    broken["services"]["grafana"]["ports"] = "3000:3000"
    problems = " ".join(e.message for e in validator.iter_errors(broken))
    assert "'volumez' was unexpected" in problems and "is not of type 'array'" in problems
    # what the observability services mount exists, and Prometheus scrapes the API where it listens
    for name in ("prometheus", "grafana"):
        for mount in compose["services"][name]["volumes"]:
            host = mount.split(":", 1)[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), mount
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    api = compose["services"]["api"]
    assert sd["names"] == ["api"] and str(sd["port"]) == api["command"][api["command"].index("--port") + 1]
    assert job["metrics_path"] == "/metrics"
    secret = job["authorization"]["credentials_file"].rsplit("/", 1)[1]
    assert secret in compose["secrets"] and secret in compose["services"]["prometheus"]["secrets"]
    assert "/etc/prometheus/alerts.yml" in prom["rule_files"]
