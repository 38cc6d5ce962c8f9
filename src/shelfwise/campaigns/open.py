"""``GET /v1/email/{token}``: an email's rails at open time. The token (``security.tokens``) holds what was sent —
per rail its placement, items with their prices at send, spare items and the anchor; the catalog is read again
(one read, every replica's changes included) so that an email never shows a product that cannot be sold now:

* an item sold out (stock 0), made unavailable or deleted since sending is replaced by the rail's next spare that
  can be sold and is not in the email yet; when the spares run out, by the rail computed afresh for the shopper
  (the same stages as the site, the email's items excluded), checked against the catalog the same way;
* each item shows its current price, its price at send and whether it dropped.
"""

from __future__ import annotations

import time
from typing import Any

from shelfwise.campaigns.run import token_key
from shelfwise.domain import Item
from shelfwise.request import RecRequest
from shelfwise.security.tokens import Malformed, verify
from shelfwise.service import Shelfwise


def sellable(item: Item | None) -> bool:
    return item is not None and item.available and (item.stock is None or item.stock > 0)


def _rails(payload: dict[str, Any]) -> list[tuple[str, list[tuple[str, float | None]], list[str], str | None]]:
    try:
        out = []
        for placement, priced, spares, anchor in payload["r"]:
            out.append((str(placement), [(str(x), None if p is None else float(p)) for x, p in priced],
                        [str(x) for x in spares], None if anchor is None else str(anchor)))
        return out
    except (KeyError, TypeError, ValueError):
        raise Malformed("token: the payload has no rails") from None


def open_email(engine: Shelfwise, token: str, now: float | None = None) -> dict[str, Any]:
    payload = verify(token, token_key(engine), now)
    rails = _rails(payload)
    email = str(payload.get("e", ""))
    titles = [r.title for r in engine.settings.campaign.emails.get(email, [])]
    ids = list(dict.fromkeys(x for _, priced, spares, _ in rails for x in [i for i, _ in priced] + spares))
    catalog = engine.catalog.get(ids) if ids else {}
    shopper = str(payload.get("s") or "") or None
    if shopper is not None and engine.settings.privacy.pseudonymize:
        shopper = None  # the token holds the stored (pseudonymised) id: fresh fills are the placement's best sellers
    in_email = {x for _, priced, _, _ in rails for x, _ in priced}
    used: set[str] = set()
    out, replaced = [], 0
    for n, (placement, priced, spares, anchor) in enumerate(rails):
        queue = [x for x in spares if x not in in_email]
        slots: list[dict[str, Any]] = []
        for item_id, sent_price in priced:
            it = catalog.get(item_id)
            if sellable(it) and item_id not in used:
                used.add(item_id)
                slots.append(_slot(it, sent_price, None))  # type: ignore[arg-type]
                continue
            swap = None
            while queue and swap is None:
                x = queue.pop(0)
                if x not in used and sellable(catalog.get(x)):
                    swap = x
            if swap is not None:
                used.add(swap)
                slots.append(_slot(catalog[swap], None, item_id))
            else:
                slots.append({"replaces": item_id})  # filled afresh below
            replaced += 1
        missing = [k for k, s in enumerate(slots) if "item_id" not in s]
        if missing:
            fresh = _fresh(engine, placement, shopper, anchor, len(missing), used | in_email)
            for k, it in zip(missing, fresh):
                used.add(it.id)
                slots[k] = _slot(it, None, slots[k]["replaces"])
            slots = [s for s in slots if "item_id" in s]  # nothing sellable left: a shorter rail, never a sold-out item
        out.append({"title": titles[n] if n < len(titles) else placement, "placement": placement, "items": slots})
    return {"email": email, "campaign": str(payload.get("c", "")), "sent_at": _iso(payload.get("iat")),
            "expires_at": _iso(payload.get("exp")), "replaced": replaced, "rails": out}


def _fresh(engine: Shelfwise, placement: str, shopper: str | None, anchor: str | None, n: int,
           skip: set[str]) -> list[Item]:
    """``n`` sellable items of the rail computed now (the email's items excluded), checked against the catalog."""
    if placement not in engine.settings.models.placements:
        return []
    ans = engine.recommend_many([RecRequest(placement, shopper=shopper, item_id=anchor, k=n + 8,
                                            exclude=sorted(skip))], log=False)[0]
    cands = [r.item_id for r in ans.items if r.item_id not in skip]
    got = engine.catalog.get(cands) if cands else {}
    return [got[x] for x in cands if sellable(got.get(x))][:n]


def _slot(it: Item, sent_price: float | None, replaces: str | None) -> dict[str, Any]:
    return {"item_id": it.id, "title": it.title, "price": it.price, "price_at_send": sent_price,
            "price_dropped": bool(sent_price is not None and it.price is not None and it.price < sent_price),
            "in_stock": True, "replaces": replaces}


def _iso(ts: Any) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if isinstance(ts, int) else None
