"""Exposure log (what every served rail showed) and shadow log (live vs draft answers), written off the hot path.

``record``/``record_shadow`` only enqueue; a writer thread commits what queues within ``linger_s`` (0.25 s) as one
batch (up to 2,000 requests; ``flush`` cuts it short), so serving never waits on the disk and the writer makes a
few large transactions instead of one per request (it competed with requests for the CPU: 13 % of the API's
samples at 650 requests/s). A full queue drops rows and counts them (``dropped``) rather than slow
requests down. One row per answer (request_id, time, shopper, placement, the shown items, their scores and
propensities as JSON arrays, model and rule versions: a row per shown slot cost 3x the writer's CPU for a rail and
10x for a 48-slot re-rank, ``benchmarks/exposure_rows.py``), plus a per-item summary (last shown, impressions)
that the zero-impression report reads. ``slot_rows`` turns answer rows back into one row per shown slot.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import orjson

from shelfwise.experiments.sql import _Exec
from shelfwise.stores.handoff import Handoff
from shelfwise.stores.sqlite import connect

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS exposures (
    request_id    TEXT NOT NULL,
    ts            REAL NOT NULL,
    shopper       TEXT,
    placement     TEXT NOT NULL,
    items         TEXT NOT NULL,  -- JSON array of the shown item ids, slot by slot
    scores        TEXT,           -- JSON array of their scores
    model_version TEXT,
    rules         TEXT,
    propensities  TEXT  -- JSON array: an exploration slot's probability of holding its item (null: a ranked
                        -- slot), NULL when no slot explored
);
CREATE INDEX IF NOT EXISTS exposures_ts ON exposures (ts);
CREATE INDEX IF NOT EXISTS exposures_request ON exposures (request_id);
CREATE INDEX IF NOT EXISTS exposures_shopper ON exposures (shopper) WHERE shopper IS NOT NULL;
CREATE TABLE IF NOT EXISTS item_impressions (
    item_id     TEXT PRIMARY KEY,
    first_ts    REAL NOT NULL,
    last_ts     REAL NOT NULL,
    impressions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_log (
    seq            INTEGER PRIMARY KEY,
    ts             REAL NOT NULL,
    request_id     TEXT,
    shopper        TEXT,
    placement      TEXT NOT NULL,
    ruleset_id     TEXT NOT NULL,
    live_version   INTEGER,
    shadow_version INTEGER NOT NULL,
    record         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_log_ruleset ON shadow_log (ruleset_id, shadow_version, ts);
CREATE INDEX IF NOT EXISTS shadow_log_shopper ON shadow_log (shopper) WHERE shopper IS NOT NULL;
CREATE TABLE IF NOT EXISTS exposure_meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""


@dataclass
class Exposure:
    request_id: str
    ts: float
    shopper: str | None
    placement: str
    items: list[str]
    scores: list[float]
    model_version: str = ""
    rules: str = ""  # live rule set versions, e.g. "default@3,black-friday@2"
    propensities: list[float] | None = None  # per slot, when the rail explored (experiments' item bandit)


@dataclass
class ShadowRecord:
    """One sampled request: the live and the shadow answer, each as [item_id, relevance, price, margin] rows."""

    ts: float
    request_id: str | None
    shopper: str | None
    placement: str
    ruleset_id: str
    live_version: int | None
    shadow_version: int
    live: list[list[Any]]
    shadow: list[list[Any]]
    pinned: list[str] = field(default_factory=list)  # shown by a pin of the shadow rule set
    blocked: list[str] = field(default_factory=list)  # live items the shadow rule set removed

    def payload(self) -> bytes:
        return orjson.dumps({"live": self.live, "shadow": self.shadow, "pinned": self.pinned,
                             "blocked": self.blocked})


class ImpressionCounts:
    """Impressions of the items being watched (the new ones: ``stages.explore``), in memory, so a request reads
    them with a dict lookup per item and no query. The exposure log's writer thread keeps them: it adds what each
    batch it commits showed, reads the log's per-item totals of items newly watched (at once: ``watch`` wakes it)
    and re-reads every watched item's total every ``refresh_s``, which brings in what other processes writing
    the same log file showed. An item whose total has not been read yet counts as unknown (-1). Several pipelines
    may watch (each its new items); an item nobody asked about for ``forget_s`` is no longer counted."""

    def __init__(self, refresh_s: float = 10.0, forget_s: float = 3600.0) -> None:
        self.refresh_s, self.forget_s = refresh_s, forget_s
        self.version = 0  # bumped whenever a count changes or an item starts being watched
        self.wake: Callable[[], None] | None = None  # asks the writer to read (set by the log)
        self._n: dict[str, int] = {}  # watched item -> impressions (absent: not read yet)
        self._wanted: dict[str, float] = {}  # watched item -> when it was last asked for (monotonic)
        self._unread: set[str] = set()
        self._read_at = 0.0
        self._lock = threading.Lock()

    def watch(self, item_ids: Iterable[str]) -> None:
        """Count these items (besides the others watched)."""
        ids, now = list(item_ids), time.monotonic()
        with self._lock:
            fresh = [i for i in ids if i not in self._wanted]
            self._wanted.update(dict.fromkeys(ids, now))
            if fresh:
                self._unread.update(fresh)
                self.version += 1
        if fresh and self.wake is not None:
            self.wake()

    def get(self, item_ids: Sequence[str]) -> list[int]:
        n = self._n
        return [n.get(i, -1) for i in item_ids]

    def add(self, shown: dict[str, int]) -> None:
        """A committed batch's impressions per item (the writer)."""
        with self._lock:
            hit = [(i, k) for i, k in shown.items() if i in self._n]
            for i, k in hit:
                self._n[i] += k
            if hit:
                self.version += 1

    def to_read(self, now: float) -> list[str]:
        """The items whose totals the writer should read now: the newly watched, or all when a refresh is due
        (which first forgets the items nobody asked about for ``forget_s``)."""
        with self._lock:
            if now - self._read_at < self.refresh_s:
                return sorted(self._unread)
            self._read_at = now
            for i in [i for i, t in self._wanted.items() if now - t > self.forget_s]:
                del self._wanted[i]
                self._n.pop(i, None)
                self._unread.discard(i)
            return sorted(self._wanted)

    def read(self, item_ids: Sequence[str], totals: dict[str, int]) -> None:
        """Totals read from the log for ``item_ids`` (an item without a row has none)."""
        with self._lock:
            for i in item_ids:
                if i in self._wanted:
                    self._n[i] = int(totals.get(i, 0))
                    self._unread.discard(i)
            self.version += 1


@runtime_checkable
class ExposureLog(Protocol):
    def record(self, exposures: Sequence[Exposure]) -> None:
        """Enqueue; never blocks the caller."""

    counts: ImpressionCounts  # impressions of the watched items, kept in memory

    def record_shadow(self, records: Sequence[ShadowRecord]) -> None: ...

    def last_shown(self, since: float) -> dict[str, float]:
        """item id → last time shown, for items shown at or after ``since``."""

    def started_at(self) -> float | None:
        """When the log recorded its first exposure (None: never)."""

    def shadow_records(self, ruleset_id: str, version: int | None = None, since: float | None = None,
                       limit: int = 100_000) -> list[ShadowRecord]: ...

    def request(self, request_id: str) -> list[tuple[int, str]]:
        """(position, item id) of what one request showed."""

    def flush(self) -> None:
        """Wait until everything enqueued so far is committed."""

    def erase(self, shopper: str) -> tuple[int, int]:
        """Delete a shopper's rows (after committing what is queued): (exposure rows, shadow rows) removed."""

    def close(self) -> None: ...


_INSERT_EXPOSURE = ("INSERT INTO exposures (request_id, ts, shopper, placement, items, scores, model_version, rules, "
                    "propensities) VALUES (?,?,?,?,?,?,?,?,?)")
_INSERT_SHADOW = ("INSERT INTO shadow_log (ts, request_id, shopper, placement, ruleset_id, live_version, "
                  "shadow_version, record) VALUES (?,?,?,?,?,?,?,?)")
_UPSERT_IMPRESSIONS = ("INSERT INTO item_impressions (item_id, first_ts, last_ts, impressions) VALUES (?,?,?,?) "
                       "ON CONFLICT (item_id) DO UPDATE SET "
                       "last_ts = {greatest}(item_impressions.last_ts, excluded.last_ts), "
                       "first_ts = {least}(item_impressions.first_ts, excluded.first_ts), "
                       "impressions = item_impressions.impressions + excluded.impressions")
_STARTED = "INSERT INTO exposure_meta (key, value) VALUES ('started', ?) ON CONFLICT (key) DO NOTHING"


@dataclass
class Batch:
    """What the writer commits in one transaction (rows ready for the SQL above)."""

    exposures: Iterable[tuple]  # consumed once, by the insert
    impressions: list[tuple]  # (item_id, first_ts, last_ts, impressions)
    shadows: list[tuple]
    started: float | None  # the earliest exposure of the batch
    prune_before: float | None  # delete rows older than this (None: not this time)


def _exposure_rows(shown: list[Any]) -> Iterator[tuple]:
    """The exposure table's rows of a batch's exposures, one per answer (its slots as JSON arrays)."""
    for x in shown:
        n = min(len(x.items), len(x.scores))
        props = x.propensities or []
        explored = [p if p < 1.0 else None for p in props[:n]]
        yield (x.request_id, x.ts, x.shopper, x.placement, orjson.dumps(x.items[:n]).decode(),
               orjson.dumps([float(v) for v in x.scores[:n]]).decode(), x.model_version, x.rules,
               orjson.dumps(explored).decode() if any(p is not None for p in explored) else None)


def slot_rows(request_id: Any, ts: Any, shopper: Any, placement: Any, items: str, scores: str | None,
              propensities: str | None) -> Iterator[tuple]:
    """One answer row's slots: (request_id, ts, shopper, placement, position, item_id, score, propensity) each,
    ``score`` and ``propensity`` None where not logged (a propensity only for an exploration slot)."""
    ids = orjson.loads(items)
    sc = orjson.loads(scores) if scores else []
    props = orjson.loads(propensities) if propensities else []
    for pos, iid in enumerate(ids):
        yield (request_id, ts, shopper, placement, pos, iid, sc[pos] if pos < len(sc) else None,
               props[pos] if pos < len(props) else None)


class QueuedExposureLog:
    """The exposure log's queue, writer thread and SQL, whatever the database; backends provide the connections:
    ``_connect_writer``/``_close_writer``, ``_commit(conn, batch)`` (one transaction), ``_reading()`` (an
    ``_Exec`` for reads), ``_erase(shopper)`` and ``_close_readers``."""

    pg = False  # placeholders and functions of PostgreSQL

    def __init__(self, retention_days: float = 30.0, max_queue: int = 200_000, batch: int = 2000,
                 linger_s: float = 0.25, counts_refresh_s: float = 10.0) -> None:
        self.counts = ImpressionCounts(counts_refresh_s)
        self.counts.wake = self._wake_counts
        # consent: a log keeps a shopper's id only when this says so (service wires it to the privacy guard)
        self.redact: Callable[[str | None, str], str | None] | None = None
        self.retention_s = retention_days * 86400.0
        self.batch = batch
        self._q = Handoff(max_queue, linger_s)
        self._pruned_at = 0.0
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="shelfwise-exposure-log", daemon=True)

    # ---- backend hooks -------------------------------------------------------------------------------
    def _connect_writer(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_writer(self, conn: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _commit(self, conn: Any, batch: Batch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reading(self) -> ContextManager[_Exec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _erase(self, shopper: str) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_readers(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _totals(self, conn: Any, item_ids: list[str]) -> dict[str, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- writing -------------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Rows lost: refused by a full queue, or in a batch the writer could not commit."""
        return self._q.dropped

    @property
    def queued(self) -> int:
        """Rows waiting for the writer."""
        return len(self._q)

    def _put(self, item: tuple) -> None:
        if not self._closed:
            self._q.put(item)

    def _wake_counts(self) -> None:
        """Items started being watched: the writer reads their totals now (a control item: no lingering)."""
        if not self._closed:
            self._q.put_control(("count", None))

    def record(self, exposures: Sequence[Exposure]) -> None:
        for e in exposures:
            if self.redact is not None and e.shopper is not None:
                e = replace(e, shopper=self.redact(e.shopper, "analytics"))
            self._put(("exposure", e))

    def record_shadow(self, records: Sequence[ShadowRecord]) -> None:
        for r in records:
            if self.redact is not None and r.shopper is not None:
                r = replace(r, shopper=self.redact(r.shopper, "experiments"))
            self._put(("shadow", r))

    def erase(self, shopper: str) -> tuple[int, int]:
        self.flush()
        return self._erase(shopper)

    def flush(self) -> None:
        if self._closed or not self._writer.is_alive():
            return
        done = threading.Event()
        self._q.put_control(("flush", done))
        done.wait(30)

    def _run(self) -> None:
        conn, connected = None, False
        stop = False
        while not stop:
            items = self._q.take(self.batch)  # waits for work; what queues for linger_s more is one batch
            waiters = [x[1] for x in items if x[0] == "flush"]
            stop = any(x[0] == "stop" for x in items)
            rows = [x for x in items if x[0] in ("exposure", "shadow")]
            try:
                if not connected:
                    conn, connected = self._connect_writer(), True
                self.counts.add(self._write(conn, rows))
            except Exception:  # disk full, database down, a bad row...: the writer must survive; count the loss
                log.exception("exposure log: %d rows could not be written", len(rows))
                self._q.lost(len(rows))
            try:
                if connected:
                    self._read_counts(conn)
            except Exception:  # counts stay as they are until the next read
                log.exception("exposure log: reading impression counts failed")
            for w in waiters:
                w.set()
        if connected:
            self._close_writer(conn)

    def _read_counts(self, conn: Any) -> None:
        ids = self.counts.to_read(time.monotonic())
        totals: dict[str, int] = {}
        for start in range(0, len(ids), 500):
            totals.update(self._totals(conn, ids[start:start + 500]))
        if ids:
            self.counts.read(ids, totals)

    def _write(self, conn: Any, items: list[tuple]) -> dict[str, int]:
        """Commit a batch; returns the impressions per item it added."""
        if not items:
            return {}
        shown = [x for kind, x in items if kind == "exposure" and x.items and x.scores]  # those with rows
        shadow_rows = [(x.ts, x.request_id, x.shopper, x.placement, x.ruleset_id, x.live_version, x.shadow_version,
                        x.payload()) for kind, x in items if kind != "exposure"]
        seen: dict[str, tuple[float, float, int]] = {}
        for x in shown:
            for iid, _ in zip(x.items, x.scores):
                first, last, n = seen.get(iid, (x.ts, x.ts, 0))
                seen[iid] = (min(first, x.ts), max(last, x.ts), n + 1)
        now = time.time()
        prune = None
        if now - self._pruned_at > 600:
            self._pruned_at = now
            prune = now - self.retention_s
        # the exposure rows are streamed to the insert, one alive at a time: a batch of a few thousand row tuples
        # held at once set off the garbage collector's young passes on this thread and made them slow (each
        # pass walks every young object: 15-50 ms stalls of the whole API at 200 re-ranks/s)
        self._commit(conn, Batch(_exposure_rows(shown) if shown else [], [(k, *v) for k, v in sorted(seen.items())],
                                 shadow_rows, min((x.ts for x in shown), default=None), prune))
        return {k: v[2] for k, v in seen.items()}

    def _statements(self, x: _Exec, batch: Batch) -> None:
        """The batch's SQL, inside the backend's transaction."""
        many = x.cur.executemany
        if batch.exposures:
            many(x._sql(_INSERT_EXPOSURE), batch.exposures)
        if batch.impressions:
            many(x._sql(_UPSERT_IMPRESSIONS.format(greatest="greatest" if self.pg else "max",
                                                   least="least" if self.pg else "min")), batch.impressions)
        if batch.started is not None:
            x.run(_STARTED, (batch.started,))
        if batch.shadows:
            many(x._sql(_INSERT_SHADOW), batch.shadows)
        if batch.prune_before is not None:
            x.run("DELETE FROM exposures WHERE ts < ?", (batch.prune_before,))
            x.run("DELETE FROM shadow_log WHERE ts < ?", (batch.prune_before,))

    # ---- reading -------------------------------------------------------------------------------------
    def last_shown(self, since: float) -> dict[str, float]:
        with self._reading() as x:
            return dict(x.all("SELECT item_id, last_ts FROM item_impressions WHERE last_ts >= ?", (since,)))

    def started_at(self) -> float | None:
        with self._reading() as x:
            row = x.one("SELECT value FROM exposure_meta WHERE key = 'started'")
        return row[0] if row else None

    def request(self, request_id: str) -> list[tuple[int, str]]:
        """(position, item id) of each slot a request showed."""
        with self._reading() as x:
            rows = x.all("SELECT items FROM exposures WHERE request_id = ? ORDER BY ts", (request_id,))
        return [(pos, iid) for (items,) in rows for pos, iid in enumerate(orjson.loads(items))]

    def shadow_records(self, ruleset_id: str, version: int | None = None, since: float | None = None,
                       limit: int = 100_000) -> list[ShadowRecord]:
        sql = ("SELECT ts, request_id, shopper, placement, ruleset_id, live_version, shadow_version, record "
               "FROM shadow_log WHERE ruleset_id = ?")
        params: list[Any] = [ruleset_id]
        if version is not None:
            sql += " AND shadow_version = ?"
            params.append(version)
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        with self._reading() as x:
            rows = x.all(sql, params)
        out = []
        for *head, blob in rows:
            rec = orjson.loads(blob)
            out.append(ShadowRecord(*head, live=rec["live"], shadow=rec["shadow"], pinned=rec["pinned"],
                                    blocked=rec["blocked"]))
        return out

    def close(self) -> None:
        if self._closed:
            return
        if self._writer.is_alive():
            done = threading.Event()
            self._q.put_control(("flush", done))
            self._q.put_control(("stop", None))
            done.wait(30)
            self._writer.join(30)
        self._closed = True
        self._close_readers()


class SQLiteExposureLog(QueuedExposureLog):
    """The exposure log in a SQLite file (the event store's, by default): a writer connection of its own and one
    read connection."""

    def __init__(self, path: Path | str, retention_days: float = 30.0, max_queue: int = 200_000,
                 batch: int = 2000, secure_delete: bool = True, linger_s: float = 0.25,
                 counts_refresh_s: float = 10.0) -> None:
        super().__init__(retention_days, max_queue, batch, linger_s, counts_refresh_s)
        self.path = Path(path)
        self.secure_delete = secure_delete
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._read_lock = threading.Lock()
        self._read = self._connect()
        _migrate_slot_rows(self._read)
        self._read.executescript(SCHEMA)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, synchronous="NORMAL", secure_delete=self.secure_delete)

    def _connect_writer(self) -> sqlite3.Connection:
        return self._connect()

    def _close_writer(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: Batch) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._statements(_Exec(conn.cursor(), pg=False), batch)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _totals(self, conn: sqlite3.Connection, item_ids: list[str]) -> dict[str, int]:
        return dict(conn.execute(f"SELECT item_id, impressions FROM item_impressions WHERE item_id IN "
                                 f"({','.join('?' * len(item_ids))})", item_ids).fetchall())

    @contextmanager
    def _reading(self) -> Iterator[_Exec]:
        with self._read_lock:
            yield _Exec(self._read.cursor(), pg=False)

    def _erase(self, shopper: str) -> tuple[int, int]:
        with self._read_lock:
            db = self._read
            db.execute("BEGIN IMMEDIATE")
            try:
                exposures = db.execute("DELETE FROM exposures WHERE shopper = ?", (shopper,)).rowcount
                shadows = db.execute("DELETE FROM shadow_log WHERE shopper = ?", (shopper,)).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return exposures, shadows

    def checkpoint(self) -> str:
        with self._read_lock:
            busy, _, _ = self._read.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return "exposure log WAL " + ("checkpointed and truncated" if not busy else "busy: checkpointed later")

    def _close_readers(self) -> None:
        with self._read_lock:
            self._read.close()


def migrated(path: Path | str) -> None:
    """Bring an SQLite exposure log at ``path`` (if there is one) to one row per answer before reading it: its
    readers outside the API (training's exposure points, the drift report) may open a log the API has not opened
    since it was written one row per slot."""
    path = Path(path)
    if not path.is_file():
        return
    db = connect(path, synchronous="NORMAL")
    try:
        _migrate_slot_rows(db)
    finally:
        db.close()


def _slot_columns(db: sqlite3.Connection) -> set[str] | None:
    """The exposure table's columns when it holds a row per slot (None: per answer, or no table)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(exposures)")}
    return columns if "position" in columns else None


def _migrate_slot_rows(db: sqlite3.Connection) -> None:
    """A log written one row per shown slot (before one row per answer) becomes one row per answer, in one
    transaction (the slots of a request in position order; a log from before the propensity column too). Answers
    are written in time order, as the writer writes them: the drift samples find a window's rows by row id. The
    layout is checked again inside the transaction: two processes opening one old log migrate it once."""
    if _slot_columns(db) is None:
        return
    started = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = _slot_columns(db)
        if columns is None:  # another process migrated it meanwhile
            db.execute("COMMIT")
            return
        propensity = "propensity" if "propensity" in columns else "NULL"
        db.execute("ALTER TABLE exposures RENAME TO exposures_slots")
        for name in ("exposures_ts", "exposures_request", "exposures_shopper"):
            db.execute(f"DROP INDEX IF EXISTS {name}")
        for statement in SCHEMA.split(";"):
            if "exposures" in statement and "shadow" not in statement and "meta" not in statement:
                db.execute(statement)
        rows = db.execute(f"SELECT request_id, ts, shopper, placement, item_id, score, model_version, rules, "
                          f"{propensity} FROM exposures_slots ORDER BY ts, request_id, placement, position")
        db.executemany(_INSERT_EXPOSURE, _answers_of_slots(rows))
        n = db.execute("SELECT count(*) FROM exposures").fetchone()[0]
        db.execute("DROP TABLE exposures_slots")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info("exposure log: %d answers migrated from one row per slot to one row per answer in %.1f s", n,
             time.perf_counter() - started)


def _answers_of_slots(rows: Iterable[tuple]) -> Iterator[tuple]:
    """Slot rows sorted by (time, request, placement, position) grouped into answer rows."""
    key = None
    head: tuple = ()
    items: list[str] = []
    scores: list[float | None] = []
    props: list[float | None] = []

    def answer() -> tuple:
        return (*head[:4], orjson.dumps(items).decode(), orjson.dumps(scores).decode(), head[4], head[5],
                orjson.dumps(props).decode() if any(p is not None for p in props) else None)

    for rid, ts, shopper, placement, item, score, model_version, rules, propensity in rows:
        if (rid, ts, placement) != key:
            if key is not None:
                yield answer()
            key = (rid, ts, placement)
            head = (rid, ts, shopper, placement, model_version, rules)
            items, scores, props = [], [], []
        items.append(item)
        scores.append(score)
        props.append(propensity if propensity is not None and propensity < 1.0 else None)
    if key is not None:
        yield answer()
