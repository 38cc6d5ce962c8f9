"""One small, batch-first protocol per storage role. Backends are picked by DSN scheme (see ``open_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from shelfwise.domain import Event, EventType, Item, Preferences


@dataclass(frozen=True)
class AppendResult:
    """What an append did: stored events, ignored duplicates (by event_id), and unknown item ids seen."""

    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown_items: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)  # not stored under an identity: no personalisation consent


@dataclass
class EventLog:
    """Item interactions in columnar form, ordered by (shopper, timestamp, arrival)."""

    shopper: np.ndarray  # object array of shopper keys
    session: np.ndarray  # object array of session ids ("" when absent)
    item: np.ndarray  # object array of item ids
    kind: np.ndarray  # int8 EventType codes
    ts: np.ndarray  # float64 unix seconds
    order: np.ndarray  # object array of order ids ("" when not a purchase)
    quantity: np.ndarray  # int32
    price: np.ndarray  # float64, nan when unknown

    def __len__(self) -> int:
        return len(self.item)

    def take(self, mask: np.ndarray) -> "EventLog":
        return EventLog(**{k: getattr(self, k)[mask] for k in self.__dataclass_fields__})

    @classmethod
    def empty(cls) -> "EventLog":
        obj = np.array([], dtype=object)
        return cls(obj, obj.copy(), obj.copy(), np.array([], np.int8), np.array([], float), obj.copy(),
                   np.array([], np.int32), np.array([], float))


@dataclass(frozen=True)
class Interaction:
    """One recent item interaction of a shopper, as online state keeps it."""

    item_id: str
    kind: int
    ts: float


class SeenItem(NamedTuple):
    """What a shopper was shown of one item (online state): impressions after the shopper last engaged with it.

    A named tuple, so that a store can keep its shoppers' impressions as plain ``(reset, shown)`` tuples of floats
    and strings, which the garbage collector stops tracking, and hand out this view of them (``SeenItem._make``)
    per read: tracked long-lived objects made the API's collections walk ~24,000 of them every 2 s at 200
    requests/s (BENCHMARKS.md, rerank)."""

    reset: float  # unix time of the shopper's last click / cart / purchase of the item (0: none): earlier shows
    # no longer count
    shown: tuple[tuple[float, str], ...]  # (unix time, placement) of each impression since, oldest first

    def since(self, t: float, placement: str | None = None) -> list[float]:
        """Times of the impressions after ``t`` (and after the reset), of ``placement`` only when given."""
        lo = max(t, self.reset)
        return [ts for ts, p in self.shown if ts > lo and (placement is None or p == placement)]


Seen = dict[str, SeenItem]  # item id -> what the shopper was shown of it


@dataclass
class ShopperState:
    recent: list[Interaction]  # oldest first, at most history_length
    purchased: set[str]
    version: int = 0
    seen: Seen = field(default_factory=dict)  # impressions (frequency caps), read with the state (``read``)


@dataclass(frozen=True)
class WishlistEntry:
    """An item on a shopper's wishlist: when it was (last) added, and its price and stock then (the event's
    ``properties.price`` / ``properties.in_stock``, filled from the catalog at ingest when the storefront sent none)."""

    item_id: str
    added_at: float
    price: float | None
    in_stock: bool | None


def fold_wishlist(rows: Iterable[tuple[int, str, float, dict | None]]) -> dict[str, WishlistEntry]:
    """The wishlist from its events (kind, item, ts, properties) in time order: an addition puts the item there
    (again: anew), a removal takes it off."""
    out: dict[str, WishlistEntry] = {}
    for kind, item, ts, props in rows:
        if kind == EventType.wishlist_removed:
            out.pop(item, None)
            continue
        props = props or {}
        price = props.get("price")
        stock = props.get("in_stock")
        out[item] = WishlistEntry(item, float(ts), float(price) if isinstance(price, (int, float))
                                  and not isinstance(price, bool) else None,
                                  stock if isinstance(stock, bool) else None)
    return out


@dataclass(frozen=True)
class LoggedSearch:
    """A ``search`` event that carried the results the shop showed (``properties.results``, best first): what the
    search ranker learns from (``ranking/search.py``), with what the shopper did next in the event log."""

    shopper: str
    session: str  # "" when absent
    ts: float
    query: str
    results: tuple[str, ...]


def logged_search(shopper: str, session: str | None, ts: float, props: dict | None) -> LoggedSearch | None:
    """A stored search event's row as a ``LoggedSearch``; None when it carried no results."""
    props = props or {}
    results, query = props.get("results"), props.get("query")
    if not results or not isinstance(results, list) or not isinstance(query, str):
        return None
    return LoggedSearch(shopper, session or "", float(ts), query, tuple(str(x) for x in results))


@dataclass(frozen=True)
class EntryContext:
    """What a shopper's events said about their visits, each field as first said (events ``context``): the keys of
    the cohorts a new shopper like them is placed in."""

    device: str = ""
    placement: str = ""
    segments: tuple[str, ...] = ()


def entry_contexts(rows: Iterable[tuple[str, dict | None]]) -> dict[str, EntryContext]:
    """Each shopper's ``EntryContext`` from (shopper, event context) rows in time order per shopper: the first
    device, placement and segments each one's events name (shoppers whose events name none are left out)."""
    out: dict[str, EntryContext] = {}
    for shopper, ctx in rows:
        if not ctx:
            continue
        got = out.get(shopper)
        if got is not None and got.device and got.placement and got.segments:
            continue
        got = got or EntryContext()
        segments = ctx.get("segments") or ()
        out[shopper] = EntryContext(got.device or str(ctx.get("device") or ""),
                                    got.placement or str(ctx.get("placement") or ""),
                                    got.segments or tuple(str(x) for x in segments))
    return {s: c for s, c in out.items() if c.device or c.placement or c.segments}


@runtime_checkable
class EventStore(Protocol):
    def append(self, events: Sequence[Event], known_items: set[str] | None = None) -> AppendResult:
        """Durably store events (committed before returning); duplicates by event_id are ignored."""

    def scan(self, since: float | None = None, until: float | None = None) -> EventLog:
        """All item interactions (purchases expanded to one row a line), ordered per shopper by time."""

    def history(self, shoppers: Sequence[str], limit: int) -> dict[str, ShopperState]:
        """Last ``limit`` item interactions and every purchased item of each shopper."""

    def entry_contexts(self) -> dict[str, EntryContext]:
        """Every shopper's ``EntryContext`` (training places shoppers in cohorts by it)."""

    def searches(self, since: float | None = None) -> list[LoggedSearch]:
        """The search events (at or after ``since``) that carried their results, in time order."""

    def wishlist(self, shopper: str) -> dict[str, WishlistEntry]:
        """The items on a shopper's wishlist now (``wishlist_added`` not followed by ``wishlist_removed``)."""

    def count(self) -> int: ...

    def delete_shopper(self, shopper: str) -> int:
        """Erase a shopper's events; returns how many were removed."""

    def close(self) -> None: ...


@runtime_checkable
class Catalog(Protocol):
    def upsert(self, items: Sequence[Item]) -> int: ...

    def get(self, item_ids: Sequence[str]) -> dict[str, Item]: ...

    def delete(self, item_id: str) -> bool: ...

    def all(self) -> list[Item]: ...

    def changed_since(self, ts: float) -> list[Item]:
        """Items upserted at or after unix time ``ts`` (a model loaded later applies just these)."""

    def changes(self, since: float) -> "CatalogChanges":
        """What changed at or after unix time ``since`` by the database's clock: items upserted, ids deleted (and
        not stored again since), and the database's time of the read (pass it back, less a slack for writes that
        were still committing, as the next ``since``). Every replica polls this to apply other replicas' changes."""

    def ids(self) -> set[str]: ...

    def first_seen(self, item_ids: Sequence[str] | None = None,
                   since: float | None = None) -> dict[str, float]:
        """Unix time each item was first stored (later upserts keep it; a deleted item stored again starts anew),
        for the ids given (all by default), only those first stored at or after ``since`` when given; items stored
        before the catalog kept it are left out."""


TOMBSTONE_S = 86400.0  # how long a catalog keeps a deleted item's id for the replicas following its changes


@dataclass(frozen=True)
class CatalogChanges:
    upserted: list[Item]
    deleted: list[str]
    as_of: float  # the database's clock when read (unix seconds)


@runtime_checkable
class OnlineState(Protocol):
    """Per-shopper recent events, kept current on every ingested event. A miss returns None (read-through)."""

    def get(self, shoppers: Sequence[str]) -> dict[str, ShopperState | None]:
        """The cached states (None: a miss), each with the shopper's impressions in ``seen``."""

    def read(self, shoppers: Sequence[str]) -> tuple[dict[str, ShopperState | None], dict[str, Seen]]:
        """``get`` and every shopper's impressions (hits and misses alike) in one round trip: impressions are not in
        the event store, so a read-through load keeps the ones read here."""

    def show(self, shown: dict[str, list[tuple[str, str]]], at: float) -> None:
        """Record impressions at unix time ``at``: {shopper: [(item, placement), ...]}. Kept ``seen_keep_s``, at most
        ``seen_max_shown`` per item and ``seen_max_items`` items per shopper (the least recently shown go first),
        whether or not the shopper's state is cached."""

    def put(self, states: dict[str, ShopperState], if_unchanged: dict[str, str] | None = None) -> set[str]:
        """Cache states; returns the shoppers installed.

        With ``if_unchanged`` (tokens from ``stamp``) a state is installed only when nothing was recorded for,
        forgotten of, or installed for that shopper since its stamp: a read-through load that raced an ingest is
        dropped instead of caching a snapshot that misses the racing event (the next read loads again)."""

    def stamp(self, shoppers: Sequence[str]) -> dict[str, str]:
        """Begin a read-through load: a token per shopper for ``put(..., if_unchanged=...)``. Take it *before*
        reading the event store."""

    def record(self, shopper: str, interactions: Iterable[Interaction], purchased: Iterable[str]) -> None:
        """Append to a cached shopper (no-op when the shopper is not cached; invalidates a pending stamp).

        An interaction equal (item, kind, ts) to one already cached is not added twice: a load may already hold
        an event whose record() arrives after it."""

    def record_many(self, updates: dict[str, tuple[list[Interaction], list[str]]]) -> None:
        """``record`` for many shoppers at once: {shopper: (interactions, purchased items)}.

        Interactions of the kinds in ``reset_kinds`` (a click, cart, purchase) also reset the shopper's impressions
        of their item up to their time, cached or not."""

    def forget(self, shopper: str) -> None: ...

    def clear(self) -> None: ...


@runtime_checkable
class VectorIndex(Protocol):
    """Approximate nearest neighbours by inner product over integer-keyed vectors (e.g. item embeddings)."""

    def build(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole contents (keys int64, vectors float32 of shape (n, dim))."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (keys, scores) per query row, best first; keys -1 / scores -inf pad short answers."""

    def __len__(self) -> int: ...


@runtime_checkable
class EventProcessor(Protocol):
    """What consumes the bus: durable append to the event store, then online state (see ``stores.bus``).

    ``enqueued_at`` (unix seconds, one per event) is when each event entered the bus: an event of a shopper erased
    after that moment is dropped (it was queued before the erasure)."""

    def process(self, events: Sequence[Event], enqueued_at: Sequence[float] | None = None) -> AppendResult: ...


@runtime_checkable
class BusConsumer(Protocol):
    def poll(self, timeout_s: float = 1.0) -> int:
        """Process at most one batch: deliveries are acknowledged only after the processor returned. Returns how
        many entries were handled (processed, dead-lettered or recovered), 0 when idle."""

    def close(self) -> None: ...


@runtime_checkable
class EventBus(Protocol):
    """Carries validated events from the API to the processing path (at-least-once; processing is idempotent by
    event_id). ``publish`` returns once the events are durable: in-process, committed to the event store; on a
    stream, appended to it (or committed by a worker when the bus acknowledges after the commit)."""

    def publish(self, events: Sequence[Event]) -> AppendResult: ...

    def consumer(self, processor: EventProcessor, name: str | None = None) -> BusConsumer: ...

    def close(self) -> None: ...


# ---- security and privacy roles (keys, consent, erasure ledger; one database with the event store) ----------------
SCOPES = ("ingest", "read", "admin")
PURPOSES = ("personalisation", "analytics", "experiments")
CONSENT_STATES = ("granted", "denied", "pending")


@dataclass(frozen=True)
class ApiKey:
    """An API key's record. The key itself is never stored: ``secret_hash`` is SHA-256 of the whole key."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    kind: str  # "secret" (server side) or "publishable" (browsers: post events and read rails from `origins`)
    secret_hash: str
    created_at: float
    origins: tuple[str, ...] = ()
    rate: float | None = None  # requests/s for this key (None: the settings' default)
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class KeyExists(ValueError):
    """A key with this id or name already exists."""


@runtime_checkable
class KeyStore(Protocol):
    def add_key(self, key: ApiKey) -> None:
        """Store a new key record (``KeyExists`` when the id or an active key's name is taken)."""

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def list_keys(self, include_revoked: bool = False) -> list[ApiKey]:
        """Oldest first."""

    def revoke_key(self, id_or_name: str, at: float) -> ApiKey | None:
        """Revoke an active key by id or name; None when no active key matches."""

    def keys_generation(self) -> int:
        """Changes on every add or revoke (replicas compare it to refresh what they cached)."""


@dataclass(frozen=True)
class Consent:
    """A shopper's consent by purpose (``granted`` / ``denied`` / ``pending``), as last decided."""

    shopper: str
    purposes: dict[str, str]
    updated_at: float
    source: str = "api"  # "api" or "event"


@runtime_checkable
class ConsentStore(Protocol):
    def consents(self, shoppers: Sequence[str]) -> dict[str, Consent]:
        """The records of those shoppers that have one."""

    def set_consents(self, updates: Sequence[Consent]) -> dict[str, tuple[Consent | None, Consent]]:
        """Merge updates: each purpose given takes the update's value unless the stored record is newer
        (``updated_at``). Returns {shopper: (before, after)}."""

    def delete_consent(self, shopper: str) -> int: ...

    def add_counts(self, counts: dict[tuple[str, str, int], int]) -> None:
        """Add to the anonymous per-item daily counts: {(day "YYYY-MM-DD", item id, event type code): n}."""

    def counts(self, since_day: str) -> list[tuple[str, str, int, int]]:
        """(day, item id, event type code, n) from ``since_day`` on, by day then item."""


@runtime_checkable
class ErasureLedger(Protocol):
    """Erasure receipts (the audit log: no personal id) and the forgotten-shopper markers (keyed hashes)."""

    def forget(self, shopper: str, at: float) -> None:
        """Mark a shopper as erased at ``at`` (stored as a keyed hash, never the id)."""

    def forgotten(self, shoppers: Sequence[str]) -> dict[str, float]:
        """{shopper: erased at} for the given shoppers that carry a marker."""

    def latest_forget(self) -> float:
        """Time of the newest marker (0.0 when none)."""

    def prune_forgotten(self, before: float) -> int: ...

    def save_receipt(self, receipt: dict) -> None: ...

    def receipt(self, receipt_id: str) -> dict | None: ...

    def receipts(self, limit: int = 100) -> list[dict]:
        """Newest first."""


# ---- shoppers' explicit preferences (their own database role, by default the event store's database) ------------
@dataclass(frozen=True)
class ShopperPreferences:
    """A shopper's explicit preferences as last stored (``PUT /v1/shoppers/{id}/preferences``)."""

    shopper: str  # the stored form of the id (pseudonymised when that is on)
    preferences: Preferences
    updated_at: float


@runtime_checkable
class PreferenceStore(Protocol):
    def preferences(self, shoppers: Sequence[str]) -> dict[str, ShopperPreferences]:
        """The records of those shoppers that have one."""

    def set_preferences(self, record: ShopperPreferences) -> None:
        """Store a shopper's preferences, replacing what was stored."""

    def delete_preferences(self, shopper: str) -> int:
        """Remove a shopper's preferences; returns how many records were removed (0 or 1)."""

    def checkpoint(self) -> str:
        """After an erasure: make sure deleted rows do not linger (SQLite: fold and truncate the WAL)."""

    def close(self) -> None: ...


@runtime_checkable
class RateLimiter(Protocol):
    def acquire(self, buckets: Sequence[tuple[str, float, int]]) -> float:
        """Take one request from every bucket (name, requests per second, burst), all or none. Returns 0.0 when
        allowed, else the seconds until the request would be allowed (nothing taken)."""


# ---- model registry ---------------------------------------------------------------------------------------------
VERSION_STATES = ("registered", "rejected", "rolling_out", "live", "retired", "rolled_back")


@dataclass(frozen=True)
class ModelVersion:
    """A trained model version as the registry holds it (the files are in the model store).

    ``metrics``: offline metrics on the held-out slice at training time (``NDCG@12``, ``HR@12``, ``coverage@12``,
    ``long_tail@12``, ``requests``); ``window``: the data it was trained on (first and last event time, events,
    shoppers, items); ``settings``: the model settings; ``gates``: the last gate evaluation (``passed``, ``checks``,
    ``baseline``); ``status`` one of ``VERSION_STATES``; ``note``: why it has that status (a gate that blocked it,
    a rollback's reason)."""

    version: str
    created_at: float
    status: str = "registered"
    metrics: dict = field(default_factory=dict)
    window: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)
    note: str = ""
    updated_at: float = 0.0

    def view(self) -> dict:
        return {"version": self.version, "created_at": self.created_at, "updated_at": self.updated_at,
                "status": self.status, "note": self.note, "metrics": self.metrics, "window": self.window,
                "gates": self.gates, "settings": self.settings}


@dataclass(frozen=True)
class Rollout:
    """The staged rollout of a candidate version (at most one at a time; kept in the registry, so every replica
    reads the same). ``share``: the share of shoppers the candidate serves now; ``experiment``: the experiment that
    splits shoppers (sticky hashing) and carries the CTR guardrail; ``state`` running, done (promoted to every
    shopper), rolled_back (by the guardrail or an operator) or aborted."""

    candidate: str
    baseline: str | None
    experiment: str
    share: float
    state: str = "running"
    started_at: float = 0.0
    stage_started_at: float = 0.0
    finished_at: float | None = None
    reason: str = ""
    revision: int = 0

    def view(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RegistryEntry:
    """One line of the registry's audit trail."""

    ts: float
    action: str  # register | reject | rollout | advance | promote | rollback | abort
    version: str
    author: str
    detail: str


@runtime_checkable
class ModelRegistry(Protocol):
    def register(self, record: ModelVersion) -> ModelVersion:
        """Store a new version (``ValueError`` when the version is already registered)."""

    def get(self, version: str) -> ModelVersion | None: ...

    def list(self, limit: int = 100) -> list[ModelVersion]:
        """Versions, newest first."""

    def update(self, version: str, *, status: str | None = None, note: str | None = None,
               gates: dict | None = None) -> ModelVersion:
        """Change a version's status / note / gate result (``KeyError`` for an unknown version)."""

    def rollout(self) -> Rollout | None:
        """The current (or last) rollout."""

    def save_rollout(self, rollout: Rollout, expected_revision: int) -> Rollout | None:
        """Write the rollout iff the stored one is still at ``expected_revision`` (0: none stored): returns it at its
        new revision, or None when another process changed it first (compare-and-set across replicas)."""

    def audit(self, action: str, version: str, author: str, detail: str = "") -> None: ...

    def history(self, limit: int = 100) -> list[RegistryEntry]:
        """The audit trail, newest first."""

    def close(self) -> None: ...
