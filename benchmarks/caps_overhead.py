"""What frequency caps cost a request: the caps' view of one shopper (``rerank.caps.cap_view``, what the caps stage
computes per request) and the online-state read and impression write, for shoppers with N items shown.

    PYTHONPATH=src python benchmarks/caps_overhead.py [--redis redis://127.0.0.1:6379/0]

Medians of many repetitions (microseconds); the load average beside them (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from shelfwise.rerank.caps import cap_view
from shelfwise.settings import CapSettings, CapsSettings
from shelfwise.stores.memory import MemoryOnlineState
from shelfwise.stores.protocols import Interaction, ShopperState


def median_us(fn, n: int = 300) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default="")
    args = ap.parse_args()
    now = 1_800_000_000.0
    conf = CapSettings(max_impressions=3, window_hours=24, penalty=0.1)
    caps = CapsSettings()
    recent = [Interaction(f"i{k}", k % 3, now - 60 * k) for k in range(50)]
    backends = [("memory", MemoryOnlineState(reset_kinds=[1, 5]))]
    if args.redis:
        from shelfwise.stores.redis_state import RedisOnlineState

        backends.append(("redis", RedisOnlineState(args.redis + "?prefix=capsbench:", reset_kinds=[1, 5])))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, online in backends:
        for items in (0, 12, 100, 200):
            shopper = f"s{items}"
            for r in range(0, items, 12):
                online.show({shopper: [(f"i{k}", "homepage") for k in range(r, min(items, r + 12))]},
                            now - 3600 + r)
            online.put({shopper: ShopperState(recent=recent, purchased=set())})
            seen = online.read([shopper])[1][shopper]
            view = median_us(lambda: cap_view(seen, recent, now, "homepage", conf, caps))
            read = median_us(lambda: online.read([shopper]))
            write = median_us(lambda: online.show({shopper: [(f"i{k}", "homepage") for k in range(12)]}, now), 100)
            print(f"{name:6s} {items:4d} items shown: cap_view {view:7.0f} us, read {read:7.0f} us, "
                  f"write 12 impressions {write:7.0f} us")
        online.clear()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
