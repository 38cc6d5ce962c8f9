"""Shared helpers of the merchandising tests (no tests here): a tiny trained pipeline with a richer catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from shelfwise.assemble import assemble
from shelfwise.domain import Item
from shelfwise.pipeline import Pipeline
from shelfwise.request import Answer, RecRequest
from shelfwise.rules import RulesStage, StaticRules
from shelfwise.settings import ModelSettings
from shelfwise.stores.sqlite import SQLiteStore
from shelfwise.training import fit_pipeline
from tests.conftest import T0, tiny_catalog, tiny_events

NOW = (T0 + timedelta(days=30)).timestamp()


def rich_catalog() -> list[Item]:
    """The tiny catalog with colours, tags and creation dates: c0 is brand new, h1 has no known margin."""
    out = []
    colors = {"c0": "Black", "c1": "Clear", "c2": "Black", "c3": "Red", "h0": "White", "h1": "Black"}
    for it in tiny_catalog():
        upd: dict = {"attributes": {"color": colors.get(it.id, "Silver"), "compatible_with": [f"p{it.id[1]}"]},
                     "tags": ["rugged"] if it.id in ("c0", "c3") else [],
                     "created_at": T0 - timedelta(days=200)}
        if it.id == "c0":
            upd["created_at"] = datetime.fromtimestamp(NOW, timezone.utc) - timedelta(days=3)
        if it.id.startswith("p"):
            upd["attributes"] = {"storage_gb": 64 * (int(it.id[1]) + 1)}
        if it.id == "h1":
            upd["cost"] = None
        out.append(it.model_copy(update=upd))
    return out


def build_pipeline(tmp: Path, settings: ModelSettings | None = None) -> tuple[Pipeline, dict[str, Item]]:
    store = SQLiteStore(f"sqlite:///{tmp / 'rules.db'}")
    catalog = rich_catalog()
    store.upsert(catalog)
    store.append(tiny_events())
    pipe = fit_pipeline(store.scan(), store, settings or ModelSettings()).pipeline
    store.close()
    return pipe, {it.id: it for it in catalog}


def with_rules(pipe: Pipeline, catalog: dict[str, Item], doc: dict | None, shadows: dict | None = None) -> Pipeline:
    """The same model assembled with a rules stage holding ``doc`` (as rule set "test") and shadow drafts."""
    return assemble(pipe.model, RulesStage(StaticRules({"test": doc} if doc is not None else {}, shadows), catalog))


def ask(pipe: Pipeline, placement: str = "homepage", **kw) -> Answer:
    kw.setdefault("k", 10)
    kw.setdefault("now", NOW)
    if placement in ("pdp_similar", "pdp_fbt"):
        kw.setdefault("item_id", "p1")
    if placement == "cart_upsell":
        kw.setdefault("cart", ["p1"])
    return pipe.recommend([RecRequest(placement, **kw)])[0]


def ids(answer: Answer) -> list[str]:
    return [r.item_id for r in answer.items]


def rule(rid: str, action: dict, match: dict | None = None, priority: int = 0, when: dict | None = None) -> dict:
    out = {"id": rid, "action": action, "priority": priority}
    if match is not None:
        out["match"] = match
    if when is not None:
        out["when"] = when
    return out
