"""``GET /v1/email/{token}`` (public: the signed token is the credential, as the mail client opening the email has
no API key): an email's rails at open time, stock and price checked again (``campaigns.open``). Included by
``api/app.py``."""

from __future__ import annotations

from typing import Annotated, Any, Callable

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from shelfwise.api import models as m
from shelfwise.security.tokens import MAX_TOKEN_CHARS, TokenError


class EmailItem(BaseModel):
    item_id: str
    title: str
    price: float | None = Field(description="the price now")
    price_at_send: float | None = Field(description="the price when the email was sent (null for a replacement)")
    price_dropped: bool = Field(description="cheaper now than when sent")
    in_stock: bool = Field(description="always true: a sold-out item is replaced")
    replaces: str | None = Field(description="the item sent in this slot, when it could no longer be sold")


class EmailRailView(BaseModel):
    title: str
    placement: str
    items: list[EmailItem]


class EmailView(BaseModel):
    email: str = Field(description="the email's placement (campaign.emails)")
    campaign: str
    sent_at: str | None
    expires_at: str | None
    replaced: int = Field(description="slots whose item could no longer be sold and was replaced")
    rails: list[EmailRailView]


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        import orjson

        return orjson.dumps(content)


def build_router(engine: Callable[[], Any]) -> APIRouter:
    r = APIRouter(tags=["email"])

    def resolve(token: str) -> Response:
        from shelfwise.campaigns.open import open_email

        try:
            return _JSON(open_email(engine(), token))
        except TokenError as e:
            return _JSON({"detail": str(e), "errors": [{"field": "token", "reason": str(e)}]}, e.status)

    @r.get("/v1/email/{token}", response_model=EmailView, summary="An email's rails at open time (public: the "
           "signed token is the credential)",
           responses={400: {"model": m.ErrorBody, "description": "not an email token"},
                      403: {"model": m.ErrorBody, "description": "forged or altered token (signature mismatch)"},
                      410: {"model": m.ErrorBody, "description": "expired token"}})
    async def email(token: Annotated[str, Path(min_length=1, max_length=MAX_TOKEN_CHARS)]) -> Response:
        """The rails of the email the token was sent with: every item still sellable (in stock, available) at its
        current price (with its price at send), a sold-out one replaced by the rail's next eligible item."""
        return await run_in_threadpool(resolve, token)

    return r
