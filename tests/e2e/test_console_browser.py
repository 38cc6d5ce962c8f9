"""The console in a real headless browser: Debian's chromium (/usr/bin/chromium, installed by .ci/run) driven by
Playwright, against a real API server. One browser for the module; every page is screenshotted into
out/console-screenshots/ (git-ignored).

The walk: sign in; preview a rail and simulate a session by clicking a product; an invalid rule shows its error at
the field; a valid one is published and the preview rail changes (its conflict highlighted); a draft runs in shadow
and its report shows the sampled traffic; an experiment is created and started; the catalog-health and models pages
are read; a read-only key sees no button to change anything."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.console_shop import console_shop

CHROMIUM = os.environ.get("SHELFWISE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "out" / "console-screenshots"
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)", allow_module_level=True)

INVALID = '{"rules": [{"id": "hero", "action": {"type": "pin", "items": ["h1"], "slot": 0}}]}'
VALID = ('{"rules": [{"id": "hero", "priority": 5, "action": {"type": "pin", "items": ["h1", "c3"], "slot": 1}},\n'
         ' {"id": "no-c3", "action": {"type": "block"}, "match": {"ids": ["c3"]}}]}')
DRAFT = '{"rules": [{"id": "no-p0", "action": {"type": "block"}, "match": {"ids": ["p0"]}}]}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from shelfwise.api.app import create_app

    settings, keys = console_shop(tmp_path_factory.mktemp("console-browser"))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    yield base, keys
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _signed_in(browser, base: str, key: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    page = ctx.new_page()
    page.on("dialog", lambda d: d.accept())  # "this changes what shoppers see. Go on?"
    page.goto(base + "/console")
    assert "/console/login" in page.url
    page.fill("#key", key)
    page.click("#sign-in")
    page.wait_for_url("**/console/rail")
    return ctx, page


def _go(page, selector: str) -> None:
    """Click what submits a form or follows a link, and wait for the next page."""
    with page.expect_navigation():
        page.click(selector)


def _slots(page) -> list[str]:
    return page.locator("#rail li.slot").evaluate_all("els => els.map(e => e.dataset.item)")


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_merchandiser_walks_through_every_page(server, browser):
    base, keys = server
    ctx, page = _signed_in(browser, base, keys["admin"])
    external: list[str] = []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith((base, "data:")) else None)
    _shot(page, "0-login-done")

    # rail preview, then a simulated session
    page.fill("#user_id", "u1")
    _go(page, "#show-rail")
    before = _slots(page)
    assert before and "h1" != before[0]
    _go(page, "#rail li.slot >> nth=0 >> a.view")
    assert page.locator("#session .chip").count() == 1
    page.locator("#rail li.slot").first.locator("details.explain summary").click()
    assert "score" in page.locator("#rail li.slot").first.locator("details.explain").inner_text()
    _shot(page, "1-rail-preview")

    # an invalid rule: its error at the field, nothing saved
    _go(page, "a[data-page=rules]")
    _go(page, "#new-ruleset")
    page.fill("#ruleset-id", "promo")
    page.fill("#document", INVALID)
    _go(page, "#save-publish")
    err = page.locator('#annotated .field-error[data-path="rules[0].action.slot"]')
    assert err.count() == 1 and "greater than or equal to 1" in err.inner_text()
    assert '"slot": 0' in page.locator('#annotated li.bad[data-path="rules[0].action.slot"] pre').inner_text()
    _shot(page, "2-rule-error-at-field")

    # fix it and publish: the rule set's page shows the conflict, the preview rail changes
    page.fill("#document", VALID)
    page.fill("#comment", "hero for the weekend")
    page.click("#save-publish")
    page.wait_for_url("**/console/rules/promo?msg=*")
    assert page.locator("#status").inner_text() == "published"
    assert page.locator('#conflicts li[data-kind="pin_blocked"]').count() == 1
    assert page.locator('#rules tr.has-conflict[data-rule="hero"]').count() == 1
    _shot(page, "3-ruleset-published")
    page.goto(base + "/console/rail?user_id=u1")
    after = _slots(page)
    assert after[0] == "h1" and "c3" not in after and after != before
    assert "promo@1" in page.locator("#rail-rulesets").inner_text()
    _shot(page, "4-rail-after-publish")

    # a draft in shadow, traffic, its report
    page.goto(base + "/console/rules/promo/edit")
    page.fill("#document", DRAFT)
    page.click("#save-shadow")
    page.wait_for_url("**/console/rules/promo?msg=*")
    assert "shadow" in page.locator("h1").inner_text()
    api = {"Authorization": f"Bearer {keys['admin']}"}
    for u in range(12):
        assert httpx.get(f"{base}/v1/recommendations/homepage", params={"user_id": f"u{u}", "k": 6},
                         headers=api).status_code == 200
    _go(page, "#shadow-report")
    assert int(page.locator("#shadow-requests").inner_text()) >= 12
    assert "requests changed" in page.locator("#shadow-kpis").inner_text()
    _shot(page, "5-shadow-report")
    page.goto(base + "/console/rules/promo/diff?a=1&b=2")
    assert "no-p0" in page.locator("#diff-view").inner_text()
    _shot(page, "6-rule-diff")

    # experiments: create and start one, then ramp it
    _go(page, "a[data-page=experiments]")
    page.click("#create-start")
    page.wait_for_url("**/console/experiments/*")
    assert page.locator("#exp-status").inner_text() == "running"
    page.fill("#ramp-traffic", "50")
    page.click("#exp-ramp")
    page.wait_for_url("**msg=ramped*")
    assert page.locator("#exp-traffic").inner_text() == "50%"
    _shot(page, "7-experiment")

    # catalog health, models
    _go(page, "a[data-page=health]")
    assert int(page.locator("#zero-count").inner_text().replace(",", "")) >= 0
    assert page.locator("#oos-count").inner_text() == "0"
    assert page.locator("#coverage table tr").count() >= 3  # header + Accessories + Phones
    _shot(page, "8-catalog-health")
    _go(page, "a[data-page=models]")
    assert page.locator("#model-versions tr").count() >= 2
    assert "not registered" in page.locator("#model-versions").inner_text()  # trained without the registry
    _shot(page, "9-models")
    assert external == []  # nothing was fetched from another host
    ctx.close()


def test_read_only_key_sees_no_button_to_change(server, browser):
    base, keys = server
    ctx, page = _signed_in(browser, base, keys["read"])
    page.goto(base + "/console/rules")
    assert "read only" in page.locator(".who").inner_text()
    assert page.locator("#new-ruleset").count() == 0
    page.goto(base + "/console/experiments")
    assert page.locator("#new-experiment").count() == 0
    _shot(page, "10-read-only")
    ctx.close()
