"""Circuit breakers: stop calling what keeps failing, probe it now and then, and resume when it answers.

A breaker is *closed* (calls go through) until ``failures`` calls in a row fail — an error, or a call slower than
its budget. It then *opens*: callers skip the call and take their fallback at once, instead of each waiting for
a timeout. After ``reset_s`` it is *half-open*: one caller is let through as a probe; success closes it, failure
opens it for another ``reset_s``. ``Breakers`` keeps one per name (``online_state``, ``event_store``,
``source:als``, ``stage:rank`` …) and lists the open ones for ``/readyz`` and metrics.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

# exception classes that mean "the backend is not answering" (checked by name: the drivers are optional imports)
_UNAVAILABLE = {"OperationalError", "InterfaceError", "ConnectionError", "ConnectionTimeout", "TimeoutError",
                "BusyLoadingError", "KafkaError", "KafkaTimeoutError", "NoBrokersAvailable", "PoolTimeout"}


class Unavailable(RuntimeError):
    """A backend is down: the request is refused (503 with Retry-After) and nothing was acknowledged."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def unavailable(exc: BaseException) -> bool:
    """Whether an exception says a backend is down or unreachable (retry later), not that the input was bad."""
    if isinstance(exc, (OSError, sqlite3.OperationalError, TimeoutError)):
        return True
    return any(c.__name__ in _UNAVAILABLE for c in type(exc).__mro__)


@dataclass
class Breaker:
    name: str
    failures: int = 3
    reset_s: float = 10.0
    state: str = CLOSED
    failed: int = 0  # consecutive failures
    opened_at: float = 0.0
    last_error: str = ""
    trips: int = 0  # times it opened
    _probing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def allow(self) -> bool:
        """Whether to make the call now (closed; or half-open and nobody else is probing)."""
        if self.state == CLOSED:
            return True
        with self._lock:
            if self.state == OPEN and time.monotonic() - self.opened_at >= self.reset_s:
                self.state = HALF_OPEN
                self._probing = False
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        if self.state == CLOSED and not self.failed:
            return
        with self._lock:
            self.state, self.failed, self._probing = CLOSED, 0, False

    def failure(self, reason: str) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = reason
            if self.state == HALF_OPEN or self.failed >= self.failures:
                if self.state != OPEN:
                    self.trips += 1
                self.state, self.opened_at, self._probing = OPEN, time.monotonic(), False

    def status(self) -> dict:
        return {"state": self.state, "consecutive_failures": self.failed, "last_error": self.last_error,
                "trips": self.trips}


class Breakers:
    def __init__(self, failures: int = 3, reset_s: float = 10.0) -> None:
        self.failures, self.reset_s = failures, reset_s
        self._all: dict[str, Breaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> Breaker:
        got = self._all.get(name)
        if got is None:
            with self._lock:
                got = self._all.setdefault(name, Breaker(name, self.failures, self.reset_s))
        return got

    def open(self) -> dict[str, dict]:
        """The breakers that are not closed, with why."""
        return {n: b.status() for n, b in list(self._all.items()) if b.state != CLOSED}

    def all(self) -> dict[str, dict]:
        return {n: b.status() for n, b in list(self._all.items())}
