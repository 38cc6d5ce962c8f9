"""How a browser carries its API key to the console, and the console's CSRF protection.

* **Login**: ``POST /console/login`` takes a key (``shelfwise keys create --scope read|admin``), verifies it with the
  API's own ``KeyVerifier`` and stores it in the cookie ``shelfwise_console``: HttpOnly (no script reads it),
  SameSite=Strict (no other site's page sends it), path ``/console`` (no other route receives it), Secure when the
  console is reached over HTTPS, for ``MAX_AGE_S``. The security middleware reads that cookie for ``/console`` paths
  only, so keys, scopes, revocation and rate limits work exactly as for the API: a revoked key stops working within
  ``security.key_cache_s``.
* **Scopes**: ``read`` to look (every GET), ``admin`` to change (every POST; the pages show no buttons without it).
* **CSRF**: every form carries a token, an HMAC of the key that another site can neither read nor compute; before
  sign-in (and with authentication off) the HMAC of a random value in a second cookie (``shelfwise_console_csrf``,
  HttpOnly, SameSite=Strict: the double-submit pattern, valid across API processes). A POST without the right
  token is refused (403), and so is a POST whose ``Origin`` is another host.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request

from shelfwise.security.middleware import CONSOLE_COOKIE, cookie_value

MAX_AGE_S = 8 * 3600
CSRF_COOKIE = "shelfwise_console_csrf"  # the CSRF basis while no key is carried (sign-in; authentication off)


class Refused(Exception):
    """A console form that may not be carried out (403)."""


def token_of(request: Request) -> str | None:
    """The key this request carries: the Authorization header's, else the console cookie's."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return cookie_value(request.headers.get("cookie", "").encode("latin-1"), CONSOLE_COOKIE)


def _basis(request: Request) -> str | None:
    return token_of(request) or cookie_value(request.headers.get("cookie", "").encode("latin-1"), CSRF_COOKIE)


def csrf_token(request: Request) -> tuple[str, str | None]:
    """(the token a form of this page carries, a new CSRF cookie value to set when the visitor has none)."""
    basis = _basis(request)
    fresh = None
    if basis is None:
        basis = fresh = secrets.token_urlsafe(32)
    return hmac.new(basis.encode(), b"shelfwise-console-csrf", hashlib.sha256).hexdigest()[:40], fresh


def set_csrf_cookie(response: Any, request: Request, value: str) -> None:
    response.set_cookie(CSRF_COOKIE, value, max_age=MAX_AGE_S, path="/console", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def key_of(request: Request) -> Any:
    return getattr(request.state, "api_key", None)


def can_change(request: Request, auth_on: bool) -> bool:
    """Whether this visitor may change anything (the admin scope; everyone when authentication is off)."""
    key = key_of(request)
    return not auth_on or (key is not None and "admin" in key.scopes)


def author(request: Request) -> str:
    key = key_of(request)
    return f"console (key {key.name})" if key is not None else "console"


async def form(request: Request) -> dict[str, str]:
    """A POSTed form (``application/x-www-form-urlencoded``), checked for its CSRF token and origin."""
    raw = (await request.body()).decode("utf-8", errors="replace")
    fields = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            raise Refused(f"a console form must be sent from the console itself, not from {origin[:100]}")
    basis = _basis(request)
    want = hmac.new(basis.encode(), b"shelfwise-console-csrf", hashlib.sha256).hexdigest()[:40] if basis else None
    if want is None or not hmac.compare_digest(fields.get("csrf", ""), want):
        raise Refused("the form's security token is missing or stale: reload the page and try again")
    return fields


def set_login(response: Any, request: Request, token: str) -> None:
    response.set_cookie(CONSOLE_COOKIE, token, max_age=MAX_AGE_S, path="/console", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_login(response: Any, request: Request) -> None:
    response.delete_cookie(CONSOLE_COOKIE, path="/console", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
