"""CPU time of this process's threads, by thread name: which part of an API process is busy.

One API process is its event loop (``MainThread`` under uvicorn: HTTP parsing, validation, answers' JSON), the
micro-batcher's pipeline thread (``shelfwise-batch``), the logs' writers (``shelfwise-exposure-log``,
``shelfwise-experiment-log``), the thread pool that stores events (``AnyIO worker thread``) and a few watchers,
all under one GIL. The process's CPU alone does not say which of them to make cheaper; this does.

Read from ``/proc/self/task/<tid>/stat`` (Linux); elsewhere nothing is reported. A pool's numbered threads
(``shelfwise-batch_0``, ``shelfwise-batch_1``) count under one name. ``ThreadCPU.delta`` is what the threads used
since its last call; a thread that started and ended between two calls is not seen.
"""

from __future__ import annotations

import os
import re
import threading

_NUMBERED = re.compile(r"_\d+$")


def thread_name(name: str) -> str:
    """The name a thread is counted under: a pool's ``<prefix>_<n>`` as ``<prefix>``."""
    return _NUMBERED.sub("", name)


def _cpu_seconds(tid: int, tick: float) -> float | None:
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime (clock ticks)
    except (OSError, IndexError, ValueError):  # no /proc, or the thread just ended
        return None


class ThreadCPU:
    """Per-name CPU seconds of the live threads since the previous ``delta`` (callers serialise their calls:
    ``Metrics.sync`` holds its lock)."""

    def __init__(self) -> None:
        self._tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._last: dict[int, float] = {}  # native thread id -> CPU seconds at the previous call

    def delta(self) -> dict[str, float]:
        now: dict[int, float] = {}
        out: dict[str, float] = {}
        for t in threading.enumerate():
            spent = _cpu_seconds(t.native_id, self._tick) if t.native_id is not None else None
            if spent is None:
                continue
            now[t.native_id] = spent
            used = spent - self._last.get(t.native_id, 0.0)
            if used > 0:
                name = thread_name(t.name)
                out[name] = out.get(name, 0.0) + used
        self._last = now  # threads that ended are forgotten
        return out
