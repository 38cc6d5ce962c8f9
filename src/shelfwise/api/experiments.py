"""Experiment routes: create, edit, start, ramp, stop, read, results, power, guardrail check. Included by
``api/app.py``; behaviour lives in ``shelfwise.experiments``. Every route needs the ``admin`` scope.

Writes are recorded with an author: the name of the API key that made them (an ``author`` query parameter or
``X-Author`` header is kept beside it, "ann (key cms)"); with authentication off, the caller's word, else "api".
An invalid document gets ``422`` with ``errors: [{"path": "variants[1].config.colour", "reason": ...}]``; a
request the experiment's state forbids (overlap in a layer, ramping a stopped experiment, editing a running one)
``409`` naming the problem; an unknown experiment ``404``. Nothing is stored half-written. Paths starting with
``_`` are reserved (experiment ids cannot start with one): ``/v1/experiments/_power``,
``/v1/experiments/_guardrails``, ``/v1/experiments/_holdout/results``.
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any, Callable, Literal

import orjson
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from shelfwise.api import models as m
from shelfwise.domain import Text
from shelfwise.experiments.admin import Conflict, ExperimentInvalid, ExperimentService, NotFound


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# ---- the HTTP contract ---------------------------------------------------------------------------------------------
class HistoryEntry(BaseModel):
    experiment_id: str
    action: str
    author: str
    comment: str
    detail: dict[str, Any]
    ts: float


class ExperimentView(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    status: Literal["draft", "running", "stopped"]
    traffic: float
    serve: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    stopped_at: float | None = None
    stop_reason: str
    revision: int
    spec: dict[str, Any]
    warnings: list[m.FieldError] | None = None
    history: list[HistoryEntry] | None = None


class ExperimentList(BaseModel):
    experiments: list[ExperimentView]


class ExperimentValid(BaseModel):
    valid: bool
    id: str
    warnings: list[m.FieldError]


class PowerView(BaseModel):
    model_config = ConfigDict(extra="allow")

    control: int
    treatment: int
    total: int
    alpha: float
    power: float
    variants: int
    units_total: int
    baseline: float | None = None
    target: float | None = None
    power_at_units: float | None = None
    mde_at_units: float | None = None


class ExperimentResults(BaseModel):
    """The readout (``analysis``, ``interleaving``, ``bandit``, ``guardrails``, ``requests``: see the docs of
    ``experiments.analysis``); ``detail`` when the experiment has not started."""

    model_config = ConfigDict(extra="allow")

    experiment: ExperimentView


class GuardrailCheck(BaseModel):
    checked: list[dict[str, Any]]


_INVALID = {422: {"model": m.ErrorBody, "description": "invalid: errors name the JSON path and the reason; "
                                                       "nothing was saved"}}
_MISSING = {404: {"model": m.ErrorBody, "description": "no such experiment"}}
_CONFLICT = {409: {"model": m.ErrorBody, "description": "contradicts the experiments' state (named in detail)"}}
_BODY = m.json_body({"type": "object"}, "an experiment document (experiments/schema.py: ExperimentSpec)")

ExperimentId = Annotated[str, Path(min_length=1, max_length=128)]
Author = Annotated[Text | None, Query(max_length=128)]
XAuthor = Annotated[Text | None, Header(max_length=128)]
Comment = Annotated[Text, Query(max_length=2000)]
VariantName = Annotated[Text | None, Query(max_length=64)]
Time = Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False, description="unix seconds")]


def _error(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return _JSON(body, status_code=status)


def _guard(fn: Callable[[], Any], status: int = 200) -> Response:
    try:
        return _JSON(fn(), status_code=status)
    except ExperimentInvalid as e:
        return _error(422, "invalid experiment request; nothing was saved", e.errors)
    except NotFound as e:
        return _error(404, str(e))
    except Conflict as e:
        return _error(409, str(e))


_SERVICES: "weakref.WeakKeyDictionary[Any, ExperimentService]" = weakref.WeakKeyDictionary()


def service_of(engine: Any) -> ExperimentService:
    """The engine's experiment service: ``engine.experiments_admin`` when the engine has one, else one opened
    on its settings (closed with the engine object)."""
    own = getattr(engine, "experiments_admin", None)
    if own is not None:
        return own
    svc = _SERVICES.get(engine)
    if svc is None:
        svc = _SERVICES[engine] = ExperimentService(engine.settings)
        weakref.finalize(engine, svc.close)
    return svc


def build_router(service: Callable[[], ExperimentService],
                 changed: Callable[[], None] = lambda: None) -> APIRouter:
    """``service()`` returns the ``ExperimentService``; ``changed()`` is called after every write (a serving
    process reloads its experiments at once instead of at its next reload interval)."""
    r = APIRouter(tags=["experiments"])

    def who(request: Request, author: str | None, x_author: str | None) -> str:
        said = author or x_author
        key = getattr(request.state, "api_key", None)
        if key is None:
            return said or "api"
        return f"{said} (key {key.name})" if said and said != key.name else key.name

    def write(fn: Callable[[], Any], status: int = 200) -> Response:
        def go() -> Any:
            out = fn()
            changed()
            return out
        return _guard(go, status)

    async def document_of(request: Request) -> tuple[Any, Response | None]:
        try:
            return await m.read_json(request), None
        except m.BadBody as e:
            return None, _error(422, "invalid experiment; nothing was saved", [{"path": "", "reason": e.reason}])

    @r.get("/v1/experiments", response_model=ExperimentList, responses=_INVALID)
    def list_experiments(status: Annotated[Text | None, Query(max_length=16)] = None) -> Response:
        """Every experiment (``status``: draft, running or stopped)."""
        return _guard(lambda: {"experiments": service().list(status)})

    @r.post("/v1/experiments", status_code=201, response_model=ExperimentView, openapi_extra=_BODY,
            responses={200: {"model": ExperimentValid, "description": "dry run: the document is valid"},
                       **_INVALID, **_CONFLICT})
    async def create(request: Request, author: Author = None, comment: Comment = "", start: bool = False,
                     dry_run: bool = False, x_author: XAuthor = None) -> Response:
        """Create an experiment (a draft; running at once with ``start=true``; only validated with
        ``dry_run=true``)."""
        document, bad = await document_of(request)
        if bad is not None:
            return bad
        if dry_run:
            return await run_in_threadpool(_guard, lambda: service().validate(document))
        by = who(request, author, x_author)
        return await run_in_threadpool(write, lambda: service().create(document, by, comment, start=start), 201)

    @r.get("/v1/experiments/_power", response_model=PowerView, responses=_INVALID)
    def power(baseline: Annotated[float, Query(gt=0, le=1e12, allow_inf_nan=False,
                                               description="control's conversion (or mean, metric=mean)")],
              mde: Annotated[float, Query(ge=-0.99, le=100, allow_inf_nan=False,
                                          description="relative lift to detect, e.g. 0.05")],
              alpha: Annotated[float | None, Query(gt=0, lt=0.5)] = None,
              power: Annotated[float, Query(gt=0, lt=1)] = 0.8,
              units: Annotated[int | None, Query(ge=2, le=10**12,
                                                 description="units per variant: also report the power")] = None,
              variants: Annotated[int, Query(ge=2, le=100)] = 2,
              variance_reduction: Annotated[float, Query(ge=0, lt=1)] = 0.0,
              metric: Literal["proportion", "mean"] = "proportion",
              sd: Annotated[float | None, Query(gt=0, le=1e12, allow_inf_nan=False)] = None) -> Response:
        """Units per variant to detect a relative lift ``mde`` with the given power (and the power at ``units``)."""
        return _guard(lambda: service().power(baseline, mde, alpha, power, units, variants, variance_reduction,
                                              metric, sd))

    @r.post("/v1/experiments/_guardrails", response_model=GuardrailCheck)
    def check_guardrails() -> Response:
        """Evaluate every running experiment's guardrails now; breached ones are stopped and serve control."""
        return write(lambda: {"checked": service().check_guardrails()})

    @r.get("/v1/experiments/{experiment_id}", response_model=ExperimentView, responses=_MISSING)
    def get(experiment_id: ExperimentId) -> Response:
        """The document, the state and the history."""
        return _guard(lambda: service().get(experiment_id))

    @r.put("/v1/experiments/{experiment_id}", response_model=ExperimentView, openapi_extra=_BODY,
           responses={**_INVALID, **_MISSING, **_CONFLICT})
    async def update(request: Request, experiment_id: ExperimentId, author: Author = None, comment: Comment = "",
                     x_author: XAuthor = None) -> Response:
        """Replace a draft's document (a running or stopped experiment cannot change: 409)."""
        document, bad = await document_of(request)
        if bad is not None:
            return bad
        by = who(request, author, x_author)
        return await run_in_threadpool(write, lambda: service().update(experiment_id, document, by, comment))

    @r.post("/v1/experiments/{experiment_id}/start", response_model=ExperimentView,
            responses={**_MISSING, **_CONFLICT})
    def start(request: Request, experiment_id: ExperimentId, author: Author = None, comment: Comment = "",
              x_author: XAuthor = None) -> Response:
        by = who(request, author, x_author)
        return write(lambda: service().start(experiment_id, by, comment))

    @r.post("/v1/experiments/{experiment_id}/ramp", response_model=ExperimentView,
            responses={**_INVALID, **_MISSING, **_CONFLICT})
    def ramp(request: Request, experiment_id: ExperimentId,
             traffic: Annotated[float, Query(allow_inf_nan=False, description="new exposure share in (0, 1]")],
             author: Author = None, comment: Comment = "", x_author: XAuthor = None) -> Response:
        """Raise the share of the experiment's slice that is exposed (10 % → 50 % → 100 %); never moves anybody."""
        by = who(request, author, x_author)
        return write(lambda: service().ramp(experiment_id, traffic, by, comment))

    @r.post("/v1/experiments/{experiment_id}/stop", response_model=ExperimentView,
            responses={**_INVALID, **_MISSING, **_CONFLICT})
    def stop(request: Request, experiment_id: ExperimentId, reason: Comment = "", serve: VariantName = None,
             author: Author = None, x_author: XAuthor = None) -> Response:
        """Stop; ``serve=<variant>`` keeps serving that variant to the exposed shoppers (e.g. control, a winner)."""
        by = who(request, author, x_author)
        return write(lambda: service().stop(experiment_id, by, reason, serve))

    @r.post("/v1/experiments/{experiment_id}/serve", response_model=ExperimentView,
            responses={**_INVALID, **_MISSING, **_CONFLICT})
    def serve(request: Request, experiment_id: ExperimentId, variant: VariantName = None, author: Author = None,
              comment: Comment = "", x_author: XAuthor = None) -> Response:
        """What a stopped experiment serves its shoppers (no variant: release them to the running setup)."""
        by = who(request, author, x_author)
        return write(lambda: service().serve(experiment_id, variant, by, comment))

    @r.get("/v1/experiments/{experiment_id}/results", response_model=ExperimentResults, responses=_MISSING)
    def results(experiment_id: ExperimentId, until: Time = None,
                since: Annotated[float | None, Query(ge=0, le=1e11, allow_inf_nan=False,
                                                     description="_holdout only: start of the window")] = None,
                bayes: bool = True) -> Response:
        """Per-variant metrics with intervals, CUPED, Bayesian readout, sequential intervals, SRM, guardrails."""
        return _guard(lambda: service().results(experiment_id, until=until, since=since, bayes=bayes))

    return r
