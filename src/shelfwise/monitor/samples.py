"""What a drift report reads for one window: a sample of the exposure log, the events, and ranker feature rows.

* **Exposures** (``rules/log.py``: one row per answer, its shown slots and their scores): a uniform sample of
  answers (random row ids within the window, found through the ``ts`` index, so a busy window costs no more than a
  quiet one) whose slots make at most ``sample_rows`` slot rows; each answer's slots are equally likely to be
  sampled, so the slot rows are a uniform sample of the slots shown. Drift checks take one random slot per answer,
  so the values of a check are independent draws.
* **Events** (``EventStore.scan``): the whole window, or evenly spaced slices of it adding up to ``scan_hours``.
* **Ranker features**: for a sample of the logged requests of the ranker's placements, the request is rebuilt as
  it was (the shopper's events before it, at its time) and run through the live model's candidate stages and
  the one feature code path (``ranking.features.compute_features``), exactly as serving computes them; one random
  row among the candidates the ranker scores is kept per request. The catalog side of the features (price,
  margin, stock) is the catalog as it is now, for both windows: a price change shows in the prices paid against
  the catalog's (``events.price_index``), not here.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shelfwise.domain import EventType
from shelfwise.ranking.features import FeatureContext, compute_features, feature_names
from shelfwise.request import RecRequest
from shelfwise.rules.log import migrated, slot_rows
from shelfwise.stores.protocols import EventLog, EventStore, Interaction, ShopperState

from shelfwise.monitor.windows import Window

UNMONITORED = {"device"}  # not in the exposure log, so a rebuilt request cannot know it


@dataclass
class Exposures:
    """Exposure-log rows, one per request (a random shown slot of each)."""

    request_id: np.ndarray  # object
    ts: np.ndarray  # float64
    shopper: np.ndarray  # object (None: anonymous or no analytics consent)
    placement: np.ndarray  # object
    item: np.ndarray  # object
    score: np.ndarray  # float64 (nan when not logged)
    rows_in_window: int = 0  # rows the window holds (about)

    def __len__(self) -> int:
        return len(self.item)


def empty_exposures() -> Exposures:
    o = np.zeros(0, object)
    return Exposures(o, np.zeros(0), o.copy(), o.copy(), o.copy(), np.zeros(0))


def read_exposures(path: Path | str, window: Window, limit: int, rng: np.random.Generator) -> Exposures:
    """A uniform sample of the window's answers (their slots at most ``limit`` rows), one random slot of each."""
    rows, total = sample_rows(path, window, limit, rng)
    if not rows:
        return empty_exposures()
    rows = [rows[i] for i in rng.permutation(len(rows))]
    seen: set[str] = set()
    one = []
    for r in rows:  # the first (random) slot of each request
        if r[0] not in seen:
            seen.add(r[0])
            one.append(r)
    one.sort(key=lambda r: (r[1], r[0]))
    cols = list(zip(*one))
    return Exposures(np.array(cols[0], object), np.array(cols[1], np.float64), np.array(cols[2], object),
                     np.array(cols[3], object), np.array(cols[5], object),
                     np.array([np.nan if s is None else s for s in cols[6]], np.float64), total)


def sample_rows(path: Path | str, window: Window, limit: int, rng: np.random.Generator) -> tuple[list[tuple], int]:
    """A uniform sample of the window's shown slots (at most ``limit``; each ``request_id, ts, shopper,
    placement, position, item_id, score``: the slots of randomly drawn answers) and about how many slots the
    window holds."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    migrated(path)  # a log still one row per slot (not opened by the API since) becomes one row per answer
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows, answers, in_window = _sample_slots(db, window, limit, rng)
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return [], 0
        raise
    finally:
        db.close()
    per_answer = len(rows) / max(answers, 1)
    if len(rows) > limit:  # whole answers drawn, then slots: every slot about equally likely
        rows = [rows[i] for i in np.sort(rng.choice(len(rows), limit, replace=False))]
    return rows, int(round(in_window * per_answer))


def _sample_slots(db: sqlite3.Connection, window: Window, limit: int,
                  rng: np.random.Generator) -> tuple[list[tuple], int, int]:
    """The slots of answers of the window drawn uniformly at random (by row id) until they number ``limit``, how
    many answers they came from, and about how many answers the window holds."""
    span = (window.start, window.end)
    lo = db.execute("SELECT rowid FROM exposures WHERE ts >= ? AND ts < ? ORDER BY ts LIMIT 1", span).fetchone()
    hi = db.execute("SELECT rowid FROM exposures WHERE ts >= ? AND ts < ? ORDER BY ts DESC LIMIT 1",
                    span).fetchone()
    if lo is None or hi is None:
        return [], 0, 0
    a, b = min(lo[0], hi[0]), max(lo[0], hi[0])  # rows are written in about time order
    order = a + rng.permutation(b - a + 1)
    slots: list[tuple] = []
    answers = 0
    for start in range(0, len(order), 900):
        chunk = order[start:start + 900].tolist()
        got = db.execute("SELECT request_id, ts, shopper, placement, items, scores, NULL FROM exposures WHERE rowid "
                         f"IN ({','.join('?' * len(chunk))}) AND ts >= ? AND ts < ?", (*chunk, *span)).fetchall()
        answers += len(got)
        slots += [r[:7] for a in got for r in slot_rows(*a)]
        if len(slots) >= limit:
            break
    return slots, answers, b - a + 1


def first_shown(path: Path | str, item_ids: Sequence[str]) -> dict[str, float]:
    """When each item was first shown (the exposure log's per-item summary), for items without ``created_at``."""
    path = Path(path)
    if not path.is_file() or not item_ids:
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out: dict[str, float] = {}
    try:
        ids = list(item_ids)
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            out.update(db.execute(f"SELECT item_id, first_ts FROM item_impressions WHERE item_id IN "
                                  f"({','.join('?' * len(chunk))})", chunk).fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return out


def impression_totals(path: Path | str, item_ids: Sequence[str]) -> dict[str, tuple[float, float, int]]:
    """Each item's (first shown, last shown, impressions) over the whole log (its per-item summary); items never
    shown are absent."""
    path = Path(path)
    if not path.is_file() or not item_ids:
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out: dict[str, tuple[float, float, int]] = {}
    try:
        ids = list(item_ids)
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            for iid, first, last, n in db.execute(
                    f"SELECT item_id, first_ts, last_ts, impressions FROM item_impressions WHERE item_id IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall():
                out[iid] = (first, last, n)
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return out


def read_events(store: EventStore, window: Window, max_hours: float) -> EventLog:
    """The window's item interactions (or evenly spaced slices of it adding up to ``max_hours``)."""
    logs = [store.scan(a, b) for a, b in window.slices(max_hours)]
    logs = [lg for lg in logs if len(lg)]
    if not logs:
        return EventLog.empty()
    return EventLog(**{k: np.concatenate([getattr(lg, k) for lg in logs]) for k in EventLog.__dataclass_fields__})


@dataclass
class EventMix:
    """A window's event mix, from independent draws (one per session, or per purchase)."""

    types: dict[str, int]  # type of one random event per session
    categories: dict[str, int]  # root category of one random viewed item per session
    log_price_paid: np.ndarray  # one random line per purchase
    price_index: np.ndarray  # the same lines: log(price paid / the item's catalog price now)


def event_mix(log: EventLog, items: Any, rng: np.random.Generator) -> EventMix:
    """The event mix of a window (``items``: the live ``ItemTable``). The events of one session, or the lines of
    one order, are alike: counting each would make the tests see far more evidence than there is, so each
    session (order) contributes one random draw."""
    kind = log.kind.astype(np.int64)
    session = np.array([f"{a}\x1f{b}" for a, b in zip(log.shopper.tolist(), log.session.tolist())], object)
    types: dict[str, int] = defaultdict(int)
    for k in kind[_one_per(session, rng)].tolist():
        types[EventType(int(k)).name] += 1
    views = np.flatnonzero(kind == EventType.product_viewed)
    category_of = top_categories(items)
    cats: dict[str, int] = defaultdict(int)
    for item in log.item[views[_one_per(session[views], rng)]].tolist():
        cats[category_of.get(item, "(not in the catalog)")] += 1
    lines = np.flatnonzero(kind == EventType.purchase_completed)
    order = np.array([f"{a}\x1f{b}\x1f{t}" for a, b, t in zip(log.shopper[lines].tolist(), log.order[lines].tolist(),
                                                               log.ts[lines].tolist())], object)
    lines = lines[_one_per(order, rng)]
    price = log.price[lines]
    rows = np.array([items.index.get(str(i), -1) for i in log.item[lines].tolist()], np.int64)
    catalog = np.where(rows >= 0, items.price[np.maximum(rows, 0)], np.nan) if len(rows) else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        paid = np.log(price)
        index = np.log(price / catalog)
    return EventMix(dict(types), dict(cats), paid[np.isfinite(paid)], index[np.isfinite(index)])


def _one_per(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one random element of each distinct value of ``group``."""
    if not len(group):
        return np.zeros(0, np.int64)
    order = rng.permutation(len(group))
    _, first = np.unique(group[order], return_index=True)
    return np.sort(order[first])


def top_categories(items: Any) -> dict[str, str]:
    """item id → root category name, from an ``ItemTable``."""
    names = [n.split(" > ")[0] for n in items.category_names]
    cat = items.category
    return {str(iid): (names[c] if 0 <= c < len(names) else "(no category)") for iid, c in zip(items.ids, cat)}


def rebuilt_requests(store: EventStore, exp: Exposures, history_length: int, history_events: int,
                     k: int) -> list[RecRequest]:
    """The logged requests as they were made: each shopper's last ``history_length`` events before the request's
    time, and what they had bought by then (an anonymous request has no history)."""
    shoppers = sorted({s for s in exp.shopper.tolist() if s})
    states = store.history(shoppers, history_events) if shoppers else {}
    out = []
    for shopper, ts, placement in zip(exp.shopper.tolist(), exp.ts.tolist(), exp.placement.tolist()):
        st = states.get(shopper) if shopper else None
        before: list[Interaction] = [x for x in st.recent if x.ts < ts] if st is not None else []
        bought = {x.item_id for x in before if x.kind == EventType.purchase_completed}
        out.append(RecRequest(placement=placement, shopper=shopper or None, k=k, now=ts,
                              state=ShopperState(before[-history_length:], bought)))
    return out


def ranker_rows(pipeline: Any, ctx: FeatureContext, store: EventStore, exp: Exposures, history_length: int,
                history_events: int, rng: np.random.Generator, batch: int = 256) -> dict[str, np.ndarray]:
    """Feature name → one value per logged request of the ranker's placements (a random candidate row among the
    ones the ranker scores, each); ``ctx`` is the rank stage's feature context."""
    names = feature_names(ctx.spec)
    n = pipeline.ranker.settings.candidates
    rows: list[np.ndarray] = []
    reqs = rebuilt_requests(store, exp, history_length, history_events, n)
    by_placement: dict[str, list[RecRequest]] = defaultdict(list)
    for r in reqs:
        by_placement[r.placement].append(r)
    for placement, group in sorted(by_placement.items()):
        for start in range(0, len(group), batch):
            part = group[start:start + batch]
            queries, cand = pipeline.candidates(part, n)
            X = compute_features(ctx, part, queries, cand)
            for r in range(len(part)):
                valid = np.flatnonzero(cand.valid[r])
                if len(valid):
                    rows.append(X[r, valid[rng.integers(len(valid))]])
    if not rows:
        return {name: np.zeros(0, np.float32) for name in names}
    M = np.vstack(rows)
    return {name: M[:, j] for j, name in enumerate(names)}
