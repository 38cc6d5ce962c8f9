"""Pseudonymisation: shopper ids replaced by keyed hashes before anything is stored, queued or logged.

``p:`` + the first 32 hex digits (128 bits) of HMAC-SHA256(key, "u:" + user id) — or "s:" + session id for
sessions, so a user id and a session id that happen to be equal stay apart. The same id always maps to the same
pseudonym (so history, online state and models work unchanged), and without the key nobody can tell which
storefront id a pseudonym belongs to, nor test a guess.
"""

from __future__ import annotations

import hashlib
import hmac

from shelfwise.domain import Event

SESSION = "session:"


class Pseudonymizer:
    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _h(self, kind: str, value: str) -> str:
        return "p:" + hmac.new(self._key, (kind + value).encode(), hashlib.sha256).hexdigest()[:32]

    def user(self, user_id: str) -> str:
        return self._h("u:", user_id) if self._key else user_id

    def session(self, session_id: str) -> str:
        return self._h("s:", session_id) if self._key else session_id

    def shopper(self, shopper: str) -> str:
        """A shopper key (a user id, or ``session:<id>``) as stored."""
        if not self._key:
            return shopper
        if shopper.startswith(SESSION):
            return SESSION + self.session(shopper[len(SESSION):])
        return self.user(shopper)

    def event(self, ev: Event) -> Event:
        if not self._key:
            return ev
        return ev.model_copy(update={"user_id": None if ev.user_id is None else self.user(ev.user_id),
                                     "session_id": None if ev.session_id is None else self.session(ev.session_id)})


def shopper_key(user_id: str | None, session_id: str | None) -> str | None:
    """The shopper a request or an erasure names: the user id, else the session."""
    if user_id is not None:
        return user_id
    return SESSION + session_id if session_id is not None else None
