"""Logged impressions (the merchandising exposure log, ``rules/log.py``) as ranker training points.

Each logged request of the ranker's placement becomes a ``Point`` like the history-based ones (``labels.py``): the
shopper's state just before the request, labelled by what they did next in the session (purchase 3 > cart 2 >
view 1). The items the request SHOWED carry their position; ``build_rows`` weights a shown item that the shopper
then interacted with by the inverse propensity of its position (``ipw_weights``), correcting for the fact that
lower slots are examined less, and of its slot (an exploration slot's logged propensity), so the items the bandit
explored are learned from without bias. Only requests after the time cut are used (their candidates come from sources fit
before it), so the exposure log adds no leakage.

Enabled with ``models.ranker.exposure_log`` = the path of the SQLite file holding the ``exposures`` table (by
default the event store's file, see ``rules.admin.rules_db_path``), or the PostgreSQL DSN of the database holding
it (``rules/pg.py``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shelfwise.ranking.labels import Point, grade_of, point_at
from shelfwise.rules.log import migrated, slot_rows
from shelfwise.stores._dsn import split_options, with_scheme
from shelfwise.stores.protocols import EventLog


@dataclass
class ExposureRows:
    request_id: np.ndarray  # object
    ts: np.ndarray  # float64
    shopper: np.ndarray  # object ("" when anonymous)
    position: np.ndarray  # int64, 0-based
    item: np.ndarray  # object
    propensity: np.ndarray  # float64: probability the item was in its slot (1 for ranked slots)

    def __len__(self) -> int:
        return len(self.item)


def read_exposures(path: Path | str, placement: str, since: float = float("-inf"),
                   until: float = float("inf")) -> ExposureRows:
    """Rows of the ``exposures`` table for one placement in ``[since, until)`` (empty when there is no log)."""
    bounds = (placement, since if np.isfinite(since) else -1e18, until if np.isfinite(until) else 1e18)
    if str(path).startswith(("postgresql://", "postgres://")):
        return _rows(_read_postgres(str(path), bounds))
    path = Path(path)
    if not path.is_file():
        return _empty()
    migrated(path)  # a log still one row per slot (not opened by the API since) becomes one row per answer
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(_SELECT, bounds).fetchall()
    except sqlite3.OperationalError:  # no exposures table yet
        return _empty()
    finally:
        db.close()
    return _rows(rows)


_SELECT = ("SELECT request_id, ts, COALESCE(shopper, ''), placement, items, NULL, propensities FROM exposures "
           "WHERE placement = ? AND ts >= ? AND ts < ? ORDER BY ts, request_id")


def _read_postgres(dsn: str, bounds: tuple[str, float, float]) -> list[tuple]:
    import psycopg

    conninfo, _ = split_options(with_scheme(dsn, "postgresql"), {"pool_min", "pool_max", "pool_timeout",
                                                                  "refresh_s"})
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        if conn.execute("SELECT to_regclass('exposures')").fetchone()[0] is None:
            return []  # no exposure log in this database yet
        return conn.execute(_SELECT.replace("?", "%s"), bounds).fetchall()


def _rows(answers: list[tuple]) -> ExposureRows:
    """Answer rows (``rules/log.py``) as columns of one row per shown slot."""
    rows = [(r[0], r[1], r[2], r[4], r[5], 1.0 if r[7] is None else r[7]) for a in answers for r in slot_rows(*a)]
    if not rows:
        return _empty()
    cols = list(zip(*rows))
    return ExposureRows(np.array(cols[0], dtype=object), np.array(cols[1], np.float64),
                        np.array(cols[2], dtype=object), np.array(cols[3], np.int64), np.array(cols[4], dtype=object),
                        np.array(cols[5], np.float64))


def _empty() -> ExposureRows:
    return ExposureRows(np.zeros(0, object), np.zeros(0), np.zeros(0, object), np.zeros(0, np.int64),
                        np.zeros(0, object), np.zeros(0))


def exposure_points(exp: ExposureRows, log: EventLog, history_length: int = 50, session_gap_s: float = 1800.0,
                    label_horizon: int = 5) -> list[Point]:
    """One point per logged request of a known shopper: history before it, labels after it, shown positions."""
    if not len(exp) or not len(log):
        return []
    change = np.flatnonzero(log.shopper[1:] != log.shopper[:-1]) + 1
    bounds = np.r_[0, change, len(log)]
    where = {str(log.shopper[lo]): (lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])}
    grades = grade_of(log.kind)
    points: list[Point] = []
    order = np.argsort(exp.request_id.astype(str), kind="stable")
    rid = exp.request_id[order].astype(str)
    starts = np.r_[0, np.flatnonzero(rid[1:] != rid[:-1]) + 1, len(rid)]
    for a, b in zip(starts[:-1], starts[1:]):
        rows = order[a:b]
        shopper, ts = str(exp.shopper[rows[0]]), float(exp.ts[rows[0]])
        if shopper not in where:
            continue
        lo, hi = where[shopper]
        i = lo + int(np.searchsorted(log.ts[lo:hi], ts, side="left"))
        if i == lo:
            continue  # no history before the request
        p = point_at(log, lo, i, history_length, ts=ts)
        taken, prev = 0, ts
        for j in range(i, hi):
            if log.ts[j] - prev > session_gap_s:
                break
            prev = log.ts[j]
            if grades[j] == 0:
                continue
            it = str(log.item[j])
            p.labels[it] = max(p.labels.get(it, 0), int(grades[j]))
            taken += 1
            if taken >= label_horizon:
                break
        p.positions = {str(exp.item[r]): int(exp.position[r]) for r in rows}
        p.shown = {str(exp.item[r]): float(exp.propensity[r]) for r in rows if exp.propensity[r] < 1.0}
        if p.labels:
            points.append(p)
    return points
