"""Keys and scopes, publishable keys, CORS, rate limits, body limits and the documentation pages."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from shelfwise.api.app import create_app
from shelfwise.stores import open_privacy_store
from tests.conftest import make_key

EVENT = {"event_id": "sec-1", "type": "product_viewed", "user_id": "u1", "item_id": "p1",
         "timestamp": "2026-11-20T10:00:00Z"}
ITEM = {"id": "n1", "title": "Cable", "price": 5.0}

# (method, path, params, body, scope the route needs, an answer the right key gets)
ROUTES = [
    ("POST", "/v1/events", None, EVENT, "ingest", 202),
    ("GET", "/v1/consent", {"user_id": "u1"}, None, "ingest", 200),
    ("PUT", "/v1/consent", {"user_id": "u9"}, {"analytics": "granted"}, "ingest", 200),
    ("PUT", "/v1/shoppers/u9/preferences", None, {"sizes": ["M"]}, "ingest", 200),
    ("GET", "/v1/shoppers/u9/preferences", None, None, "ingest", 404),
    ("DELETE", "/v1/shoppers/u9/preferences", None, None, "ingest", 404),
    ("GET", "/v1/recommendations/homepage", {"user_id": "u1"}, None, "read", 200),
    ("PUT", "/v1/items", None, [ITEM], "admin", 200),
    ("GET", "/v1/items/p1", None, None, "admin", 200),
    ("DELETE", "/v1/shoppers", {"user_id": "gone"}, None, "admin", 200),
    ("GET", "/v1/rulesets", None, None, "admin", 200),
    ("PUT", "/v1/rulesets/default", {"dry_run": "true"}, {"rules": []}, "admin", 200),
    ("GET", "/v1/reports/zero-impressions", None, None, "admin", 200),
    ("GET", "/v1/reports/anonymous-counts", None, None, "admin", 200),
    ("GET", "/metrics", None, None, "admin", 200),
]


def call(client, method, path, params=None, body=None, **kw):
    return client.request(method, path, params=params, json=body, **kw)


@pytest.fixture
def keys(trained_settings):
    trained_settings.security.key_cache_s = 0.0  # see revocations at once
    out = {scope: make_key(trained_settings, [scope], name=scope) for scope in ("ingest", "read", "admin")}
    out["browser"] = make_key(trained_settings, ["ingest", "read"], name="browser", kind="publishable",
                              origins=["https://shop.example"])
    return out


@pytest.fixture
def client(trained_settings, keys):
    with TestClient(create_app(trained_settings)) as c:
        yield c


@pytest.mark.parametrize("method, path, params, body, scope, ok", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_each_route_needs_its_scope(client, keys, method, path, params, body, scope, ok):
    r = call(client, method, path, params, body)
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "Authorization" and r.headers["www-authenticate"].startswith("Bearer")
    r = call(client, method, path, params, body, headers={"Authorization": "Bearer sw_sk_nope"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked API key"
    r = call(client, method, path, params, body, headers={"Authorization": f"Basic {keys[scope]}"})
    assert r.status_code == 401 and "malformed" in r.json()["detail"]
    for other in ("ingest", "read", "admin"):
        if other != scope:
            r = call(client, method, path, params, body, headers={"Authorization": f"Bearer {keys[other]}"})
            assert r.status_code == 403, (other, r.text)
            assert f"needs the '{scope}' scope" in r.json()["detail"] and other in r.json()["detail"]
    r = call(client, method, path, params, body, headers={"Authorization": f"Bearer {keys[scope]}"})
    assert r.status_code == ok, r.text


def test_public_routes_need_no_key(client):
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


def test_revoked_key_is_refused(client, trained_settings, keys):
    auth = {"Authorization": f"Bearer {keys['read']}"}
    assert client.get("/v1/recommendations/homepage", headers=auth).status_code == 200
    store = open_privacy_store(trained_settings.events_dsn)
    store.revoke_key("read", time.time())
    store.close()
    r = client.get("/v1/recommendations/homepage", headers=auth)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_publishable_key_posts_events_and_reads_rails_from_its_origins_only(client, keys):
    auth = {"Authorization": f"Bearer {keys['browser']}"}
    page = auth | {"Origin": "https://shop.example"}
    r = client.post("/v1/events", json=EVENT | {"event_id": "pk-1"}, headers=page)
    assert r.status_code == 202 and r.headers["access-control-allow-origin"] == "https://shop.example"
    assert client.get("/v1/recommendations/homepage", params={"session_id": "s"}, headers=page).status_code == 200
    r = client.post("/v1/events", json=EVENT | {"event_id": "pk-2"}, headers=auth)
    assert r.status_code == 403 and "no Origin header" in r.json()["detail"]
    r = client.post("/v1/events", json=EVENT, headers=auth | {"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "Origin"
    for method, path, body in (("PUT", "/v1/items", [ITEM]), ("PUT", "/v1/consent?user_id=u1", {}),
                               ("DELETE", "/v1/shoppers?user_id=u1", None)):
        r = client.request(method, path, json=body, headers=page)
        assert r.status_code == 403 and "publishable key may only" in r.json()["detail"]


def test_cors_preflight_and_headers(trained_settings, keys):
    trained_settings.security.cors_origins = ["https://admin.example"]
    with TestClient(create_app(trained_settings)) as client:
        pre = {"Origin": "https://admin.example", "Access-Control-Request-Method": "PUT",
               "Access-Control-Request-Headers": "authorization, content-type"}
        r = client.options("/v1/items", headers=pre)
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "https://admin.example"
        assert r.headers["access-control-allow-methods"] == "PUT" and r.headers["vary"] == "Origin"
        assert "authorization" in r.headers["access-control-allow-headers"]
        assert int(r.headers["access-control-max-age"]) == 600
        r = client.options("/v1/items", headers=pre | {"Origin": "https://evil.example"})
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
        # a publishable key's origin may preflight the routes that key may use, not the others
        shop = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        assert client.options("/v1/events", headers=shop).status_code == 204
        assert client.options("/v1/items", headers=shop | {"Access-Control-Request-Method": "PUT"}).status_code == 403
        r = client.get("/v1/items/p1", headers={"Origin": "https://admin.example",
                                                "Authorization": f"Bearer {keys['admin']}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://admin.example"
        assert "Retry-After" in r.headers["access-control-expose-headers"]
        r = client.get("/v1/items/p1", headers={"Origin": "https://evil.example",
                                                "Authorization": f"Bearer {keys['admin']}"})
        assert "access-control-allow-origin" not in r.headers


def test_rate_limits_per_key_and_per_client_then_recovery(trained_settings, keys):
    sec = trained_settings.security
    sec.rate_per_key, sec.burst_per_key = 0.5, 3  # slow refill: the test does not depend on the machine's speed
    sec.rate_per_client, sec.burst_per_client = 1000.0, 1000
    with TestClient(create_app(trained_settings)) as client:
        auth = {"Authorization": f"Bearer {keys['read']}"}
        codes = [client.get("/v1/recommendations/homepage", headers=auth).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = client.get("/v1/recommendations/homepage", headers=auth)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2 and "rate limit" in r.json()["detail"]
        other = {"Authorization": f"Bearer {keys['admin']}"}
        assert client.get("/v1/rulesets", headers=other).status_code == 200  # another key's bucket
        time.sleep(int(r.headers["retry-after"]) + 1.05)  # 0.5/s: one request every 2 s
        assert client.get("/v1/recommendations/homepage", headers=auth).status_code == 200
    sec.rate_per_key, sec.burst_per_key = 1000.0, 1000
    sec.rate_per_client, sec.burst_per_client = 0.5, 2
    with TestClient(create_app(trained_settings)) as client:
        codes = [client.get("/v1/rulesets", headers={"Authorization": f"Bearer {keys['admin']}"}).status_code,
                 client.get("/v1/recommendations/homepage",
                            headers={"Authorization": f"Bearer {keys['read']}"}).status_code,
                 client.get("/v1/rulesets").status_code]  # the same address, whatever the key (or none)
        assert codes == [200, 200, 429]
        time.sleep(2.05)
        assert client.get("/v1/rulesets", headers={"Authorization": f"Bearer {keys['admin']}"}).status_code == 200


def test_key_guessing_is_rate_limited_by_address(trained_settings):
    trained_settings.security.rate_per_client, trained_settings.security.burst_per_client = 1.0, 5
    with TestClient(create_app(trained_settings)) as client:
        codes = [client.get("/v1/rulesets", headers={"Authorization": f"Bearer sw_sk_guess{i}"}).status_code
                 for i in range(7)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]


def test_client_address_behind_trusted_proxies(trained_settings, keys):
    sec = trained_settings.security
    sec.rate_per_client, sec.burst_per_client, sec.trusted_proxies = 1.0, 1, 1
    with TestClient(create_app(trained_settings)) as client:
        auth = {"Authorization": f"Bearer {keys['admin']}"}
        for shopper_ip in ("203.0.113.7", "203.0.113.8"):  # the proxy appends the real client's address
            hdrs = auth | {"X-Forwarded-For": f"10.9.9.9, {shopper_ip}"}
            assert client.get("/v1/rulesets", headers=hdrs).status_code == 200
        assert client.get("/v1/rulesets", headers=auth | {"X-Forwarded-For": "1.1.1.1, 203.0.113.7"}).status_code \
            == 429  # a spoofed left-most entry does not buy a new bucket


def test_body_size_limit(trained_settings, keys):
    trained_settings.security.max_body_bytes = 2048
    with TestClient(create_app(trained_settings)) as client:
        auth = {"Authorization": f"Bearer {keys['ingest']}"}
        big = [EVENT | {"event_id": f"big-{i}"} for i in range(40)]
        r = client.post("/v1/events", json=big, headers=auth)
        assert r.status_code == 413 and "2048" in r.json()["detail"]

        def chunks():  # no Content-Length: counted while it streams
            for _ in range(10):
                yield b" " * 1000

        r = client.post("/v1/events", content=chunks(), headers=auth | {"content-type": "application/json"})
        assert r.status_code == 413
        assert client.post("/v1/events", json=EVENT, headers=auth).status_code == 202


def test_auth_off_opens_everything(trained_settings):
    trained_settings.security.auth = "off"
    with TestClient(create_app(trained_settings)) as client:
        assert client.put("/v1/items", json=[ITEM]).status_code == 200
        assert all(op["security"] == [] for ops in client.get("/openapi.json").json()["paths"].values()
                   for op in ops.values())


def test_metrics_public_when_configured(trained_settings):
    trained_settings.security.public_metrics = True
    with TestClient(create_app(trained_settings)) as client:
        assert client.get("/metrics").status_code == 200


def test_docs_are_served_from_local_assets_only(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url:\s*['"]([^'"]+)""",
                                                                                      html)
        assert urls, page
        assert not [u for u in urls if re.match(r"^(https?:)?//", u)], (page, urls)
        assert not re.findall(r"https?://", html), page  # no absolute URL at all: nothing fetched from outside
        for asset in re.findall(r"/docs/assets/[\w.-]+", html):
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "validatorUrl" in client.get("/docs").text  # no badge fetched from the public validator
    assert client.get("/docs/assets/passwd").status_code == 404  # only the known asset files


def test_openapi_declares_bodies_errors_and_scopes(client):
    doc = client.get("/openapi.json").json()
    ops = doc["paths"]
    body = ops["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/Event"}
    assert "Event" in doc["components"]["schemas"] and "RuleSet" in doc["components"]["schemas"]
    assert ops["/v1/events"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventsResult"}
    put_items = ops["/v1/items"]["put"]
    assert put_items["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert put_items["security"] == [{"bearer": []}] and "Scope: `admin`" in put_items["description"]
    assert ops["/healthz"]["get"]["security"] == [] and "401" not in ops["/healthz"]["get"]["responses"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    rec = ops["/v1/recommendations/{placement}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert rec["schema"] == {"$ref": "#/components/schemas/RecommendationAnswer"}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
