"""HTTP API (FastAPI). Routes are thin: validation and shaping here, behaviour in ``Shelfwise``."""

from __future__ import annotations

import sys
import time
from contextlib import asynccontextmanager
from typing import Any, Annotated

from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
import orjson
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from shelfwise.api.batcher import MicroBatcher
from shelfwise.api.experiments import build_router as experiments_router, service_of as experiments_of
from shelfwise.api.rules import build_router as rules_router
from shelfwise.domain import Event, Item
from shelfwise.pipeline import RecRequest, new_request_id
from shelfwise.service import Shelfwise
from shelfwise.settings import Settings, load_settings


def _errors(exc: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(event)"
        item: dict[str, Any] = {"field": field, "reason": e["msg"]}
        if index is not None:
            item = {"index": index, **item}
        out.append(item)
    return out


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("shelfwise_events_total", "ingested events by outcome", ["outcome"],
                              registry=self.registry)
        self.latency = Histogram("shelfwise_recommendation_seconds", "recommendation latency", ["placement"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


class ORJSONResponse(JSONResponse):
    """JSON rendered by orjson (fast, and numpy-aware)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(settings: Settings | None = None, engine: Shelfwise | None = None) -> FastAPI:
    settings = settings or load_settings()
    state: dict[str, Any] = {}
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One request is a handful of small matrix-vector products: BLAS threads only add contention here
        # (measured: 0.06 ms with one thread vs ~12 ms with two on a loaded 2-core machine). Scale with
        # processes (`shelfwise serve --workers N`), not threads.
        app.state.blas_limit = threadpool_limits(limits=1)
        state["engine"] = engine or Shelfwise(settings)
        # concurrent recommendation requests share one pipeline call (api/batcher.py)
        state["batcher"] = MicroBatcher(state["engine"].recommend_many, settings.api.recommend_batch,
                                        settings.api.recommend_workers)
        if "torch" in sys.modules:  # the sequence model is loaded: same reasoning for torch's intra-op threads
            sys.modules["torch"].set_num_threads(1)
        yield
        state["batcher"].close()
        if engine is None:
            state["engine"].close()

    app = FastAPI(title="Shelfwise", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse)

    def sw() -> Shelfwise:
        return state["engine"]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()]
        return ORJSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        engine = state.get("engine")
        if engine is None:
            return ORJSONResponse({"status": "starting"}, status_code=503)
        return ORJSONResponse({"status": "ready", "model_version": engine.pipeline.version,
                               "trained": engine.trained})

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- events --------------------------------------------------------------------------------------
    @app.post("/v1/events", status_code=202)
    def post_events(payload: Annotated[Any, Body()]) -> Response:
        raw = payload if isinstance(payload, list) else [payload]
        limit = settings.api.max_batch
        if len(raw) > limit:
            return ORJSONResponse({"detail": f"batch of {len(raw)} events exceeds the limit of {limit}; "
                                             "nothing was stored",
                                   "errors": [{"field": "body", "reason": f"at most {limit} events per batch"}]},
                                  status_code=422)
        if not raw:
            return ORJSONResponse({"detail": "empty batch", "errors": [{"field": "body",
                                                                        "reason": "send at least one event"}]},
                                  status_code=422)
        valid: list[Event] = []
        errors: list[dict[str, Any]] = []
        for i, obj in enumerate(raw):
            try:
                valid.append(Event.model_validate(obj))
            except ValidationError as exc:
                errors.extend(_errors(exc, i))
        result = sw().ingest(valid) if valid else None
        stored = len(result.stored) if result else 0
        duplicates = result.duplicates if result else []
        metrics.events.labels("stored").inc(stored)
        metrics.events.labels("duplicate").inc(len(duplicates))
        metrics.events.labels("invalid").inc(len({e["index"] for e in errors}))
        body = {"stored": stored, "duplicates": len(duplicates), "duplicate_ids": duplicates,
                "unknown_items": result.unknown_items if result else [], "invalid": len({e["index"] for e in errors})}
        if errors:
            body["detail"] = (f"{body['invalid']} invalid event(s) rejected; the {stored} valid event(s) of the "
                              "batch were stored")
            body["errors"] = errors
            return ORJSONResponse(body, status_code=422)
        return ORJSONResponse(body, status_code=202)

    # ---- catalog -------------------------------------------------------------------------------------
    @app.put("/v1/items")
    def put_items(payload: Annotated[Any, Body()]) -> Response:
        raw = payload.get("items") if isinstance(payload, dict) and "items" in payload else payload
        raw = raw if isinstance(raw, list) else [raw]
        items: list[Item] = []
        errors: list[dict[str, Any]] = []
        for i, obj in enumerate(raw):
            try:
                items.append(Item.model_validate(obj))
            except ValidationError as exc:
                errors.extend(_errors(exc, i))
        if errors:
            return ORJSONResponse({"detail": "invalid items; nothing was changed", "errors": errors},
                                  status_code=422)
        return ORJSONResponse({"upserted": sw().upsert_items(items)})

    @app.get("/v1/items/{item_id}")
    def get_item(item_id: str) -> Response:
        item = sw().get_item(item_id)
        if item is None:
            raise HTTPException(404, f"no item {item_id!r}")
        return ORJSONResponse(item.model_dump(mode="json") | {"margin": item.margin})

    @app.delete("/v1/items/{item_id}")
    def delete_item(item_id: str) -> Response:
        if not sw().delete_item(item_id):
            raise HTTPException(404, f"no item {item_id!r}")
        return Response(status_code=204)

    @app.delete("/v1/shoppers/{shopper}")
    def forget_shopper(shopper: str) -> Response:
        return ORJSONResponse({"deleted_events": sw().forget_shopper(shopper)})

    # ---- recommendations -----------------------------------------------------------------------------
    @app.get("/v1/recommendations/{placement}")
    async def recommendations(
        placement: str,
        user_id: str | None = None,
        session_id: str | None = None,
        item_id: str | None = None,
        cart: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI query list
        k: Annotated[int | None, Query(ge=1)] = None,
        exclude: Annotated[list[str], Query()] = [],  # noqa: B006
        category: str | None = None,
        device: str | None = None,
        segment: Annotated[list[str], Query()] = [],  # noqa: B006
        explain: bool = False,
    ) -> Response:
        t0 = time.perf_counter()
        engine = sw()
        if placement not in engine.settings.models.placements:
            raise HTTPException(404, f"unknown placement {placement!r}; known: "
                                     f"{sorted(engine.settings.models.placements)}")
        k = k or settings.api.default_k
        if k > settings.api.max_k:
            return ORJSONResponse({"detail": "invalid request", "errors": [
                {"field": "k", "reason": f"at most {settings.api.max_k}"}]}, status_code=422)
        if placement in ("pdp_similar", "pdp_fbt") and not item_id:
            return ORJSONResponse({"detail": "invalid request", "errors": [
                {"field": "item_id", "reason": f"{placement} needs the product page's item_id"}]}, status_code=422)
        cart_ids = [c for part in cart for c in part.split(",") if c]
        excl = [c for part in exclude for c in part.split(",") if c]
        shopper = user_id if user_id is not None else (f"session:{session_id}" if session_id else None)
        segments = [c for part in segment for c in part.split(",") if c]
        req = RecRequest(placement=placement, shopper=shopper, item_id=item_id, cart=cart_ids, k=k, exclude=excl,
                         category=category, device=device, segments=segments, request_id=new_request_id(),
                         explain=explain)
        answer = await state["batcher"].submit(req)
        metrics.latency.labels(placement).observe(time.perf_counter() - t0)
        body = {
            "request_id": req.request_id,
            "placement": placement,
            "model_version": engine.pipeline.version,
            "fallback": answer.fallback,
            "items": [{"item_id": r.item_id, "score": round(r.score, 6), "sources": r.sources}
                      | ({"explanation": r.explanation} if explain else {}) for r in answer.items],
        }
        if explain:
            body["explanation"] = answer.explanation
        return ORJSONResponse(body)

    app.include_router(rules_router(sw))  # rule sets, shadow report, zero-impression report (api/rules.py)
    app.include_router(experiments_router(lambda: experiments_of(sw())))  # experiments (api/experiments.py)
    return app
