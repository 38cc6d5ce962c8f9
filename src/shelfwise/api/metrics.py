"""Prometheus metrics of the API (``GET /metrics``).

Counted where they happen: HTTP requests, recommendation latency per placement, each stage's time per pipeline
call, micro-batch sizes, served slots by reason and fallback answers by cause, events by outcome. Copied from the
engine's own counters (``Metrics.sync``): answer-cache lookups and entries, the exposure and experiment logs' queue
depth and dropped rows, and the CPU time of the process's threads by name (``observability/threads.py``). Read
when scraped (``EngineCollector``): the model and rule set versions being served (info metrics) and the event
bus's backlog — waiting and pending entries, the oldest entry's age, dead letters — read from Redis or Kafka at
most once a second, so scrapes cost the bus one round trip and requests nothing.

Several API processes (``shelfwise serve --workers N`` share one port, so a scrape reaches one process at random):
prometheus-client's multiprocess mode. ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the
processes start; each process writes its counters and histograms to memory-mapped files there, and a scrape of
any process adds up every process's files (counters and histograms summed, gauges of live processes summed). Each
process copies its engine's counters into its files every 2 s (and at once when it is the one scraped), so those
lag by at most 2 s. What the collector reads on a scrape (versions, bus backlog) is the scraped process's view:
every process watches the same model store and bus.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shelfwise.api.render import Rendered
from shelfwise.observability.threads import ThreadCPU
from shelfwise.request import Answer, RecRequest

log = logging.getLogger("shelfwise.api")

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable, read by it at import


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@contextmanager
def multiprocess_metrics() -> Iterator[str]:
    """Multiprocess mode for the API processes started inside this block (they inherit the environment): a fresh
    directory (or the one ``PROMETHEUS_MULTIPROC_DIR`` names, emptied first), removed afterwards if it was ours."""
    given = multiprocess_dir()
    path = given or tempfile.mkdtemp(prefix="shelfwise-metrics-")
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if given is None:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def fallback_cause(req: RecRequest, answer: Answer, anchor: str, known_shopper: bool) -> str:
    """Why an answer is a fallback (nothing about this shopper or item went into it): ``empty`` (no servable
    item), ``unknown_item`` (the page's or cart's items are unknown to the catalog and the model:
    api.unknown_item = fallback), ``new_item`` (in the catalog, newer than the model), ``anonymous`` (a homepage
    without a shopper, or without personalisation consent), ``new_shopper`` (no events and no model row), else
    ``no_evidence`` (the sources found nothing for this context)."""
    if not answer.items:
        return "empty"
    if anchor != "known":
        return anchor
    if req.placement == "homepage":
        if req.shopper is None:
            return "anonymous"
        if not known_shopper and (req.state is None or not req.state.recent):
            return "new_shopper"
    return "no_evidence"


def degraded_cause(note: str) -> str:
    """The part of the request path a ``degraded`` note names (README "Graceful degradation"): ``model`` (the
    served model failed: an older model or the best sellers answered), ``source_<name>`` (a candidate source
    skipped or failed), or the stage or store before the note's colon (``rank``, ``explore``, ``consent``,
    ``shopper_state``, ``preferences``, ``experiments``): a small, fixed set of label values."""
    head = note.split(":", 1)[0].strip()
    if head.startswith("model "):
        return "model"
    return head.replace(" ", "_") or "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("shelfwise_http_requests_total", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.events = Counter("shelfwise_events_total", "ingested events by outcome", ["outcome"], registry=r)
        self.event_types = Counter("shelfwise_events_by_type_total", "events stored (or appended to the bus) by "
                                                                     "type: recommendation_clicked over served rails "
                                                                     "is the rails' click-through rate",
                                   ["type"], registry=r)
        self.latency = Histogram("shelfwise_recommendation_seconds", "recommendation latency (whole request)",
                                 ["placement"], registry=r, buckets=LATENCY_BUCKETS)
        self.stage = Histogram("shelfwise_stage_seconds", "time one stage of the request path took for one "
                                                          "pipeline call (the requests of a micro-batch of one "
                                                          "placement)", ["placement", "stage"], registry=r,
                               buckets=STAGE_BUCKETS)
        self.batch = Histogram("shelfwise_pipeline_batch_requests", "requests answered by one pipeline call "
                                                                    "(micro-batch)", registry=r, buckets=BATCH_BUCKETS)
        self.slots = Counter("shelfwise_recommendation_slots_total", "served slots by reason (evidence, popular, "
                                                                     "pinned, reserved)", ["placement", "reason"],
                             registry=r)
        self.fallbacks = Counter("shelfwise_recommendation_fallbacks_total", "answers with no evidence about the "
                                                                             "shopper or item, by cause",
                                 ["placement", "cause"], registry=r)
        self.degraded = Counter("shelfwise_recommendation_degraded_total", "answers that went without a part of "
                                                                           "the request path (a fault), by cause",
                                ["placement", "cause"], registry=r)
        self.cache = Counter("shelfwise_answer_cache_lookups_total", "answer cache lookups by result (hit, miss)",
                             ["result"], registry=r)
        self.cache_entries = Gauge("shelfwise_answer_cache_entries", "answers held by the answer cache",
                                   registry=r, multiprocess_mode="livesum")
        self.log_queue = Gauge("shelfwise_log_queue_rows", "rows waiting for a log's writer thread (exposure, "
                                                           "experiment)", ["log"], registry=r,
                               multiprocess_mode="livesum")
        self.log_dropped = Counter("shelfwise_log_dropped_rows_total", "rows a log lost: its queue was full or a "
                                                                       "write failed", ["log"], registry=r)
        self.thread_cpu = Counter("shelfwise_thread_cpu_seconds_total", "CPU time of the API process's threads by "
                                  "name (Linux): MainThread is the event loop (HTTP, validation, answers' JSON), "
                                  "shelfwise-batch the pipeline calls, shelfwise-exposure-log and "
                                  "shelfwise-experiment-log the logs' writers, AnyIO worker thread the event "
                                  "store's appends (observability/threads.py)", ["thread"], registry=r)
        self._threads = ThreadCPU()
        self._stages: dict[tuple[str, str], Any] = {}
        self._slots: dict[tuple[str, str], Any] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._sync_lock = threading.Lock()
        self.collector: EngineCollector | None = None

    # ---- counted where it happens ------------------------------------------------------------------------
    @staticmethod
    def _child(children: dict[tuple[str, str], Any], metric: Any, labels: tuple[str, str]) -> Any:
        """``metric.labels(*labels)``, looked up once (prometheus-client's lookup is a hot path's cost)."""
        child = children.get(labels)
        if child is None:
            child = children.setdefault(labels, metric.labels(*labels))
        return child

    def observe_stage(self, placement: str, stage: str, seconds: float) -> None:
        self._child(self._stages, self.stage, (placement, stage)).observe(seconds)

    def served(self, req: RecRequest, answer: Answer, anchor: str, known_shopper: bool, slots: Rendered) -> None:
        """Slots by reason, the answer's fallback cause if it is one, and what it was degraded by (``slots``: what
        the API made of the answer's slots)."""
        for reason, n in slots.reasons.items():
            self._child(self._slots, self.slots, (req.placement, reason)).inc(n)
        if slots.fallback:
            self.fallbacks.labels(req.placement, fallback_cause(req, answer, anchor, known_shopper)).inc()
        for cause in {degraded_cause(note) for note in answer.degraded}:
            self.degraded.labels(req.placement, cause).inc()

    # ---- copied from the engine ----------------------------------------------------------------------------
    def sync(self, engine: Any) -> None:
        """Bring the engine's cumulative counts (answer cache, logs) into the metrics."""
        with self._sync_lock:
            for name, seconds in self._threads.delta().items():
                self.thread_cpu.labels(name).inc(seconds)
            self._add(self.cache.labels("hit"), ("cache", "hit"), engine.cache.hits)
            self._add(self.cache.labels("miss"), ("cache", "miss"), engine.cache.misses)
            self.cache_entries.set(len(engine.cache))
            for name, lg in (("exposure", engine.merch.log), ("experiment", engine.experiments.log)):
                if lg is None:
                    continue
                self.log_queue.labels(name).set(getattr(lg, "queued", 0))
                self._add(self.log_dropped.labels(name), ("dropped", name), lg.dropped)

    def _add(self, child: Any, key: tuple[str, str], total: int) -> None:
        last = self._seen.get(key, 0)
        child.inc(total - last if total >= last else total)  # smaller: a new counter (a log reopened)
        self._seen[key] = total

    def keep_synced(self, engine: Callable[[], Any], stop: threading.Event, every_s: float = 2.0) -> threading.Thread:
        """Multiprocess mode: this process's engine counts reach its files every ``every_s`` (another process may
        be the one scraped)."""
        def run() -> None:
            while not stop.wait(every_s):
                eng = engine()
                if eng is not None:
                    try:
                        self.sync(eng)
                    except Exception:  # noqa: BLE001 - metrics never take the API down
                        log.exception("copying the engine's counters into the metrics failed")

        t = threading.Thread(target=run, name="shelfwise-metrics-sync", daemon=True)
        t.start()
        return t

    # ---- a scrape ------------------------------------------------------------------------------------------
    def render(self, engine: Any) -> bytes:
        if engine is not None:
            self.sync(engine)
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        reap_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)
        if self.collector is not None:
            registry.register(self.collector)
        return generate_latest(registry)


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def reap_dead_processes(path: str) -> None:
    """Multiprocess mode: the live gauges of API processes that died (a crash; uvicorn starts a new one) stop
    counting."""
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for f in os.listdir(path) if (m := _LIVE_FILE.search(f))}
    for pid in pids - {os.getpid()}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)
        except PermissionError:  # alive, another user's
            pass


class EngineCollector(Collector):
    """What a scrape reads from the engine: the model and rule set versions served, the event bus's backlog."""

    def __init__(self, engine: Callable[[], Any], bus_every_s: float = 1.0) -> None:
        self.engine = engine
        self.bus_every_s = bus_every_s
        self._bus: tuple[float, Any, bool] = (-1e9, None, False)  # (read at, backlog, ok)
        self._lock = threading.Lock()
        self._warned = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        eng = self.engine()
        if eng is None:
            return
        model = eng.pipeline.model
        info = GaugeMetricFamily("shelfwise_model_info", "the model version serving (value 1)",
                                 labels=["version", "full", "ranker"])
        info.add_metric([model.version, str(model.full).lower(), str(model.ranker is not None).lower()], 1)
        yield info
        if model.trained_until != float("inf"):
            yield GaugeMetricFamily("shelfwise_model_trained_until_seconds", "time of the newest event the serving "
                                    "model was trained on (unix seconds)", value=model.trained_until)
        rules = GaugeMetricFamily("shelfwise_ruleset_info", "live merchandising rule set versions (value 1)",
                                  labels=["ruleset", "version"])
        label = eng.merch.stage.label()
        for part in label.split(",") if label else []:
            rid, _, version = part.rpartition("@")
            rules.add_metric([rid, version], 1)
        yield rules
        yield from self._bus_metrics(eng)

    def _bus_metrics(self, eng: Any) -> Iterator[GaugeMetricFamily]:
        kind = eng.settings.stores.bus.split(":", 1)[0]
        with self._lock:
            at, backlog, ok = self._bus
            if time.monotonic() - at >= self.bus_every_s:
                try:
                    backlog, ok = eng.bus.backlog(), True
                except Exception as exc:  # noqa: BLE001 - a scrape reports the bus as down, it never fails
                    backlog, ok = None, False
                    if time.monotonic() - self._warned > 60:
                        self._warned = time.monotonic()
                        log.warning("reading the event bus backlog failed: %s", exc)
                self._bus = (time.monotonic(), backlog, ok)
        up = GaugeMetricFamily("shelfwise_bus_up", "1 when the event bus's backlog could be read", labels=["bus"])
        up.add_metric([kind], 1 if ok else 0)
        yield up
        if backlog is None:
            return
        for name, doc, value in (
                ("shelfwise_bus_waiting_entries", "events on the bus not yet delivered to a worker (Kafka: "
                                                  "consumer lag)", backlog.waiting),
                ("shelfwise_bus_pending_entries", "events delivered to a worker, not yet acknowledged (Redis "
                                                  "Streams)", backlog.pending),
                ("shelfwise_bus_oldest_entry_age_seconds", "how long the oldest unprocessed event has waited on "
                                                           "the bus", backlog.oldest_age_s),
                ("shelfwise_bus_dead_letters", "entries in the dead-letter stream or topic", backlog.dead_letters)):
            if value is not None:
                fam = GaugeMetricFamily(name, doc, labels=["bus"])
                fam.add_metric([kind], value)
                yield fam
