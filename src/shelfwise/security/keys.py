"""API keys: made once, shown once, stored as a SHA-256 hash, verified in constant time with a short cache.

A key reads ``sw_sk_<id>_<secret>`` (secret, for servers) or ``sw_pk_<id>_<secret>`` (publishable, for browsers);
``<id>`` names the record in the key store and ``<secret>`` is 256 random bits. The store holds only
``sha256(key)``: with 256 bits of entropy a fast hash is as safe as a slow one, and it keeps verification in
microseconds. Scopes: ``ingest`` (events, consent), ``read`` (recommendations), ``admin`` (everything else).
A publishable key may only post events and read rails, and only from its allowed origins.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from shelfwise.stores.breaker import Unavailable, unavailable
from shelfwise.stores.protocols import SCOPES, ApiKey, KeyStore

PUBLISHABLE_SCOPES = ("ingest", "read")
_PREFIX = {"secret": "sw_sk_", "publishable": "sw_pk_"}
_TOKEN = re.compile(r"^sw_(sk|pk)_([a-z2-7]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")


class InvalidKeyRequest(ValueError):
    """A key cannot be made as asked (bad scope, name or origin)."""


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_origin(origin: str) -> str:
    """``scheme://host[:port]``, as browsers send it in the Origin header."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username:
        raise InvalidKeyRequest(f"origin {origin!r} must look like https://shop.example or http://localhost:3000")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def make_key(name: str | None, scopes: list[str], kind: str = "secret", origins: list[str] = (),
             rate: float | None = None, now: float | None = None) -> tuple[str, ApiKey]:
    """A new key: (the key, shown once; its record, to store)."""
    if kind not in _PREFIX:
        raise InvalidKeyRequest(f"kind must be secret or publishable, not {kind!r}")
    scopes = list(dict.fromkeys(scopes))
    if not scopes:
        raise InvalidKeyRequest("give at least one scope (--scope ingest|read|admin)")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise InvalidKeyRequest(f"unknown scope {bad[0]!r}; scopes are {', '.join(SCOPES)}")
    if kind == "publishable":
        if not set(scopes) <= set(PUBLISHABLE_SCOPES):
            raise InvalidKeyRequest("a publishable key may only have the ingest and read scopes (it is visible to anyone "
                            "who opens the shop's pages)")
        if not origins:
            raise InvalidKeyRequest("a publishable key needs at least one allowed origin (--origin https://shop.example)")
    clean_origins = tuple(dict.fromkeys(check_origin(o) for o in origins))
    if rate is not None and not (rate > 0 and rate < 1e9):
        raise InvalidKeyRequest("--rate must be a positive number of requests per second")
    key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    name = name or f"key-{key_id[:8]}"
    if not _NAME.match(name):
        raise InvalidKeyRequest(f"key name {name[:80]!r}: 1-64 letters, digits or _ . : @ - (starting with a letter or digit)")
    token = f"{_PREFIX[kind]}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(key_id=key_id, name=name, scopes=tuple(scopes), kind=kind, secret_hash=hash_key(token),
                    created_at=time.time() if now is None else now, origins=clean_origins, rate=rate)
    return token, record


def create_key(store: KeyStore, name: str | None, scopes: list[str], kind: str = "secret",
               origins: list[str] = (), rate: float | None = None) -> tuple[str, ApiKey]:
    token, record = make_key(name, scopes, kind, origins, rate)
    store.add_key(record)
    return token, record


def parse_token(token: str) -> str | None:
    """The key id of a well-formed key, else None."""
    m = _TOKEN.match(token)
    return m.group(2) if m else None


class KeyVerifier:
    """Verifies bearer tokens against the key store; a result (also a refusal) is trusted for ``cache_s`` seconds,
    so a request normally costs one dictionary lookup. At most ``max_cached`` tokens are remembered."""

    def __init__(self, store: KeyStore, cache_s: float = 5.0, max_cached: int = 10_000,
                 stale_s: float = 600.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self.stale_s = stale_s  # while the key store is down, a key verified this recently is still trusted
        self.max_cached = max_cached
        self._cache: OrderedDict[str, tuple[ApiKey | None, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._origins: tuple[frozenset[str], float, int] = (frozenset(), 0.0, -1)

    def cached(self, token: str) -> tuple[bool, ApiKey | None]:
        """(hit, key): a hit answers without touching the store."""
        hit = self._cache.get(token)
        if hit is not None and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def verify(self, token: str) -> ApiKey | None:
        hit, key = self.cached(token)
        if hit:
            return key
        key = None
        key_id = parse_token(token)
        if key_id is not None:
            try:
                record = self.store.get_key(key_id)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                return self._while_down(token, exc)
            if record is not None and record.active and hmac.compare_digest(record.secret_hash, hash_key(token)):
                key = record
        with self._lock:
            self._cache[token] = (key, time.monotonic() + self.cache_s)
            self._cache.move_to_end(token)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return key

    def _while_down(self, token: str, exc: BaseException) -> ApiKey | None:
        """The key store is down: a key verified within ``stale_s`` is still trusted (a revocation cannot be read
        now anyway); any other token is refused with 503, never let in unverified."""
        hit = self._cache.get(token)
        if hit is not None and hit[0] is not None and hit[1] - self.cache_s + self.stale_s > time.monotonic():
            return hit[0]
        raise Unavailable(f"the key store is unavailable ({type(exc).__name__}): the API key cannot be verified now")

    def forget_cache(self) -> None:
        with self._lock:
            self._cache.clear()
        self._origins = (frozenset(), 0.0, -1)

    def publishable_origins(self) -> frozenset[str]:
        """Origins of the active publishable keys (re-read when the key store changed, checked every cache_s)."""
        origins, checked, generation = self._origins
        now = time.monotonic()
        if now - checked < self.cache_s and generation >= 0:
            return origins
        current = self.store.keys_generation()
        if current != generation:
            origins = frozenset(o for k in self.store.list_keys() if k.kind == "publishable" for o in k.origins)
        self._origins = (origins, now, current)
        return origins
