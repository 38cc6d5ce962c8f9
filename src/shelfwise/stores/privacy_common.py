"""What the SQLite and PostgreSQL backends of the key store, consent store and erasure ledger share."""

from __future__ import annotations

import hashlib
import hmac

from shelfwise.stores.protocols import PURPOSES, ApiKey, Consent


def marker(salt: bytes, shopper: str) -> str:
    """The erasure ledger's keyed hash of a shopper: never the id, and not the pseudonym either (another key)."""
    return hmac.new(salt, shopper.encode(), hashlib.sha256).hexdigest()


def merge_consent(before: Consent | None, update: Consent) -> Consent:
    """Each purpose of ``update`` wins unless the stored record is newer; purposes not given are kept."""
    if before is not None and before.updated_at > update.updated_at:
        merged = dict(update.purposes) | before.purposes  # an older update only fills purposes never decided
        return Consent(before.shopper, merged, before.updated_at, before.source)
    merged = (dict(before.purposes) if before else {}) | {p: v for p, v in update.purposes.items() if p in PURPOSES}
    return Consent(update.shopper, merged, update.updated_at, update.source)


KEY_COLUMNS = "key_id, name, scopes, kind, secret_hash, created_at, origins, rate, revoked_at"


def key_row(k: ApiKey) -> tuple:
    return (k.key_id, k.name, " ".join(k.scopes), k.kind, k.secret_hash, k.created_at, " ".join(k.origins), k.rate,
            k.revoked_at)


def key_from_row(row) -> ApiKey:
    key_id, name, scopes, kind, secret_hash, created_at, origins, rate, revoked_at = row
    return ApiKey(key_id=key_id, name=name, scopes=tuple(scopes.split()), kind=kind, secret_hash=secret_hash,
                  created_at=created_at, origins=tuple(origins.split()), rate=rate, revoked_at=revoked_at)


def consent_from_row(row) -> Consent:
    shopper, pers, analytics, experiments, updated_at, source = row
    purposes = {p: v for p, v in zip(PURPOSES, (pers, analytics, experiments)) if v is not None}
    return Consent(shopper, purposes, updated_at, source)


def consent_row(c: Consent) -> tuple:
    return (c.shopper, *(c.purposes.get(p) for p in PURPOSES), c.updated_at, c.source)
