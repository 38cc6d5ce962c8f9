"""Signed, expiring tokens (the email links of ``campaigns/``): ``base64url(JSON payload) . base64url(HMAC-SHA256)``.

The payload is signed, not encrypted: it carries no secret (item ids, prices at send, the shopper's stored id —
pseudonymised when ``privacy.pseudonymize`` is on). A token whose signature does not match (forged or altered) is
``Forged``; one past its ``exp`` is ``Expired``; one that is not a token at all is ``Malformed``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import Any

import orjson

MAX_TOKEN_CHARS = 8_000


class TokenError(ValueError):
    status = 400


class Malformed(TokenError):
    status = 400


class Forged(TokenError):
    status = 403


class Expired(TokenError):
    status = 410


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(secret: str, secret_file: Path) -> bytes:
    """The signing key: ``secret`` when given, else the file's content (created with 32 random bytes, mode 0600,
    when it does not exist yet; concurrent first users agree on one key)."""
    if secret:
        return secret.encode("utf-8")
    try:
        raw = secret_file.read_bytes().strip()
    except FileNotFoundError:
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: use theirs
            return load_secret(secret, secret_file)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode("ascii"))
        raw = secret_file.read_bytes().strip()
    if len(raw) < 32:
        raise ValueError(f"the token secret in {secret_file} is shorter than 32 characters")
    return raw


def sign(payload: dict[str, Any], key: bytes, ttl_s: float, now: float | None = None) -> str:
    """A token of ``payload`` (a JSON object) valid for ``ttl_s`` seconds; ``iat`` and ``exp`` are added."""
    now = time.time() if now is None else now
    body = _b64(orjson.dumps({**payload, "iat": int(now), "exp": int(now + ttl_s)}))
    mac = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(token: str, key: bytes, now: float | None = None) -> dict[str, Any]:
    """The payload of a genuine, unexpired token; raises ``Malformed``, ``Forged`` or ``Expired``."""
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise Malformed("token: not an email token (expected <payload>.<signature>)")
    body, mac = token.split(".")
    try:
        given = _unb64(mac)
    except (ValueError, TypeError):
        raise Malformed("token: the signature is not base64url") from None
    if not hmac.compare_digest(hmac.new(key, body.encode("ascii", "replace"), hashlib.sha256).digest(), given):
        raise Forged("token: the signature does not match (forged, altered or signed with another secret)")
    try:
        payload = orjson.loads(_unb64(body))
    except (ValueError, TypeError):
        raise Malformed("token: the payload is not base64url JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int):
        raise Malformed("token: the payload has no expiry")
    if (time.time() if now is None else now) >= payload["exp"]:
        raise Expired(f"token: expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(payload['exp']))}")
    return payload
