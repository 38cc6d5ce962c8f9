"""Merchandising routes: rule sets (versioned, publish, roll back, shadow), the shadow report and the
zero-impression report. Included by ``api/app.py``; behaviour lives in ``shelfwise.rules``.

Writes are recorded with an author: the name of the API key that made them (an ``author`` query parameter or
``X-Author`` header is kept beside it, "ann (key cms)"); with authentication off, the caller's word, else "api".
An invalid document gets ``422`` with ``errors: [{"path": "rules[2].action.slot", "reason": ...}]`` and nothing
is saved. Changes apply to the next request (no restart).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
import orjson

from shelfwise.api import models as m
from shelfwise.domain import Text
from shelfwise.rules import admin
from shelfwise.rules.reports import build_shadow_report, zero_impressions
from shelfwise.rules.schema import RuleSetInvalid
from shelfwise.rules.store import NotFound


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return _JSON(body, status_code=status)


def _guard(fn: Callable[[], Any], status: int = 200) -> Response:
    try:
        return _JSON(fn(), status_code=status)
    except RuleSetInvalid as e:
        return _error(422, "invalid rule set; nothing was saved", e.errors)
    except NotFound as e:
        return _error(404, str(e))
    except admin.Conflict as e:
        return _error(409, str(e))


MAX_VERSION = 2**31 - 1
Version = Annotated[int | None, Query(ge=1, le=MAX_VERSION)]
RuleSetId = Annotated[str, Path(min_length=1, max_length=128)]
Author = Annotated[Text | None, Query(max_length=128)]
XAuthor = Annotated[Text | None, Header(max_length=128)]
Comment = Annotated[Text, Query(max_length=2000)]
_INVALID = {422: {"model": m.ErrorBody, "description": "invalid rule set: errors name the JSON path and reason"}}
_MISSING = {404: {"model": m.ErrorBody, "description": "no such rule set or version"}}
_CONFLICT = {409: {"model": m.ErrorBody, "description": "contradicts the rule set's state"}}
_BODY = m.json_body(m.schema_ref("RuleSet"), "a rule set document (rules/schema.py)")


def build_router(engine: Callable[[], Any]) -> APIRouter:
    """``engine()`` returns the running ``Shelfwise``."""
    r = APIRouter(tags=["merchandising"])

    def store():
        return engine().merch.store

    def share() -> float:
        return engine().settings.rules.shadow_share

    def changed() -> None:
        engine().merch.rules_changed()

    def checks() -> tuple[dict[str, Any], Any]:
        """What rule sets are checked against: the catalog's facts and the serving model's item table (pins the
        model does not know, unavailable or out of stock, are warnings)."""
        eng = engine()
        return admin.catalog_facts(eng.catalog.all()), eng.pipeline.items

    def who(request: Request, author: str | None, x_author: str | None) -> str:
        said = author or x_author
        key = getattr(request.state, "api_key", None)
        if key is None:
            return said or "api"
        return f"{said} (key {key.name})" if said and said != key.name else key.name

    @r.get("/v1/rulesets", response_model=m.RuleSetList)
    def list_rulesets() -> Response:
        return _guard(lambda: {"rulesets": admin.list_rulesets(store(), share())})

    def _put(ruleset_id: str, document: Any, author: str, comment: str, publish: bool, shadow: bool,
             dry_run: bool) -> Response:
        eng = engine()
        placements = eng.settings.models.placements
        facts, model = checks()
        if dry_run:
            def check() -> dict[str, Any]:
                rs, warnings = admin.validate(document, ruleset_id, placements, facts, model)
                return {"valid": True, "rules": len(rs.rules), "warnings": warnings}
            return _guard(check)

        def save() -> dict[str, Any]:
            out = admin.put_ruleset(store(), ruleset_id, document, author, comment, placements, publish=publish,
                                    shadow=shadow, catalog=facts, model=model)
            changed()
            return out
        return _guard(save, 201)

    async def document_of(request: Request) -> tuple[Any, Response | None]:
        try:
            return await m.read_json(request), None
        except m.BadBody as e:
            return None, _error(422, "invalid rule set; nothing was saved", [{"path": "", "reason": e.reason}])

    @r.put("/v1/rulesets", status_code=201, response_model=m.RuleSetVersionView, openapi_extra=_BODY,
           responses={200: {"model": m.DryRun, "description": "dry run: the document is valid"}, **_INVALID,
                      **_CONFLICT})
    async def put_ruleset_body(
        request: Request, author: Author = None, comment: Comment = "", publish: bool = False, shadow: bool = True,
        dry_run: bool = False, x_author: XAuthor = None,
    ) -> Response:
        """Save a new version of the rule set named by the document's ``id``."""
        document, bad = await document_of(request)
        if bad is not None:
            return bad
        rid = document.get("id") if isinstance(document, dict) else None
        if not isinstance(rid, str) or not rid:
            return _error(422, "invalid rule set; nothing was saved",
                          [{"path": "id", "reason": "PUT /v1/rulesets needs the rule set id in the document "
                                                    "(or use PUT /v1/rulesets/{id})"}])
        return await run_in_threadpool(_put, rid, document, who(request, author, x_author), comment, publish,
                                       shadow, dry_run)

    @r.put("/v1/rulesets/{ruleset_id}", status_code=201, response_model=m.RuleSetVersionView, openapi_extra=_BODY,
           responses={200: {"model": m.DryRun, "description": "dry run: the document is valid"}, **_INVALID,
                      **_CONFLICT})
    async def put_ruleset(
        request: Request, ruleset_id: RuleSetId, author: Author = None, comment: Comment = "",
        publish: bool = False, shadow: bool = True, dry_run: bool = False, x_author: XAuthor = None,
    ) -> Response:
        """Save a new version (a draft, shadowed unless ``shadow=false``; live at once with ``publish=true``)."""
        try:
            admin.validate({"id": ruleset_id, "rules": []}, None, [])  # the id's pattern
        except RuleSetInvalid as e:
            return _error(422, "invalid rule set id", [{"path": "(url) ruleset_id", "reason": e.errors[0]["reason"]}])
        document, bad = await document_of(request)
        if bad is not None:
            return bad
        return await run_in_threadpool(_put, ruleset_id, document, who(request, author, x_author), comment, publish,
                                       shadow, dry_run)

    @r.get("/v1/rulesets/{ruleset_id}", response_model=m.RuleSetVersionView, responses=_MISSING)
    def get_ruleset(ruleset_id: RuleSetId, version: Version = None) -> Response:
        return _guard(lambda: admin.get_ruleset(store(), ruleset_id, version))

    @r.get("/v1/rulesets/{ruleset_id}/versions", response_model=m.RuleSetVersions, responses=_MISSING)
    def list_versions(ruleset_id: RuleSetId) -> Response:
        return _guard(lambda: {"id": ruleset_id, "versions": admin.versions(store(), ruleset_id),
                               "audit": [a.__dict__ for a in store().audit(ruleset_id)]})

    @r.post("/v1/rulesets/{ruleset_id}/publish", response_model=m.RuleSetVersionView, responses=_MISSING)
    def publish(request: Request, ruleset_id: RuleSetId, version: Version = None, author: Author = None,
                comment: Comment = "", x_author: XAuthor = None) -> Response:
        """Make a version live (the latest when no version is given)."""
        def go() -> dict[str, Any]:
            out = admin.publish(store(), ruleset_id, version, who(request, author, x_author), comment, *checks())
            changed()
            return out
        return _guard(go)

    @r.post("/v1/rulesets/{ruleset_id}/rollback", response_model=m.RuleSetVersionView, responses=_MISSING)
    def rollback(request: Request, ruleset_id: RuleSetId, version: Annotated[int, Query(ge=1, le=MAX_VERSION)],
                 author: Author = None, comment: Comment = "", x_author: XAuthor = None) -> Response:
        """Publish a copy of an earlier version as a new version."""
        def go() -> dict[str, Any]:
            out = admin.rollback(store(), ruleset_id, version, who(request, author, x_author), comment, *checks())
            changed()
            return out
        return _guard(go)

    @r.put("/v1/rulesets/{ruleset_id}/shadow", response_model=m.RuleSetVersionView, responses={**_MISSING,
                                                                                                **_CONFLICT})
    def start_shadow(request: Request, ruleset_id: RuleSetId, version: Version = None,
                     share: Annotated[float | None, Query(ge=0, le=1)] = None, author: Author = None,
                     x_author: XAuthor = None) -> Response:
        """Run a draft (the latest when no version is given) in shadow on ``share`` of traffic."""
        def go() -> dict[str, Any]:
            out = admin.set_shadow(store(), ruleset_id, version, share, who(request, author, x_author))
            changed()
            return out
        return _guard(go)

    @r.delete("/v1/rulesets/{ruleset_id}/shadow", response_model=m.RuleSetVersionView, responses=_MISSING)
    def stop_shadow(request: Request, ruleset_id: RuleSetId, author: Author = None,
                    x_author: XAuthor = None) -> Response:
        def go() -> dict[str, Any]:
            out = admin.set_shadow(store(), ruleset_id, None, None, who(request, author, x_author), stop=True)
            changed()
            return out
        return _guard(go)

    @r.get("/v1/rulesets/{ruleset_id}/shadow-report", response_model=m.ShadowReport, responses=_MISSING)
    def get_shadow_report(ruleset_id: RuleSetId, version: Version = None,
                          hours: Annotated[float | None, Query(gt=0, le=1e6)] = None) -> Response:
        """Live vs shadow answers of the sampled requests (the current shadow version unless one is given)."""
        def go() -> dict[str, Any]:
            eng = engine()
            items = eng.pipeline.items
            return build_shadow_report(eng.merch.store, eng.merch.log, ruleset_id, version, hours, items,
                                       eng.merch.stage.facts(items))
        return _guard(go)

    @r.get("/v1/reports/zero-impressions", response_model=m.ZeroImpressions)
    def zero_impression_report(hours: Annotated[float | None, Query(gt=0, le=1e6)] = None,
                               include_unservable: bool = False,
                               limit: Annotated[int, Query(ge=0, le=100_000)] = 1000) -> Response:
        """Catalog SKUs shown in no rail during the last ``hours`` (default 72), from the exposure log."""
        eng = engine()
        eng.merch.log.flush()
        return _JSON(zero_impressions(eng.catalog.all(), eng.merch.log,
                                      hours or eng.settings.rules.zero_impression_hours,
                                      servable_only=not include_unservable, limit=limit))

    return r
