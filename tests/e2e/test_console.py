"""The merchandiser's console through HTTP (no browser): every page renders, nothing references another host, the
key travels in a locked-down cookie, a read-only key looks but cannot change, forms need their CSRF token, an
invalid rule's error sits at its field, conflicts are found, and the catalog-health numbers add up.
The browser walk-through is tests/e2e/test_console_browser.py."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from shelfwise.api.app import create_app
from tests.e2e.console_shop import console_shop, csrf_of, external_hosts

PAGES = ["/console/rail?user_id=u1", "/console/rail?placement=pdp_similar&item_id=p1&clicks=c1,p2",
         "/console/rules", "/console/rules/new", "/console/experiments", "/console/health", "/console/models"]
ASSETS = ["/console/static/console.css", "/console/static/console.js", "/console/static/favicon.svg"]
BAD_SLOT = '{"rules": [{"id": "hero", "action": {"type": "pin", "items": ["h1"], "slot": 0}}]}'


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return console_shop(tmp_path_factory.mktemp("console"))


@pytest.fixture(scope="module")
def client(shop):
    settings, _ = shop
    with TestClient(create_app(settings)) as c:
        yield c


def login(client: TestClient, key: str) -> None:
    client.cookies.clear()
    page = client.get("/console/login")
    r = client.post("/console/login", data={"csrf": csrf_of(page.text), "key": key, "next": "/console/rules"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/rules", r.text


def test_login_sets_a_locked_down_cookie_and_pages_need_it(client, shop):
    _, keys = shop
    client.cookies.clear()
    r = client.get("/console/rail", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=/console/rail")
    page = client.get("/console/login")
    bad = client.post("/console/login", data={"csrf": csrf_of(page.text), "key": "sw_sk_nope"})
    assert bad.status_code == 401 and "unknown or revoked key" in bad.text
    feed = client.post("/console/login", data={"csrf": csrf_of(page.text), "key": keys["ingest"]})
    assert feed.status_code == 401 and "neither the read nor the admin scope" in feed.text
    r = client.post("/console/login", data={"csrf": csrf_of(page.text), "key": keys["admin"], "next": "//evil.example"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/rail"  # never off the console
    cookie = r.headers["set-cookie"]
    assert "shelfwise_console=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "SameSite=Strict", "SameSite=strict") and "Path=/console" in cookie
    assert client.get("/console/rail").status_code == 200
    assert client.get("/v1/rulesets").status_code == 401  # the cookie opens the console only, not the API


def test_every_page_and_asset_renders_and_names_no_other_host(client, shop):
    login(client, shop[1]["admin"])
    for url in PAGES + ASSETS:
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:500])
        assert external_hosts(r.text) == set(), url
        if url in PAGES:
            assert "default-src 'self'" in r.headers["content-security-policy"]


def test_read_only_key_can_look_but_not_change(client, shop):
    login(client, shop[1]["admin"])
    html = client.get("/console/rules/new").text
    r = client.post("/console/rules/save", data={"csrf": csrf_of(html), "ruleset_id": "ro", "new": "1",
                                                 "action": "shadow", "document": '{"rules": []}'},
                    follow_redirects=False)
    assert r.status_code == 303
    login(client, shop[1]["read"])
    page = client.get("/console/rules/ro")
    assert page.status_code == 200 and "read only" in page.text
    assert 'id="publish"' not in page.text and 'id="edit"' not in page.text  # no buttons
    r = client.post("/console/rules/ro/publish", data={"csrf": csrf_of(page.text), "version": "1"})
    assert r.status_code == 403
    assert client.get("/console/rules/ro").text.count('badge draft') >= 1  # nothing changed


def test_forms_need_their_csrf_token_and_own_origin(client, shop):
    login(client, shop[1]["admin"])
    html = client.get("/console/rules/new").text
    form = {"ruleset_id": "csrf", "new": "1", "action": "shadow", "document": '{"rules": []}'}
    assert client.post("/console/rules/save", data=form).status_code == 403
    assert client.post("/console/rules/save", data=form | {"csrf": "0" * 40}).status_code == 403
    r = client.post("/console/rules/save", data=form | {"csrf": csrf_of(html)},
                    headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "sent from the console itself" in r.text
    assert client.get("/console/rules/csrf").status_code == 404


def test_invalid_rule_shows_its_error_at_the_field_and_saves_nothing(client, shop):
    login(client, shop[1]["admin"])
    html = client.get("/console/rules/new").text
    r = client.post("/console/rules/save", data={"csrf": csrf_of(html), "ruleset_id": "bad", "new": "1",
                                                 "action": "publish", "document": BAD_SLOT})
    assert r.status_code == 422
    # the error sits under the line holding "slot": 0
    m = re.search(r'<li class="bad" data-path="rules\[0\]\.action\.slot"><pre>\s*&#34;slot&#34;: 0</pre>'
                  r'<div class="field-error" data-path="rules\[0\]\.action\.slot">([^<]+)</div>', r.text)
    assert m and "greater than or equal to 1" in m.group(1), r.text
    assert client.get("/console/rules/bad").status_code == 404
    r = client.post("/console/rules/save", data={"csrf": csrf_of(html), "ruleset_id": "bad", "new": "1",
                                                 "action": "shadow", "document": '{"rules": [}'})
    assert r.status_code == 422 and "not valid JSON" in r.text


def test_conflicts_publish_diff_rollback_and_the_preview_follows(client, shop):
    login(client, shop[1]["admin"])
    html = client.get("/console/rules/new").text
    doc = ('{"rules": [{"id": "hero", "priority": 5, "action": {"type": "pin", "items": ["h1", "c3"], "slot": 1}},'
           ' {"id": "no-c3", "action": {"type": "block"}, "match": {"ids": ["c3"]}}]}')
    r = client.post("/console/rules/save", data={"csrf": csrf_of(html), "ruleset_id": "promo", "new": "1",
                                                 "action": "publish", "document": doc}, follow_redirects=False)
    assert r.status_code == 303 and "v1+saved+and+published" in r.headers["location"]
    page = client.get("/console/rules/promo").text
    assert 'data-kind="pin_blocked"' in page and "promo/no-c3" in page  # highlighted, with the winner named
    assert 'class="has-conflict" data-rule="hero"' in page
    rail = client.get("/console/rail?user_id=u1").text
    slots = re.findall(r'data-item="([^"]+)"', rail)
    assert slots[0] == "h1" and "c3" not in slots and "promo@1" in rail
    edit = client.get("/console/rules/promo/edit").text
    r = client.post("/console/rules/save", data={"csrf": csrf_of(edit), "ruleset_id": "promo", "new": "0",
                                                 "action": "publish", "document": '{"rules": []}'},
                    follow_redirects=False)
    assert r.status_code == 303
    assert re.findall(r'data-item="([^"]+)"', client.get("/console/rail?user_id=u1").text)[0] != "h1"
    diff = client.get("/console/rules/promo/diff?a=1&b=2").text
    assert '<span class="del">-' in diff and "hero" in diff
    page = client.get("/console/rules/promo").text
    r = client.post("/console/rules/promo/rollback", data={"csrf": csrf_of(page), "version": "1"},
                    follow_redirects=False)
    assert r.status_code == 303 and "copy+of+v1" in r.headers["location"]
    assert re.findall(r'data-item="([^"]+)"', client.get("/console/rail?user_id=u1").text)[0] == "h1"


def test_catalog_health_counts_add_up(client, shop):
    settings, keys = shop
    login(client, keys["admin"])
    api = {"Authorization": f"Bearer {keys['admin']}"}
    client.put("/v1/items", json=[{"id": "c2", "title": "Case for phone 2", "category": ["Accessories",
                                                                                          "Phone Cases"],
                                   "price": 20, "cost": 6, "stock": 0}], headers=api)
    html = client.get("/console/health?hours=72").text
    n = lambda name: int(re.search(rf'id="{name}">([\d,]+)<', html).group(1).replace(",", ""))  # noqa: E731
    zero = n("zero-count")
    assert re.findall(r'data-item="([^"]+)"', client.get("/console/rail?user_id=u1").text)
    html = client.get("/console/health?hours=72").text
    assert n("zero-count") == zero  # a preview is not an impression
    r = client.get("/v1/recommendations/homepage", params={"user_id": "u2", "k": 5}, headers=api)
    served = {x["item_id"] for x in r.json()["items"]}
    assert "c2" not in served  # out of stock now: never recommended
    html = client.get("/console/health?hours=72").text
    assert n("zero-count") == zero - len(served) and n("oos-count") == 0
    assert 'id="coverage"' in html and "Accessories" in html and "Phones" in html


def test_with_authentication_off_anyone_may_change_but_forms_still_need_their_token(shop):
    settings, _ = shop
    off = settings.model_copy(update={"security": settings.security.model_copy(update={"auth": "off"})})
    with TestClient(create_app(off)) as c:
        page = c.get("/console/rules/new")
        assert page.status_code == 200 and "authentication is off" in page.text
        assert "shelfwise_console_csrf=" in page.headers["set-cookie"]  # the token's basis, double-submitted
        form = {"ruleset_id": "open", "new": "1", "action": "shadow", "document": '{"rules": []}'}
        assert c.post("/console/rules/save", data=form).status_code == 403
        r = c.post("/console/rules/save", data=form | {"csrf": csrf_of(page.text)}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/rules/open")


def test_models_page_promotes_and_rolls_back_through_the_registry(client, shop):
    """The Models page shows the registry's status and gates; promote and roll back go through its gates."""
    import json
    import shutil
    import time
    from urllib.parse import unquote_plus

    from shelfwise.stores import open_model_registry
    from shelfwise.stores.models import DirectoryModelStore
    from shelfwise.stores.protocols import ModelVersion

    settings, keys = shop
    store = DirectoryModelStore(settings.models_dir)
    first = store.current()
    held_out = {"NDCG@12": 0.5, "HR@12": 0.8, "coverage@12": 0.5, "long_tail@12": 0.1, "requests": 100}
    copy, path = store.new_version()  # what a retraining would store: here a copy of the live model
    shutil.copytree(store.path(first), path, dirs_exist_ok=True)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": copy}))
    store.store(copy)
    registry = open_model_registry(settings.registry_dsn)
    try:
        registry.register(ModelVersion(first, time.time(), status="live", metrics=held_out))
        registry.register(ModelVersion(copy, time.time(), metrics=held_out))
    finally:
        registry.close()

    def act(action: str, **form: str) -> str:
        html = client.get("/console/models").text
        r = client.post(f"/console/models/{action}", data={"csrf": csrf_of(html)} | form, follow_redirects=False)
        assert r.status_code == 303, r.text[:300]
        return unquote_plus(r.headers["location"])

    login(client, keys["read"])
    html = client.get("/console/models").text
    assert copy in html and "Promote" not in html  # a read-only key sees the versions, not the buttons
    assert client.post("/console/models/_promote", data={"csrf": csrf_of(html), "version": copy}).status_code == 403
    login(client, keys["admin"])
    assert "not done: unknown model version 'v-nope'" in act("_promote", version="v-nope")
    assert f"{copy}: promoted" in act("_promote", version=copy, now="1")
    assert store.current() == copy
    html = client.get("/console/models").text
    assert "passed" in html  # its gate result
    said = act("_rollback", reason="console test")
    assert store.current() == first, said
    assert "not done" in act("_promote", version=first)  # already live
