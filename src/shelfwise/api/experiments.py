"""Experiment routes: create, edit, start, ramp, stop, read, results, power, guardrail check. Included by
``api/app.py``; behaviour lives in ``shelfwise.experiments``.

Writes are recorded with an author (``author`` query parameter, else the ``X-Author`` header, else "api"). An
invalid document gets ``422`` with ``errors: [{"path": "variants[1].config.colour", "reason": ...}]``; a request
the experiment's state forbids (overlap in a layer, ramping a stopped experiment, editing a running one) gets
``409`` naming the problem; an unknown experiment ``404``. Nothing is stored half-written. Paths starting with
``_`` are reserved (experiment ids cannot start with one): ``/v1/experiments/_power``,
``/v1/experiments/_guardrails``, ``/v1/experiments/_holdout/results``.
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any, Callable

import orjson
from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import JSONResponse, Response

from shelfwise.experiments.admin import Conflict, ExperimentInvalid, ExperimentService, NotFound


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _guard(fn: Callable[[], Any], status: int = 200) -> Response:
    try:
        return _JSON(fn(), status_code=status)
    except ExperimentInvalid as e:
        return _JSON({"detail": "invalid experiment request; nothing was saved", "errors": e.errors}, status_code=422)
    except NotFound as e:
        return _JSON({"detail": str(e)}, status_code=404)
    except Conflict as e:
        return _JSON({"detail": str(e)}, status_code=409)


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

    def who(author: str | None, x_author: str | None) -> str:
        return author or x_author or "api"

    def write(fn: Callable[[], Any], status: int = 200) -> Response:
        def go() -> Any:
            out = fn()
            changed()
            return out
        return _guard(go, status)

    @r.get("/v1/experiments")
    def list_experiments(status: str | None = None) -> Response:
        return _guard(lambda: {"experiments": service().list(status)})

    @r.post("/v1/experiments")
    def create(document: Annotated[Any, Body()], author: str | None = None, comment: str = "",
               start: bool = False, dry_run: bool = False,
               x_author: Annotated[str | None, Header()] = None) -> Response:
        """Create an experiment (a draft; running at once with ``start=true``; only validated with
        ``dry_run=true``)."""
        if dry_run:
            return _guard(lambda: service().validate(document))
        return write(lambda: service().create(document, who(author, x_author), comment, start=start), 201)

    @r.get("/v1/experiments/_power")
    def power(baseline: Annotated[float, Query(gt=0, description="control's conversion (or mean, metric=mean)")],
              mde: Annotated[float, Query(description="relative lift to detect, e.g. 0.05")],
              alpha: Annotated[float | None, Query(gt=0, lt=0.5)] = None,
              power: Annotated[float, Query(gt=0, lt=1)] = 0.8,
              units: Annotated[int | None, Query(ge=2, description="units per variant: also report the power")] = None,
              variants: Annotated[int, Query(ge=2)] = 2,
              variance_reduction: Annotated[float, Query(ge=0, lt=1)] = 0.0,
              metric: str = "proportion", sd: Annotated[float | None, Query(gt=0)] = None) -> Response:
        """Units per variant to detect a relative lift ``mde`` with the given power (and the power at ``units``)."""
        return _guard(lambda: service().power(baseline, mde, alpha, power, units, variants, variance_reduction,
                                              metric, sd))

    @r.post("/v1/experiments/_guardrails")
    def check_guardrails() -> Response:
        """Evaluate every running experiment's guardrails now; breached ones are stopped and serve control."""
        return write(lambda: {"checked": service().check_guardrails()})

    @r.get("/v1/experiments/{experiment_id}")
    def get(experiment_id: str) -> Response:
        return _guard(lambda: service().get(experiment_id))

    @r.put("/v1/experiments/{experiment_id}")
    def update(experiment_id: str, document: Annotated[Any, Body()], author: str | None = None, comment: str = "",
               x_author: Annotated[str | None, Header()] = None) -> Response:
        """Replace a draft's document (a running or stopped experiment cannot change: 409)."""
        return write(lambda: service().update(experiment_id, document, who(author, x_author), comment))

    @r.post("/v1/experiments/{experiment_id}/start")
    def start(experiment_id: str, author: str | None = None, comment: str = "",
              x_author: Annotated[str | None, Header()] = None) -> Response:
        return write(lambda: service().start(experiment_id, who(author, x_author), comment))

    @r.post("/v1/experiments/{experiment_id}/ramp")
    def ramp(experiment_id: str, traffic: Annotated[float, Query(description="new exposure share in (0, 1]")],
             author: str | None = None, comment: str = "",
             x_author: Annotated[str | None, Header()] = None) -> Response:
        """Raise the share of the experiment's slice that is exposed (10 % → 50 % → 100 %); never moves anybody."""
        return write(lambda: service().ramp(experiment_id, traffic, who(author, x_author), comment))

    @r.post("/v1/experiments/{experiment_id}/stop")
    def stop(experiment_id: str, reason: str = "", serve: str | None = None, author: str | None = None,
             x_author: Annotated[str | None, Header()] = None) -> Response:
        """Stop; ``serve=<variant>`` keeps serving that variant to the exposed shoppers (e.g. control, a winner)."""
        return write(lambda: service().stop(experiment_id, who(author, x_author), reason, serve))

    @r.post("/v1/experiments/{experiment_id}/serve")
    def serve(experiment_id: str, variant: str | None = None, author: str | None = None, comment: str = "",
              x_author: Annotated[str | None, Header()] = None) -> Response:
        """What a stopped experiment serves its shoppers (no variant: release them to the running setup)."""
        return write(lambda: service().serve(experiment_id, variant, who(author, x_author), comment))

    @r.get("/v1/experiments/{experiment_id}/results")
    def results(experiment_id: str, until: float | None = None,
                since: Annotated[float | None, Query(description="_holdout only: start of the window")] = None,
                bayes: bool = True) -> Response:
        """Per-variant metrics with intervals, CUPED, Bayesian readout, confidence sequences, SRM, guardrails."""
        return _guard(lambda: service().results(experiment_id, until=until, since=since, bayes=bayes))

    return r
