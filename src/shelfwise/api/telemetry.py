"""Per-request telemetry: request ids, the access log, HTTP request counts and trace spans.

``RequestTelemetry`` (ASGI middleware, outermost) gives every HTTP request a request id — in a context variable
that every log line emitted while serving it carries (``observability/logs.py``), in the ``X-Request-ID``
response header, and as the ``request_id`` of a recommendation answer — counts it by method, route template and
status, writes one access-log line, and, when tracing is on, makes its server span (continuing the caller's trace
from a ``traceparent`` header).

The micro-batcher answers concurrent requests in one pipeline call on a worker thread: ``batch_scope`` runs that
call under the request ids of the batch (comma-separated when it holds several) and, when tracing is on, a
``pipeline`` span, child of the first request's span and linked to the others'; each stage of the request path is a
span under it (``stage_observer``), timed by the pipeline's own clock reads.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from contextvars import Context
from typing import Any, Callable, Iterator, Sequence

from opentelemetry import context as otel_context, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from starlette.routing import Match

from shelfwise.api.metrics import Metrics
from shelfwise.observability import tracing
from shelfwise.observability.context import request_id
from shelfwise.request import new_request_id

access = logging.getLogger("shelfwise.access")


class RequestTelemetry:
    def __init__(self, app: Any, metrics: Metrics, access_log: bool = True, router: Any = None) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.router = router  # names the route of a request refused before routing (401, 403, 413, 429)

    def route(self, scope: dict) -> str:
        """The route template of a request (never its path: it may hold ids); "(unmatched)" for no route."""
        route = scope.get("route")
        if route is None and self.router is not None:
            partial = None
            for r in self.router.routes:
                match, _ = r.matches(scope)
                if match is Match.FULL:
                    route = r
                    break
                if match is Match.PARTIAL and partial is None:
                    partial = r
            route = route or partial
        return getattr(route, "path", None) or "(unmatched)"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        request_id.set(rid)  # this request's task only (its context is its own); kept for the error handler
        header = (b"x-request-id", rid.encode())
        t0 = time.perf_counter()
        status = 500
        span = token = None
        if tracing.tracer is not None:
            carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                       if k in (b"traceparent", b"tracestate")}
            parent = tracing.extract(carrier)
            span = tracing.tracer.start_span(scope["method"], context=parent, kind=SpanKind.SERVER, attributes={
                "http.request.method": scope["method"], "shelfwise.request_id": rid})
            token = otel_context.attach(trace.set_span_in_context(span, parent))

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            seconds = time.perf_counter() - t0
            route = self.route(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            if self.access_log:  # inside the request's span: the line carries its trace ids
                access.info("%s %s %d %.1f ms", method, route, status, seconds * 1000.0,
                            extra={"method": method, "route": route, "status": status,
                                   "duration_ms": round(seconds * 1000.0, 3)})
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                placement = (scope.get("path_params") or {}).get("placement")
                if placement is not None:
                    span.set_attribute("shelfwise.placement", placement)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
                otel_context.detach(token)


class Telemetry:
    """What the micro-batcher and the pipeline report to: batch sizes, stage times, the batch's context."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @contextmanager
    def batch_scope(self, contexts: Sequence[Context]) -> Iterator[None]:
        """Entered on the batcher's thread, inside the first request's context."""
        self.metrics.batch.observe(len(contexts))
        if len(contexts) > 1:
            request_id.set(",".join(c.get(request_id) or "-" for c in contexts))
        if tracing.tracer is None:
            yield
            return
        links = []
        for c in contexts[1:]:
            other = c.run(trace.get_current_span).get_span_context()
            if other.is_valid:
                links.append(Link(other))
        with tracing.tracer.start_as_current_span("pipeline", links=links,
                                                  attributes={"shelfwise.batch_size": len(contexts)}):
            yield

    def stage_observer(self, placement: str, stage: str, seconds: float) -> None:
        """The pipeline's observer: a stage of one pipeline call took ``seconds``."""
        self.metrics.observe_stage(placement, stage, seconds)
        if tracing.tracer is not None:
            tracing.span_ending_now(f"stage {stage}", seconds, {"shelfwise.placement": placement,
                                                                "shelfwise.stage": stage}, time.time_ns())
