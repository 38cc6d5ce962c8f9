"""HTTP API (FastAPI). Routes are thin: validation and shaping here, behaviour in ``Shelfwise``.

Security (``security/middleware.py``) sits in front of every route: keys and scopes, CORS, body size, rate
limits. Request and response bodies are declared with the models of ``api/models.py``.
"""


import atexit
import hashlib
import logging
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field, ValidationError
from threadpoolctl import threadpool_limits

from shelfwise.api import models as m
from shelfwise.api.batcher import MicroBatcher
from shelfwise.api.email import build_router as email_router
from shelfwise.api.console import build_router as console_router
from shelfwise.api.experiments import build_router as experiments_router, service_of as experiments_of
from shelfwise.api.metrics import EngineCollector, Metrics, multiprocess_dir
from shelfwise.api.render import rendered, slots_json
from shelfwise.api.monitor import build_router as monitor_router
from shelfwise.api.registry import build_router as registry_router
from shelfwise.api.rules import build_router as rules_router
from shelfwise.api.telemetry import RequestTelemetry, Telemetry
from shelfwise.domain import ConsentUpdate, Event, Item, Preferences, PriceRange, Text, split_field
from shelfwise.monitor.drift import register as register_drift_gauges
from shelfwise.observability.context import current_request_id
from shelfwise.observability.logs import configure_logging
from shelfwise.observability.tracing import configure_tracing, shutdown_tracing
from shelfwise.request import RecRequest, new_request_id
from shelfwise.privacy.guard import ConsentRequired
from shelfwise.privacy.pseudonym import shopper_key
from shelfwise.rules.schema import RuleSet
from shelfwise.security.keys import KeyVerifier
from shelfwise.security.middleware import SecurityMiddleware, required_scope
from shelfwise.service import Shelfwise
from shelfwise.settings import Settings, load_settings
from shelfwise.stores import open_rate_limiter
from shelfwise.stores.breaker import Unavailable
from shelfwise.stores.bus import BusTimeout

log = logging.getLogger("shelfwise.api")

Id = Annotated[Text, Query(min_length=1, max_length=256)]
Ids = Annotated[list[Annotated[Text, Field(max_length=4096)]], Query(max_length=200)]
ItemId = Annotated[Text, Path(min_length=1, max_length=256)]
MAX_REMOVED = 1_000  # ids listed in a rerank answer's "removed"
DOC_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
              "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def _errors(exc: ValidationError, index: int | None = None, whole: str = "(event)") -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        reason = str(e["msg"]).removeprefix("Value error, ")
        field = ".".join(str(p) for p in e["loc"])
        if not field:  # a rule about the whole event/item names its field first
            named, reason = split_field(reason)
            field = named or whole
        item: dict[str, Any] = {"field": field, "reason": reason}
        if index is not None:
            item = {"index": index, **item}
        out.append(item)
    return out


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (fast, and numpy-aware)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error(status: int, detail: str, field: str | None = None, reason: str | None = None,
          **extra: Any) -> ORJSONResponse:
    body: dict[str, Any] = {**extra, "detail": detail}
    if field is not None:
        body["errors"] = [{"field": field, "reason": reason or detail}]
    return ORJSONResponse(body, status_code=status)


def _error_response(description: str) -> dict[str, Any]:
    return {"model": m.ErrorBody, "description": description}


COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error_response("the body could not be parsed"),
    401: _error_response("no key, or an unknown or revoked key (send `Authorization: Bearer <key>`)"),
    403: _error_response("the key lacks the route's scope, or a publishable key is used off its routes/origins"),
    413: _error_response("request body larger than security.max_body_bytes"),
    422: _error_response("invalid request: each problem names its field and reason"),
    429: {"model": m.ErrorBody, "description": "rate limit exceeded: retry after the Retry-After header's seconds",
          "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
    500: _error_response("internal error (a bug: nothing half-written is kept)"),
    503: _error_response("the event store is unavailable, or events queued but not yet committed (stores.ack = "
                         "commit): nothing was acknowledged, resending is safe (see Retry-After)"),
}


def create_app(settings: Settings | None = None, engine: Shelfwise | None = None) -> FastAPI:
    settings = settings or load_settings()
    state: dict[str, Any] = {}
    metrics = Metrics()  # api/metrics.py: what they are, and how several API processes add up
    telemetry = Telemetry(metrics)
    metrics.collector = EngineCollector(lambda: state.get("engine"))
    if multiprocess_dir() is None:
        metrics.registry.register(metrics.collector)
    sec = settings.security
    verifier = KeyVerifier(None, cache_s=sec.key_cache_s)  # type: ignore[arg-type]  # store set at start-up
    use_redis = sec.rate_limiter == "redis" or (sec.rate_limiter == "auto"
                                                and settings.stores.online.startswith(("redis://", "rediss://")))
    if sec.rate_limiter == "redis" and not use_redis:
        raise ValueError("security.rate_limiter = redis needs stores.online = redis://…")
    limiter = open_rate_limiter(settings.stores.online if use_redis else "memory://", sec.rate_limiter_max_entries,
                                sec.rate_limiter_lease)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One request is a handful of small matrix-vector products: BLAS threads only add contention here
        # (measured: 0.06 ms with one thread vs ~12 ms with two on a loaded 2-core machine). Scale with
        # processes (`shelfwise serve --workers N`), not threads.
        app.state.blas_limit = threadpool_limits(limits=1)
        state["engine"] = engine or Shelfwise(settings)
        state["engine"].watch_models()  # new model versions are loaded beside serving, then swapped in
        verifier.store = state["engine"].privacy_store
        # concurrent recommendation requests share one pipeline call (api/batcher.py)
        state["batcher"] = MicroBatcher(state["engine"].recommend_many, settings.api.recommend_batch,
                                        settings.api.batch_workers(settings.stores.online),
                                        scope=telemetry.batch_scope)
        state["engine"].observe_stages(telemetry.stage_observer)
        stop_sync = threading.Event()
        if multiprocess_dir() is not None:
            metrics.keep_synced(lambda: state.get("engine"), stop_sync)
        if "torch" in sys.modules:  # the sequence model is loaded: same reasoning for torch's intra-op threads
            sys.modules["torch"].set_num_threads(1)
        state["engine"].settle_heap()  # the loaded model out of the garbage collector's full passes
        if sec.auth == "off":
            log.warning("security.auth = off: every endpoint is open to anyone who reaches this port")
        elif not state["engine"].privacy_store.list_keys():
            log.warning("no API key exists yet: every /v1 request will get 401; create one with "
                        "`shelfwise keys create --scope read --scope ingest`")
        yield
        stop_sync.set()
        state["batcher"].close()
        if engine is None:
            state["engine"].close()
        else:
            engine.observe_stages(None)
        if multiprocess_dir() is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
        close = getattr(limiter, "close", None)
        if close is not None:
            close()

    app = FastAPI(title="Shelfwise", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse,
                  docs_url=None, redoc_url=None, responses=COMMON_RESPONSES,
                  description="Real-time personalization for online retail. Every /v1 route needs an API key "
                              "(`Authorization: Bearer <key>`) with the scope named in its description; see "
                              "SECURITY.md.")
    app.add_middleware(SecurityMiddleware, settings=sec, verifier=verifier, limiter=limiter,
                       limiter_blocks=use_redis)
    # outermost (added last): requests refused by the security layer get a request id, a count and a log line too
    app.add_middleware(RequestTelemetry, metrics=metrics, access_log=settings.observability.access_log,
                       router=app.router)
    app.state.verifier = verifier
    app.state.limiter = limiter

    def sw() -> Shelfwise:
        return state["engine"]

    # ---- errors ----------------------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]),
                   "reason": str(e["msg"]).removeprefix("Value error, ")} for e in exc.errors()]
        return ORJSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(m.BadBody)
    async def _bad_body(request: Request, exc: m.BadBody) -> JSONResponse:
        return error(422, f"invalid request body: {exc.reason}", "body", exc.reason)

    @app.exception_handler(BusTimeout)
    async def _bus_timeout(request: Request, exc: BusTimeout) -> JSONResponse:
        resp = error(503, f"{exc}", None, None)
        resp.headers["Retry-After"] = str(settings.resilience.retry_after_s)
        return resp

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        resp = error(503, str(exc), None, None)
        resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, m.short(request.url.path, 200), exc_info=exc)
        answer = error(500, f"internal error ({type(exc).__name__}); nothing half-written was kept")
        rid = current_request_id()  # answered outside the request middleware: it adds no header here
        if rid is not None:
            answer.headers["X-Request-ID"] = rid
        return answer

    # ---- health, metrics, docs -------------------------------------------------------------------------------
    @app.get("/healthz", response_model=m.Health, tags=["operations"])
    def healthz() -> Response:
        return ORJSONResponse({"status": "ok"})

    @app.get("/readyz", response_model=m.Ready, tags=["operations"],
             responses={503: {"model": m.Ready, "description": "still starting"}})
    def readyz() -> Response:
        eng = state.get("engine")
        if eng is None:
            return ORJSONResponse({"status": "starting"}, status_code=503)
        model = eng.pipeline.model
        training = eng.models.training()
        return ORJSONResponse({"status": "ready", "model_version": model.version, "trained": eng.trained,
                               "model": {"version": model.version, "sources": list(model.retrievers),
                                         "ranker": model.ranker is not None, "full": model.full,
                                         "trained_until": model.trained_until},
                               "content": eng.content_status(),
                               "degraded": eng.breakers.open(),
                               "training": training and {
                                   k: training.get(k) for k in ("state", "what", "started_at", "expected_s",
                                                                "finished_at", "version", "error")}})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}})
    def prometheus() -> Response:
        return Response(metrics.render(state.get("engine")), media_type=CONTENT_TYPE_LATEST)

    static = files("fastapi_offline") / "static"

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Shelfwise API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True})

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="Shelfwise API",
                              redoc_js_url="/docs/assets/redoc.standalone.js",
                              redoc_favicon_url="/docs/assets/favicon.png", with_google_fonts=False)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def doc_asset(name: str) -> Response:
        if name not in DOC_ASSETS:
            raise HTTPException(404, "no such asset")
        return FileResponse(str(static / name), media_type=DOC_ASSETS[name],
                            headers={"cache-control": "public, max-age=86400"})

    # ---- events ----------------------------------------------------------------------------------------------
    def events_body(status: int, detail: str, reason: str) -> ORJSONResponse:
        return ORJSONResponse({"stored": 0, "duplicates": 0, "duplicate_ids": [], "unknown_items": [], "invalid": 0,
                               "withheld": 0, "detail": detail, "errors": [{"field": "body", "reason": reason}]},
                              status_code=status)

    @app.post("/v1/events", status_code=202, response_model=m.EventsResult, tags=["events"],
              summary="Send one event or a batch (scope: ingest)",
              responses={422: {"model": m.EventsResult,
                               "description": "invalid events, each named by index, field and reason; the valid "
                                              "events of the batch were stored (see stored)"}},
              openapi_extra=m.json_body({"oneOf": [m.schema_ref("Event"), {
                  "type": "array", "items": m.schema_ref("Event"), "minItems": 1,
                  "maxItems": settings.api.max_batch}]}, "an event, or a batch of events"))
    async def post_events(request: Request) -> Response:
        try:
            payload = await m.read_json(request)
        except m.BadBody as e:
            return events_body(422, f"invalid request body: {e.reason}; nothing was stored", e.reason)
        raw = payload if isinstance(payload, list) else [payload]
        limit = settings.api.max_batch
        if len(raw) > limit:
            return events_body(422, f"batch of {len(raw)} events exceeds the limit of {limit}; nothing was stored",
                               f"at most {limit} events per batch")
        if not raw:
            return events_body(422, "empty batch", "send at least one event")
        valid: list[Event] = []
        where: list[int] = []
        errors: list[dict[str, Any]] = []
        for i, obj in enumerate(raw):
            try:
                valid.append(Event.model_validate(obj))
                where.append(i)
            except ValidationError as exc:
                errors.extend(_errors(exc, i))
        stored, duplicates, unknown, withheld = 0, [], [], 0
        types: dict[str, int] = {}
        if valid:
            results = await run_in_threadpool(ingest_isolating, valid, where, errors)
            type_of = {ev.event_id: ev.type for ev in valid}
            for r in results:
                stored += len(r.stored)
                for eid in r.stored:
                    kind = type_of.get(eid)
                    if kind is not None:
                        types[kind] = types.get(kind, 0) + 1
                duplicates += r.duplicates
                unknown += r.unknown_items
                withheld += len(r.withheld)
        invalid = len({e["index"] for e in errors})
        metrics.events.labels("stored").inc(stored)
        metrics.events.labels("duplicate").inc(len(duplicates))
        metrics.events.labels("invalid").inc(invalid)
        metrics.events.labels("withheld").inc(withheld)
        for kind, n in types.items():
            metrics.event_types.labels(kind).inc(n)
        body = {"stored": stored, "duplicates": len(duplicates), "duplicate_ids": duplicates,
                "unknown_items": sorted(set(unknown)), "invalid": invalid, "withheld": withheld}
        if errors:
            body["detail"] = (f"{invalid} invalid event(s) rejected; the {stored} valid event(s) of the batch were "
                              "stored")
            body["errors"] = sorted(errors, key=lambda e: e["index"])
            return ORJSONResponse(body, status_code=422)
        return ORJSONResponse(body, status_code=202)

    def ingest_isolating(valid: list[Event], where: list[int], errors: list[dict[str, Any]]) -> list:
        """Ingest a batch; if it fails as a whole, event by event, so one event the store cannot take never
        costs the others theirs (each failure is reported by index). Fails only when every event does."""
        try:
            return [sw().ingest(valid)]
        except Unavailable:  # the store is down: one by one would fail the same way (503, nothing stored)
            raise
        except Exception:
            if len(valid) == 1:
                raise
            log.exception("a batch of %d events failed; retrying them one by one", len(valid))
        results, failed = [], []
        for i, ev in zip(where, valid):
            try:
                results.append(sw().ingest([ev]))
            except Unavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - reported to the client by index
                failed.append({"index": i, "field": "(event)", "reason": f"could not be stored "
                                                                         f"({type(exc).__name__})"})
        if len(failed) == len(valid):
            raise RuntimeError("no event of the batch could be stored")
        errors.extend(failed)
        return results

    # ---- catalog ---------------------------------------------------------------------------------------------
    @app.put("/v1/items", response_model=m.ItemsUpserted, tags=["catalog"],
             summary="Upsert catalog items, all or nothing (scope: admin)",
             openapi_extra=m.json_body({"oneOf": [{"type": "array", "items": m.schema_ref("Item"), "minItems": 1},
                                                  m.schema_ref("ItemBatch"), m.schema_ref("Item")]},
                                       "items: a list, {\"items\": [...]}, or one item"))
    async def put_items(request: Request) -> Response:
        payload = await m.read_json(request)
        wrapped = isinstance(payload, dict) and "items" in payload
        extra = sorted(set(payload) - {"items"}) if wrapped else []
        if extra:
            return error(422, "invalid request body; nothing was changed", m.short(extra[0], 64),
                         'unknown key beside "items": send {"items": [...]}, a list of items, or one item')
        raw = payload["items"] if wrapped else payload
        raw = raw if isinstance(raw, list) else [raw]
        if not raw:
            return error(422, "empty batch; nothing was changed", "body", "send at least one item")
        if len(raw) > 10_000:
            return error(422, "too many items; nothing was changed", "body", "at most 10000 items per request")
        items: list[Item] = []
        errors: list[dict[str, Any]] = []
        for i, obj in enumerate(raw):
            try:
                items.append(Item.model_validate(obj))
            except ValidationError as exc:
                errors.extend(_errors(exc, i, "(item)"))
        if errors:
            return ORJSONResponse({"detail": "invalid items; nothing was changed", "errors": errors},
                                  status_code=422)
        return ORJSONResponse({"upserted": await run_in_threadpool(sw().upsert_items, items)})

    @app.get("/v1/items/{item_id:path}", response_model=m.ItemView, tags=["catalog"],
             summary="Read an item (scope: admin)", responses={404: _error_response("no such item")})
    def get_item(item_id: ItemId) -> Response:
        item = sw().get_item(item_id)
        if item is None:
            raise HTTPException(404, f"no item {m.short(item_id)!r}")
        return ORJSONResponse(item.model_dump(mode="json") | {"margin": item.margin})

    @app.delete("/v1/items/{item_id:path}", status_code=204, tags=["catalog"], response_class=Response,
                summary="Remove an item from the catalog and every rail (scope: admin)",
                responses={204: {"description": "removed"}, 404: _error_response("no such item")})
    def delete_item(item_id: ItemId) -> Response:
        if not sw().delete_item(item_id):
            raise HTTPException(404, f"no item {m.short(item_id)!r}")
        return Response(status_code=204)

    # ---- privacy ---------------------------------------------------------------------------------------------
    def one_shopper(user_id: str | None, session_id: str | None) -> str:
        if (user_id is None) == (session_id is None):
            raise RequestValidationError([{"loc": ("query", "user_id"), "msg": "give exactly one of user_id and "
                                                                               "session_id", "type": "value_error"}])
        return shopper_key(user_id, session_id)  # type: ignore[return-value]

    # preferences first: their paths would otherwise match the erasure by path below
    Shopper = Annotated[Text, Path(min_length=1, max_length=264, description="a user id, or session:<id>")]

    def preferences_view(record) -> ORJSONResponse:
        return ORJSONResponse({"preferences": record.preferences.model_dump(mode="json"),
                               "updated_at": record.updated_at})

    @app.put("/v1/shoppers/{shopper:path}/preferences", response_model=m.PreferencesView, tags=["preferences"],
             summary="Store a shopper's explicit preferences, replacing what was stored (scope: ingest)",
             responses={409: _error_response("the shopper has not granted personalisation consent: nothing was "
                                             "stored"),
                        404: _error_response("the path names no shopper (an id with a line break cannot travel in "
                                             "a path)")},
             openapi_extra=m.json_body(m.schema_ref("Preferences"), "categories, brands, sizes, price range and "
                                                                   "style tags (each optional)"))
    async def put_preferences(shopper: Shopper, request: Request) -> Response:
        """The onboarding "style quiz": boosts the shopper's categories, brands and style tags above older implicit
        evidence, and keeps items of other sizes or outside the price range out of their rails
        (``preferences.hard``). Personal data: needs personalisation consent; erased with the shopper."""
        payload = await m.read_json(request)
        try:
            prefs = Preferences.model_validate(payload)
        except ValidationError as exc:
            return ORJSONResponse({"detail": "invalid preferences; nothing was stored",
                                   "errors": _errors(exc, whole="body")}, status_code=422)
        try:
            record = await run_in_threadpool(sw().set_preferences, shopper, prefs)
        except ConsentRequired:
            return error(409, "the shopper has not granted personalisation consent; nothing was stored",
                         "personalisation", "no personalisation consent (record it with PUT /v1/consent)")
        return preferences_view(record)

    @app.get("/v1/shoppers/{shopper:path}/preferences", response_model=m.PreferencesView, tags=["preferences"],
             summary="A shopper's explicit preferences (scope: ingest)",
             responses={404: _error_response("no preferences stored for this shopper")})
    def get_preferences(shopper: Shopper) -> Response:
        record = sw().preferences(shopper)
        if record is None:
            return error(404, f"no preferences stored for {m.short(shopper)!r}", "shopper", "no preferences")
        return preferences_view(record)

    @app.delete("/v1/shoppers/{shopper:path}/preferences", status_code=204, response_class=Response,
                tags=["preferences"], summary="Remove a shopper's explicit preferences (scope: ingest)",
                responses={204: {"description": "removed"},
                           404: _error_response("no preferences stored for this shopper")})
    def delete_preferences(shopper: Shopper) -> Response:
        if not sw().delete_preferences(shopper):
            return error(404, f"no preferences stored for {m.short(shopper)!r}", "shopper", "no preferences")
        return Response(status_code=204)

    @app.delete("/v1/shoppers", response_model=m.ErasureReceipt, tags=["privacy"],
                summary="Erase a shopper everywhere; returns the deletion receipt (scope: admin)")
    def erase_shopper(user_id: Id | None = None, session_id: Id | None = None) -> Response:
        """Erase by ``user_id`` or ``session_id`` (either may contain any character, ``/`` included). Idempotent:
        erasing again returns a new receipt with nothing removed."""
        shopper = one_shopper(user_id, session_id)
        return ORJSONResponse(sw().forget_shopper(shopper, "user" if user_id is not None else "session"))

    @app.delete("/v1/shoppers/{shopper:path}", response_model=m.ErasureReceipt, tags=["privacy"],
                summary="Erase a shopper by path (a user id, or session:<id>) (scope: admin)")
    def erase_shopper_path(shopper: Annotated[Text, Path(min_length=1, max_length=264)]) -> Response:
        return ORJSONResponse(sw().forget_shopper(shopper))

    @app.get("/v1/erasures/{receipt_id}", response_model=m.ErasureReceipt, tags=["privacy"],
             summary="A deletion receipt, again (scope: admin)", responses={404: _error_response("no such receipt")})
    def get_receipt(receipt_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]) -> Response:
        receipt = sw().erasure_receipt(receipt_id)
        if receipt is None:
            raise HTTPException(404, f"no erasure receipt {receipt_id}")
        return ORJSONResponse(receipt)

    @app.get("/v1/consent", response_model=m.ConsentView, tags=["privacy"],
             summary="A shopper's consent by purpose (scope: ingest)")
    def get_consent(user_id: Id | None = None, session_id: Id | None = None) -> Response:
        return ORJSONResponse(sw().consent(one_shopper(user_id, session_id)))

    @app.put("/v1/consent", response_model=m.ConsentView, tags=["privacy"],
             summary="Record a shopper's consent decision (scope: ingest)")
    def put_consent(update: ConsentUpdate, user_id: Id | None = None, session_id: Id | None = None) -> Response:
        """Purposes left out keep their value. Withdrawing personalisation erases the shopper's data
        (``privacy.erase_on_withdrawal``); "pending" for a shopper without a record stores nothing."""
        return ORJSONResponse(sw().set_consent(one_shopper(user_id, session_id), update))

    @app.get("/v1/reports/anonymous-counts", response_model=m.AnonymousCounts, tags=["privacy"],
             summary="Per-item daily counts of events of shoppers without consent (scope: admin)")
    def anonymous_counts(days: Annotated[int, Query(ge=1, le=3660)] = 30) -> Response:
        return ORJSONResponse({"days": days, "counts": sw().guard.anonymous_counts(days)})

    # ---- recommendations -------------------------------------------------------------------------------------
    def unknown_placement(engine: Shelfwise, placement: str) -> Response:
        known = sorted(engine.settings.models.placements)
        return error(404, f"unknown placement {m.short(placement, 64)!r}; known: {', '.join(known)}", "placement",
                     "no such placement (models.placements)", known=known)

    def answer_body(req: RecRequest, answer: Any) -> dict[str, Any]:
        items = slots_json(answer, req.explain)  # made once per answer (api/render.py)
        body = {
            "request_id": req.request_id,
            "placement": req.placement,
            "model_version": answer.model_version,
            "rulesets": answer.rulesets,
            "experiments": answer.experiments,
            "fallback": rendered(answer).fallback,
            "degraded": answer.degraded,
            "items": items,
        }
        if req.filters and not answer.items:
            body["detail"] = "no servable item matches the filters"
        if req.explain:
            body["explanation"] = answer.explanation
        return body

    @app.get("/v1/recommendations/{placement}", response_model=m.RecommendationAnswer, tags=["recommendations"],
             summary="A rail (scope: read)", responses={
                 404: _error_response("unknown placement; or a product page's item_id, or every item of a "
                                      "cart_upsell's cart, unknown to the catalog and the model (the error names "
                                      "the field; api.unknown_item = fallback answers best sellers instead)"),
                 304: {"description": "not personal and unchanged: the If-None-Match ETag is still current"}},
             openapi_extra={"parameters": [*m.RailQuery.openapi_parameters(settings.api.max_k), {
                 "name": "if-none-match", "in": "header", "required": False,
                 "schema": {"anyOf": [{"type": "string", "maxLength": 1024}, {"type": "null"}]}}]})
    async def recommendations(
        request: Request,
        placement: Annotated[str, Path(max_length=64, json_schema_extra={
            "enum": sorted(n for n, p in settings.models.placements.items() if p.kind != "rerank")})],
    ) -> Response:
        t0 = time.perf_counter()
        q = m.RailQuery.from_query(request.query_params, settings.api.max_k)  # one validation (the hot route)
        if_none_match = request.headers.get("if-none-match", "")
        if len(if_none_match) > 1024:
            return error(422, "invalid request", "header.if-none-match", "at most 1024 characters")
        engine = sw()
        conf = engine.settings.models.placements.get(placement)
        if conf is None:
            return unknown_placement(engine, placement)
        if conf.kind == "rerank":
            return error(422, "invalid request", "placement", f"{m.short(placement, 64)} re-ranks the shop's own "
                                                              "list: POST /v1/rerank")
        k = q.k or conf.k or settings.api.default_k
        item_id = q.item_id
        if conf.kind == "item" and not item_id:
            return error(422, "invalid request", "item_id", f"{placement} needs the product page's item_id")
        cart_ids = [c for part in q.cart for c in part.split(",") if c]
        excl = [c for part in q.exclude for c in part.split(",") if c]
        segments = [c for part in q.segment for c in part.split(",") if c]
        for name, values in (("cart", cart_ids), ("exclude", excl), ("segment", segments)):
            if len(values) > 200 or any(len(v) > 256 for v in values):
                return error(422, "invalid request", name, "at most 200 ids of at most 256 characters")
        filters = None
        if q.categories or q.brand or q.price_min is not None or q.price_max is not None or q.attr or q.in_stock or \
                q.min_stock is not None or q.new_days is not None:
            attributes: dict[str, list[str]] = {}
            for a in q.attr:
                name, sep, value = a.partition(":")
                if not sep or not name.strip() or not value.strip():
                    return error(422, "invalid request", "attr", f"{m.short(a)!r} is not name:value")
                attributes.setdefault(name.strip(), []).append(value.strip())
            try:
                price = PriceRange(min=q.price_min, max=q.price_max) \
                    if q.price_min is not None or q.price_max is not None else None
                filters = m.CatalogFilters(categories=q.categories, brands=q.brand, price=price, attributes=attributes,
                                           in_stock=q.in_stock, min_stock=q.min_stock,
                                           new_days=q.new_days).filters()
            except ValidationError as exc:
                field = "price_min" if exc.title == "PriceRange" else "attr"
                return error(422, "invalid request", field, _errors(exc)[0]["reason"])
        user_id, session_id, explain = q.user_id, q.session_id, q.explain
        category, device = q.category, q.device
        req = RecRequest(placement=placement, shopper=shopper_key(user_id, session_id), item_id=item_id,
                         cart=cart_ids, k=k, exclude=excl, category=category, device=device, segments=segments,
                         request_id=current_request_id() or new_request_id(), explain=explain, filters=filters)
        anchor = "known"
        if not engine.anchors_known(req):  # a product page or cart the model does not know (reads the catalog)
            unknown = await run_in_threadpool(engine.unknown_anchor, req)
            if unknown is not None and settings.api.unknown_item == "404":
                reason = (f"no item {m.short(item_id or '')!r} in the catalog" if unknown == "item_id" else
                          f"none of the {len(cart_ids)} cart item(s) is in the catalog, e.g. {m.short(cart_ids[0])!r}")
                return error(404, f"unknown {unknown}: {reason}", unknown, reason)
            anchor = "unknown_item" if unknown is not None else "new_item"
        personal = req.shopper is not None
        answer = await state["batcher"].submit(req)
        metrics.latency.labels(placement).observe(time.perf_counter() - t0)
        metrics.served(req, answer, anchor, req.shopper in engine.pipeline.shopper_index,
                       rendered(answer))
        body = answer_body(req, answer)
        items = body["items"]
        if personal:  # never kept by a shared cache
            return ORJSONResponse(body, headers={"Cache-Control": "private, no-store"})
        # not personal (a product page or cart without a shopper): an edge cache or CDN may keep it; the ETag is
        # the answer's content, the same on every replica serving the same model, rule sets and catalog (unless an
        # exploration slot drew a new item: each replica draws its own)
        tag = '"' + hashlib.blake2b(orjson.dumps([answer.model_version, answer.rulesets, body["fallback"], items]),
                                    digest_size=12).hexdigest() + '"'
        headers = {"ETag": tag, "Cache-Control": f"public, max-age={settings.api.edge_ttl_s}"}
        if tag in [t.strip() for t in if_none_match.split(",")]:
            return Response(status_code=304, headers=headers)
        return ORJSONResponse(body, headers=headers)

    @app.post("/v1/rerank", response_model=m.RerankAnswer, tags=["recommendations"],
              summary="Re-rank the shop's own list for a shopper (scope: read)",
              responses={404: _error_response("unknown placement (the error lists the known ones)")},
              openapi_extra=m.json_body(m.schema_ref("RerankRequest"), "the shop's list (best first), the shopper, "
                                                                      "an optional query, filters and impact"))
    async def rerank(request: Request) -> Response:
        """The shop's list — its search engine's results, a category page — re-ranked for the shopper by the same
        sources, learned ranker, rules and diversity as the rails, keeping only the list's items. Items the model
        has no evidence about are scored from their content; ids unknown to the catalog are listed in
        ``unknown_items``, known items left out (out of stock, filtered, dropped by a rule) in ``removed``."""
        t0 = time.perf_counter()
        payload = await m.read_json(request)
        try:
            body = m.RerankRequest.from_payload(payload)
        except ValidationError as exc:
            return ORJSONResponse({"detail": "invalid rerank request", "errors": _errors(exc, whole="body")},
                                  status_code=422)
        engine = sw()
        conf = engine.settings.models.placements.get(body.placement)
        if conf is None:
            return unknown_placement(engine, body.placement)
        if conf.kind != "rerank":
            reranks = sorted(n for n, p in engine.settings.models.placements.items() if p.kind == "rerank")
            return error(422, "invalid request", "placement", f"{m.short(body.placement, 64)} is a rail of kind "
                                                              f"{conf.kind}, not a rerank placement ({reranks})")
        unknown = engine.unknown_ids(body.items)
        req = RecRequest(placement=body.placement, shopper=shopper_key(body.user_id, body.session_id),
                         k=body.k or conf.k or len(body.items), exclude=body.exclude, device=body.device,
                         segments=body.segments, request_id=current_request_id() or new_request_id(),
                         explain=body.explain, filters=body.filters.filters() if body.filters else None,
                         given=body.items, query=body.query, impact=conf.impact if body.personalization_impact is None
                         else body.personalization_impact)
        answer = await state["batcher"].submit(req)
        metrics.latency.labels(body.placement).observe(time.perf_counter() - t0)
        metrics.served(req, answer, "known", req.shopper in engine.pipeline.shopper_index,
                       rendered(answer))
        out = answer_body(req, answer)
        shown = rendered(answer).shown
        skip = set(unknown)
        out["unknown_items"] = unknown
        out["removed"] = [x for x in body.items if x not in shown and x not in skip][:MAX_REMOVED] \
            if req.k >= len(body.items) else []
        return ORJSONResponse(out, headers={"Cache-Control": "private, no-store"})

    app.include_router(rules_router(sw))  # rule sets, shadow report, zero-impression report (api/rules.py)
    app.include_router(experiments_router(lambda: experiments_of(sw()), changed=lambda: sw().experiments.reload()))
    app.include_router(monitor_router(sw))  # drift report (api/monitor.py)
    app.include_router(registry_router(lambda: sw().releases))  # model registry and releases (api/registry.py)
    app.include_router(email_router(sw))  # email campaigns at open time (api/email.py)
    app.include_router(console_router(sw, settings, verifier, limiter))  # the merchandiser's console (api/console/)
    register_drift_gauges(metrics.registry)  # the drift gauges on /metrics too (monitor/drift.py)

    # ---- the OpenAPI document: the body models, the bearer scheme and each route's scope ---------------------
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = doc.setdefault("components", {})
        schemas = comps.setdefault("schemas", {})
        from pydantic.json_schema import models_json_schema

        _, defs = models_json_schema([(Event, "validation"), (Item, "validation"), (m.ItemBatch, "validation"),
                                      (RuleSet, "validation"), (Preferences, "validation"),
                                      (m.RerankRequest, "validation")],
                                     ref_template="#/components/schemas/{model}")
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        comps["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                               "description": "an API key from `shelfwise keys create`"}}
        for path, ops in doc.get("paths", {}).items():
            for method, op in ops.items():
                scope = required_scope(method.upper(), path, sec.public_metrics)
                if scope is None or sec.auth == "off":
                    op["security"] = []
                    for status in ("401", "403"):
                        if not (status == "403" and path.startswith("/v1/email/")):  # its own: a forged token
                            op.get("responses", {}).pop(status, None)
                else:
                    op["security"] = [{"bearer": []}]
                    op["description"] = (op.get("description", "") + f"\n\nScope: `{scope}`.").strip()
                if scope is None:
                    op.get("responses", {}).pop("429", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve_app(settings: Settings | None = None) -> FastAPI:
    """The app as ``shelfwise serve`` runs it (each API process calls this): logs and traces configured from the
    settings (``observability``), then ``create_app``."""
    settings = settings or load_settings()
    configure_logging(settings.observability)
    if configure_tracing(settings.observability):
        atexit.register(shutdown_tracing)  # export the spans still queued
    return create_app(settings)
