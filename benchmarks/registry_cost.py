"""What the model registry adds to a training: the held-out metrics (the prefix pipeline with the ranker asked for
the ranker's early-stopping requests) and the gates, against the same training without it.

    PYTHONPATH=src .venv/bin/python benchmarks/registry_cost.py [--data-dir DIR] [--items 2000] [--shoppers 4000]
        [--events 100000]

Builds (or reuses) a synthetic storefront in ``--data-dir``, trains trending, co-visitation, co-purchase and ALS
with the ranker once plainly (``training.train``) and once through the registry (``release=``), and prints both
wall times, the held-out metrics and the time they took, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--shoppers", type=int, default=4000)
    ap.add_argument("--events", type=int, default=100_000)
    args = ap.parse_args()
    from shelfwise.evaluation.holdout import released
    from shelfwise.service import Shelfwise
    from shelfwise.settings import load_settings
    from shelfwise.synthetic import generate_storefront
    from shelfwise.training import train

    settings = load_settings(data_dir=args.data_dir or Path(tempfile.mkdtemp(prefix="sw-registry-")))
    eng = Shelfwise(settings)
    if not eng.catalog.ids():
        shop = generate_storefront(n_items=args.items, n_shoppers=args.shoppers, n_events=args.events, seed=7)
        eng.upsert_items(shop.items)
        events = list(shop.events())
        for i in range(0, len(events), 5000):
            eng.ingest(events[i:i + 5000])
    sources = ("trending", "covisit", "copurchase", "als")
    out: dict = {}
    t = time.perf_counter()
    train(eng.store, eng.catalog, eng.models, settings.models, sources=sources)
    out["plain_s"] = round(time.perf_counter() - t, 1)
    got: dict = {}
    t = time.perf_counter()
    train(eng.store, eng.catalog, eng.models, settings.models, sources=sources,
          release=released(eng.releases, into=got))
    out["with_registry_s"] = round(time.perf_counter() - t, 1)
    out["metrics"] = eng.registry.get(got["version"]).metrics
    out["action"] = got["action"]
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))
    eng.close()


if __name__ == "__main__":
    main()
