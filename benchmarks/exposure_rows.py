"""The exposure log's writer: one row per answer (now) against one row per shown slot (before), CPU per answer.

    .venv/bin/python benchmarks/exposure_rows.py [--prefill 120000] [--answers 20000] [--json out.json]

Two SQLite files in a temporary directory, each with the exposure table of one layout and its three indexes (time,
request id, shopper), pre-filled with ``--prefill`` answers of random shoppers and items (a serving log's size: the
12k demo shop's held 1.9M slot rows after an hour of load tests). Then ``--answers`` more are committed as the writer
thread commits them (``rules/log.py``: batches of 100 answers, one transaction each, ``synchronous=NORMAL``), and the
thread's CPU time per answer is reported, for rails of 12 slots and for 48 (the shown part of a re-ranked list). The
answer layout's rows are made by the log's own code (``_exposure_rows``, ``_INSERT_EXPOSURE``); the slot layout's
by the code it replaced (``slot_layout_rows`` below, as of commit 9513192).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Iterator

from shelfwise.evaluation.report import machine
from shelfwise.rules.log import SCHEMA, Exposure, _INSERT_EXPOSURE, _exposure_rows

SLOT_SCHEMA = """
CREATE TABLE exposures (request_id TEXT NOT NULL, ts REAL NOT NULL, shopper TEXT, placement TEXT NOT NULL,
    position INTEGER NOT NULL, item_id TEXT NOT NULL, score REAL, model_version TEXT, rules TEXT, propensity REAL);
CREATE INDEX exposures_ts ON exposures (ts);
CREATE INDEX exposures_request ON exposures (request_id);
CREATE INDEX exposures_shopper ON exposures (shopper) WHERE shopper IS NOT NULL;
"""
SLOT_INSERT = ("INSERT INTO exposures (request_id, ts, shopper, placement, position, item_id, score, model_version, "
               "rules, propensity) VALUES (?,?,?,?,?,?,?,?,?,?)")


def slot_layout_rows(shown: list[Exposure]) -> Iterator[tuple]:
    """The rows of the layout before: one per shown slot."""
    for x in shown:
        props = x.propensities or []
        for pos, (iid, sc) in enumerate(zip(x.items, x.scores)):
            p = props[pos] if pos < len(props) and props[pos] < 1.0 else None
            yield (x.request_id, x.ts, x.shopper, x.placement, pos, iid, sc, x.model_version, x.rules, p)


def answers(rng: random.Random, n: int, k: int, t0: float) -> list[Exposure]:
    return [Exposure(f"{rng.getrandbits(128):032x}", t0 + i * 0.002, f"u-{rng.randrange(20_000)}", "homepage",
                     [f"sku-{rng.randrange(12_000):06d}" for _ in range(k)], [rng.random() for _ in range(k)],
                     "20261207-000000", "default@3") for i in range(n)]


def run(layout: str, k: int, prefill: int, n: int, where: Path) -> dict:
    rng = random.Random(k)
    db = sqlite3.connect(where / f"{layout}-{k}.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SLOT_SCHEMA if layout == "slot" else SCHEMA)
    rows, sql = (slot_layout_rows, SLOT_INSERT) if layout == "slot" else (_exposure_rows, _INSERT_EXPOSURE)
    db.execute("BEGIN")
    db.executemany(sql, rows(answers(rng, prefill, k, time.time() - 86_400)))
    db.execute("COMMIT")
    todo = answers(rng, n, k, time.time())
    cpu, wall = time.thread_time(), time.perf_counter()
    for start in range(0, n, 100):
        db.execute("BEGIN")
        db.executemany(sql, rows(todo[start:start + 100]))
        db.execute("COMMIT")
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    size = sum(p.stat().st_size for p in where.glob(f"{layout}-{k}.db*"))
    db.close()
    return {"layout": layout, "slots": k, "cpu_us_per_answer": round(cpu / n * 1e6, 1),
            "wall_us_per_answer": round(wall / n * 1e6, 1), "file_mb": round(size / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=120_000, help="answers in the table before the measured ones")
    ap.add_argument("--answers", type=int, default=20_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (12, 48):
            for layout in ("slot", "answer"):
                r = run(layout, k, args.prefill, args.answers, Path(tmp))
                print(f"{k:3d} slots, one row per {layout:6s}: {r['cpu_us_per_answer']:7.1f} µs CPU, "
                      f"{r['wall_us_per_answer']:7.1f} µs wall per answer; file {r['file_mb']} MB", flush=True)
                out.append(r)
    if args.json:
        args.json.write_text(json.dumps({"command": "benchmarks/exposure_rows.py", "prefill": args.prefill,
                                         "answers": args.answers, "machine": machine(), "results": out},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
