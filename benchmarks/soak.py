"""A soak: steady load for a minute while the model is swapped, a rule set is published and the model is rolled
back — zero failed requests and zero lost events, or say how many.

    .venv/bin/python benchmarks/soak.py [--data-dir DIR] [--connections 8] [--seconds 60] [--events-per-s 500]
        [--json benchmarks/results/soak_12k.json]

Uses the 12k-item storefront of ``serve_load.py`` (set up, or reused from ``--data-dir``), one API process on the
embedded default, wrk at ``--connections`` (8: the connection count of the serving target, ~400-600 requests/s on a
2-core machine) with the placement mix, ``--events-per-s`` events posted meanwhile. (An open-loop Python client
cannot keep 400 requests/s on the same 2 cores: it measured itself.) At 25 % of the run a new model version is
promoted (a copy of the live one under a new version, registered with the live version's held-out metrics — it is
the same model — and promoted through the registry's gates with `shelfwise models promote VERSION --now`: the API
loads it beside serving and swaps it in), at 50 % the rule set is re-published (a new version), at 75 % the promotion
is rolled back (`shelfwise models rollback`: the previous version is current again). A live version the registry
does not know (trained before it existed) cannot pass the gates: the copy is then published and rolled back
directly in the model store, as before the registry, and the timeline says so. Afterwards every acknowledged event id is looked up in the event store: acknowledged but not stored
counts as lost. Reports the load's latency percentiles and errors, the events acknowledged / stored / lost, and
when each model version became live (``/readyz``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import serve_load as sl

ROOT = Path(__file__).resolve().parents[1]


def copy_version(models: Path, source: str, registry_dsn: str) -> tuple[str, bool]:
    """Store a copy of model version ``source`` as a new version (what a retraining would store) and register it
    with ``source``'s held-out metrics (the same model). Returns (version, registered); not registered (and
    published at once, as before the registry) when the registry does not know ``source``."""
    from shelfwise.stores import open_model_registry
    from shelfwise.stores.models import DirectoryModelStore
    from shelfwise.stores.protocols import ModelVersion

    store = DirectoryModelStore(models)
    version, path = store.new_version()
    shutil.copytree(store.path(source), path, dirs_exist_ok=True)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    store.store(version)
    registry = open_model_registry(registry_dsn)
    try:
        live = registry.get(source)
        if live is None:
            store.publish(version)
            return version, False
        registry.register(ModelVersion(version, time.time(), metrics=live.metrics, window=live.window,
                                       settings=live.settings, note=f"soak: a copy of {source}"))
        return version, True
    finally:
        registry.close()


def rollback(models: Path, version: str) -> None:
    from shelfwise.stores.models import DirectoryModelStore

    DirectoryModelStore(models).publish(version)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--events-per-s", type=float, default=500)
    ap.add_argument("--port", type=int, default=8795)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    setup = argparse.Namespace(items=12_000, shoppers=20_000, events=500_000, mmr_lambda=0.8)
    data = (args.data_dir or ROOT / "benchmarks" / "results" / ".work" / "serve_load_12000").resolve()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "processes.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFWISE_")}
    env.update(SHELFWISE_DATA_DIR=str(data), SHELFWISE_CONFIG=str(data / "shelfwise.toml"), PWD_FOR_BENCH=str(data),
               SHELFWISE_SECURITY__RATE_PER_CLIENT="0")
    users, items, key = sl.setup(setup, env, data, log)
    script = data / "mix.lua"
    script.write_text(sl.WRK_SCRIPT % (key, ",".join(f'"{p}"' for p in sl.paths(users, items))))
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            sys.exit(f"port {args.port} is in use (a server left from an earlier run?): stop it or pass --port")
    models = data / "models"
    live = (models / "CURRENT").read_text().strip()
    proc = subprocess.Popen(sl.CLI + ["serve", "--port", str(args.port)], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=str(data))
    timeline: list[dict] = []
    try:
        sl.wait_ready(args.port, proc, log)
        url = f"http://127.0.0.1:{args.port}"
        sl.prime(url, sl.paths(users, items)[:40], key)
        poster = sl.EventPoster(url, users, items, args.events_per_s, key)
        t0 = time.monotonic()

        def at(frac: float) -> None:
            time.sleep(max(0.0, t0 + frac * args.seconds - time.monotonic()))

        def chaos() -> None:
            import httpx

            at(0.25)
            new, registered = copy_version(models, live, f"sqlite:///{models / 'registry.db'}")
            if registered:
                sl.run(sl.CLI + ["models", "promote", new, "--now", "--author", "soak"], env, log)
                timeline.append({"t_s": round(time.monotonic() - t0, 1),
                                 "what": f"promoted model {new} through the registry's gates"})
            else:
                timeline.append({"t_s": round(time.monotonic() - t0, 1),
                                 "what": f"published model {new} (live {live} not in the registry: no gates)"})
            at(0.5)
            sl.run(sl.CLI + ["rules", "put", "bench", str(data / "rules.json"), "--publish", "--author", "soak"],
                   env, log)
            timeline.append({"t_s": round(time.monotonic() - t0, 1), "what": "re-published rule set bench"})
            at(0.75)
            if registered:
                sl.run(sl.CLI + ["models", "rollback", "--reason", "soak", "--author", "soak"], env, log)
            else:
                rollback(models, live)
            timeline.append({"t_s": round(time.monotonic() - t0, 1), "what": f"rolled back to model {live}"
                             + (" through the registry" if registered else "")})
            seen = None
            while time.monotonic() - t0 < args.seconds + 5:
                try:
                    v = httpx.get(f"{url}/readyz", timeout=5).json()["model_version"]
                except (httpx.HTTPError, ValueError, KeyError):
                    v = None
                if v != seen:
                    timeline.append({"t_s": round(time.monotonic() - t0, 1), "what": f"/readyz: live model {v}"})
                    seen = v
                time.sleep(0.5)

        watcher = threading.Thread(target=chaos, daemon=True)
        poster.start()
        watcher.start()
        cpu0 = sl.cpu_s(proc.pid)
        res = sl.wrk(url, script, args.connections, args.seconds)
        cpu = sl.cpu_s(proc.pid) - cpu0
        poster.stop.set()
        poster.join(15)
        watcher.join(10)
        rss = sl.rss_mb(proc.pid)
    finally:
        sl.stop(proc)
    with sqlite3.connect(data / "shelfwise.db") as db:
        found = 0
        for i in range(0, len(poster.acked), 500):
            chunk = poster.acked[i:i + 500]
            found += db.execute(f"SELECT count(*) FROM events WHERE event_id IN ({','.join('?' * len(chunk))})",
                                chunk).fetchone()[0]
    res.update(events_acknowledged=len(poster.acked), events_stored=found, events_lost=len(poster.acked) - found,
               events_refused=poster.failed, server_cpu_ms_per_request=round(1000 * cpu / max(res["requests"], 1), 3),
               rss_mb=rss, load_average_1m=round(os.getloadavg()[0], 2))
    doc = {"command": " ".join(["python", *sys.argv]), "machine": sl._machine(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip(), "result": res, "timeline": timeline}
    print(json.dumps(doc, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
