"""The rules stage of the pipeline: which compiled rules apply to each request, and shadow sampling.

A ``RuleSource`` gives a snapshot of the live rule sets and the drafts in shadow: ``StoreRules`` reads a
``RuleStore`` (checking ``generation()`` on every request, or every ``reload_interval_s``; a PRAGMA when nothing
changed), ``StaticRules`` holds fixed documents (tests, benchmarks, offline evaluation). ``RulesStage`` compiles
a snapshot over the pipeline's item table once per rule version / catalog change and hands the reranker, per
request, the active rules' combined effects and the shadow answers to compute.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from shelfwise.domain import Item
from shelfwise.items import ItemTable
from shelfwise.rules.compile import CompiledRules, Effects, ItemFacts
from shelfwise.rules.log import ExposureLog, ShadowRecord
from shelfwise.rules.schema import ItemMatch, RuleSet
from shelfwise.rules.store import RuleStore
from shelfwise.stores.breaker import Breaker, unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    token: Any  # changes whenever the rules change
    live: tuple[tuple[str, int, RuleSet], ...] = ()
    shadows: tuple[tuple[str, int, RuleSet, float], ...] = ()  # (rule set, draft version, document, share)

    @property
    def label(self) -> str:
        return ",".join(f"{rid}@{v}" for rid, v, _ in self.live)


_NO_RULES = Snapshot(token=None)  # the store could not be read yet


class RuleSource(Protocol):
    def snapshot(self) -> Snapshot: ...


class StaticRules:
    """Fixed rule sets (documents or parsed), e.g. for offline evaluation and benchmarks."""

    def __init__(self, live: dict[str, RuleSet | dict] | None = None,
                 shadows: dict[str, tuple[RuleSet | dict, float]] | None = None):
        def parse(doc: RuleSet | dict) -> RuleSet:
            from shelfwise.rules.schema import parse_ruleset

            return doc if isinstance(doc, RuleSet) else parse_ruleset(doc)

        self._snap = Snapshot(
            token=id(self),
            live=tuple((rid, 1, parse(doc)) for rid, doc in sorted((live or {}).items())),
            shadows=tuple((rid, 2, parse(doc), share) for rid, (doc, share) in sorted((shadows or {}).items())))

    def snapshot(self) -> Snapshot:
        return self._snap


class StoreRules:
    """Live and shadow rule sets from a RuleStore, reloaded when its generation changes. A store that is down (a
    PostgreSQL rule store unreachable) leaves the rules last loaded serving (none before the first load); with a
    ``breaker`` the store is not asked again until it half-opens."""

    def __init__(self, store: RuleStore, default_share: float = 0.05, reload_interval_s: float = 0.0,
                 breaker: Breaker | None = None):
        self.store, self.default_share, self.interval = store, default_share, reload_interval_s
        self.breaker = breaker
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._checked = 0.0

    def invalidate(self) -> None:
        self._checked = 0.0
        self._snap = None

    def snapshot(self) -> Snapshot:
        snap = self._snap
        now = time.monotonic()
        if snap is not None and now - self._checked < self.interval:
            return snap
        if self.breaker is not None and not self.breaker.allow():
            return snap if snap is not None else _NO_RULES
        try:
            gen = self.store.generation()
            self._checked = now
            if snap is None or snap.token != gen:
                with self._lock:
                    if self._snap is None or self._snap.token != gen:
                        self._snap = self._load(gen)
                    snap = self._snap
        except Exception as exc:
            if not unavailable(exc):
                raise
            if self.breaker is not None:
                self.breaker.failure(f"{type(exc).__name__}: {str(exc)[:200]}")
            log.warning("rule store unavailable (%s): serving the rules last loaded", type(exc).__name__)
            return self._snap if self._snap is not None else _NO_RULES
        if self.breaker is not None:
            self.breaker.success()
        return snap

    def _load(self, gen: int) -> Snapshot:
        live, shadows = [], []
        for st in self.store.states():
            for version, bucket in ((st.live_version, "live"), (st.shadow_version, "shadow")):
                if version is None:
                    continue
                try:
                    rs = RuleSet.model_validate(self.store.version(st.id, version).document)
                except Exception as exc:  # a stored document no longer valid: skip it, never fail serving
                    log.error("rule set %s v%s cannot be loaded (skipped): %s", st.id, version, exc)
                    continue
                if bucket == "live":
                    live.append((st.id, version, rs))
                else:
                    share = self.default_share if st.shadow_share is None else st.shadow_share
                    shadows.append((st.id, version, rs, share))
        return Snapshot(gen, tuple(live), tuple(shadows))


class OverrideRules:
    """The live rule sets, with one of them served at another version (an experiment's variant: ``id`` = its latest
    version, ``id@3`` = version 3); no drafts in shadow. Follows the store's changes to the other rule sets."""

    def __init__(self, base: StoreRules, ruleset_id: str, version: int | None = None) -> None:
        self.base, self.ruleset_id, self.version = base, ruleset_id, version
        self._cached: tuple[Any, Snapshot] | None = None

    @classmethod
    def parse(cls, base: StoreRules, spec: str) -> "OverrideRules":
        rid, _, ver = spec.partition("@")
        return cls(base, rid, int(ver) if ver else None)

    def snapshot(self) -> Snapshot:
        snap = self.base.snapshot()
        got = self._cached
        if got is not None and got[0] == snap.token:
            return got[1]
        v = self.base.store.version(self.ruleset_id, self.version)
        rs = RuleSet.model_validate(v.document)
        live = tuple(sorted([x for x in snap.live if x[0] != self.ruleset_id] + [(self.ruleset_id, v.version, rs)],
                            key=lambda x: x[0]))
        out = Snapshot(("override", snap.token, self.ruleset_id, v.version), live, ())
        self._cached = (snap.token, out)
        return out


@dataclass
class ShadowJob:
    ruleset_id: str
    version: int
    live_version: int | None
    world: CompiledRules
    sig: tuple
    eff: Effects


@dataclass
class RequestRules:
    world: CompiledRules
    sig: tuple
    eff: Effects
    shadows: list[ShadowJob] = field(default_factory=list)


def in_sample(key: str, salt: str, share: float) -> bool:
    """Deterministic: the same shopper (or request) is always in or out of a rule set's shadow sample."""
    if share <= 0 or not key:
        return False
    if share >= 1:
        return True
    h = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64 < share


def _needs_facts(rulesets: Iterable[RuleSet]) -> bool:
    def uses(m: ItemMatch | None) -> bool:
        return m is not None and (bool(m.brands or m.tags or m.attributes) or uses(m.not_))

    return any(uses(rule.match) for rs in rulesets for rule in rs.rules)


class RulesStage:
    """Attached to a pipeline as ``pipeline.rules``; the reranker asks it for each request's rules."""

    def __init__(self, source: RuleSource, catalog: Callable[[], Iterable[Item]] | dict[str, Item] | None = None,
                 log: ExposureLog | None = None):
        self.source, self.log = source, log
        self._catalog = catalog
        self._facts: tuple[int, ItemFacts] | None = None
        self._worlds: dict[tuple, tuple[int, CompiledRules]] = {}
        self._tables: list[int] = []  # the item tables (ids) whose compilations are kept: the last two
        self._gen = 0
        self._pending: set[tuple] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # ---- catalog -------------------------------------------------------------------------------------
    def catalog_changed(self, items: ItemTable | None = None, changed: Sequence[Item] = ()) -> None:
        """The catalog changed (stock, price, attributes...): the rules are recompiled in the background. Items new
        to the serving model (a table with rows appended) extend the facts instead of a full catalog read."""
        got = self._facts
        if got is not None and items is not None and changed:
            if got[0] != id(items):
                grown = got[1].grown(items, changed)
                if grown is not None:
                    self._facts = got = (id(items), grown)
            if got[0] == id(items):
                got[1].update(items, changed)
        self._gen += 1

    def facts(self, items: ItemTable) -> ItemFacts | None:
        got = self._facts
        if got is not None and got[0] == id(items):
            return got[1]
        if self._catalog is None:
            return None
        cat = self._catalog if isinstance(self._catalog, dict) else {it.id: it for it in self._catalog()}
        facts = ItemFacts.build(items, cat)
        self._facts = (id(items), facts)
        return facts

    # ---- compilation ---------------------------------------------------------------------------------
    def _world(self, items: ItemTable, snap: Snapshot, rulesets: tuple[tuple[str, RuleSet], ...], tag: Any) -> CompiledRules:
        """The compiled rules for a snapshot over an item table. A new rule version or model compiles at once (the
        next request must see it); a catalog change recompiles in the background while requests keep the
        previous compilation (stock/price conditions lag by one compile; unservable items are excluded anyway)."""
        key = (snap.token, id(items), tag)
        entry = self._worlds.get(key)
        if entry is not None:
            if entry[0] != self._gen:
                self._recompile_later(key, items, rulesets)
            return entry[1]
        with self._lock:
            entry = self._worlds.get(key)
            if entry is None:
                # kept: this rule snapshot's compilations for this item table and the one before it (a model
                # compiled before it goes live must not evict the one still serving: ``Shelfwise._load_pipeline``)
                if key[1] not in self._tables:
                    self._tables = [*self._tables[-1:], key[1]]
                for k in [k for k in self._worlds if k[0] != key[0] or k[1] not in self._tables]:
                    del self._worlds[k]
                gen = self._gen
                entry = (gen, self._compile(items, rulesets))
                self._worlds[key] = entry
        return entry[1]

    def _compile(self, items: ItemTable, rulesets: tuple[tuple[str, RuleSet], ...]) -> CompiledRules:
        facts = self.facts(items) if _needs_facts(rs for _, rs in rulesets) else None
        return CompiledRules(rulesets, items, facts)

    def _recompile_later(self, key: tuple, items: ItemTable, rulesets: tuple[tuple[str, RuleSet], ...]) -> None:
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)

        def run() -> None:
            try:
                gen = self._gen
                world = self._compile(items, rulesets)
                with self._lock:
                    if key in self._worlds:
                        self._worlds[key] = (gen, world)
            except Exception:  # pragma: no cover - keep serving the previous compilation
                log.exception("recompiling rules after a catalog change failed")
            finally:
                with self._lock:
                    self._pending.discard(key)

        t = threading.Thread(target=run, name="shelfwise-rules-compile", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def wait(self) -> None:
        """Wait for background recompilations (tests, benchmarks)."""
        for t in list(self._threads):
            t.join()

    def live(self, items: ItemTable, snap: Snapshot | None = None) -> CompiledRules:
        snap = snap or self.source.snapshot()
        return self._world(items, snap, tuple((rid, rs) for rid, _, rs in snap.live), "live")

    def shadow(self, items: ItemTable, snap: Snapshot, ruleset_id: str) -> CompiledRules:
        draft = next(rs for rid, _, rs, _ in snap.shadows if rid == ruleset_id)
        rulesets = tuple((rid, rs) for rid, _, rs in snap.live if rid != ruleset_id) + ((ruleset_id, draft),)
        return self._world(items, snap, rulesets, ("shadow", ruleset_id))

    def label(self) -> str:
        return self.source.snapshot().label

    # ---- per request ---------------------------------------------------------------------------------
    def plan(self, items: ItemTable, reqs: Sequence[Any], placement: str) -> list[RequestRules] | None:
        """Each request's active rules, or None when no rule set is live and no draft is in shadow."""
        snap = self.source.snapshot()
        if not snap.live and not snap.shadows:
            return None
        world = self.live(items, snap)
        live_versions = {rid: v for rid, v, _ in snap.live}
        out = []
        for req in reqs:
            sig = world.signature(req, placement)
            rr = RequestRules(world, sig, world.effects(sig))
            for rid, version, _, share in snap.shadows:
                if in_sample(req.shopper or req.request_id or "", rid, share):
                    sw = self.shadow(items, snap, rid)
                    ssig = sw.signature(req, placement)
                    rr.shadows.append(ShadowJob(rid, version, live_versions.get(rid), sw, ssig, sw.effects(ssig)))
            out.append(rr)
        return out

    def record_shadow(self, record: ShadowRecord) -> None:
        if self.log is not None:
            self.log.record_shadow([record])
