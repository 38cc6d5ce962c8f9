"""Which times a drift report compares: the reference and the current window, and durations as people write them.

The current window is the ``current_hours`` ending at ``until`` (now unless given). The reference window is, by
default, the ``reference_days`` before the live model's newest training event (its training window as far as
the report is concerned), cut where the current window starts so the two never overlap; ``previous`` is the
``reference_days`` right before the current window; an explicit ``START..END`` (ISO 8601 or unix seconds) is any
span before the current window's end.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from shelfwise.settings import MonitorSettings

DAY = 86400.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


class WindowError(ValueError):
    """A window or duration that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Window:
    start: float  # unix seconds, inclusive
    end: float  # exclusive
    label: str  # how it was chosen

    @property
    def hours(self) -> float:
        return (self.end - self.start) / 3600.0

    def to_dict(self) -> dict[str, object]:
        return {"start": iso(self.start), "end": iso(self.end), "hours": round(self.hours, 3), "label": self.label}

    def slices(self, max_hours: float, pieces: int = 24) -> list[tuple[float, float]]:
        """Spans adding up to at most ``max_hours``: the whole window when it is that short, else ``pieces`` evenly
        spaced slices (so a week is read as 24 one-hour slices 7 hours apart, every hour of the day in turn)."""
        if self.hours <= max_hours:
            return [(self.start, self.end)]
        step = (self.end - self.start) / pieces
        width = max_hours * 3600.0 / pieces
        return [(self.start + i * step, self.start + i * step + width) for i in range(pieces)]


def iso(ts: float) -> str:
    """ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_duration(text: str, what: str = "duration") -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"7d"``, ``"2w"`` (a bare number is seconds) → seconds."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise WindowError(f"{what} must be a positive number with a unit s, m, h, d or w (e.g. 1h, 30m, 7d), "
                          f"got {text!r}")
    return float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]


def parse_time(text: str, what: str = "time") -> float:
    """ISO 8601 (UTC when no offset is given) or unix seconds → unix seconds."""
    try:
        value = float(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise WindowError(f"{what} must be an ISO 8601 date/time or unix seconds, got {text!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        value = t.timestamp()
    if not math.isfinite(value) or not 0 <= value < 7.3e9:  # 1970 .. 2200, as event timestamps
        raise WindowError(f"{what} must be between 1970 and 2200, got {text!r}")
    return value


def resolve(settings: MonitorSettings, trained_until: float | None, reference: str | None = None,
            reference_days: float | None = None, current_hours: float | None = None,
            until: float | None = None) -> tuple[Window, Window]:
    """(reference, current) from the settings, overridden by the arguments given."""
    end = time.time() if until is None else until
    hours = settings.current_hours if current_hours is None else current_hours
    days = settings.reference_days if reference_days is None else reference_days
    if not hours > 0 or not days > 0:
        raise WindowError("window lengths must be positive")
    current = Window(end - hours * 3600.0, end, f"the {_span(hours * 3600.0)} up to {iso(end)}")
    how = (reference or settings.reference).strip()
    if how == "previous":
        ref = Window(current.start - days * DAY, current.start, f"the {_span(days * DAY)} before the current window")
    elif how == "training":
        if trained_until is None or not math.isfinite(trained_until):
            raise WindowError("the reference is the model's training window, but no model is trained yet (train "
                              "one, or use --reference previous or START..END)")
        stop = min(trained_until, current.start)
        label = f"the {_span(days * DAY)} before the model's newest training event"
        if stop < trained_until:
            label += " (cut where the current window starts)"
        ref = Window(stop - days * DAY, stop, label)
    elif ".." in how:
        a, b = how.split("..", 1)
        ref = Window(parse_time(a, "reference start"), parse_time(b, "reference end"), "given")
        if ref.end <= ref.start:
            raise WindowError(f"the reference window {how!r} ends before it starts")
        if ref.start >= current.end:
            raise WindowError("the reference window must start before the current window ends")
    else:
        raise WindowError(f"reference must be 'training', 'previous' or START..END, got {how!r}")
    return ref, current


def _span(seconds: float) -> str:
    for unit, size in (("days", DAY), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= size:
            n = seconds / size
            return f"{n:g} {unit}" if n != 1 else f"1 {unit[:-1]}"
    return f"{seconds:g} seconds"
