"""One ASGI middleware in front of every route: CORS, body size, authentication + scope, rate limits.

Which scope a route needs is decided here, from its method and path (``required_scope``): ``ingest`` for
``POST /v1/events``, ``/v1/consent`` and ``/v1/shoppers/{id}/preferences``, ``read`` for
``GET /v1/recommendations/…`` (and ``/v1/rerank``), ``admin`` for everything else under ``/v1`` (a route added
later is admin-only until listed here). The health checks and the API documentation are public; ``/metrics`` is
admin unless ``security.public_metrics``. The merchandiser's console (``/console``, ``api/console/``) needs
``read`` to look (GET) and ``admin`` to change anything (every other method); its login page, logout and assets
are public. A browser carries its key in the console's cookie (HttpOnly, SameSite=Strict, path ``/console``),
read here for ``/console`` paths only; a console page refused for want of a key redirects to the login page.

Order: a CORS preflight is answered at once (browsers send no credentials with it); a body announced larger
than ``max_body_bytes`` gets 413 before it is read (a chunked body is counted as it streams); then the key is
checked (401 without a valid key, 403 with the wrong scope, origin or kind); then one rate-limit call takes a
request from the client address's bucket and the key's (429 with ``Retry-After``). The key record is left in
``request.state.api_key`` for the routes (the rule audit log records its name).
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import anyio
import orjson

from shelfwise.security.keys import KeyVerifier
from shelfwise.settings import SecuritySettings
from shelfwise.stores.breaker import Unavailable
from shelfwise.stores.protocols import ApiKey, RateLimiter

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
PUBLIC_PREFIXES = ("/docs/assets/", "/console/static/", "/v1/email/")  # an email's signed token is its own credential
CONSOLE_PUBLIC = frozenset({"/console/login", "/console/logout"})
CONSOLE_COOKIE = "shelfwise_console"
ALLOWED_REQUEST_HEADERS = ("authorization", "content-type", "x-author", "x-request-id")


def required_scope(method: str, path: str, public_metrics: bool = False) -> str | None:
    """The scope a request needs; None for public routes."""
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    if path == "/metrics":
        return None if public_metrics else "admin"
    if path == "/console" or path.startswith("/console/"):
        if path in CONSOLE_PUBLIC:
            return None
        return "read" if method in ("GET", "HEAD") else "admin"
    if path == "/v1/events" or path == "/v1/consent" or (path.startswith("/v1/shoppers/")
                                                         and path.endswith("/preferences")):
        return "ingest"
    if path.startswith("/v1/recommendations/") or path == "/v1/rerank" or path.startswith("/v1/rerank/"):
        return "read"
    return "admin"


def publishable_route(method: str, path: str) -> bool:
    """What a browser's publishable key may do: post events and read rails."""
    return (method == "POST" and path == "/v1/events") or (method in ("GET", "HEAD")
                                                          and path.startswith("/v1/recommendations/"))


def console_path(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


def cookie_value(header: bytes | None, name: str) -> str | None:
    """One cookie's value from a Cookie header (None when absent)."""
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v.strip('"')
    return None


class _TooLarge(Exception):
    pass


def _json(status: int, detail: str, field: str | None = None, headers: list[tuple[bytes, bytes]] = ()) -> tuple:
    body: dict[str, Any] = {"detail": detail}
    if field is not None:
        body["errors"] = [{"field": field, "reason": detail}]
    raw = orjson.dumps(body)
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                    *headers], raw


def _to_login(path: str, status: int) -> tuple:
    """A console page asked for without a usable key: to the login page (303), saying why."""
    from urllib.parse import quote

    why = "scope" if status == 403 else "key"
    where = f"/console/login?next={quote(path[:200], safe='/')}&why={why}".encode("latin-1")
    return 303, [(b"location", where), (b"content-length", b"0"), (b"cache-control", b"no-store")], b""


class SecurityMiddleware:
    def __init__(self, app, settings: SecuritySettings, verifier: KeyVerifier | None, limiter: RateLimiter | None,
                 limiter_blocks: bool = False) -> None:
        self.app = app
        self.settings = settings
        self.verifier = verifier
        self.limiter = limiter
        self.limiter_blocks = limiter_blocks  # a network round trip: run it off the event loop
        self.limiter_async = getattr(limiter, "acquire_async", None)  # or, better, an asyncio client
        self.auth = settings.auth == "required"
        self.max_body = settings.max_body_bytes
        self.cors_any = "*" in settings.cors_origins
        self.cors = frozenset(o.rstrip("/").lower() for o in settings.cors_origins if o != "*")

    # ---- helpers -------------------------------------------------------------------------------------------
    def origin_allowed(self, origin: str, method: str, path: str) -> bool:
        o = origin.lower()
        if self.cors_any or o in self.cors:
            return True
        return (self.verifier is not None and publishable_route(method, path)
                and o in self.verifier.publishable_origins())

    def client_address(self, scope: dict, forwarded: bytes | None) -> str:
        peer = (scope.get("client") or ("unknown", 0))[0]
        hops = self.settings.trusted_proxies
        if hops and forwarded:
            chain = [p.strip() for p in forwarded.decode("latin-1").split(",") if p.strip()]
            if chain:
                candidate = chain[max(0, len(chain) - hops)]
                try:
                    return str(ipaddress.ip_address(candidate))
                except ValueError:
                    return peer
        return peer

    @staticmethod
    async def _send(send, response: tuple, extra: list[tuple[bytes, bytes]] = ()) -> None:
        status, headers, body = response
        await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra]})
        await send({"type": "http.response.body", "body": body})

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"Retry-After")]

    # ---- the request ---------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        auth = origin = length = preflight = forwarded = cookie = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"cookie":
                cookie = value
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"access-control-request-method":
                preflight = value.decode("latin-1").upper()
            elif name == b"x-forwarded-for":
                forwarded = value
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None:
            if method == "OPTIONS" and preflight is not None:
                await self._preflight(scope, origin, preflight, path, send)
                return
            if self.origin_allowed(origin, method, path):
                cors = self._cors_headers(origin)
        if length is not None:
            if not length.isdigit():
                await self._send(send, _json(400, "Content-Length must be a number", "Content-Length"), cors)
                return
            if int(length) > self.max_body:
                await self._send(send, _json(413, f"request body of {int(length)} bytes exceeds the limit of "
                                                  f"{self.max_body} bytes", "body"), cors)
                return
        needed = required_scope(method, path, self.settings.public_metrics)
        if needed is None:
            await self._call(scope, receive, send, cors)
            return
        key: ApiKey | None = None
        client = self.client_address(scope, forwarded)
        console = console_path(path)
        if console and auth is None:  # the console's browser carries its key in a cookie
            token = cookie_value(cookie, CONSOLE_COOKIE)
            auth = f"Bearer {token}".encode("latin-1") if token else None
        if self.auth:
            refusal, key = await self._authenticate(auth, origin, method, path, needed)
            if refusal is not None:  # failed attempts count against the client address (key guessing)
                if not await self._limit(send, [("c:" + client, self.settings.rate_per_client,
                                                 self.settings.burst_per_client)], cors):
                    if console and method in ("GET", "HEAD") and refusal[0] in (401, 403):
                        refusal = _to_login(path, refusal[0])
                    await self._send(send, refusal, cors)
                return
        buckets = [("c:" + client, self.settings.rate_per_client, self.settings.burst_per_client)]
        if key is not None:
            buckets.append(("k:" + key.key_id, key.rate if key.rate is not None else self.settings.rate_per_key,
                            self.settings.burst_per_key))
        if await self._limit(send, buckets, cors):
            return
        scope.setdefault("state", {})["api_key"] = key
        await self._call(scope, receive, send, cors)

    async def _limit(self, send, buckets, cors) -> bool:
        """True when refused (the 429 is sent)."""
        if self.limiter is None:
            return False
        if self.limiter_async is not None:
            wait = await self.limiter_async(buckets)
        elif self.limiter_blocks:
            wait = await anyio.to_thread.run_sync(self.limiter.acquire, buckets)
        else:
            wait = self.limiter.acquire(buckets)
        if wait <= 0:
            return False
        retry = max(1, math.ceil(wait))
        await self._send(send, _json(429, f"rate limit exceeded: retry after {retry} s", None,
                                     [(b"retry-after", str(retry).encode())]), cors)
        return True

    async def _authenticate(self, auth: bytes | None, origin: str | None, method: str, path: str,
                            needed: str) -> tuple[tuple | None, ApiKey | None]:
        challenge = [(b"www-authenticate", b'Bearer realm="shelfwise"')]
        if auth is None:
            return _json(401, "missing API key: send the header `Authorization: Bearer <key>` (keys are made with "
                              "`shelfwise keys create`)", "Authorization", challenge), None
        scheme, _, token = auth.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _json(401, "malformed Authorization header: expected `Bearer <key>`", "Authorization",
                         challenge), None
        hit, key = self.verifier.cached(token)
        if not hit:
            try:
                key = await anyio.to_thread.run_sync(self.verifier.verify, token)
            except Unavailable as exc:
                return _json(503, str(exc), None, [(b"retry-after", b"5")]), None
        if key is None:
            return _json(401, "unknown or revoked API key", "Authorization",
                         [(b"www-authenticate", b'Bearer realm="shelfwise", error="invalid_token"')]), None
        if key.kind == "publishable":
            if not publishable_route(method, path):
                return _json(403, f"a publishable key may only post events and read recommendations, not "
                                  f"{method} {path[:100]}", "Authorization"), key
            if origin is None or origin.lower() not in key.origins:
                shown = "no Origin header" if origin is None else f"origin {origin[:100]!r}"
                return _json(403, f"this publishable key is not allowed from {shown} (allowed: "
                                  f"{', '.join(key.origins)})", "Origin"), key
        if needed not in key.scopes:
            return _json(403, f"the key {key.name!r} has the scope(s) {', '.join(key.scopes)}; {method} "
                              f"{path[:100]} needs the {needed!r} scope", "Authorization"), key
        return None, key

    async def _preflight(self, scope, origin: str, method: str, path: str, send) -> None:
        if not self.origin_allowed(origin, method, path):
            await self._send(send, _json(403, f"CORS: origin {origin[:100]!r} may not call {method} {path[:100]}",
                                         "Origin"))
            return
        requested = ""
        for name, value in scope["headers"]:
            if name == b"access-control-request-headers":
                requested = value.decode("latin-1").lower()
        asked = [h.strip() for h in requested.split(",") if h.strip()]
        allowed = ", ".join(dict.fromkeys([*ALLOWED_REQUEST_HEADERS, *(h for h in asked if h in
                                                                         ALLOWED_REQUEST_HEADERS)]))
        headers = [*self._cors_headers(origin), (b"access-control-allow-methods", method.encode("latin-1")),
                   (b"access-control-allow-headers", allowed.encode()),
                   (b"access-control-max-age", str(self.settings.cors_max_age_s).encode()),
                   (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _call(self, scope, receive, send, cors: list[tuple[bytes, bytes]]) -> None:
        started = False
        seen = 0
        limit = self.max_body

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors:
                    message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_headers)
        except _TooLarge:
            if not started:
                await self._send(send, _json(413, f"request body exceeds the limit of {limit} bytes", "body"), cors)
