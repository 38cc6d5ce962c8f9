"""How fast each page of the merchandiser's console answers on the 12k-item demo shop (target: < 300 ms each).

Setup (reused when ``--data-dir`` already holds it): the synthetic storefront (``shelfwise generate``: 12,000 SKUs,
20,000 shoppers, ~500k events) and the default model (``shelfwise train``; ``--train-minutes`` caps the sequence
model). Then, in this process, the API is started on a real socket (uvicorn, authentication on, an admin key), and
the console is given something to show: ``--traffic`` recommendation requests (homepage, product pages, cart upsell,
random shoppers) fill the exposure log; a rule set with a pin, a boost, a block and a cap is published and a draft
of it runs in shadow on every request of that traffic; an A/B experiment is started.

Each page is then fetched ``--repeat`` times over HTTP with the console's cookie (after two warm-up fetches), and
its median and p95 are reported, beside a baseline measured in the same run: ``GET /healthz`` (the HTTP round trip
alone) and a personal homepage rail through the API (``/v1/recommendations/homepage``), so a loaded machine shows
as a ratio, and the CPU time this process spent per fetch (server and client share it: the page's cost whatever else
the machine runs). The load average is recorded before and after. The drift report (Models page, "run the drift report")
is a button, not a page: it is timed separately and reported but not held to the target.

Run:  .venv/bin/python benchmarks/console_pages.py --data-dir /tmp/shop [--repeat 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

RULES = {"description": "benchmark", "rules": [
    {"id": "hero", "priority": 10, "action": {"type": "pin", "items": [], "slot": 1},
     "when": {"placements": ["homepage"]}},
    {"id": "audio-up", "action": {"type": "boost", "multiply": 1.3}, "match": {"categories": ["Audio"]}},
    {"id": "cheap-out", "action": {"type": "block"}, "match": {"price": {"max": 5}}},
    {"id": "variety", "action": {"type": "cap", "by": "top_category", "max": 4}}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _setup(data_dir: Path, train_minutes: float) -> None:
    env = dict(os.environ, SHELFWISE_DATA_DIR=str(data_dir),
               SHELFWISE_MODELS__SEQUENCE__MAX_TRAIN_MINUTES=str(train_minutes))
    cli = [sys.executable, "-m", "shelfwise.cli"]
    if not (data_dir / "models" / "CURRENT").exists():
        if not list(data_dir.glob("*.db")):
            subprocess.run(cli + ["generate"], env=env, check=True)
        subprocess.run(cli + ["train"], env=env, check=True)


def _time(client: httpx.Client, url: str, repeat: int, cpu: list[float] | None = None, **kw) -> list[float]:
    """Wall milliseconds of ``repeat`` fetches; ``cpu`` receives the CPU milliseconds of this process (server and
    client share it) per fetch: what a page costs whatever else the machine runs."""
    for _ in range(2):
        r = client.get(url, **kw)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    out = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        r = client.get(url, **kw)
        out.append((time.perf_counter() - t0) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - c0) * 1000)
        assert r.status_code == 200, (url, r.status_code)
    return out


def _screenshot(base: str, key: str, url: str, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        ctx = browser.new_context(viewport={"width": 1200, "height": 720})
        ctx.add_cookies([{"name": "shelfwise_console", "value": key, "url": base + "/console"}])
        page = ctx.new_page()
        page.goto(base + url)
        page.locator("#rail li.slot").first.locator("details.explain summary").click()
        page.screenshot(path=str(path))
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--train-minutes", type=float, default=2.0)
    ap.add_argument("--traffic", type=int, default=3000, help="recommendation requests sent before measuring")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--screenshot", type=Path, help="also save the rail preview as a PNG (headless chromium)")
    args = ap.parse_args()
    os.environ["SHELFWISE_DATA_DIR"] = str(args.data_dir)
    os.environ["SHELFWISE_RULES__SHADOW_SHARE"] = "1.0"  # every request of the traffic below is shadowed
    os.environ["SHELFWISE_OBSERVABILITY__ACCESS_LOG"] = "false"
    _setup(args.data_dir, args.train_minutes)

    import uvicorn

    from shelfwise.api.app import create_app
    from shelfwise.security.keys import create_key
    from shelfwise.settings import load_settings
    from shelfwise.stores import open_privacy_store

    settings = load_settings()
    store = open_privacy_store(settings.events_dsn)
    store.revoke_key("console-bench", time.time())
    key = create_key(store, "console-bench", ["read", "admin"])[0]
    store.close()
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    api = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(600):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        items = [it["item_id"] for it in client.get("/v1/recommendations/homepage", params={"k": 50},
                                                    headers=api).json()["items"]]
        rules = json.loads(json.dumps(RULES))
        rules["rules"][0]["action"]["items"] = items[40:42]
        assert client.put("/v1/rulesets/bench", json=rules, params={"publish": "true"}, headers=api).status_code == 201
        draft = json.loads(json.dumps(rules))
        draft["rules"][1]["action"]["multiply"] = 2.0
        draft["rules"].append({"id": "no-top", "action": {"type": "block"}, "match": {"ids": items[:3]}})
        assert client.put("/v1/rulesets/bench", json=draft, headers=api).status_code == 201  # shadowed draft
        exp = {"id": "bench-ab", "name": "console benchmark", "layer": "ranking", "layer_range": [0, 1],
               "traffic": 0.5, "placements": ["homepage"],
               "variants": [{"name": "control", "share": 0.5},
                            {"name": "als", "share": 0.5,
                             "config": {"placements": {"homepage": {"weights": {"als": 1.0}}}}}]}
        got = client.post("/v1/experiments", json=exp, params={"start": "true"}, headers=api)
        assert got.status_code in (201, 409), got.text  # 409: made by an earlier run over this data dir
        rng = random.Random(7)
        t0 = time.perf_counter()
        for i in range(args.traffic):
            user = f"u{rng.randrange(20000):05d}"
            kind = i % 10
            if kind < 6:
                params = {"user_id": user, "k": 12}
                placement = "homepage"
            elif kind < 9:
                params = {"item_id": rng.choice(items), "user_id": user}
                placement = "pdp_similar"
            else:
                params = {"cart": rng.choice(items), "user_id": user}
                placement = "cart_upsell"
            r = client.get(f"/v1/recommendations/{placement}", params=params, headers=api)
            assert r.status_code == 200, r.text[:300]
        traffic_s = time.perf_counter() - t0
        client.cookies.set("shelfwise_console", key, path="/console")
        item = items[5]
        pages = {
            "rail: homepage, a shopper": f"/console/rail?user_id=u00042",
            "rail: product page + 3 clicks": f"/console/rail?placement=pdp_similar&item_id={item}"
                                             f"&clicks={','.join(items[10:13])}",
            "rules: list (live conflicts)": "/console/rules",
            "rules: a rule set (conflicts, versions)": "/console/rules/bench",
            "rules: edit": "/console/rules/bench/edit",
            "rules: diff": "/console/rules/bench/diff",
            "rules: shadow report": "/console/rules/bench/shadow-report",
            "experiments: list": "/console/experiments",
            "experiments: results": "/console/experiments/bench-ab",
            "catalog health": "/console/health",
            "models": "/console/models",
        }
        load_before = _uptime()
        base_health = _time(client, "/healthz", args.repeat)
        base_rail = _time(client, "/v1/recommendations/homepage", args.repeat, params={"user_id": "u00042"},
                          headers=api)
        results = {}
        for name, url in pages.items():
            cpu: list[float] = []
            ms = _time(client, url, args.repeat, cpu)
            results[name] = {"url": url, "median_ms": round(statistics.median(ms), 1),
                             "p95_ms": round(sorted(ms)[int(0.95 * (len(ms) - 1))], 1),
                             "max_ms": round(max(ms), 1), "cpu_median_ms": round(statistics.median(cpu), 1)}
        t0 = time.perf_counter()
        assert client.get("/console/models?drift=true").status_code == 200
        drift_ms = (time.perf_counter() - t0) * 1000
        load_after = _uptime()
        if args.screenshot:
            _screenshot(base, key, pages["rail: homepage, a shopper"], args.screenshot)
    srv.should_exit = True
    thread.join(30)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    out = {"commit": commit, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "load_before": load_before, "load_after": load_after, "repeat": args.repeat, "traffic": args.traffic,
           "traffic_s": round(traffic_s, 1),
           "baseline": {"healthz_median_ms": round(statistics.median(base_health), 2),
                        "rail_api_median_ms": round(statistics.median(base_rail), 2)},
           "pages": results, "drift_report_ms": round(drift_ms)}
    width = max(map(len, results))
    print(f"commit {commit}; {out['machine']}; {load_before}")
    print(f"baseline: /healthz {out['baseline']['healthz_median_ms']} ms, API homepage rail "
          f"{out['baseline']['rail_api_median_ms']} ms (medians of {args.repeat})")
    for name, r in results.items():
        flag = "" if r["p95_ms"] < 300 else "  (over 300 ms)"
        print(f"{name:<{width}}  median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
              f"CPU {r['cpu_median_ms']:6.1f} ms{flag}")
    print(f"drift report (a button on the Models page): {drift_ms:.0f} ms; {load_after}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
