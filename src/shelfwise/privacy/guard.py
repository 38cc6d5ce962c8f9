"""Consent by purpose, applied where data comes in (events) and where it is used (requests, logs).

Purposes: ``personalisation`` (events stored under the shopper's id, online state, training, personal rails),
``analytics`` (the shopper's id in the exposure log) and ``experiments`` (the id in the shadow log of draft rule
sets, and — for the experiments module — assignment to variants). Each is ``granted``, ``denied`` or ``pending``;
a purpose never decided takes ``privacy.default_consent``. Anything but ``granted`` means no.

* Events of a shopper without personalisation consent are not stored under any id: with
  ``privacy.unconsented_events = "count"`` only per-item daily counts by event type are kept.
* A request of such a shopper is answered as for an unknown visitor (no state, no model row).
* ``pending`` stores nothing personal: an update that only says "pending" for a shopper with no record is not
  stored at all.
* Withdrawing personalisation (granted → denied) erases the shopper's data (``privacy.erase_on_withdrawal``).
* Explicit preferences are stored only with personalisation consent (``ConsentRequired`` otherwise) and used only
  while it holds (a shopper without it is an anonymous visitor).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from typing import Any, Sequence

from shelfwise.domain import Event, EventType
from shelfwise.privacy.pseudonym import Pseudonymizer
from shelfwise.settings import PrivacySettings
from shelfwise.stores.protocols import PURPOSES, Consent, ConsentStore, ErasureLedger, ShopperState


class ConsentRequired(Exception):
    """Personal data the shopper has not consented to (the purpose is the message): nothing was stored."""


class PrivacyGuard:
    def __init__(self, settings: PrivacySettings, consents: ConsentStore, ledger: ErasureLedger,
                 pseudonyms: Pseudonymizer, poll_s: float = 1.0, remember: int = 50_000) -> None:
        self.settings = settings
        self.consents_store = consents
        self.ledger = ledger
        self.pseudonyms = pseudonyms
        self.poll_s = poll_s
        self.remember = remember
        self._recent: OrderedDict[str, dict[str, str]] = OrderedDict()  # effective consent of recent shoppers
        self._lock = threading.Lock()
        self._latest = (0.0, -1e18)  # (newest erasure marker, when it was read)

    # ---- consent -------------------------------------------------------------------------------------------
    def effective(self, record: Consent | None) -> dict[str, str]:
        given = record.purposes if record is not None else {}
        return {p: given.get(p) or self.settings.default_consent for p in PURPOSES}

    def consents(self, shoppers: Sequence[str]) -> dict[str, dict[str, str]]:
        """Effective consent of (stored-form) shoppers; remembered for the logs of the same requests."""
        records = self.consents_store.consents(shoppers)
        out = {s: self.effective(records.get(s)) for s in shoppers}
        with self._lock:
            for s, eff in out.items():
                self._recent[s] = eff
                self._recent.move_to_end(s)
            while len(self._recent) > self.remember:
                self._recent.popitem(last=False)
        return out

    def consenting(self, shoppers: Sequence[str], purpose: str = "personalisation") -> set[str]:
        """Those of (stored-form) shoppers who consent to a purpose now (for training: not remembered)."""
        out: set[str] = set()
        for start in range(0, len(shoppers), 1000):
            chunk = shoppers[start:start + 1000]
            records = self.consents_store.consents(chunk)
            out.update(s for s in chunk if self.effective(records.get(s))[purpose] == "granted")
        return out

    def allows(self, shopper: str, purpose: str) -> bool:
        """Whether a (stored-form) shopper consents to a purpose (e.g. "experiments" before assigning a variant)."""
        with self._lock:
            eff = self._recent.get(shopper)
        if eff is None:
            eff = self.consents([shopper])[shopper]
        return eff[purpose] == "granted"

    def log_identity(self, shopper: str | None, purpose: str) -> str | None:
        """The shopper id a log may keep: None unless the shopper (seen in a request just now) consents."""
        if shopper is None:
            return None
        with self._lock:
            eff = self._recent.get(shopper)
        return shopper if eff is not None and eff[purpose] == "granted" else None

    def set(self, updates: Sequence[Consent]) -> tuple[dict[str, dict[str, str]], list[str]]:
        """Store consent updates (stored-form shoppers). Returns (effective consent after, shoppers who withdrew
        personalisation). An update that only says "pending" for a shopper without a record stores nothing."""
        if not updates:
            return {}, []
        only_pending = [u.shopper for u in updates if set(u.purposes.values()) <= {"pending"}]
        known = self.consents_store.consents(only_pending) if only_pending else {}
        keep = [u for u in updates if u.shopper not in only_pending or u.shopper in known]
        changes = self.consents_store.set_consents(keep) if keep else {}
        withdrawn = [s for s, (before, after) in changes.items()
                     if self.effective(before)["personalisation"] == "granted"
                     and after.purposes.get("personalisation") == "denied"]
        with self._lock:
            for s in changes:
                self._recent.pop(s, None)
        return self.consents([u.shopper for u in updates]), withdrawn

    def forget_cached(self, shopper: str) -> int:
        with self._lock:
            return 1 if self._recent.pop(shopper, None) is not None else 0

    # ---- events --------------------------------------------------------------------------------------------
    def admit(self, events: Sequence[Event]) -> tuple[list[Event], list[str], list[str]]:
        """Pseudonymise, apply the consent the events carry, keep those with personalisation consent.
        Returns (events to store, ids of events withheld, shoppers who withdrew personalisation)."""
        evs = [self.pseudonyms.event(ev) for ev in events]
        updates = [Consent(ev.shopper, ev.consent.decided(), ev.timestamp.timestamp(), "event")
                   for ev in evs if ev.consent is not None and ev.consent.decided()]
        _, withdrawn = self.set(updates)
        eff = self.consents(list(dict.fromkeys(ev.shopper for ev in evs)))
        admitted: list[Event] = []
        withheld: list[str] = []
        counts: Counter = Counter()
        for ev in evs:
            if eff[ev.shopper]["personalisation"] == "granted":
                admitted.append(ev)
                continue
            withheld.append(ev.event_id)
            if self.settings.unconsented_events == "count":
                day = ev.timestamp.astimezone(timezone.utc).strftime("%Y-%m-%d")
                for item, _, _ in ev.lines():
                    counts[(day, item, int(EventType[ev.type]))] += 1
        if counts:
            self.consents_store.add_counts(dict(counts))
        return admitted, withheld, withdrawn

    # ---- requests ------------------------------------------------------------------------------------------
    def latest_forget(self) -> float:
        """The newest erasure marker (read at most every ``poll_s``)."""
        value, at = self._latest
        now = time.monotonic()
        if now - at >= self.poll_s:
            value = self.ledger.latest_forget()
            self._latest = (value, now)
        return value

    def note_forget(self, at: float) -> None:
        value, read_at = self._latest
        self._latest = (max(value, at), read_at)

    def prepare(self, reqs: Sequence[Any], shopper_index: dict[str, int], applied_until: float,
                scanned_at: float) -> None:
        """Before the pipeline: shopper ids in their stored form; a shopper without personalisation consent
        becomes an anonymous visitor; a shopper erased after the model's data was read loses the model's row
        (checked per request only while erasure markers newer than ``applied_until`` exist)."""
        for req in reqs:
            if req.shopper is not None:
                req.shopper = self.pseudonyms.shopper(req.shopper)
        shoppers = list(dict.fromkeys(r.shopper for r in reqs if r.shopper is not None))
        if not shoppers:
            return
        eff = self.consents(shoppers)
        for req in reqs:
            if req.shopper is not None and eff[req.shopper]["personalisation"] != "granted":
                req.shopper = None
                req.state = ShopperState(recent=[], purchased=set())
        if self.latest_forget() > applied_until:
            left = [s for s in shoppers if eff[s]["personalisation"] == "granted"]
            for s, at in self.ledger.forgotten(left).items():
                if at >= scanned_at:
                    shopper_index.pop(s, None)

    # ---- reports -------------------------------------------------------------------------------------------
    def anonymous_counts(self, days: int) -> list[dict[str, Any]]:
        since = datetime.fromtimestamp(time.time() - days * 86400, timezone.utc).strftime("%Y-%m-%d")
        return [{"day": d, "item_id": i, "type": EventType(t).name, "count": n}
                for d, i, t, n in self.consents_store.counts(since)]
