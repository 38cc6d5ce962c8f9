"""A deterministic synthetic electronics-and-accessories storefront: catalog, accessory graph, shoppers, events.

``generate_storefront(seed=...)`` builds the catalog and a session plan with numpy; ``Storefront.events()``
then plays the sessions back lazily, in global time order. Sessions browse strongly sequentially (the next
viewed item depends on the previous one), devices pull their compatible accessories into views and carts, and
item popularity is Zipf-like within each category, so every model has something real to learn.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from typing import Iterator

import numpy as np

from shelfwise.domain import Event, EventContext, Item, PurchasedItem

DEVICE, ACCESSORY, PART = "device", "accessory", "replacement-part"
MARGINS = {DEVICE: (0.05, 0.15), ACCESSORY: (0.40, 0.70), PART: (0.40, 0.65)}


@dataclass(frozen=True)
class Leaf:
    """One category: where it sits, what it sells, at what prices, and (accessories) what it fits."""

    root: str
    name: str
    kind: str
    lo: float
    hi: float
    share: float  # relative number of catalog items
    noun: str
    specs: tuple[str, ...] = ()  # words for titles: variants of the product
    fits: tuple[str, ...] = ()  # device leaves an accessory/part fits
    mode: str = ""  # "model": a specific model (+siblings); "brand": a brand's devices; "generic": a few devices

    @property
    def path(self) -> list[str]:
        return [self.root, self.name]


_STORAGE = ("64GB", "128GB", "256GB", "512GB")
_PHONES_TABLETS = ("Smartphones", "Tablets")
_LAPTOPS = ("Ultrabooks", "Gaming Laptops", "Chromebooks")
LEAVES = (
    Leaf("Phones", "Smartphones", DEVICE, 150, 1400, 6, "Smartphone", _STORAGE),
    Leaf("Phones", "Basic Phones", DEVICE, 20, 120, 1, "Phone"),
    Leaf("Laptops", "Ultrabooks", DEVICE, 600, 2600, 3, "Laptop", ("256GB", "512GB", "1TB")),
    Leaf("Laptops", "Gaming Laptops", DEVICE, 900, 3800, 2, "Gaming Laptop", ("512GB", "1TB", "2TB")),
    Leaf("Laptops", "Chromebooks", DEVICE, 180, 600, 1, "Chromebook", ("64GB", "128GB")),
    Leaf("Tablets", "Tablets", DEVICE, 120, 1400, 3, "Tablet", _STORAGE),
    Leaf("Wearables", "Smartwatches", DEVICE, 80, 900, 2, "Smartwatch", ("41mm", "45mm")),
    Leaf("Audio", "Headphones", DEVICE, 20, 500, 3, "Wireless Headphones"),
    Leaf("Audio", "Earbuds", DEVICE, 15, 350, 3, "Earbuds"),
    Leaf("Audio", "Speakers", DEVICE, 25, 600, 2, "Bluetooth Speaker"),
    Leaf("TVs", "OLED TVs", DEVICE, 900, 4500, 1.5, "OLED TV", ('55"', '65"', '77"')),
    Leaf("TVs", "LED TVs", DEVICE, 180, 1800, 2, "4K LED TV", ('43"', '50"', '55"', '65"')),
    Leaf("Cameras", "Mirrorless Cameras", DEVICE, 450, 3800, 1.5, "Mirrorless Camera"),
    Leaf("Cameras", "Action Cameras", DEVICE, 90, 550, 1, "Action Camera"),
    Leaf("Smart Home", "Smart Speakers", DEVICE, 30, 300, 1.5, "Smart Speaker"),
    Leaf("Smart Home", "Security Cameras", DEVICE, 25, 350, 1.5, "Security Camera"),
    Leaf("Gaming", "Consoles", DEVICE, 250, 700, 1, "Game Console", ("1TB", "2TB")),
    Leaf("Accessories", "Phone Cases", ACCESSORY, 8, 60, 8, "Case", ("Rugged", "Slim", "Clear", "Leather", "Wallet"),
         ("Smartphones",), "model"),
    Leaf("Accessories", "Screen Protectors", ACCESSORY, 5, 45, 5, "Screen Protector",
         ("Tempered Glass", "Privacy", "Matte"), ("Smartphones", "Tablets", "Smartwatches"), "model"),
    Leaf("Accessories", "Chargers", ACCESSORY, 10, 90, 4, "Charger", ("20W USB-C", "30W USB-C", "65W GaN", "15W Wireless"),
         _PHONES_TABLETS + ("Ultrabooks", "Chromebooks", "Smartwatches", "Earbuds"), "brand"),
    Leaf("Accessories", "Cables", ACCESSORY, 5, 40, 4, "Cable", ("USB-C 1m", "USB-C 2m", "Braided USB-C 2m", "HDMI 2.1"),
         _PHONES_TABLETS + ("Ultrabooks", "Chromebooks", "Action Cameras", "Consoles"), "brand"),
    Leaf("Accessories", "Tablet Covers", ACCESSORY, 12, 90, 2.5, "Cover", ("Folio", "Keyboard", "Slim"),
         ("Tablets",), "model"),
    Leaf("Accessories", "Laptop Bags", ACCESSORY, 20, 180, 2, "Laptop Bag", ('13"', '14"', '15.6"', '17"'),
         _LAPTOPS, "generic"),
    Leaf("Accessories", "Watch Bands", ACCESSORY, 10, 90, 2, "Watch Band", ("Sport", "Leather", "Milanese"),
         ("Smartwatches",), "model"),
    Leaf("Accessories", "Memory Cards", ACCESSORY, 8, 150, 2, "microSD Card", ("64GB", "128GB", "256GB", "512GB"),
         ("Mirrorless Cameras", "Action Cameras", "Security Cameras", "Consoles"), "generic"),
    Leaf("Accessories", "Camera Lenses", ACCESSORY, 150, 2200, 1.5, "Lens", ("24-70mm", "50mm f/1.8", "70-200mm"),
         ("Mirrorless Cameras",), "brand"),
    Leaf("Accessories", "TV Mounts", ACCESSORY, 20, 250, 1.5, "TV Wall Mount", ("Fixed", "Tilting", "Full-Motion"),
         ("OLED TVs", "LED TVs"), "generic"),
    Leaf("Accessories", "Game Controllers", ACCESSORY, 30, 180, 2, "Controller", ("Wireless", "Pro", "Elite"),
         ("Consoles",), "brand"),
    Leaf("Replacement Parts", "Batteries", PART, 15, 120, 2.5, "Battery", ("Replacement", "High-Capacity", "OEM-Grade"),
         _PHONES_TABLETS + _LAPTOPS, "model"),
    Leaf("Replacement Parts", "Screens", PART, 30, 450, 2, "Screen Assembly", ("Replacement", "OEM-Grade"),
         _PHONES_TABLETS + ("Smartwatches",), "model"),
)
LEAF_POS = {leaf.name: i for i, leaf in enumerate(LEAVES)}

# brand -> the roots or leaves it sells in (40 brands: 22 device makers, 18 accessory/part specialists)
BRANDS: dict[str, tuple[str, ...]] = {
    "Nova": ("Phones", "Tablets", "Wearables", "Earbuds", "Ultrabooks", "Chargers", "Cables", "Phone Cases", "Watch Bands"),
    "Apex": ("Phones", "Laptops", "Tablets", "TVs", "Chargers"),
    "Lumen": ("TVs", "Smart Home", "Speakers"),
    "Orbit": ("Smartphones", "Wearables", "Watch Bands"),
    "Zenith": ("Laptops", "Consoles", "Game Controllers"),
    "Vertex": ("Laptops", "Tablets", "Laptop Bags"),
    "Kestrel": ("Mirrorless Cameras", "Camera Lenses"),
    "Optika": ("Cameras", "Camera Lenses", "Memory Cards"),
    "Pulse": ("Audio",),
    "Sonora": ("Audio", "Smart Speakers"),
    "Helix": ("Smartphones", "Smart Home"),
    "Quanta": ("TVs", "Laptops"),
    "Aurora": ("TVs", "TV Mounts"),
    "Nimbus": ("Smart Home", "Tablets"),
    "Vanta": ("Gaming", "Headphones", "Game Controllers"),
    "Strata": ("Chromebooks", "Ultrabooks"),
    "Koda": ("Basic Phones", "Smartphones"),
    "Tempo": ("Wearables", "Earbuds", "Watch Bands"),
    "Forge": ("Consoles", "Game Controllers", "Gaming Laptops"),
    "Echo Labs": ("Smart Speakers", "Security Cameras"),
    "Arclight": ("Action Cameras", "Memory Cards"),
    "Mira": ("Smartphones", "Earbuds", "Headphones"),
    "Armorly": ("Phone Cases", "Tablet Covers", "Screen Protectors"),
    "ShieldPro": ("Screen Protectors", "Phone Cases"),
    "VoltEdge": ("Chargers", "Cables"),
    "CordCraft": ("Cables",),
    "Ampere": ("Chargers", "Batteries"),
    "Tether": ("Cables", "Chargers"),
    "Carryall": ("Laptop Bags", "Tablet Covers"),
    "Nomad Gear": ("Laptop Bags", "Watch Bands", "Phone Cases"),
    "Strapworks": ("Watch Bands",),
    "DataVault": ("Memory Cards",),
    "Glint": ("Camera Lenses",),
    "MountMaster": ("TV Mounts",),
    "GripLine": ("Game Controllers",),
    "FixIt Parts": ("Batteries", "Screens"),
    "iRepairCo": ("Screens", "Batteries"),
    "CellCore": ("Batteries",),
    "Lensmith": ("Camera Lenses",),
    "Casewell": ("Phone Cases", "Tablet Covers"),
}
SERIES = ("X", "S", "Pro ", "Air ", "Neo ", "Max ", "Lite ", "Ultra ", "One ", "Z")
COLORS = ("Black", "White", "Silver", "Graphite", "Blue", "Green", "Red", "Gold")
DEVICES = ("mobile", "desktop", "tablet")
HOURLY = np.array([1, .6, .4, .3, .3, .4, .8, 1.5, 2.2, 2.6, 2.8, 3, 3.2, 3, 2.8, 2.8, 3, 3.4, 4, 4.6, 5, 4.6, 3.4, 2])

ZIPF_S = 1.2  # item popularity exponent within a category
OUT_OF_STOCK, UNAVAILABLE, BRAND_NEW = 0.03, 0.01, 0.04
ANONYMOUS = 0.22  # share of sessions without a user id
SEGMENTED = 0.75  # share of shoppers whose interest segment the storefront knows
P_SEARCH, P_SWITCH = 0.3, 0.3  # a session starts with a search; a session moves to a second category
P_CART, P_REMOVE, P_BUY = 0.1, 0.1, 0.42
MEAN_VIEWS = 6.0
EVENTS_PER_VIEW, EVENTS_PER_SESSION = 1.11, P_SEARCH + 0.15  # for planning the number of sessions


@dataclass(frozen=True)
class Taste:
    """A shopper's latent taste: favourite categories (leaf names, weighted), brands, price sensitivity, device."""

    categories: tuple[str, ...]
    weights: tuple[float, ...]
    brands: tuple[str, ...]
    price_sensitivity: float  # 0 = indifferent to price, 1 = strongly prefers the cheap end of a category
    device: str
    segments: tuple[str, ...] = ()  # what the storefront knows of the shopper (sent with their events)


@dataclass
class _Plan:
    """Sessions in start order: start offset (s), shopper index, anonymous flag, number of views, seed."""

    starts: np.ndarray
    shopper: np.ndarray
    anonymous: np.ndarray
    views: np.ndarray
    seeds: np.ndarray


@dataclass
class Storefront:
    """A generated shop: catalog, shoppers, accessory graph, and (lazily) the events of its planned sessions."""

    items: list[Item]
    shoppers: list[str]
    accessories: dict[str, list[str]]  # device id -> ids of its compatible accessories and parts
    tastes: dict[str, Taste] = field(default_factory=dict, repr=False)
    kinds: dict[str, str] = field(default_factory=dict, repr=False)  # item id -> device | accessory | part
    popularity: dict[str, float] = field(default_factory=dict, repr=False)  # latent, sums to 1 per category
    start: datetime = datetime(2026, 9, 1, tzinfo=timezone.utc)
    days: int = 60
    _plan: _Plan | None = field(default=None, repr=False)
    _index: _Index | None = field(default=None, repr=False)
    seed: int = 42

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    def searches(self, n: int, at: datetime | None = None, hours: float = 24.0, results: int = 50,
                 owned: dict[str, list[str]] | None = None, stream: int = 0) -> list[Search]:
        """``n`` searches of known shoppers from ``at`` (default: the end of the event log, i.e. held out) over
        ``hours``, each with the shop's own result order and the result the shopper picks.

        Drawn from their own random stream (``seed`` and ``stream``), so ``events()`` is the same with or without
        them. A shopper (by activity, as sessions are) searches one of their favourite categories as a session's
        opening search does (``_Session.search``: a brand they like half the time, else now and then a variant).
        The shop's search engine is not personal: the category's items (of the brand, when the query names one)
        in stock, words of the query in the title first, then by popularity with noise, cut to ``results``. The
        shopper picks among them as a session picks its first view (``_Session.draw``): by popularity thinned by
        their brand and price preferences, variants the query names three times as likely, and (``owned``: the
        item ids each shopper looked at before) accessories of a device they own three times as likely, as in a
        cart. Where the pick sits in the shop's order plays no part: the benchmark measures the order itself."""
        plan, x = self._plan, self._index
        r = random.Random(f"shelfwise-searches:{self.seed}:{stream}")
        at = at or self.end
        sessions = np.flatnonzero(~plan.anonymous).tolist()
        fits: dict[str, set[str]] = {}
        for dev, accs in self.accessories.items():
            for a in accs:
                fits.setdefault(a, set()).add(dev)
        out = []
        while len(out) < n and sessions:
            shopper = self.shoppers[int(plan.shopper[r.choice(sessions)])]
            taste = self.tastes[shopper]
            leaf = LEAVES[LEAF_POS[r.choices(taste.categories, taste.weights)[0]]]
            members = x.by_leaf.get(LEAF_POS[leaf.name])
            if members is None:
                continue
            brands = [b for b in taste.brands if _sells(b, leaf)]
            brand = r.choice(brands) if brands and r.random() < 0.5 else None
            spec = r.choice(leaf.specs) if not brand and leaf.specs and r.random() < 0.4 else None
            query = " ".join(w for w in (brand, spec, leaf.noun) if w).lower()
            words = set(query.split())
            shown = [i for i in members[0] if x.in_stock[i] and (brand is None or x.brand[i] == brand)]
            if len(shown) < 2:
                continue
            title = {i: self.items[i].title.lower() for i in shown}
            key = {i: sum(w in title[i] for w in words) * 10.0 + math.log(self.popularity[x.ids[i]])
                   + r.gauss(0.0, 1.0) for i in shown}
            shown = sorted(shown, key=lambda i: -key[i])[:results]
            mine = {d for d in (owned or {}).get(shopper, ()) if self.kinds.get(d) == DEVICE}
            weight = []
            for i in shown:
                w = self.popularity[x.ids[i]] * (1.0 if x.brand[i] in taste.brands else 0.5)
                w *= 1.0 - 0.7 * taste.price_sensitivity * x.price_q[i]
                if spec and spec.lower() in title[i]:
                    w *= 3.0
                if mine and fits.get(x.ids[i], set()) & mine:
                    w *= 3.0
                weight.append(w)
            picked = shown[min(bisect_right(list(accumulate(weight)), r.random() * sum(weight)), len(shown) - 1)]
            when = at + timedelta(seconds=r.random() * hours * 3600.0)
            total = sum(weight)
            out.append(Search(shopper, f"search-{stream}-{len(out):07d}", when, query,
                              tuple(x.ids[i] for i in shown), x.ids[picked], tuple(w / total for w in weight)))
        return out

    def events(self) -> Iterator[Event]:
        """Every event of every planned session, in non-decreasing time order; the same on every call."""
        horizon = self.days * 86400.0 - 0.001
        heap: list[tuple[float, int, tuple]] = []
        seq = n = 0
        for s, t0 in enumerate(self._plan.starts.tolist()):
            while heap and heap[0][0] <= t0:
                yield self._event(n, heapq.heappop(heap))
                n += 1
            for dt, payload in _Session(self, s).run():
                heapq.heappush(heap, (min(round(t0 + dt, 3), horizon), seq, payload))
                seq += 1
        while heap:
            yield self._event(n, heapq.heappop(heap))
            n += 1

    def _event(self, n: int, entry: tuple[float, int, tuple]) -> Event:
        t, _, (type_, user, session, item, lines, order, device, segments, props) = entry
        context = _trusted(EventContext, {"device": device, "placement": None, "position": None, "request_id": None,
                                          "segments": list(segments) if segments and user else None})
        return _trusted(Event, {
            "event_id": f"e{n:09d}", "type": type_, "user_id": user, "session_id": session, "item_id": item,
            "items": lines, "order_id": order, "timestamp": self.start + timedelta(seconds=t), "context": context,
            "properties": props, "consent": None})


@dataclass(frozen=True)
class Search:
    """One search of a shopper (``Storefront.searches``): the query, the shop's results as it ordered them, the
    result the shopper picked."""

    shopper: str
    session: str
    at: datetime
    query: str
    results: tuple[str, ...]
    picked: str
    odds: tuple[float, ...] = ()  # the chance of each result to be the pick: the best order any ranker could learn

    def events(self, prefix: str = "s") -> list[Event]:
        """The search as the storefront reports it: a ``search`` event with the query and the result ids shown,
        then the view of the picked result (from the search page, at its position)."""
        ctx = EventContext(placement="search", position=self.results.index(self.picked))
        return [Event(event_id=f"{prefix}{self.session}-q", type="search", user_id=self.shopper,
                      session_id=self.session, timestamp=self.at,
                      properties={"query": self.query, "results": list(self.results)}),
                Event(event_id=f"{prefix}{self.session}-v", type="product_viewed", user_id=self.shopper,
                      session_id=self.session, item_id=self.picked, timestamp=self.at + timedelta(seconds=5),
                      context=ctx)]


def _trusted(cls, values: dict):
    """``cls.model_construct(**values)`` for a complete, known-valid field dict, without its per-field overhead
    (about 4x faster; the tests check that every generated event survives ``Event.model_validate``)."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


class _Index:
    """Array views of the catalog that the session simulator samples from."""

    def __init__(self, items: list[Item], leaf_of: list[int], pop: np.ndarray, accessories: dict[str, list[str]]):
        self.ids = [it.id for it in items]
        pos = {iid: i for i, iid in enumerate(self.ids)}
        self.leaf = leaf_of
        self.brand = [it.brand for it in items]
        self.price = [it.price for it in items]
        self.kind = [LEAVES[lf].kind for lf in leaf_of]
        self.in_stock = [it.in_stock for it in items]
        weight = pop * np.array([1.0 if it.in_stock else 0.03 if it.available else 0.0 for it in items])
        self.price_q = np.zeros(len(items))
        self.by_leaf: dict[int, tuple[list[int], list[float]]] = {}
        self.related: list[tuple[list[int], list[float]] | None] = [None] * len(items)
        leaf_arr = np.array(leaf_of)
        for lf in range(len(LEAVES)):
            members = np.flatnonzero(leaf_arr == lf)
            if len(members) and weight[members].sum() > 0:
                self._index_leaf(members, weight)
        self.acc: list[tuple[list[int], list[float]] | None] = [None] * len(items)
        for dev, accs in accessories.items():
            cand = [pos[a] for a in accs if weight[pos[a]] > 0]
            if cand:
                self.acc[pos[dev]] = (cand, list(accumulate(weight[cand].tolist())))

    def _index_leaf(self, members: np.ndarray, weight: np.ndarray) -> None:
        self.by_leaf[self.leaf[members[0]]] = (members.tolist(), list(accumulate(weight[members].tolist())))
        logp = np.log(np.array([self.price[i] for i in members]))
        self.price_q[members] = np.argsort(np.argsort(logp)) / max(len(members) - 1, 1)
        brand = np.array([self.brand[i] for i in members])
        k = min(8, len(members) - 1)
        if k <= 0:
            return
        if len(members) <= EXACT_LEAF:  # every pair (the catalogs of the tests and benchmarks up to ~100k items)
            dist = np.abs(logp[:, None] - logp[None, :]) - 0.35 * (brand[:, None] == brand[None, :])
            dist[:, weight[members] == 0] = np.inf
            np.fill_diagonal(dist, np.inf)
            near = np.argpartition(dist, k - 1, axis=1)[:, :k]
            rows = np.arange(len(members))[:, None]
            ok = np.isfinite(dist[rows, near])
        else:  # a huge leaf: the nearest are near in price (same brand counts 0.35 closer) — look in windows
            near, ok = _near_in_windows(logp, brand, weight[members] > 0, k)
        for row, i in enumerate(members.tolist()):
            cand = [int(members[j]) for j, good in zip(near[row].tolist(), ok[row].tolist()) if good]
            if cand:
                self.related[i] = (cand, list(accumulate(weight[cand].tolist())))


EXACT_LEAF = 4000  # leaves up to this size get exact nearest neighbours (an m x m matrix)


def _near_in_windows(logp: np.ndarray, brand: np.ndarray, sold: np.ndarray, k: int, w: int = 48
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each item by |log price difference| - 0.35 [same brand] among the ``w`` neighbours on each
    side in price order and in (brand, price) order: linear in the leaf's size."""
    m = len(logp)
    by_price = np.argsort(logp, kind="stable")
    by_brand = np.lexsort((logp, brand))
    cands = []
    for order in (by_price, by_brand):
        pos = np.empty(m, np.int64)
        pos[order] = np.arange(m)
        offs = np.r_[-w:0, 1:w + 1]
        at = np.clip(pos[:, None] + offs[None, :], 0, m - 1)
        cands.append(order[at])
    cand = np.concatenate(cands, axis=1)  # (m, 4w)
    dist = np.abs(logp[cand] - logp[:, None]) - 0.35 * (brand[cand] == brand[:, None])
    dist[(cand == np.arange(m)[:, None]) | ~sold[cand]] = np.inf
    cand_sorted = np.sort(cand, axis=1)  # duplicates (an item in both windows): keep one
    dup = np.zeros(cand.shape, bool)
    order = np.argsort(cand, axis=1, kind="stable")
    dup_sorted = np.zeros(cand.shape, bool)
    dup_sorted[:, 1:] = cand_sorted[:, 1:] == cand_sorted[:, :-1]
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    dist[dup] = np.inf
    pick = np.argpartition(dist, k - 1, axis=1)[:, :k]
    rows = np.arange(m)[:, None]
    return cand[rows, pick], np.isfinite(dist[rows, pick])


def _pick(r: random.Random, table: tuple[list[int], list[float]]) -> int:
    ids, cum = table
    return ids[min(bisect_right(cum, r.random() * cum[-1]), len(ids) - 1)]


class _Session:
    """Plays one planned session: a burst of views in one or two favourite categories, carts, maybe a purchase."""

    def __init__(self, store: Storefront, s: int):
        plan, self.x = store._plan, store._index
        self.r = random.Random(int(plan.seeds[s]))
        shopper = store.shoppers[int(plan.shopper[s])]
        self.taste = store.tastes[shopper]
        self.n_views = int(plan.views[s])
        device = self.taste.device if self.r.random() < 0.85 else self.r.choice(DEVICES)
        self.who = (None if plan.anonymous[s] else shopper, f"s{s:08d}")
        self.device, self.order = device, f"o{s:08d}"
        self.out: list[tuple[float, tuple]] = []
        self.t = 0.0

    def emit(self, type_: str, item: int | None = None, lines=None, props=None, gap: float = 0.0) -> None:
        self.t += gap
        item_id = None if item is None else self.x.ids[item]
        self.out.append((self.t, (type_, *self.who, item_id, lines, self.order if lines else None,
                                  self.device, self.taste.segments, props or {})))

    def gap(self, median: float) -> float:
        return median * self.r.lognormvariate(0.0, 0.8)

    def run(self) -> list[tuple[float, tuple]]:
        r, x, taste = self.r, self.x, self.taste
        leaf = LEAF_POS[r.choices(taste.categories, taste.weights)[0]]
        brand = self.search(LEAVES[leaf]) if r.random() < P_SEARCH else None
        cart: list[int] = []
        prev, prev_added, pending_remove = None, False, None
        for v in range(self.n_views):
            if v == self.n_views // 2 and v and r.random() < P_SWITCH:
                leaf = LEAF_POS[r.choice(taste.categories)]
                prev = None
            item, via_accessory = self.next_view(prev, leaf, brand, prev_added)
            brand = None
            self.emit("product_viewed", item, gap=self.gap(25.0) if self.out else 0.0)
            if pending_remove is not None:
                cart.remove(pending_remove)
                self.emit("remove_from_cart", pending_remove, gap=self.gap(10.0))
                pending_remove = None
            prev, prev_added = item, False
            if item not in cart and x.in_stock[item] and r.random() < self.cart_probability(item, via_accessory, cart):
                cart.append(item)
                self.emit("add_to_cart", item, gap=self.gap(15.0))
                prev_added = x.kind[item] == DEVICE
                if r.random() < P_REMOVE:
                    pending_remove = item
        if pending_remove is not None:
            cart.remove(pending_remove)
            self.emit("remove_from_cart", pending_remove, gap=self.gap(10.0))
        if cart and r.random() < P_BUY:
            self.emit("purchase_completed", lines=[self.line(i) for i in cart], gap=self.gap(120.0))
        return self.out

    def search(self, leaf: Leaf) -> str | None:
        r = self.r
        brands = [b for b in self.taste.brands if _sells(b, leaf)]
        brand = r.choice(brands) if brands and r.random() < 0.5 else None
        query = leaf.noun.lower()
        if brand:
            query = f"{brand.lower()} {query}"
        elif leaf.specs and r.random() < 0.4:
            query = f"{r.choice(leaf.specs).lower()} {query}"
        self.emit("search", props={"query": query})
        return brand

    def next_view(self, prev: int | None, leaf: int, brand: str | None, prev_added: bool) -> tuple[int, bool]:
        r, x = self.r, self.x
        if prev is not None:
            u = r.random()
            if x.acc[prev] is not None and u < (0.6 if prev_added else 0.2):
                return _pick(r, x.acc[prev]), True
            if x.related[prev] is not None and u < 0.82:
                return _pick(r, x.related[prev]), False
        return self.draw(leaf, brand), False

    def draw(self, leaf: int, brand: str | None) -> int:
        """An item of the category by popularity, thinned by the shopper's brand and price preferences."""
        r, x, taste = self.r, self.x, self.taste
        table = x.by_leaf.get(leaf) or x.by_leaf[next(iter(x.by_leaf))]
        for _ in range(8):
            i = _pick(r, table)
            if brand is not None:
                if x.brand[i] == brand:
                    return i
                continue
            fit = (1.0 if x.brand[i] in taste.brands else 0.5) * (1.0 - 0.7 * taste.price_sensitivity * x.price_q[i])
            if r.random() < fit:
                return i
        return i

    def cart_probability(self, item: int, via_accessory: bool, cart: list[int]) -> float:
        x, taste = self.x, self.taste
        p = P_CART * (1.5 if x.brand[item] in taste.brands else 1.0)
        p *= 1.0 - 0.6 * taste.price_sensitivity * x.price_q[item]
        if via_accessory and any(x.kind[c] == DEVICE for c in cart):
            p *= 3.0
        return p

    def line(self, item: int) -> PurchasedItem:
        quantity = 2 if self.x.kind[item] != DEVICE and self.r.random() < 0.08 else 1
        return _trusted(PurchasedItem, {"item_id": self.x.ids[item], "quantity": quantity, "price": self.x.price[item]})


def _sells(brand: str, leaf: Leaf) -> bool:
    return leaf.root in BRANDS[brand] or leaf.name in BRANDS[brand]


def _allocate(n: int, shares: list[float]) -> list[int]:
    """Split n into integer parts proportional to shares (largest remainder)."""
    raw = np.array(shares) / sum(shares) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


class _CatalogBuilder:
    """Makes devices first, then accessories and parts that point at them."""

    def __init__(self, rng: np.random.Generator, start: datetime):
        self.rng, self.start = rng, start
        self.items: list[Item] = []
        self.leaf_of: list[int] = []
        self.pop: list[float] = []
        self.devices: dict[str, list[tuple[str, str, str]]] = {}  # leaf name -> [(id, brand, model)]
        self.accessories: dict[str, list[str]] = {}
        self._pools: dict[str, tuple[list, dict]] = {}

    def build(self, n_items: int) -> None:
        counts = _allocate(n_items, [leaf.share for leaf in LEAVES])
        for lf in sorted(range(len(LEAVES)), key=lambda j: LEAVES[j].kind != DEVICE):
            self.leaf(lf, counts[lf])

    def leaf(self, lf: int, count: int) -> None:
        if count == 0:
            return
        leaf, rng = LEAVES[lf], self.rng
        brands = [b for b in BRANDS if _sells(b, leaf)]
        brand_w = 1.0 / (rng.permutation(len(brands)) + 1.0) ** 0.8
        brand_idx = rng.choice(len(brands), size=count, p=brand_w / brand_w.sum())
        mu, sigma = (np.log(leaf.lo) + np.log(leaf.hi)) / 2, (np.log(leaf.hi) - np.log(leaf.lo)) / 4
        prices = np.clip(np.exp(rng.normal(mu, sigma, count)), leaf.lo, leaf.hi)
        margins = rng.uniform(*MARGINS[leaf.kind], count)
        self.pop.extend((1.0 / (rng.permutation(count) + 1.0) ** ZIPF_S).tolist())
        for j in range(count):
            self.item(lf, brands[brand_idx[j]], float(prices[j]), float(margins[j]))

    def item(self, lf: int, brand: str, price: float, margin: float) -> None:
        leaf, rng = LEAVES[lf], self.rng
        iid = f"i{len(self.items):06d}"
        price = round(price) - 0.01 if price >= 10 else round(price, 1) - 0.01
        attrs: dict = {"color": COLORS[rng.integers(len(COLORS))]}
        tags = list(dict.fromkeys([leaf.kind, *(p.lower().replace(" ", "-") for p in leaf.path)]))
        if leaf.kind == DEVICE:
            title, description = self.device(leaf, iid, brand, attrs)
        else:
            title, description = self.accessory(leaf, iid, brand, attrs)
        age = rng.uniform(0, 7) if rng.random() < BRAND_NEW else rng.uniform(7, 365)
        if age < 14:
            tags.append("new")
        self.items.append(Item(
            id=iid, title=title, description=description, category=leaf.path, brand=brand, price=price,
            cost=round(price * (1 - margin), 2), stock=0 if rng.random() < OUT_OF_STOCK else int(rng.lognormal(3.5, 1)) + 1,
            attributes=attrs, tags=tags, created_at=self.start - timedelta(days=float(age)),
            available=bool(rng.random() >= UNAVAILABLE)))
        self.leaf_of.append(lf)

    def device(self, leaf: Leaf, iid: str, brand: str, attrs: dict) -> tuple[str, str]:
        rng = self.rng
        model = f"{SERIES[rng.integers(len(SERIES))]}{rng.integers(2, 24)}"
        variant = leaf.specs[rng.integers(len(leaf.specs))] if leaf.specs else ""
        attrs["model"] = model
        if variant:
            attrs["screen_size" if leaf.root == "TVs" else "size" if variant.endswith("mm") else "storage"] = variant
        self.devices.setdefault(leaf.name, []).append((iid, brand, model))
        title = " ".join(p for p in (brand, model, leaf.noun, variant, attrs["color"]) if p)
        return title, f"The {brand} {model} {leaf.noun.lower()} in {attrs['color'].lower()}. {leaf.name} by {brand}."

    def accessory(self, leaf: Leaf, iid: str, brand: str, attrs: dict) -> tuple[str, str]:
        spec = leaf.specs[self.rng.integers(len(leaf.specs))]
        fits, target = self.compatible(leaf, brand)
        attrs["compatible_with"] = [d for d, _, _ in fits]
        attrs["type"] = spec
        for dev, _, _ in fits:
            self.accessories.setdefault(dev, []).append(iid)
        title = f"{brand} {spec} {leaf.noun}" + (f" for {target}" if target and target != brand else "")
        fit_text = ", ".join(f"{b} {m}" for _, b, m in fits[:4]) or "most devices"
        return title, f"{spec} {leaf.noun.lower()} by {brand}. Compatible with {fit_text}."

    def compatible(self, leaf: Leaf, brand: str) -> tuple[list[tuple[str, str, str]], str]:
        """The devices an accessory fits, and how its title names them."""
        rng = self.rng
        pool, by_brand = self.pool(leaf)
        if not pool:
            return [], ""
        if leaf.mode == "brand":
            makers = sorted(by_brand)
            maker = brand if brand in by_brand else makers[rng.integers(len(makers))]
            fits = by_brand[maker]
            if len(fits) > 12:
                fits = [fits[i] for i in sorted(rng.choice(len(fits), 12, replace=False))]
            return fits, maker
        if leaf.mode == "model":
            anchor = pool[rng.integers(len(pool))]
            group = by_brand[anchor[1]]
            if len(group) > EXACT_LEAF:  # a huge catalog: draw the siblings without listing the brand's devices
                extra, picked = int(rng.integers(0, 3)), set()
                while len(picked) < extra:
                    j = int(rng.integers(len(group)))
                    if group[j] != anchor:
                        picked.add(j)
                return [anchor] + [group[j] for j in sorted(picked)], f"{anchor[1]} {anchor[2]}"
            siblings = [d for d in group if d != anchor]
            extra = min(len(siblings), int(rng.integers(0, 3)))
            fits = [anchor] + [siblings[i] for i in sorted(rng.choice(len(siblings), extra, replace=False))]
            return fits, f"{anchor[1]} {anchor[2]}"
        picks = rng.choice(len(pool), min(len(pool), int(rng.integers(2, 9))), replace=False)
        return [pool[i] for i in sorted(picks)], ""

    def pool(self, leaf: Leaf) -> tuple[list[tuple[str, str, str]], dict[str, list[tuple[str, str, str]]]]:
        """The devices an accessory category can fit (any device if none of its own), also grouped by brand."""
        if leaf.name not in self._pools:
            pool = [d for name in leaf.fits for d in self.devices.get(name, [])]
            pool = pool or [d for devs in self.devices.values() for d in devs]
            by_brand: dict[str, list[tuple[str, str, str]]] = {}
            for d in pool:
                by_brand.setdefault(d[1], []).append(d)
            self._pools[leaf.name] = pool, by_brand
        return self._pools[leaf.name]


def _tastes(rng: np.random.Generator, shoppers: list[str], leaves: list[int]) -> dict[str, Taste]:
    """2-3 device categories (popular ones more often), sometimes an accessory category, 1-3 brands, the rest."""
    devices = [lf for lf in leaves if LEAVES[lf].kind == DEVICE] or leaves
    others = [lf for lf in leaves if lf not in devices]
    n, names = len(shoppers), list(BRANDS)
    keys = np.log([LEAVES[lf].share for lf in devices]) + rng.gumbel(size=(n, len(devices)))  # Gumbel top-k
    ranked = np.argsort(-keys, axis=1).tolist()
    k = np.minimum(rng.integers(2, 4, n), len(devices)).tolist()
    extra = np.where(rng.random(n) < 0.3, rng.integers(0, max(len(others), 1), n), -1).tolist()
    n_brands, brand_keys = rng.integers(1, 4, n).tolist(), rng.random((n, len(names))).tolist()
    raw_weights, sensitivity = rng.gamma(1.0, size=(n, 4)).tolist(), rng.beta(2, 2, n).round(3).tolist()
    device = rng.choice(len(DEVICES), n, p=[0.55, 0.35, 0.10]).tolist()
    makers_of = {lf: [j for j, b in enumerate(names) if _sells(b, LEAVES[lf])] for lf in leaves}
    tastes = {}
    for u, user in enumerate(shoppers):
        chosen = [devices[j] for j in ranked[u][: k[u]]] + ([others[extra[u]]] if others and extra[u] >= 0 else [])
        makers = sorted({j for lf in chosen for j in makers_of[lf]}, key=brand_keys[u].__getitem__)
        weights = sorted(raw_weights[u][: len(chosen)], reverse=True)
        tastes[user] = Taste(categories=tuple(LEAVES[lf].name for lf in chosen),
                             weights=tuple(round(w / sum(weights), 4) for w in weights),
                             brands=tuple(names[j] for j in makers[: n_brands[u]]),
                             price_sensitivity=sensitivity[u], device=DEVICES[device[u]],
                             segments=_segments(user, LEAVES[chosen[0]]))
    return tastes


def _segments(user: str, favourite: Leaf) -> tuple[str, ...]:
    """The segment a storefront's CRM would know for most shoppers: an interest in their favourite department
    (e.g. ``cameras-fan``), for SEGMENTED of them. Drawn from a hash of the id, not the generator's random stream,
    so the rest of the shop is what it was before segments existed."""
    u = int.from_bytes(hashlib.blake2b(user.encode(), digest_size=8).digest(), "big") / 2.0**64
    return (favourite.root.lower().replace(" ", "-") + "-fan",) if u < SEGMENTED else ()


def _plan(rng: np.random.Generator, n_shoppers: int, n_events: int, days: int) -> _Plan:
    """Enough sessions for about n_events; each shopper's sessions spread days apart; times follow the day."""
    guess = int(n_events / (MEAN_VIEWS * EVENTS_PER_VIEW + EVENTS_PER_SESSION) * 1.5) + 10
    views = rng.geometric(1.0 / MEAN_VIEWS, guess)
    expected = np.cumsum(views * EVENTS_PER_VIEW + EVENTS_PER_SESSION)
    n = int(np.searchsorted(expected, n_events)) + 1
    activity = rng.lognormal(0.0, 1.0, n_shoppers)
    shopper = rng.choice(n_shoppers, n, p=activity / activity.sum())
    counts = np.bincount(shopper, minlength=n_shoppers)
    by_shopper = np.argsort(shopper, kind="stable")
    rank = np.empty(n, dtype=np.int64)  # k-th session of its shopper
    rank[by_shopper] = np.arange(n) - (np.cumsum(counts) - counts)[shopper[by_shopper]]
    day = np.floor((rank + rng.uniform(0.05, 0.95, n)) * days / counts[shopper]).astype(np.int64)
    hour = rng.choice(24, n, p=HOURLY / HOURLY.sum())
    starts = (day * 86400 + hour * 3600 + rng.random(n) * 3600).round(3)
    order = np.argsort(starts, kind="stable")
    return _Plan(starts=starts[order], shopper=shopper[order], anonymous=(rng.random(n) < ANONYMOUS)[order],
                 views=views[:n][order], seeds=rng.integers(0, 2**62, n)[order])


def generate_storefront(n_items: int = 12_000, n_shoppers: int = 20_000, n_events: int = 500_000,
                        seed: int = 42, start: datetime = datetime(2026, 9, 1, tzinfo=timezone.utc),
                        days: int = 60) -> Storefront:
    """A reproducible storefront: the same arguments give the same catalog, shoppers and events."""
    if n_items < 1 or n_shoppers < 1 or n_events < 1 or days < 1:
        raise ValueError("n_items, n_shoppers, n_events and days must be positive")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = np.random.default_rng(seed)
    catalog = _CatalogBuilder(rng, start)
    catalog.build(n_items)
    items, pop = catalog.items, np.array(catalog.pop)
    for lf in set(catalog.leaf_of):
        members = [i for i, x in enumerate(catalog.leaf_of) if x == lf]
        pop[members] /= pop[members].sum()
    index = _Index(items, catalog.leaf_of, pop, catalog.accessories)
    width = max(5, len(str(n_shoppers - 1)))
    shoppers = [f"u{i:0{width}d}" for i in range(n_shoppers)]
    return Storefront(
        items=items, shoppers=shoppers, accessories=catalog.accessories,
        tastes=_tastes(rng, shoppers, sorted(index.by_leaf)),
        kinds={it.id: LEAVES[lf].kind for it, lf in zip(items, catalog.leaf_of)},
        popularity={it.id: float(p) for it, p in zip(items, pop)},
        start=start.astimezone(timezone.utc), days=days,
        _plan=_plan(rng, n_shoppers, n_events, days), _index=index, seed=seed)
