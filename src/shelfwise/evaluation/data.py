"""Datasets to evaluate on: a public file imported into a cached SQLite store, or the live event store."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from shelfwise.domain import Item
from shelfwise.importers import FORMATS
from shelfwise.importers.base import Progress, resolve_path
from shelfwise.settings import Settings
from shelfwise.stores.protocols import EventLog

SYNTHETIC_TIME_FORMATS = {"s3rec"}  # formats whose timestamps are synthetic (order only): no temporal split


@dataclass
class Dataset:
    name: str
    fmt: str  # an importer format, or "store"
    source: str  # what was read (paths), for the report
    log: EventLog
    items: list[Item]

    @property
    def real_time(self) -> bool:
        return self.fmt not in SYNTHETIC_TIME_FORMATS

    def all(self) -> list[Item]:  # the part of the Catalog protocol that training reads
        return self.items


def _fingerprint(*paths: Path | None) -> str:
    h = hashlib.sha1()
    for p in paths:
        if p is None:
            continue
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _dataset_name(fmt: str, path: Path) -> str:
    if fmt == "s3rec":
        from shelfwise.importers.s3rec import dataset_name

        return dataset_name(path)
    return path.resolve().name or fmt


def engine_for(settings: Settings, folder: Path):
    """A ``Shelfwise`` engine whose event store, catalog and models live in ``folder``."""
    from shelfwise.service import Shelfwise

    stores = settings.stores.model_copy(update={"events": f"sqlite:///{folder / 'events.db'}",
                                                "models": str(folder / "models")})
    return Shelfwise(settings.model_copy(update={"stores": stores}))


def load_dataset(fmt: str, path: Path | str | None, settings: Settings, attributes: Path | str | None = None,
                 progress: Progress | None = None, fresh: bool = False) -> Dataset:
    """Import a dataset file (cached under ``<data_dir>/eval-imports``) and read it back as an event log.

    The import goes through the same ingest path as the API; a cached import is reused while the source files are
    unchanged (``fresh`` re-imports). ``fmt="store"`` reads the configured event store and catalog instead.
    """
    if fmt == "store":
        from shelfwise.service import Shelfwise

        engine = Shelfwise(settings)
        try:
            return Dataset("event-store", "store", settings.events_dsn, engine.store.scan(), engine.catalog.all())
        finally:
            engine.close()
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(sorted(FORMATS))}, store")
    if path is None:
        raise ValueError(f"{fmt} needs a dataset path")
    src = resolve_path(path, settings.datasets_dir)
    attr = resolve_path(attributes, settings.datasets_dir) if attributes is not None else None
    name = _dataset_name(fmt, src)
    folder = settings.data_dir / "eval-imports" / f"{fmt}-{name}-{_fingerprint(src, attr)}"
    marker = folder / "complete.json"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    engine = engine_for(settings, folder)
    try:
        if not marker.exists():  # first run, or an interrupted import: resume it (ids are deterministic)
            options = {"attributes": attr} if fmt == "s3rec" else {}
            stats = FORMATS[fmt](engine, src, progress=progress, **options)
            marker.write_text(json.dumps({"source": str(src), "attributes": str(attr) if attr else None,
                                          "stored": stats.stored, "events": stats.events, "items": stats.items}))
        log = engine.store.scan()
        items = engine.catalog.all()
    finally:
        engine.close()
    source = str(src) + (f" + {attr}" if attr else "")
    return Dataset(name, fmt, source, log, items)
