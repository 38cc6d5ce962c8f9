"""Managing rule sets: the operations the HTTP API and the CLI share (validate, save, publish, roll back, shadow).

Nothing here knows about HTTP or the terminal; errors are ``RuleSetInvalid`` (a document problem, with JSON
paths), ``NotFound`` and ``Conflict``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from shelfwise.items import ItemTable
from shelfwise.rules.compile import pin_warnings
from shelfwise.rules.log import ExposureLog, SQLiteExposureLog
from shelfwise.rules.schema import RuleSet, RuleSetInvalid, lint, parse_ruleset
from shelfwise.rules.store import NotFound, RuleSetState, RuleStore, RuleVersion, SQLiteRuleStore
from shelfwise.settings import Settings


class Conflict(ValueError):
    """The request contradicts the rule set's state (e.g. an id in the body that differs from the URL)."""


def rules_dsn(settings: Settings) -> str:
    """Where rule sets and the exposure log live: ``rules.dsn``, else the event store's database."""
    return settings.rules.dsn or settings.events_dsn


def rules_db_path(settings: Settings) -> Path:
    """The SQLite file of rule sets and the exposure log when they live in one (``rules_dsn`` is a sqlite:///
    DSN); with a PostgreSQL DSN there is none: ``data_dir/merchandising.db`` is named (it held them before the
    PostgreSQL backend existed)."""
    dsn = rules_dsn(settings)
    if dsn.startswith("sqlite:///"):
        return Path(dsn.removeprefix("sqlite:///"))
    return settings.data_dir / "merchandising.db"


def _postgres(dsn: str) -> bool:
    return dsn.startswith(("postgresql://", "postgres://"))


def open_rule_store(settings: Settings) -> RuleStore:
    """The rule store of ``rules_dsn``: SQLite (a file) or PostgreSQL (shared by every replica)."""
    dsn = rules_dsn(settings)
    if _postgres(dsn):
        from shelfwise.rules.pg import PostgresRuleStore

        return PostgresRuleStore(dsn)
    return SQLiteRuleStore(rules_db_path(settings))


def open_exposure_log(settings: Settings) -> ExposureLog:
    """The exposure and shadow log of ``rules_dsn`` (SQLite or PostgreSQL)."""
    dsn = rules_dsn(settings)
    if _postgres(dsn):
        from shelfwise.rules.pg import PostgresExposureLog

        return PostgresExposureLog(dsn, retention_days=settings.rules.exposure_retention_days,
                                   counts_refresh_s=settings.models.explore.refresh_s)
    return SQLiteExposureLog(rules_db_path(settings), retention_days=settings.rules.exposure_retention_days,
                             secure_delete=settings.privacy.sqlite_secure_delete,
                             counts_refresh_s=settings.models.explore.refresh_s)


# ---- views ------------------------------------------------------------------------------------------------
def version_view(v: RuleVersion, st: RuleSetState | None, document: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": v.ruleset_id, "version": v.version,
                           "status": st.status(v) if st else "draft",
                           "shadow": bool(st and st.shadow_version == v.version),
                           "author": v.author, "comment": v.comment, "created_at": v.created_at,
                           "published_at": v.published_at, "based_on": v.based_on}
    if document:
        out["document"] = v.document
        out["rules"] = len(v.document.get("rules", []))
    return out


def state_view(st: RuleSetState, default_share: float) -> dict[str, Any]:
    out = asdict(st)
    out["shadow_share"] = (default_share if st.shadow_share is None else st.shadow_share) \
        if st.shadow_version is not None else None
    return out


def list_rulesets(store: RuleStore, default_share: float) -> list[dict[str, Any]]:
    return [state_view(st, default_share) for st in store.states()]


def get_ruleset(store: RuleStore, ruleset_id: str, version: int | None = None) -> dict[str, Any]:
    st = _state(store, ruleset_id)
    v = store.version(ruleset_id, version)
    return version_view(v, st) | {"live_version": st.live_version, "shadow_version": st.shadow_version,
                                  "latest_version": st.latest_version}


def versions(store: RuleStore, ruleset_id: str) -> list[dict[str, Any]]:
    st = _state(store, ruleset_id)
    return [version_view(v, st, document=False) for v in store.versions(ruleset_id)]


def _state(store: RuleStore, ruleset_id: str) -> RuleSetState:
    for st in store.states():
        if st.id == ruleset_id:
            return st
    raise NotFound(f"no rule set {ruleset_id!r}")


# ---- changes ----------------------------------------------------------------------------------------------
def warnings(rs: RuleSet, catalog: dict[str, Any] | None = None,
             model: ItemTable | None = None) -> list[dict[str, str]]:
    """What is probably wrong with a valid rule set: ids, brands and categories the catalog lacks (``lint``), and
    pins that cannot apply now — items the serving model does not know, unavailable or out of stock."""
    out = lint(rs, **catalog) if catalog else []
    if model is not None:
        out += pin_warnings(rs, model, catalog["known_items"] if catalog else None)
    return out


def validate(document: Any, ruleset_id: str | None, placements: Iterable[str],
             catalog: dict[str, Any] | None = None,
             model: ItemTable | None = None) -> tuple[RuleSet, list[dict[str, str]]]:
    """Parse a document (RuleSetInvalid on errors) and check it against the catalog and the serving model's item
    table (warnings)."""
    rs = parse_ruleset(document, placements)
    if ruleset_id is not None and rs.id is not None and rs.id != ruleset_id:
        raise RuleSetInvalid([{"path": "id", "reason": f"the document's id {rs.id!r} differs from the rule set "
                                                       f"{ruleset_id!r} it is saved as"}])
    return rs, warnings(rs, catalog, model)


def put_ruleset(store: RuleStore, ruleset_id: str, document: dict[str, Any], author: str, comment: str,
                placements: Iterable[str], publish: bool = False, shadow: bool = True,
                catalog: dict[str, Any] | None = None, model: ItemTable | None = None) -> dict[str, Any]:
    """Validate and save a new version. ``publish``: make it live at once; otherwise it is a draft and, with
    ``shadow``, runs in shadow (on the rule set's share of traffic) until published or replaced."""
    _, found = validate(document, ruleset_id, placements, catalog, model)
    doc = dict(document)
    doc["id"] = ruleset_id
    v = store.save(ruleset_id, doc, author, comment)
    if publish:
        store.publish(ruleset_id, v.version, author, comment or "published on save")
    elif shadow:
        st = _state(store, ruleset_id)
        store.set_shadow(ruleset_id, v.version, st.shadow_share, author, "draft shadowed on save")
    return get_ruleset(store, ruleset_id, v.version) | {"warnings": found}


def publish(store: RuleStore, ruleset_id: str, version: int | None, author: str, comment: str,
            catalog: dict[str, Any] | None = None, model: ItemTable | None = None) -> dict[str, Any]:
    """Make a version live; the answer lists its warnings against the catalog and the serving model (when given)."""
    st = _state(store, ruleset_id)
    version = st.latest_version if version is None else version
    v = store.version(ruleset_id, version)  # NotFound when missing
    store.publish(ruleset_id, version, author, comment)
    return get_ruleset(store, ruleset_id, version) | {"warnings": warnings(RuleSet.model_validate(v.document),
                                                                           catalog, model)}


def rollback(store: RuleStore, ruleset_id: str, version: int, author: str, comment: str,
             catalog: dict[str, Any] | None = None, model: ItemTable | None = None) -> dict[str, Any]:
    """A new version with the document of ``version``, published at once (the history only grows)."""
    old = store.version(ruleset_id, version)
    text = f"rollback to v{version}" + (f": {comment}" if comment else "")
    v = store.save(ruleset_id, old.document, author, text, based_on=version)
    store.publish(ruleset_id, v.version, author, text, action="rollback")
    return get_ruleset(store, ruleset_id, v.version) | {"warnings": warnings(RuleSet.model_validate(old.document),
                                                                             catalog, model)}


def set_shadow(store: RuleStore, ruleset_id: str, version: int | None, share: float | None, author: str,
               stop: bool = False) -> dict[str, Any]:
    st = _state(store, ruleset_id)
    if stop:
        store.set_shadow(ruleset_id, None, None, author, "shadow stopped")
    else:
        version = st.latest_version if version is None else version
        if version == st.live_version:
            raise Conflict(f"v{version} is the live version; shadow a draft")
        store.set_shadow(ruleset_id, version, share, author, "shadow started")
    return get_ruleset(store, ruleset_id)


def catalog_facts(items: Iterable[Any]) -> dict[str, Any]:
    """What ``lint`` checks a document against: item ids, brands and category paths of the catalog."""
    ids, brands, cats = set(), set(), set()
    for it in items:
        ids.add(it.id)
        if it.brand:
            brands.add(it.brand)
        if it.category:
            cats.add(" > ".join(it.category))
    return {"known_items": ids, "brands": brands, "categories": cats}


def catalog_checks(items: Iterable[Any]) -> tuple[dict[str, Any], ItemTable]:
    """What a rule set is checked against where no model is serving (the command line): the catalog's facts, and an
    item table of the catalog itself (pins of unavailable or out-of-stock items are warnings)."""
    items = list(items)
    return catalog_facts(items), ItemTable.build([it.id for it in items], {it.id: it for it in items})
