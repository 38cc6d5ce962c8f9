"""Log lines as JSON objects (or plain text), each with the request id of the request being served.

``configure_logging`` installs one handler on the root logger (``shelfwise serve``, ``shelfwise worker``); a JSON
line holds ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, ``pid``, the
``request_id`` when a request is being served (several, comma-separated, for a micro-batch answered together), the
``trace_id`` / ``span_id`` when tracing is on, ``exc`` (the traceback) and any ``extra=`` fields of the call.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

from shelfwise.observability import tracing
from shelfwise.observability.context import request_id
from shelfwise.settings import ObservabilitySettings

# the attributes every LogRecord has: anything else on a record came from ``extra=`` and is logged as a field
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName", "rid"}


class RequestContext(logging.Filter):
    """Stamps each record with the request id (and trace ids) of the context it is emitted in."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if tracing.tracer is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = tracing.current_ids()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name,
                               "message": record.getMessage(), "pid": record.process}
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(rid)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.rid = getattr(record, "request_id", None) or "-"
        return super().format(record)


def use_json(fmt: str, stream: IO[str]) -> bool:
    if fmt != "auto":
        return fmt == "json"
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty())


def configure_logging(conf: ObservabilitySettings, stream: IO[str] | None = None) -> logging.Handler:
    """One handler on the root logger, replacing the one an earlier call installed; returns it."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if use_json(conf.log_format, stream) else TextFormatter())
    handler.addFilter(RequestContext())
    handler.shelfwise = True  # type: ignore[attr-defined]  # ours: replaced by the next call
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "shelfwise", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(conf.log_level)
    return handler
