"""Email campaign throughput: ``Campaign.run`` (what ``shelfwise campaign run`` drives) for N shoppers of a
synthetic storefront, the engine's batch path (``campaign.batch`` shoppers per pipeline call per rail), writing the
JSONL for the mailer. Prints shoppers/s, the projected time for 100,000 and the load average before and after.

    PYTHONPATH=src:benchmarks python benchmarks/campaign_email.py --shoppers 100000 --events 400000 \
        [--sources trending,covisit,als] [--limit N] [--data DIR]

The storefront (SQLite) and model are built in a temporary directory first (not timed). ``--sources`` picks the
model's candidate sources (default: trending, co-visitation, ALS, the sequence model; the learned ranker with
``--ranker``); the machine is shared, so the load average is printed beside every timing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from shelfwise.campaigns.run import Campaign, write_rows
from shelfwise.service import Shelfwise
from shelfwise.settings import load_settings
from shelfwise.training import train

from shop_common import batches  # noqa: E402 (benchmarks/ on sys.path when run as a script)
from shelfwise.synthetic import generate_storefront


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--shoppers", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--sources", default="trending,covisit,als,sequence")
    ap.add_argument("--ranker", action="store_true")
    ap.add_argument("--content", action="store_true", help="train the content source too (encoding every item "
                                                           "text: minutes)")
    ap.add_argument("--train-minutes", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--limit", type=int, default=0, help="email only this many shoppers (0: all)")
    ap.add_argument("--data", type=Path, default=None, help="keep the storefront and model here (reused when a "
                                                             "model is there already)")
    ap.add_argument("--profile", action="store_true", help="print the campaign's top functions (cProfile)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    data = args.data or Path(tmp.name) / "data"
    settings = load_settings(data_dir=data, campaign={"batch": args.batch, "secret": "b" * 40},
                             models={"ranker": {"enabled": args.ranker}, "content": {"source": args.content},
                                     "sequence": {"max_train_minutes": args.train_minutes}})
    t0 = time.perf_counter()
    if not (data / "models" / "CURRENT").exists():
        setup(args, settings)
    print(f"setup {time.perf_counter() - t0:.0f} s: {args.items} items, {args.shoppers} shoppers, {args.events} "
          f"events, sources {args.sources}, content {args.content}, ranker {args.ranker}, batch {args.batch}")
    eng = Shelfwise(settings)
    eng.refresh_model()
    shoppers = sorted(eng.pipeline.shopper_index)  # shoppers with events (the generator leaves some without)
    # the rest of the mailing list: subscribers who never browsed (cohort / best-seller rails, the same stages)
    shoppers += [f"subscriber-{i:06d}" for i in range(max(0, args.shoppers - len(shoppers)))]
    if args.limit:
        shoppers = shoppers[:args.limit]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    before = load()
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    job = Campaign(eng, "email_weekly", "bench")
    n = write_rows(job.run(shoppers), Path(tmp.name) / "mail.jsonl", "jsonl", "email_weekly", job.id)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
    size = (Path(tmp.name) / "mail.jsonl").stat().st_size
    print(f"commit {commit}: {n} shoppers ({min(n, len(eng.pipeline.shopper_index))} with events) in {dt:.1f} s = {n / dt:.0f}/s (100,000 → {100_000 / (n / dt):.0f} s); "
          f"file {size / 1e6:.1f} MB; CPU {cpu:.1f} s = {n / cpu:.0f} shoppers per CPU second (100,000 → "
          f"{100_000 / (n / cpu):.0f} CPU s); load average before {before}, after {load()}; {os.cpu_count()} cores")
    eng.close()
    tmp.cleanup()


def setup(args: argparse.Namespace, settings) -> None:
    shop = generate_storefront(n_items=args.items, n_shoppers=args.shoppers, n_events=args.events, seed=7)
    eng = Shelfwise(settings)
    eng.upsert_items(shop.items)
    for batch in batches(shop.events(), 20_000):
        eng.store.append(batch)
    sources = tuple(args.sources.split(","))
    train(eng.store, eng.catalog, eng.models, settings.models, sources=sources)
    eng.close()


if __name__ == "__main__":
    main()
