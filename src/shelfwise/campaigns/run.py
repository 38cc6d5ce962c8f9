"""``shelfwise campaign run``: an email's rails for many shoppers, in batches through the engine's stages.

An email (``campaign.emails.<name>``) is a list of rails, each a placement's top ``k``: the email's own placement
(``email_weekly``: its caps say it repeats an item at most once in four weeks and nothing the shop showed the
shopper in the last three days) and, say, ``pdp_similar`` anchored on the shopper's most recently viewed item.
Per batch of ``campaign.batch`` shoppers, rail by rail, one pipeline call each (``Shelfwise.recommend_many``: the
same stages as the API — caps, rules, stock — one online-state read per call):

* an item is shown once per email: each rail excludes the items of the rails before it;
* every rail honours the email placement's caps (``models.caps.placements.<email>``), whatever its own placement:
  items the shop showed the shopper lately (``seen_elsewhere_hours``) and items already emailed too often stay out;
* what is sent counts as impressions of the email placement (online state), so the next campaign and the caps see it;
* each row carries a signed token (``security.tokens``) with the items, their prices at send and ``spares`` further
  items per rail; ``GET /v1/email/{token}`` re-checks stock and price at open time (``campaigns.open``).
"""

from __future__ import annotations

import csv
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import orjson

from shelfwise.domain import EventType
from shelfwise.request import RecRequest
from shelfwise.rerank.caps import capped
from shelfwise.security.tokens import load_secret, sign
from shelfwise.service import Shelfwise
from shelfwise.settings import EmailRail

VIEWS = (int(EventType.product_viewed), int(EventType.recommendation_clicked))


class CampaignError(ValueError):
    """Bad input to a campaign: an unknown email placement, no shoppers, an unknown segment."""


@dataclass
class EmailRow:
    shopper: str  # as given
    token: str
    rails: list[dict] = field(default_factory=list)  # {"title", "placement", "items": [{"item_id", "title", "price"}]}
    fallback: bool = True  # nothing about the shopper went into any rail


def token_key(engine: Shelfwise) -> bytes:
    c = engine.settings.campaign
    return load_secret(c.secret, Path(c.secret_file) if c.secret_file else engine.settings.data_dir / "campaign.secret")


def email_rails(engine: Shelfwise, email: str) -> list[EmailRail]:
    """The rails of an email; ``CampaignError`` naming the known emails (and any rail placement unknown)."""
    rails = engine.settings.campaign.emails.get(email)
    if rails is None:
        raise CampaignError(f"unknown placement {email!r} for an email; known: "
                            f"{sorted(engine.settings.campaign.emails)} (campaign.emails)")
    for rail in rails:
        try:
            engine.pipeline.placement(rail.placement)
        except ValueError as e:
            raise CampaignError(f"email {email!r}, rail {rail.title!r}: {e}") from None
    return rails


def read_shoppers(path: Path) -> list[str]:
    """Shopper ids, one a line (blank lines and ``#`` comments skipped; a CSV's first column; a header named
    user_id/shopper/shopper_id/id skipped), each once, in file order."""
    if not path.is_file():
        raise CampaignError(f"--shoppers: no file {str(path)!r}")
    out: dict[str, None] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f)):
            value = row[0].strip() if row else ""
            if not value or value.startswith("#"):
                continue
            if n == 0 and value.lower() in ("user_id", "shopper", "shopper_id", "id"):
                continue
            if len(value) > 256:
                raise CampaignError(f"--shoppers: line {n + 1} is longer than 256 characters (not a shopper id)")
            out[value] = None
    if not out:
        raise CampaignError(f"--shoppers: {str(path)!r} names no shopper (one id a line)")
    return list(out)


def segment_shoppers(engine: Shelfwise, segment: str) -> list[str]:
    """Shoppers whose events placed them in ``segment`` (``context.segments``, without regard to case)."""
    if engine.settings.privacy.pseudonymize:
        raise CampaignError("--segment lists stored (pseudonymised) ids, which a campaign cannot send to: give "
                            "--shoppers FILE")
    want = segment.casefold()
    contexts = engine.store.entry_contexts()
    out = sorted(s for s, c in contexts.items() if want in {x.casefold() for x in c.segments}
                 and not s.startswith("session:"))
    if not out:
        known = sorted({x for c in contexts.values() for x in c.segments})
        raise CampaignError(f"--segment: no shopper in segment {segment!r}; known segments: {known[:30]}")
    return out


class Campaign:
    def __init__(self, engine: Shelfwise, email: str, campaign_id: str | None = None, now: float | None = None) -> None:
        self.engine, self.email = engine, email
        self.rails = email_rails(engine, email)
        self.conf = engine.settings.campaign
        self.caps = engine.settings.models.caps.placements.get(email)
        self.key = token_key(engine)
        self.id = campaign_id or time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
        self.now = now

    def run(self, shoppers: Sequence[str], done: Callable[[int], None] | None = None) -> Iterator[EmailRow]:
        """Rows for every shopper, in order; ``done(n)`` after each batch of n shoppers."""
        size = self.conf.batch
        for start in range(0, len(shoppers), size):
            chunk = list(shoppers[start:start + size])
            yield from self._batch(chunk)
            if done is not None:
                done(len(chunk))

    def _batch(self, shoppers: list[str]) -> list[EmailRow]:
        engine, spares = self.engine, self.conf.spares
        now = self.now or time.time()
        items = engine.pipeline.items
        taken: list[list[str]] = [[] for _ in shoppers]  # items shown in the email so far (not spares)
        stored: list[str | None] = [None] * len(shoppers)
        out_rails: list[list[dict]] = [[] for _ in shoppers]
        payload_rails: list[list] = [[] for _ in shoppers]
        blocked: list[set[str]] = [set() for _ in shoppers]  # the email's caps, for rails of other placements
        last_viewed: list[str | None] = [None] * len(shoppers)
        fallback = [True] * len(shoppers)
        for n, rail in enumerate(self.rails):
            rows, reqs = [], []
            for i, s in enumerate(shoppers):
                anchor = None
                if engine.pipeline.placement(rail.placement).kind == "item":
                    anchor = last_viewed[i]
                    if anchor is None:  # nothing viewed: no "more like what you viewed" for them
                        continue
                rows.append(i)
                reqs.append(RecRequest(rail.placement, shopper=s, item_id=anchor, k=rail.k + spares,
                                       exclude=taken[i] + sorted(blocked[i]), now=now))
            answers = engine.recommend_many(reqs, log=False) if reqs else []
            got = dict(zip(rows, zip(reqs, answers)))
            for i in range(len(shoppers)):
                if i not in got:  # this rail has nothing for them (no item viewed to anchor it)
                    payload_rails[i].append([rail.placement, [], [], None])
                    out_rails[i].append({"title": rail.title, "placement": rail.placement, "items": []})
                    continue
                req, ans = got[i]
                if stored[i] is None:  # their first rail: the state the engine read (stored id, impressions)
                    stored[i] = req.shopper
                    st = req.state
                    if st is not None:
                        views = [it.item_id for it in st.recent if it.kind in VIEWS and it.item_id in items.index]
                        last_viewed[i] = views[-1] if views else None
                        if self.caps is not None:  # rails of other placements honour the email's caps too
                            blocked[i] = set(capped(st.seen, now, self.email, self.caps))
                recs = [r for r in ans.items if r.item_id not in taken[i] and r.item_id not in blocked[i]]
                shown, spare = recs[:rail.k], recs[rail.k:]
                taken[i] += [r.item_id for r in shown]
                if any(not r.fallback for r in shown):
                    fallback[i] = False
                priced = []
                for r in shown:
                    j = items.index.get(r.item_id)
                    price = float(items.price[j]) if j is not None and items.price[j] == items.price[j] else None
                    priced.append([r.item_id, price])
                payload_rails[i].append([rail.placement, priced, [r.item_id for r in spare], req.item_id])
                out_rails[i].append({"title": rail.title, "placement": rail.placement,
                                     "items": [{"item_id": x, "price": p} for x, p in priced]})
        # what is sent counts: the email placement's impressions (one write for the batch)
        shown_by = {stored[i]: [(x, self.email) for x in taken[i]] for i in range(len(shoppers))
                    if stored[i] is not None and taken[i]}
        if shown_by and engine.settings.models.caps.record:
            engine.online.show(shown_by, now)
        ttl = self.conf.token_ttl_days * 86400.0
        out = []
        for i, s in enumerate(shoppers):
            token = sign({"v": 1, "s": stored[i] or "", "e": self.email, "c": self.id, "r": payload_rails[i]},
                         self.key, ttl, now=now)
            out.append(EmailRow(s, token, out_rails[i], fallback[i]))
        return out


def write_rows(rows: Iterable[EmailRow], path: Path, fmt: str, email: str, campaign: str) -> int:
    """Write the mailer's file atomically (a temporary file renamed into place: never half a file); returns the
    number of rows. JSONL: one object a shopper; CSV: shopper, campaign, token, url, then one column of item ids
    (``|``-joined) per rail."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = None
            for row in rows:
                url = f"/v1/email/{row.token}"
                if fmt == "jsonl":
                    f.write(orjson.dumps({"shopper": row.shopper, "email": email, "campaign": campaign,
                                          "token": row.token, "url": url, "fallback": row.fallback,
                                          "rails": row.rails}).decode("utf-8") + "\n")
                else:
                    if writer is None:
                        writer = csv.writer(f)
                        writer.writerow(["shopper", "campaign", "token", "url"]
                                        + [f"rail{k + 1}_{r['placement']}" for k, r in enumerate(row.rails)])
                    writer.writerow([row.shopper, campaign, row.token, url]
                                    + ["|".join(x["item_id"] for x in r["items"]) for r in row.rails])
                n += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
