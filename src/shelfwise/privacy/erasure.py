"""Erasure of a shopper everywhere Shelfwise keeps them, with a receipt.

Order matters: the erasure marker is written first (a keyed hash in the ledger, never the id), so a worker that
picks up one of the shopper's queued events from now on drops it; then the queued events themselves (Redis
stream and its dead letters), the event store, the online state, the exposure and shadow logs, the consent record,
the shopper's explicit preferences, the model rows (the shopper index of every stored model version and the ALS
user factors, on disk and in the running model), and the in-process caches. SQLite files are then checkpointed so
no erased row stays in a WAL.

The receipt lists every place with what was removed there, is stored in the ledger (fetch it again with
``GET /v1/erasures/{receipt_id}``) and names neither the shopper nor their pseudonym. Erasing again is harmless:
a new receipt with nothing removed.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from shelfwise.privacy.guard import PrivacyGuard
from shelfwise.privacy.pseudonym import Pseudonymizer
from shelfwise.rules.engine import Merchandising
from shelfwise.settings import Settings
from shelfwise.stores import PrivacyStore
from shelfwise.stores.models import DirectoryModelStore
from shelfwise.stores.protocols import EventBus, EventStore, OnlineState, PreferenceStore


class ServingModel(Protocol):
    shopper_index: dict[str, int]


class Engine(Protocol):
    """The parts of the running engine (``service.Shelfwise``) an erasure reaches."""

    settings: Settings
    privacy_store: PrivacyStore
    preference_store: PreferenceStore
    guard: PrivacyGuard
    pseudonyms: Pseudonymizer
    bus: EventBus
    store: EventStore
    online: OnlineState
    merch: Merchandising
    models: DirectoryModelStore
    erasure_hooks: list[tuple[str, Callable[[str], int]]]

    @property
    def pipeline(self) -> ServingModel: ...

log = logging.getLogger("shelfwise.privacy")


@dataclass
class Place:
    place: str
    backend: str
    removed: int
    detail: str = ""

    def view(self) -> dict:
        return {"place": self.place, "backend": self.backend, "removed": self.removed, "detail": self.detail}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _backend(dsn: str) -> str:
    return dsn.split("://", 1)[0] if "://" in dsn else "directory"


# ---- model artefacts ---------------------------------------------------------------------------------------------
def scrub_model_dir(path: Path, shoppers: set[str]) -> int:
    """Blank the shoppers' entries in a model version's shopper index (``shoppers.json``: the entry becomes null,
    so no id maps to the row) and zero their ALS user-factor rows. Returns the rows scrubbed."""
    index = path / "shoppers.json"
    if not index.is_file():
        return 0
    raw = index.read_bytes()
    if not any(json.dumps(s).encode() in raw for s in shoppers):
        return 0
    ids = json.loads(raw)
    rows = [i for i, s in enumerate(ids) if s in shoppers]
    if not rows:
        return 0
    for i in rows:
        ids[i] = None
    tmp = index.with_name("shoppers.json.tmp")
    tmp.write_text(json.dumps(ids))
    os.replace(tmp, index)
    als = path / "als.npz"
    if als.is_file():
        with np.load(als) as z:
            arrays = {k: z[k] for k in z.files}
        factors = arrays.get("user_factors")
        if factors is not None and len(factors):
            factors = factors.copy()
            factors[[i for i in rows if i < len(factors)]] = 0
            arrays["user_factors"] = factors
            tmp = path / "als.tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, als)
    return len(rows)


def scrub_models(engine: Engine, shoppers: set[str]) -> tuple[int, int]:
    """(rows scrubbed, versions touched) over every version in the model store, partial ones included."""
    root = engine.models.root
    rows = touched = 0
    for path in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        n = scrub_model_dir(path, shoppers)
        rows += n
        touched += bool(n)
    return rows, touched


# ---- the erasure -----------------------------------------------------------------------------------------------
def erase(engine: Engine, shopper: str, subject: str, keep_consent: bool = False,
          reason: str = "request") -> dict:
    """Erase one shopper (the stored form of the id: pseudonymised when that is on). Returns the receipt."""
    settings = engine.settings
    t0 = time.time()
    places: list[Place] = []
    engine.privacy_store.forget(shopper, t0)
    engine.guard.note_forget(t0)

    purge: Callable | None = getattr(engine.bus, "purge_shopper", None)
    bus_backend = _backend(settings.stores.bus)
    if purge is not None:
        for name, removed, detail in purge(shopper):
            places.append(Place(name, bus_backend, removed, detail))
    else:
        places.append(Place("event bus", bus_backend, 0, "events are processed as they arrive: nothing is queued"))

    places.append(Place("event store: events (and their purchase lines)", _backend(settings.events_dsn),
                        engine.store.delete_shopper(shopper)))

    had_state = engine.online.get([shopper]).get(shopper) is not None
    engine.online.forget(shopper)
    places.append(Place("online state", _backend(settings.stores.online), int(had_state)))

    exposures, shadows = engine.merch.log.erase(shopper)
    log_backend = _backend(settings.rules.dsn or settings.events_dsn)  # where the exposure log lives
    places.append(Place("exposure log", log_backend, exposures, "the answers shown to the shopper (a row each)"))
    places.append(Place("shadow log", log_backend, shadows))

    if keep_consent:
        places.append(Place("consent record", _backend(settings.events_dsn), 0,
                            "kept: it records the withdrawal"))
    else:
        places.append(Place("consent record", _backend(settings.events_dsn),
                            engine.privacy_store.delete_consent(shopper)))

    places.append(Place("shopper preferences", _backend(settings.preferences_dsn),
                        engine.preference_store.delete_preferences(shopper)))

    rows, versions = scrub_models(engine, {shopper})
    places.append(Place("model store: shopper index rows and ALS user factors", "directory", rows,
                        f"{versions} model version(s) rewritten"))
    in_memory = int(engine.pipeline.shopper_index.pop(shopper, None) is not None)
    places.append(Place("running model: shopper index", "memory", in_memory))

    places.append(Place("consent cache", "memory", engine.guard.forget_cached(shopper)))
    for name, hook in engine.erasure_hooks:
        places.append(Place(name, "memory", int(hook(shopper) or 0)))

    if settings.privacy.sqlite_secure_delete:
        notes = [engine.privacy_store.checkpoint()]
        if settings.preferences_dsn != settings.events_dsn:  # a database of their own
            notes.append(engine.preference_store.checkpoint())
        log_checkpoint = getattr(engine.merch.log, "checkpoint", None)
        if log_checkpoint is not None and engine.merch.log.path != getattr(engine.store, "path", None):
            notes.append(log_checkpoint())
        places.append(Place("database files", _backend(settings.events_dsn), 0, "; ".join(notes)))

    engine.privacy_store.prune_forgotten(t0 - settings.privacy.forgotten_retention_days * 86400)
    t1 = time.time()
    receipt = {
        "receipt_id": uuid.uuid4().hex,
        "subject": subject,
        "reason": reason,
        "pseudonymized": engine.pseudonyms.enabled,
        "requested_at": _iso(t0),
        "completed_at": _iso(t1),
        "removed_total": sum(p.removed for p in places),
        "places": [p.view() for p in places],
    }
    engine.privacy_store.save_receipt(receipt)
    log.info("erasure %s (%s, %s): %d entries removed in %d places", receipt["receipt_id"], subject, reason,
             receipt["removed_total"], len(places))
    return receipt
