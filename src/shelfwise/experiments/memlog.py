"""In-process experiment log (``memory://``): the same attribution as the SQL backends, vectorised with numpy.

For tests, the simulator and single-process tools. ``numpy_unit_table`` is the reference implementation of the
attribution rules over columnar arrays (any sortable id type: strings, or integers for speed); the contract suite
checks that it agrees with the SQL of the SQLite and PostgreSQL backends row for row. Writes are synchronous (an
in-memory append is cheaper than a queue hand-off), duplicates are ignored like the databases do.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from shelfwise.experiments.log import (
    ExposureRecord,
    LoggedRequest,
    OutcomeRecord,
    UnitTable,
    _bounds,
    outcomes_from_events,
    request_metrics_from_rows,
)


def _factorize(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Integer codes (in sorted order of the values) for one or more arrays sharing a code space."""
    lens = [len(a) for a in arrays]
    allv = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    if len(allv) == 0:
        return tuple(np.zeros(0, np.int64) for _ in arrays)
    _, inv = np.unique(allv, return_inverse=True)
    out, start = [], 0
    for n in lens:
        out.append(inv[start:start + n].astype(np.int64))
        start += n
    return tuple(out)


def numpy_unit_table(x: dict[str, np.ndarray], o: dict[str, np.ndarray], window_s: float,
                     since: float | None = None, until: float | None = None, pre_since: float | None = None,
                     pre_until: float | None = None) -> UnitTable:
    """The attribution of ``log.py`` over columns.

    ``x`` (one experiment's exposures): seq, request_id, variant, unit, shopper, visit, ts, n_items, error, and the
    masks has_request? (always true), has_shopper, has_visit. ``o`` (outcomes): type ("click"/"cart"/"purchase"),
    ts, shopper, visit, request_id, revenue, and masks has_shopper, has_visit, has_request."""
    lo, hi = _bounds(since, until)
    keep = (x["ts"] >= lo) & (x["ts"] < hi)
    x = {k: v[keep] for k, v in x.items()}
    n_x = len(x["ts"])
    if n_x == 0:
        return UnitTable.empty()
    units, uidx = np.unique(x["unit"], return_inverse=True)
    variants, vidx = np.unique(x["variant"], return_inverse=True)
    nv = len(variants)
    pair = uidx.astype(np.int64) * nv + vidx
    pairs, pinv = np.unique(pair, return_inverse=True)
    n_p = len(pairs)
    order = np.argsort(pinv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(pinv[order]) != 0])
    first_ts = np.minimum.reduceat(x["ts"][order], starts)
    rails = np.bincount(pinv, minlength=n_p).astype(float)
    impressions = np.bincount(pinv, weights=x["n_items"], minlength=n_p)
    errors = np.bincount(pinv, weights=x["error"], minlength=n_p)

    def distinct_per_pair(p: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if len(p) == 0:
            return np.zeros(n_p)
        width = int(codes.max()) + 1
        u = np.unique(p.astype(np.int64) * width + codes)
        return np.bincount(u // width, minlength=n_p).astype(float)

    hv = x["has_visit"]
    ovisit_mask = o["has_visit"]
    xv_codes, ov_codes = _factorize(x["visit"][hv], o["visit"][ovisit_mask])
    visits = distinct_per_pair(pinv[hv], xv_codes)
    x_vcode = np.full(n_x, -1, np.int64)
    x_vcode[hv] = xv_codes
    o_vcode = np.full(len(o["ts"]), -1, np.int64)
    o_vcode[ovisit_mask] = ov_codes

    # clicks by request id
    clicks = np.zeros(n_p)
    is_click = o["type"] == "click"
    cm = is_click & o["has_request"]
    if cm.any():
        xr = x["request_id"]
        sorter = np.argsort(xr, kind="stable")
        xr_sorted = xr[sorter]
        oi = np.flatnonzero(cm)
        pos = np.searchsorted(xr_sorted, o["request_id"][oi])
        pos_c = np.minimum(pos, n_x - 1)
        hit = (pos < n_x) & (xr_sorted[pos_c] == o["request_id"][oi])
        xi = sorter[pos_c[hit]]
        oi = oi[hit]
        ts_o, ts_x = o["ts"][oi], x["ts"][xi]
        ok = (ts_o >= ts_x) & (ts_o <= ts_x + window_s) & (ts_o < hi)
        clicks += np.bincount(pinv[xi[ok]], minlength=n_p)

    # latest exposure of the visit at or before the event, within the window
    carts = np.zeros(n_p)
    cart_visits = np.zeros(n_p)
    orders = np.zeros(n_p)
    revenue = np.zeros(n_p)
    cand = ((o["ts"] >= lo) & (o["ts"] < hi) & ovisit_mask & (~is_click | ~o["has_request"]))
    oi = np.flatnonzero(cand)
    xi_all = np.flatnonzero(hv)
    if len(oi) and len(xi_all):
        vcode = np.concatenate([x_vcode[xi_all], o_vcode[oi]])
        ts = np.concatenate([x["ts"][xi_all], o["ts"][oi]])
        flag = np.concatenate([np.zeros(len(xi_all), np.int8), np.ones(len(oi), np.int8)])
        seq = np.concatenate([x["seq"][xi_all], np.zeros(len(oi), x["seq"].dtype)])
        idx = np.concatenate([xi_all, oi])
        comb = np.lexsort((seq, flag, ts, vcode))
        is_x = flag[comb] == 0
        positions = np.arange(len(comb))
        last_x = np.maximum.accumulate(np.where(is_x, positions, -1))
        o_pos = np.flatnonzero(~is_x)
        lx = last_x[o_pos]
        valid = lx >= 0
        o_pos, lx = o_pos[valid], lx[valid]
        same = vcode[comb][lx] == vcode[comb][o_pos]
        o_pos, lx = o_pos[same], lx[same]
        xi = idx[comb][lx]
        oi2 = idx[comb][o_pos]
        ok = o["ts"][oi2] <= x["ts"][xi] + window_s
        xi, oi2 = xi[ok], oi2[ok]
        p = pinv[xi]
        kinds = o["type"][oi2]
        for kind in ("click", "cart", "purchase"):
            m = kinds == kind
            if not m.any():
                continue
            counts = np.bincount(p[m], minlength=n_p)
            if kind == "click":
                clicks += counts
            elif kind == "cart":
                carts += counts
                cart_visits += distinct_per_pair(p[m], o_vcode[oi2[m]])
            else:
                orders += counts
                revenue += np.bincount(p[m], weights=o["revenue"][oi2[m]], minlength=n_p)

    # pre-period covariates per unit, through the shoppers behind it
    nu = len(units)
    pre = {k: np.zeros(nu) for k in ("click", "cart", "purchase", "revenue")}
    if pre_since is not None and pre_until is not None and pre_until > pre_since:
        hs = x["has_shopper"]
        om = o["has_shopper"] & (o["ts"] >= pre_since) & (o["ts"] < pre_until)
        if hs.any() and om.any():
            xs_codes, os_codes = _factorize(x["shopper"][hs], o["shopper"][om])
            ns = int(max(xs_codes.max(), os_codes.max())) + 1
            us = np.unique(uidx[hs].astype(np.int64) * ns + xs_codes)  # distinct (unit, shopper)
            u_of, s_of = us // ns, us % ns
            kinds = o["type"][om]
            for kind in ("click", "cart", "purchase"):
                per_shopper = np.bincount(os_codes[kinds == kind], minlength=ns)
                pre[kind] = np.bincount(u_of, weights=per_shopper[s_of], minlength=nu)
            per_shopper = np.bincount(os_codes[kinds == "purchase"], weights=o["revenue"][om][kinds == "purchase"],
                                      minlength=ns)
            pre["revenue"] = np.bincount(u_of, weights=per_shopper[s_of], minlength=nu)

    pair_unit = pairs // nv
    per_unit = np.bincount(pair_unit, minlength=nu)
    single = per_unit[pair_unit] == 1
    pu = pair_unit[single]
    return UnitTable(
        unit=units[pu].astype(object), variant=variants[pairs[single] % nv].astype(object),
        first_ts=first_ts[single], rails=rails[single], impressions=impressions[single], visits=visits[single],
        errors=errors[single], clicks=clicks[single], carts=carts[single], cart_visits=cart_visits[single],
        orders=orders[single], revenue=revenue[single], pre_clicks=pre["click"][pu], pre_carts=pre["cart"][pu],
        pre_orders=pre["purchase"][pu], pre_revenue=pre["revenue"][pu],
        mixed_units=int((per_unit > 1).sum()))


def _col(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """An object column with None replaced by "" and its has-value mask."""
    arr = np.array(["" if v is None else v for v in values], dtype=object)
    mask = np.array([v is not None for v in values], dtype=bool)
    return arr, mask


class MemoryExperimentLog:
    def __init__(self) -> None:
        self.dropped = 0
        self.queued = 0  # written at once
        self._lock = threading.Lock()
        self._requests: dict[str, ExposureRecord] = {}
        self._exposures: list[tuple] = []  # (experiment, request, variant, propensity, unit, shopper, visit, ts, n, latency, error)
        self._exposure_keys: set[tuple[str, str]] = set()
        self._outcomes: dict[str, OutcomeRecord] = {}

    def record(self, exposures: Sequence[ExposureRecord]) -> None:
        with self._lock:
            for e in exposures:
                self._requests.setdefault(e.request_id, e)
                if e.unit is None:
                    continue
                for eid, variant, prop in e.assignments:
                    if (eid, e.request_id) in self._exposure_keys:
                        continue
                    self._exposure_keys.add((eid, e.request_id))
                    self._exposures.append((eid, e.request_id, variant, float(prop), e.unit, e.shopper, e.visit, e.ts,
                                            len(e.items), e.latency_ms, int(e.error)))

    def record_outcomes(self, outcomes: Sequence[OutcomeRecord]) -> None:
        with self._lock:
            for o in outcomes:
                self._outcomes.setdefault(o.event_id, o)

    def record_events(self, events: Sequence[Any]) -> None:
        self.record_outcomes(outcomes_from_events(events))

    def flush(self) -> None:
        pass

    def _exposure_columns(self, experiment_id: str) -> dict[str, np.ndarray]:
        rows = [(i, r) for i, r in enumerate(self._exposures) if r[0] == experiment_id]
        shopper, has_shopper = _col([r[5] for _, r in rows])
        visit, has_visit = _col([r[6] for _, r in rows])
        return {"seq": np.array([i for i, _ in rows], np.int64),
                "request_id": np.array([r[1] for _, r in rows], dtype=object),
                "variant": np.array([r[2] for _, r in rows], dtype=object),
                "unit": np.array([r[4] for _, r in rows], dtype=object), "shopper": shopper, "has_shopper": has_shopper,
                "visit": visit, "has_visit": has_visit, "ts": np.array([r[7] for _, r in rows], float),
                "n_items": np.array([r[8] for _, r in rows], float), "error": np.array([r[10] for _, r in rows], float)}

    def _outcome_columns(self) -> dict[str, np.ndarray]:
        rows = list(self._outcomes.values())
        shopper, has_shopper = _col([o.shopper for o in rows])
        visit, has_visit = _col([o.visit for o in rows])
        request, has_request = _col([o.request_id or None for o in rows])
        return {"type": np.array([o.type for o in rows], dtype=object), "ts": np.array([o.ts for o in rows], float),
                "shopper": shopper, "has_shopper": has_shopper, "visit": visit, "has_visit": has_visit,
                "request_id": request, "has_request": has_request,
                "revenue": np.array([o.revenue for o in rows], float)}

    def unit_table(self, experiment_id: str, window_s: float, since: float | None = None, until: float | None = None,
                   pre_since: float | None = None, pre_until: float | None = None) -> UnitTable:
        with self._lock:
            x = self._exposure_columns(experiment_id)
            o = self._outcome_columns()
        return numpy_unit_table(x, o, window_s, since, until, pre_since, pre_until)

    def request_metrics(self, experiment_id: str, since: float | None = None,
                        until: float | None = None) -> dict[str, tuple[np.ndarray, int, int]]:
        lo, hi = _bounds(since, until)
        with self._lock:
            rows = [(r[2], r[9], r[10]) for r in self._exposures if r[0] == experiment_id and lo <= r[7] < hi]
        return request_metrics_from_rows(rows)

    def requests(self, since: float | None = None, until: float | None = None, experiment_id: str | None = None,
                 placement: str | None = None, window_s: float = 86400.0,
                 limit: int = 1_000_000) -> list[LoggedRequest]:
        lo, hi = _bounds(since, until)
        with self._lock:
            in_exp = None if experiment_id is None else {r[1] for r in self._exposures if r[0] == experiment_id}
            picked = sorted((e for e in self._requests.values()
                             if lo <= e.ts < hi and (placement is None or e.placement == placement)
                             and (in_exp is None or e.request_id in in_exp)),
                            key=lambda e: (e.ts, e.request_id))[:limit]
            out = {e.request_id: LoggedRequest(e.request_id, e.ts, e.placement, e.unit, e.visit, list(e.items),
                                               None if e.propensities is None else list(e.propensities),
                                               None if e.teams is None else list(e.teams), segment=e.segment)
                   for e in picked}
            for r in self._exposures:
                if r[1] in out:
                    out[r[1]].experiments[r[0]] = (r[2], r[3])
            clicks = sorted((o for o in self._outcomes.values() if o.type == "click" and o.request_id in out),
                            key=lambda o: (o.ts, o.event_id))
        for c in clicks:
            r = out[c.request_id]
            if r.ts <= c.ts <= r.ts + window_s and c.item_id is not None:
                r.clicks.append(c.item_id)
        return list(out.values())

    def forget(self, shopper: str) -> int:
        with self._lock:
            n = 0
            for rid in [r for r, e in self._requests.items() if shopper in (e.shopper, e.unit)]:
                del self._requests[rid]
                n += 1
            keep = [r for r in self._exposures if shopper not in (r[4], r[5])]
            n += len(self._exposures) - len(keep)
            self._exposures = keep
            self._exposure_keys = {(r[0], r[1]) for r in keep}
            for eid in [k for k, o in self._outcomes.items() if o.shopper == shopper]:
                del self._outcomes[eid]
                n += 1
        return n

    def close(self) -> None:
        pass
