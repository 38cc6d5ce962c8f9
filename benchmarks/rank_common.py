"""Shared by the ranking benchmarks: the synthetic storefront in a SQLite event store (built once, reused)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from shelfwise.settings import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shop_common import batches  # noqa: E402


def machine() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()} {cpu} ({os.cpu_count()} cores), Python {platform.python_version()}"


def storefront_engine(data_dir: Path, n_items: int, n_shoppers: int, n_events: int, seed: int = 42):
    """A ``Shelfwise`` engine whose event store holds the synthetic storefront (generated on first use)."""
    from shelfwise.service import Shelfwise
    from shelfwise.synthetic import generate_storefront

    for key in list(os.environ):
        if key.startswith("SHELFWISE_"):
            del os.environ[key]
    data_dir = Path(data_dir)
    settings = load_settings(data_dir=data_dir)
    marker = data_dir / "storefront.json"
    spec = {"n_items": n_items, "n_shoppers": n_shoppers, "n_events": n_events, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) != spec:
        raise SystemExit(f"{data_dir} holds another storefront ({marker.read_text()}); use another --data-dir")
    engine = Shelfwise(settings)
    if not marker.exists():
        store = generate_storefront(**spec)
        engine.upsert_items(store.items)
        for batch in batches(store.events(), 5000):
            engine.ingest(batch)
        marker.write_text(json.dumps(spec))
    return engine
