"""OpenTelemetry traces: a span per HTTP request, per pipeline call and per stage of the request path.

Off unless ``observability.otlp_endpoint`` is set: ``tracer`` is then None and every caller checks that first, so
tracing costs one attribute read where it would make a span. On, spans go to the collector over OTLP/HTTP through a
batching exporter (a background thread; a request never waits for the export). Tests pass an exporter of their own
(e.g. the in-memory one), whose spans are exported as each ends.

The tracer provider is this module's own, not OpenTelemetry's global one: configuring tracing twice (tests, a
restart of the app in one process) replaces it cleanly.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shelfwise.settings import ObservabilitySettings

tracer: Tracer | None = None  # None: tracing is off
_provider: Any = None
_propagator = TraceContextTextMapPropagator()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: a collector's base URL gets ``/v1/traces``; a URL with a path is taken as is."""
    return endpoint.rstrip("/") + "/v1/traces" if urlsplit(endpoint).path in ("", "/") else endpoint


def configure_tracing(conf: ObservabilitySettings, exporter: Any = None, batch: bool | None = None) -> bool:
    """Start tracing when an OTLP endpoint is set (or an exporter is given); returns whether tracing is on. Spans
    are exported in batches from a background thread (``batch``: the default for OTLP), or as each ends (the default
    for a given exporter: tests read them at once)."""
    global tracer, _provider
    shutdown_tracing()
    if exporter is None and not conf.otlp_endpoint:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=traces_url(conf.otlp_endpoint), headers=dict(conf.otlp_headers) or None,
                                    timeout=10)
        batch = True if batch is None else batch
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    resource = Resource.create({"service.name": conf.service_name,
                                "service.instance.id": f"{socket.gethostname()}:{os.getpid()}"})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(conf.trace_sample_ratio)))
    provider.add_span_processor(processor)
    _provider = provider
    tracer = provider.get_tracer("shelfwise")
    return True


def shutdown_tracing() -> None:
    """Export what is pending and stop tracing."""
    global tracer, _provider
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from a W3C ``traceparent`` header (an empty context without one)."""
    return _propagator.extract(headers)


def current_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) of the current span, as hex; (None, None) outside a recording span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def span_ending_now(name: str, seconds: float, attributes: Mapping[str, Any], now_ns: int) -> None:
    """A finished child span of the current span that began ``seconds`` before ``now_ns`` (a stage, timed by the
    pipeline: no second clock read per stage)."""
    if tracer is None:
        return
    span = tracer.start_span(name, attributes=attributes, start_time=now_ns - int(seconds * 1e9))
    span.end(end_time=now_ns)
