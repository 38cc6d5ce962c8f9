"""``GET /v1/monitor/drift`` (scope admin): the drift report of ``shelfwise monitor`` (``shelfwise.monitor``), computed
on request with the same settings and overrides; its numbers also go to the drift gauges of this process's
``/metrics``. Included by ``api/app.py``."""

from __future__ import annotations

import threading
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from shelfwise.api import models as m


class WindowView(BaseModel):
    start: str = Field(description="ISO 8601, inclusive")
    end: str = Field(description="ISO 8601, exclusive")
    hours: float
    label: str = Field(description="how the window was chosen")


class CheckView(BaseModel):
    feature: str = Field(description="ranker.<feature>, scores.<placement>, items.new_share, events.type, "
                                     "events.category or events.log_price_paid")
    group: Literal["ranker", "scores", "items", "events"]
    kind: Literal["numeric", "categorical"]
    verdict: Literal["ok", "drift", "insufficient"]
    test: str = Field(description="what decided: ks, chi2, wasserstein or psi ('' when nothing could)")
    reasons: list[str] = Field(description="why it drifted (or why it could not be decided)")
    n_reference: int = Field(description="values behind the statistics (numbers: the finite ones)")
    n_current: int
    total_reference: int = Field(description="values, missing ones included")
    total_current: int
    p_value: float | None = Field(description="Kolmogorov-Smirnov (numbers) or chi-square (categories)")
    p_adjusted: float | None = Field(description="Holm-adjusted p-value when the test decided")
    statistic: float | None = Field(description="the KS distance D or the chi-square statistic")
    wasserstein: float | None = Field(description="numbers: Wasserstein distance in reference standard deviations")
    psi: float | None = Field(description="population stability index (reference-quantile bins, or categories)")
    missing_reference: float
    missing_current: float
    mean_reference: float | None
    mean_current: float | None
    shares_reference: dict[str, float] | None
    shares_current: dict[str, float] | None


class DriftReportView(BaseModel):
    status: Literal["ok", "drift", "insufficient"]
    generated_at: str
    model_version: str
    reference: WindowView
    current: WindowView
    drifted: list[str]
    counts: dict[str, int]
    rules: dict[str, float | int | str] = Field(description="the settings that decided (monitor.*)")
    checks: list[CheckView]
    notes: list[str]


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        import orjson

        return orjson.dumps(content)


def build_router(engine: Callable[[], Any]) -> APIRouter:
    """``engine()`` returns the running ``Shelfwise``."""
    r = APIRouter(tags=["operations"])
    lock = threading.Lock()  # one report at a time: it reads a sample of the logs and rebuilds requests

    def report(reference: str | None, reference_days: float | None, current_hours: float | None,
               until: str | None) -> Response:
        from shelfwise.monitor.drift import publish, run_drift
        from shelfwise.monitor.windows import WindowError, parse_time

        try:
            end = parse_time(until, "until") if until is not None else None
        except WindowError as e:
            return _JSON({"detail": "invalid request", "errors": [{"field": "until", "reason": str(e)}]}, 422)
        with lock:
            try:
                rep = run_drift(engine(), reference, reference_days, current_hours, end)
            except WindowError as e:
                return _JSON({"detail": f"unusable windows: {e}", "errors": [{"field": "reference",
                                                                              "reason": str(e)}]}, 422)
            publish(rep)
        return _JSON(rep.to_dict())

    @r.get("/v1/monitor/drift", response_model=DriftReportView, summary="Drift report (scope: admin)",
           responses={422: {"model": m.ErrorBody, "description": "unusable windows (each names its field)"}})
    async def drift(
        reference: Annotated[str | None, Query(max_length=100, description="training, previous or START..END "
                                                                          "(ISO 8601 or unix seconds); default "
                                                                          "monitor.reference")] = None,
        reference_days: Annotated[float | None, Query(gt=0, le=3660, description="length of a training or "
                                                                                 "previous reference window")] = None,
        current_hours: Annotated[float | None, Query(gt=0, le=87_840, description="length of the current "
                                                                                 "window")] = None,
        until: Annotated[str | None, Query(max_length=64, description="end of the current window (ISO 8601 or "
                                                                      "unix seconds); default now")] = None,
    ) -> Response:
        """Compare a reference and a current window of traffic: the learned ranker's features (rebuilt for a
        sample of logged requests), the served scores per placement, the share of new items among impressions and
        the event mix; each check's verdict with the numbers behind it. Also sets the `shelfwise_drift_*`
        gauges of `/metrics`."""
        return await run_in_threadpool(report, reference, reference_days, current_hours, until)

    return r
