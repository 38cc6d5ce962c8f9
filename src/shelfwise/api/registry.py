"""Model registry routes (scope admin): ``GET /v1/models`` (the live version, the rollout and the versions with
their held-out metrics and gate results — the console's Models page reads it), ``GET /v1/models/{version}``,
``POST /v1/models/{version}/promote`` (through the gates: a staged rollout, or ``?now=true`` every shopper at once),
``POST /v1/models/rollback``, ``POST /v1/models/_check`` (advance or roll back the rollout now). An unknown version
is a ``404``; a version its gates block, or a request the release state forbids (another rollout running, the
version already live, nothing to roll back) a ``409`` naming the reason. Behaviour lives in ``release.py``."""

from __future__ import annotations

from typing import Annotated, Any, Callable

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from shelfwise.api import models as m
from shelfwise.domain import Text
from shelfwise.release import GateBlocked, ReleaseConflict, UnknownVersion


class VersionView(BaseModel):
    version: str
    created_at: float
    updated_at: float
    status: str = Field(description="registered, rejected, rolling_out, live, retired or rolled_back")
    note: str = Field(description="why it has that status (a gate that blocked it, a rollback's reason)")
    metrics: dict[str, Any] = Field(description="held-out NDCG@12, HR@12, coverage@12, long_tail@12, requests")
    window: dict[str, Any] = Field(description="the data it was trained on: from, until, events, shoppers, items")
    gates: dict[str, Any] = Field(description="the last gate evaluation: passed, baseline, checks, reason")
    settings: dict[str, Any] = Field(description="the model settings it was trained with")


class RolloutView(BaseModel):
    model_config = ConfigDict(extra="allow")

    candidate: str
    baseline: str | None
    experiment: str
    share: float = Field(description="share of shoppers the candidate serves")
    state: str = Field(description="running, done, rolled_back or aborted")
    started_at: float
    stage_started_at: float
    finished_at: float | None
    reason: str


class RegistryView(BaseModel):
    live: str | None
    rollout: RolloutView | None
    versions: list[VersionView]


class ReleaseResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    action: str = Field(description="promoted, rollout, advanced, rolled_back, waiting, none")


_ERRORS = {404: {"model": m.ErrorBody, "description": "unknown model version"},
           409: {"model": m.ErrorBody, "description": "blocked by the gates, or forbidden by the release state"}}
Version = Annotated[str, Path(min_length=1, max_length=128)]
Author = Annotated[Text | None, Query(max_length=128)]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=str), status_code=status,
                    media_type="application/json")


async def _guard(fn: Callable[[], Any]) -> Response:
    try:
        return _json(await run_in_threadpool(fn))
    except UnknownVersion as e:
        return JSONResponse({"detail": str(e), "errors": [{"field": "version", "reason": str(e)}]}, 404)
    except GateBlocked as e:
        errors = [{"field": c["gate"], "reason": c["reason"]} for c in e.result["checks"] if not c["passed"]]
        return JSONResponse({"detail": str(e), "errors": errors}, 409)
    except ReleaseConflict as e:
        return JSONResponse({"detail": str(e)}, 409)


def build_router(releases: Callable[[], Any]) -> APIRouter:
    """``releases()`` returns the engine's ``release.Releases``."""
    r = APIRouter(tags=["models"])

    def who(request: Request, author: str | None) -> str:
        key = getattr(request.state, "api_key", None)
        if key is None:
            return author or "api"
        return f"{author} (key {key.name})" if author and author != key.name else key.name

    @r.get("/v1/models", response_model=RegistryView, summary="Model versions, the live one and the rollout "
                                                              "(scope: admin)")
    async def list_models(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
        return await _guard(lambda: releases().status(limit))

    @r.get("/v1/models/{version}", response_model=VersionView, responses=_ERRORS,
           summary="One model version's record (scope: admin)")
    async def get_model(version: Version) -> Response:
        return await _guard(lambda: releases().version(version).view())

    @r.post("/v1/models/_check", response_model=ReleaseResult,
            summary="Advance or roll back the running rollout now (scope: admin)")
    async def check(request: Request, author: Author = None) -> Response:
        return await _guard(lambda: releases().check(author=who(request, author)))

    @r.post("/v1/models/rollback", response_model=ReleaseResult, responses=_ERRORS,
            summary="Stop the running rollout, or go back to the previous live version (scope: admin)")
    async def rollback(request: Request, author: Author = None,
                       reason: Annotated[Text, Query(max_length=2000)] = "") -> Response:
        return await _guard(lambda: releases().rollback(who(request, author), reason))

    @r.post("/v1/models/{version}/promote", response_model=ReleaseResult, responses=_ERRORS,
            summary="Promote a version through its gates: a staged rollout, or every shopper now (scope: admin)")
    async def promote(request: Request, version: Version, author: Author = None,
                      now: Annotated[bool, Query(description="every shopper at once, no staged rollout")] = False
                      ) -> Response:
        return await _guard(lambda: releases().promote(version, who(request, author), immediate=now))

    return r
