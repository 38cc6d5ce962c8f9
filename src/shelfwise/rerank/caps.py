"""Frequency caps, fatigue and negative evidence of one shopper on one placement, from what online state keeps:
the shopper's impressions (``ShopperState.seen``) and recent events.

* **hard cap** (``CapSettings.max_impressions``): an item shown ``max_impressions`` times within ``window_hours``
  since the shopper last engaged with it (``CapsSettings.reset_on``: a click, cart, purchase…) is capped: not
  shown on the placement until the oldest of those impressions leaves the window;
* **seen elsewhere** (``seen_elsewhere_hours``): an item shown on any other placement that recently is not shown
  here (an email does not repeat what the shop just showed);
* **fatigue** (``penalty``): each impression within the window (since the last engagement) lowers the item by
  ``penalty × 0.5 ** (age / half_life_hours)`` of the request's score spread, so an item fades before the cap;
* **removed from cart** (``CapsSettings.removed_penalty``): an item the shopper took out of the cart, and has not
  carted or bought since, is lowered the same way (negative evidence).

The stage (``stages/caps.py``) turns capped items into exclusions (the next eligible items fill the rail) and the
merchandise stage subtracts the penalties; the answer cache keys personal answers by ``capped`` (``cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shelfwise.domain import EventType
from shelfwise.settings import CapSettings, CapsSettings
from shelfwise.stores.protocols import Interaction, Seen

HOUR = 3600.0
_UNDO_REMOVAL = (int(EventType.add_to_cart), int(EventType.purchase_completed))


@dataclass
class CapView:
    """One request's caps: items not to show (with why) and score penalties (in units of the score spread)."""

    capped: dict[str, str] = field(default_factory=dict)
    penalty: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.capped or self.penalty)


def capped(seen: Seen, now: float, placement: str, conf: CapSettings | None) -> dict[str, str]:
    """Items the placement may not show the shopper at ``now``, each with the reason."""
    return _scan(seen, now, placement, conf, False)[0]


def _scan(seen: Seen, now: float, placement: str, conf: CapSettings | None,
          fatigue: bool) -> tuple[dict[str, str], dict[str, float]]:
    """One pass over the shopper's impressions: the capped items and (``fatigue``) each other item's penalty."""
    out: dict[str, str] = {}
    pen: dict[str, float] = {}
    if conf is None or not seen:
        return out, pen
    window = now - conf.window_hours * HOUR
    only = placement if conf.scope == "placement" else None
    elsewhere = now - conf.seen_elsewhere_hours * HOUR if conf.seen_elsewhere_hours > 0 else None
    oldest = min(window, elsewhere) if elsewhere is not None else window
    cap = conf.max_impressions
    rate = -1.0 / (conf.half_life_hours * HOUR)
    fatigue = fatigue and conf.penalty > 0
    for item, s in seen.items():
        shown = s.shown
        if not shown or shown[-1][0] <= oldest:  # nothing recent enough to matter (the usual case)
            continue
        lo = s.reset if s.reset > window else window
        times = [t for t, p in shown if lo < t <= now and (only is None or p == only)]
        if cap and len(times) >= cap:
            where = f"on {placement}" if only else "on any placement"
            out[item] = (f"frequency cap: shown {len(times)} times {where} in the last {conf.window_hours:g} h "
                         f"without a click (cap {cap})")
            continue
        if elsewhere is not None:
            other = [t for t, p in shown if p != placement and elsewhere < t <= now]
            if other:
                out[item] = (f"seen elsewhere: shown on the site {(now - max(other)) / HOUR:.1f} h ago (within "
                             f"{conf.seen_elsewhere_hours:g} h)")
                continue
        if fatigue and times:
            pen[item] = conf.penalty * sum(2.0 ** ((now - t) * rate) for t in times)
    return out, pen


def cap_view(seen: Seen, recent: list[Interaction], now: float, placement: str, conf: CapSettings | None,
             caps: CapsSettings) -> CapView:
    hard, pen = _scan(seen, now, placement, conf, True)
    view = CapView(capped=hard, penalty=pen)
    if caps.removed_penalty > 0 and recent:
        removed: dict[str, float] = {}
        for it in recent:  # oldest first: a later cart or purchase of the item takes the removal back
            if it.kind == EventType.remove_from_cart:
                removed[it.item_id] = it.ts
            elif it.kind in _UNDO_REMOVAL:
                removed.pop(it.item_id, None)
        for item, ts in removed.items():
            if item not in view.capped and ts <= now:
                fade = 0.5 ** ((now - ts) / (caps.removed_half_life_hours * HOUR))
                view.penalty[item] = view.penalty.get(item, 0.0) + caps.removed_penalty * fade
    return view
