"""Shared streaming loader: read a (possibly gzipped) file line by line and feed the engine in batches.

Every importer goes through the same ingest path as the HTTP API (``Shelfwise.upsert_items`` and
``Shelfwise.ingest``), so imported data is validated, stored and de-duplicated exactly like live events.
Event ids are deterministic (dataset + line + position), so a second run of the same import resumes:
events already stored are reported as duplicates and not stored again.
"""

from __future__ import annotations

import gzip
import io
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from pydantic import ValidationError

from shelfwise.domain import Event, Item
from shelfwise.stores.protocols import AppendResult

BATCH_SIZE = 5000

# Synthetic clock for datasets without timestamps: events of a sequence are this many seconds apart, far
# below the co-visitation session gap, so a shopper's whole sequence stays one session.
SYNTHETIC_EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)
SYNTHETIC_STEP_S = 60


class ImportFormatError(ValueError):
    """A malformed input line; the message names the file and the line number."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path, self.line = Path(path), line
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class Engine(Protocol):
    """The part of ``Shelfwise`` an importer needs."""

    def ingest(self, events: Sequence[Event]) -> AppendResult: ...

    def upsert_items(self, items: Sequence[Item]) -> int: ...


class Progress(Protocol):
    """Progress sink: ``stage`` starts a new stage (bytes of a file), ``advance`` moves it on."""

    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, done: int) -> None: ...


class _NoProgress:
    def stage(self, description: str, total: int | None) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


@dataclass
class ImportStats:
    dataset: str
    items: int = 0
    events: int = 0  # events read and validated
    stored: int = 0
    duplicates: int = 0  # already present (a resumed import) or repeated inside the file
    skipped: int = 0  # rows deliberately not imported (e.g. returns), see ``notes``
    unknown_items: int = 0  # distinct item ids in events but not in the catalog
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.dataset}: catalog {self.items} items; events {self.events} read, {self.stored} stored, "
                 f"{self.duplicates} already present"]
        if self.skipped:
            parts.append(f"{self.skipped} rows skipped")
        if self.unknown_items:
            parts.append(f"{self.unknown_items} item ids missing from the catalog")
        return ", ".join(parts) + f" ({self.seconds:.1f} s)"


def find_file(directory: Path, *names: str) -> Path:
    """The first of ``names`` (or its ``.gz``) inside ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"not a directory: {directory}")
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{directory}: none of {', '.join(names)} (or .gz) found")


class LineReader:
    """Lines of a text file, gzip detected by magic bytes; ``position`` is bytes read of the file on disk."""

    def __init__(self, path: Path | str, encoding: str = "utf-8") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"file not found: {self.path}")
        self.size = os.path.getsize(self.path)
        self.encoding = encoding
        self._raw = open(self.path, "rb")
        magic = self._raw.read(2)
        self._raw.seek(0)
        stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if magic == b"\x1f\x8b" else self._raw
        self._text = io.TextIOWrapper(stream, encoding=encoding, newline="")

    @property
    def position(self) -> int:
        return self._raw.tell()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        """(1-based line number, line without its line ending)."""
        lineno = 0
        try:
            for lineno, line in enumerate(self._text, start=1):
                yield lineno, line.rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise ImportFormatError(self.path, lineno + 1, f"not valid {self.encoding} text ({e.reason})") from None
        except (OSError, EOFError) as e:  # corrupt or truncated gzip
            raise ImportFormatError(self.path, lineno + 1, f"cannot read: {e}") from None

    def read_all(self) -> str:
        try:
            return self._text.read()
        except UnicodeDecodeError as e:
            raise ImportFormatError(self.path, None, f"not valid {self.encoding} text ({e.reason})") from None
        except (OSError, EOFError) as e:
            raise ImportFormatError(self.path, None, f"cannot read: {e}") from None

    def close(self) -> None:
        self._text.close()
        self._raw.close()

    def __enter__(self) -> "LineReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validated(make: Callable[[], Event | Item], path: Path, line: int) -> Event | Item:
    """Build a domain object; a validation error becomes an ``ImportFormatError`` naming file and line."""
    try:
        return make()
    except ValidationError as e:
        reasons = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'value'}: {x['msg']}" for x in e.errors())
        raise ImportFormatError(path, line, reasons) from None


def check_id(value: str, what: str, path: Path, line: int) -> str:
    value = value.strip()
    if not value:
        raise ImportFormatError(path, line, f"empty {what}")
    if len(value) > 256 or not value.isprintable():
        raise ImportFormatError(path, line, f"{what} {value[:40]!r} is not a valid id (printable, at most 256 chars)")
    return value


def parse_int(value: str, what: str, path: Path, line: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ImportFormatError(path, line, f"{what} must be an integer, got {value[:40]!r}") from None


def parse_float(value: str, what: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise ImportFormatError(path, line, f"{what} must be a number, got {value[:40]!r}") from None


class Loader:
    """Feeds items and events to the engine in batches, counting what happened."""

    def __init__(self, engine: Engine, dataset: str, progress: Progress | None = None,
                 batch_size: int = BATCH_SIZE) -> None:
        self.engine = engine
        self.progress = progress or _NoProgress()
        self.batch_size = batch_size
        self.stats = ImportStats(dataset)
        self._t0 = time.perf_counter()
        self._unknown: set[str] = set()
        self.known_items: set[str] = set(getattr(getattr(engine, "catalog", None), "ids", lambda: set())())
        self.pending_items: list[Item] = []  # catalog entries to upsert before the next event batch

    def items(self, items: Iterable[Item]) -> None:
        batch: list[Item] = []
        for it in items:
            batch.append(it)
            if len(batch) >= self.batch_size:
                self._flush_items(batch)
                batch = []
        if batch:
            self._flush_items(batch)

    def _flush_items(self, batch: list[Item]) -> None:
        self.engine.upsert_items(batch)
        self.known_items.update(it.id for it in batch)
        self.stats.items += len(batch)

    def ensure_item(self, item_id: str) -> None:
        """Queue a bare catalog entry for an item the catalog does not have yet."""
        if item_id not in self.known_items:
            self.known_items.add(item_id)
            self.pending_items.append(Item(id=item_id))

    def events(self, events: Iterable[Event], reader: LineReader | None = None) -> None:
        """Ingest events in batches; progress follows the bytes read by ``reader``."""
        if reader is not None:
            self.progress.stage(f"{self.stats.dataset}: {reader.path.name}", reader.size)
        batch: list[Event] = []
        last = 0
        for ev in events:
            batch.append(ev)
            if len(batch) >= self.batch_size:
                self._flush_events(batch)
                batch = []
                if reader is not None:
                    pos = reader.position
                    self.progress.advance(pos - last)
                    last = pos
        if batch:
            self._flush_events(batch)
        if reader is not None:
            self.progress.advance(reader.size - last)

    def _flush_events(self, batch: list[Event]) -> None:
        if self.pending_items:
            pending, self.pending_items = self.pending_items, []
            self.items(pending)
        result = self.engine.ingest(batch)
        self.stats.events += len(batch)
        self.stats.stored += len(result.stored)
        self.stats.duplicates += len(result.duplicates)
        self._unknown.update(result.unknown_items)
        self.stats.unknown_items = len(self._unknown)

    def finish(self) -> ImportStats:
        self.stats.seconds = time.perf_counter() - self._t0
        return self.stats


def resolve_path(path: Path | str, datasets_dir: Path | str) -> Path:
    """``path`` as given when it exists, else relative to the datasets directory (``settings.datasets_dir``)."""
    path = Path(path)
    if path.exists():
        return path
    candidate = Path(datasets_dir) / path
    if not path.is_absolute() and candidate.exists():
        return candidate
    raise FileNotFoundError(f"not found: {path} (also looked in the datasets directory {datasets_dir})")
