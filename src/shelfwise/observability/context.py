"""The request id of the work at hand, in a context variable: set by the API's middleware for each HTTP request,
copied into worker threads with the context (``run_in_threadpool``, the micro-batcher), read by every log line."""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("shelfwise_request_id", default=None)


def current_request_id() -> str | None:
    return request_id.get()
