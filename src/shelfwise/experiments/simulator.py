"""A storefront simulator with known truth, to prove the experiment machinery before there is any traffic.

**Shoppers** come from the synthetic storefront's generator (``synthetic.generate_storefront``): each has a
latent taste — favourite categories with weights, brands, price sensitivity. Their *true* utility for an item is

    u(s, i) = log(category weight + 0.01) + 0.7·[brand is a favourite] − 1.2·price_sensitivity·price_quantile
              + 0.25·log(popularity within the category · its size) [+ the item's hidden appeal, ``item_appeal_sd``]

and the probability that they are attracted by it once they look at it is ``a = sigmoid(attract_base +
attract_slope·u)``. On top of the taste, each shopper has a visit rate (visits per day, Gamma-distributed:
a few heavy visitors, many light ones) and a per-visit purchase propensity (Beta-distributed), both persistent —
which is what makes a shopper's past predict their future (CUPED).

**Behaviour in a visit**: 1 + Poisson(rails_per_visit − 1) rails of k slots from the *policy* the shopper's
variant uses; the shopper examines slot p with probability ``1/(p+1)^position_decay`` (position bias) and
clicks an examined item with probability ``a``; with ``continue_after_click`` < 1 a click often ends the scan (the dependent click model); a click becomes an
add-to-cart with ``cart_given_click``; the
visit ends in a purchase with probability ``min(1, propensity × (1 + purchase_boost_from_cart·[a recommended
item was carted]))`` — revenue = the carted item's price, else the price of an item the shopper likes (drawn
from their favourite categories). A share of visits is anonymous (a new unit every visit, never returning).

**Treatment effects** are injected per variant (``Effect``: multipliers of click, cart, purchase probabilities,
revenue, latency, errors), on top of whatever the variant's policy changes. ``calibrate_purchase_multiplier``
finds the per-visit purchase multiplier that raises *shopper-level conversion* by a target lift exactly, with
common random numbers.

**Policies** are callables ``policy(shopper_id, placement, k) -> [item ids]``: ``PreferencePolicy`` ranks the
catalog by true utility plus noise (a "model" of known quality), ``engine_policy`` asks the real pipeline in
process, ``http_policy`` the HTTP API. Rails are cached per (policy, shopper, placement, k): the simulated
policies do not learn during a run, which makes 200-repetition benchmarks affordable.

``Simulator.run`` returns ``Traffic``: columnar exposures and outcomes (integer ids for speed) that feed the
analysis directly (``unit_table``: the same numpy attribution as the ``memory://`` log) or go through any
experiment log backend (``to_log``) and the real ingestion path (``events``: ``domain.Event`` objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from shelfwise.experiments.log import ExposureRecord, OutcomeRecord, UnitTable
from shelfwise.experiments.memlog import numpy_unit_table

Policy = Callable[[str, str, int], Sequence[str]]


@dataclass(frozen=True)
class BehaviourModel:
    position_decay: float = 0.8
    attract_base: float = -3.0
    attract_slope: float = 1.0
    cart_given_click: float = 0.2
    purchase_boost_from_cart: float = 1.0
    visits_per_day: float = 0.25  # mean over shoppers
    activity_shape: float = 0.8  # Gamma shape of the visit rate (smaller = more heterogeneous)
    buy_mean: float = 0.04  # mean per-visit purchase propensity
    buy_concentration: float = 1.5  # Beta(mean·c, (1−mean)·c): smaller = more heterogeneous buyers
    rails_per_visit: float = 1.5
    anonymous_share: float = 0.2
    latency_ms: float = 25.0
    error_rate: float = 0.001
    continue_after_click: float = 1.0  # dependent click model: after a click, keep scanning with this probability
    item_appeal_sd: float = 0.0  # N(0, sd) appeal of each item that no ranker knows (cold-start quality)
    engagement_shape: float | None = None  # Gamma(shape, mean 1) click-happiness per shopper (None: all alike)
    session_shape: float | None = None  # Gamma(shape, mean 1) click-happiness per visit (None: all alike)


@dataclass(frozen=True)
class Effect:
    """Multipliers a variant applies on top of its policy (1 = none)."""

    click: float = 1.0
    cart: float = 1.0
    purchase: float = 1.0
    revenue: float = 1.0
    latency: float = 1.0
    errors: float = 1.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def scan_clicks(p: np.ndarray, continue_after_click: float, rng: np.random.Generator) -> np.ndarray:
    """Clicks on rails (rows) whose slots (columns, in display order) are clicked with probabilities ``p`` when the
    shopper gets there: the dependent click model (Guo et al. 2009) — after a click the shopper keeps scanning
    with ``continue_after_click`` (1 = independent clicks; lower = a click often satisfies the visit)."""
    u = rng.random(p.shape)
    if continue_after_click >= 1.0:
        return u < p
    clicked = np.zeros(p.shape, bool)
    scanning = np.ones(p.shape[0], bool)
    stay = rng.random(p.shape)
    for j in range(p.shape[1]):
        c = scanning & (u[:, j] < p[:, j])
        clicked[:, j] = c
        scanning &= ~c | (stay[:, j] < continue_after_click)
    return clicked


class Population:
    """Shoppers with known preferences over a generated catalog (see the module docs)."""

    def __init__(self, n_shoppers: int = 20_000, n_items: int = 3_000, seed: int = 0,
                 model: BehaviourModel = BehaviourModel(), shop: Any = None) -> None:
        from shelfwise.synthetic import LEAF_POS, generate_storefront

        self.model = model
        self.shop = shop or generate_storefront(n_items=n_items, n_shoppers=n_shoppers, n_events=100, seed=seed)
        items = self.shop.items
        self.item_ids = np.array([it.id for it in items], dtype=object)
        self.n_items = len(items)
        leaf_names = [it.category[-1] for it in items]
        self.leaf = np.array([LEAF_POS[n] for n in leaf_names])
        brands = sorted({it.brand or "" for it in items})
        self._brand_pos = {b: i for i, b in enumerate(brands)}
        self.brand = np.array([self._brand_pos[it.brand or ""] for it in items])
        self.price = np.array([it.price or 0.0 for it in items])
        self.servable = np.array([it.in_stock for it in items])
        pop = np.array([self.shop.popularity[it.id] for it in items])
        sizes = np.bincount(self.leaf, minlength=self.leaf.max() + 1)
        self.pop_term = 0.25 * np.log(pop * sizes[self.leaf] + 1e-9)
        self.price_q = np.zeros(self.n_items)
        for lf in np.unique(self.leaf):
            m = np.flatnonzero(self.leaf == lf)
            self.price_q[m] = np.argsort(np.argsort(self.price[m])) / max(len(m) - 1, 1)
        self.shoppers = list(self.shop.shoppers)
        self.index = {s: i for i, s in enumerate(self.shoppers)}
        n_leaves = int(self.leaf.max()) + 1
        self.cat_w = np.full((len(self.shoppers), n_leaves), 0.0)
        self.fav_brands: list[np.ndarray] = []
        self.sensitivity = np.zeros(len(self.shoppers))
        self.fav_brand = np.zeros((len(self.shoppers), len(brands)), bool)
        for i, s in enumerate(self.shoppers):
            t = self.shop.tastes[s]
            for c, w in zip(t.categories, t.weights):
                self.cat_w[i, LEAF_POS[c]] = w
            self.fav_brands.append(np.array([self._brand_pos[b] for b in t.brands if b in self._brand_pos], int))
            self.fav_brand[i, self.fav_brands[-1]] = True
            self.sensitivity[i] = t.price_sensitivity
        self.log_cat = np.log(self.cat_w + 0.01)
        rng = np.random.default_rng(seed + 7919)
        m = model
        self.visit_rate = rng.gamma(m.activity_shape, m.visits_per_day / m.activity_shape, len(self.shoppers))
        self.buy = rng.beta(m.buy_mean * m.buy_concentration, (1 - m.buy_mean) * m.buy_concentration,
                            len(self.shoppers))
        self.engagement = (rng.gamma(m.engagement_shape, 1 / m.engagement_shape, len(self.shoppers))
                           if m.engagement_shape else np.ones(len(self.shoppers)))
        self.appeal = rng.normal(0.0, m.item_appeal_sd, self.n_items) if m.item_appeal_sd else np.zeros(self.n_items)
        self._rails: dict[tuple[Any, int], tuple[np.ndarray, np.ndarray]] = {}
        self._organic: dict[int, np.ndarray] = {}

    def utility(self, u: int, items: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.n_items) if items is None else items
        brand_hit = np.isin(self.brand[idx], self.fav_brands[u])
        return (np.log(self.cat_w[u, self.leaf[idx]] + 0.01) + 0.7 * brand_hit
                - 1.2 * self.sensitivity[u] * self.price_q[idx] + self.pop_term[idx] + self.appeal[idx])

    def utility_block(self, us: np.ndarray, known: bool = False) -> np.ndarray:
        """Utility of every item for several shoppers at once: shape (len(us), n_items). ``known``: without the
        items' hidden appeal (what a ranker could learn from the shopper's taste)."""
        u = (self.log_cat[us][:, self.leaf] + 0.7 * self.fav_brand[us][:, self.brand]
             - 1.2 * self.sensitivity[us][:, None] * self.price_q[None, :] + self.pop_term[None, :])
        return u if known else u + self.appeal[None, :]

    def attract(self, u: int, items: np.ndarray) -> np.ndarray:
        return _sigmoid(self.model.attract_base + self.model.attract_slope * self.utility(u, items))

    def examine(self, k: int) -> np.ndarray:
        return 1.0 / (np.arange(1, k + 1) ** self.model.position_decay)

    def rail(self, policy: Policy, u: int, placement: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, attraction probabilities) of a policy's rail for shopper u (cached)."""
        key = (id(policy), placement, k, u)
        got = self._rails.get(key)
        if got is None:
            ids = list(policy(self.shoppers[u], placement, k))[:k]
            pos = self._item_pos
            idx = np.array([pos[i] for i in ids if i in pos], dtype=np.int64)
            got = (idx, self.attract(u, idx))
            self._rails[key] = got
        return got

    @property
    def _item_pos(self) -> dict[str, int]:
        if not hasattr(self, "_pos_cache"):
            self._pos_cache = {iid: i for i, iid in enumerate(self.item_ids)}
        return self._pos_cache

    def organic(self, u: int) -> np.ndarray:
        """The items shopper u would buy without recommendations (their 20 best by true utility)."""
        got = self._organic.get(u)
        if got is None:
            ut = self.utility(u)
            ut[~self.servable] = -np.inf
            got = self._organic[u] = np.argpartition(-ut, 20)[:20]
        return got


class PreferencePolicy:
    """Ranks the servable catalog by the shopper's true utility plus Gaussian noise (fixed per shopper and item):
    noise 0 is an oracle, larger noise a weaker model. The noise of shopper u is row ``u % 512`` of a block drawn
    from ``default_rng([seed, u // 512])``, so single calls and ``batch`` agree."""

    BLOCK = 512

    def __init__(self, population: Population, noise: float = 1.0, seed: int = 0, name: str = ""):
        self.population, self.noise, self.seed = population, noise, seed
        self.name = name or f"preference(noise={noise:g})"

    def _noise(self, block: int) -> np.ndarray:
        return np.random.default_rng([self.seed, block]).standard_normal((self.BLOCK, self.population.n_items))

    def scores(self, u: int) -> np.ndarray:
        p = self.population
        s = p.utility(u) + self.noise * self._noise(u // self.BLOCK)[u % self.BLOCK]
        s[~p.servable] = -np.inf
        return s

    def __call__(self, shopper: str, placement: str, k: int) -> list[str]:
        u = self.population.index[shopper]
        s = self.scores(u)
        top = np.argpartition(-s, k)[:k]
        return self.population.item_ids[top[np.argsort(-s[top], kind="stable")]].tolist()

    def batch(self, us: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(top-k item indices, their true utilities) for many shoppers at once; the same as ``__call__``."""
        p = self.population
        us = np.asarray(us, np.int64)
        items = np.zeros((len(us), k), np.int64)
        util = np.zeros((len(us), k))
        for block in np.unique(us // self.BLOCK).tolist():
            rows = np.flatnonzero(us // self.BLOCK == block)
            members = us[rows]
            ut = p.utility_block(members)
            s = ut + self.noise * self._noise(block)[members % self.BLOCK]
            s[:, ~p.servable] = -np.inf
            top = np.argpartition(-s, k, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, 1)
            items[rows] = top
            util[rows] = np.take_along_axis(ut, top, 1)
        return items, util


class RerankPolicy:
    """A second-stage ranker: re-orders the top ``pool`` candidates of ``base`` by true utility plus its own noise
    (two re-rankers of one candidate pool differ in *order* far more than in *which* items they show — the
    typical comparison of two ranking models)."""

    def __init__(self, base: PreferencePolicy, pool: int = 30, noise: float = 0.5, seed: int = 1, name: str = ""):
        self.base, self.pool, self.noise, self.seed = base, pool, noise, seed
        self.population = base.population
        self.name = name or f"rerank(pool={pool}, noise={noise:g})"

    def batch(self, us: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        us = np.asarray(us, np.int64)
        cand, util = self.base.batch(us, self.pool)
        noise = np.empty(util.shape)
        blk = PreferencePolicy.BLOCK
        for block in np.unique(us // blk).tolist():  # per-shopper noise, the same in single calls and batches
            rows = np.flatnonzero(us // blk == block)
            noise[rows] = np.random.default_rng([self.seed, block]).standard_normal((blk, self.pool))[us[rows] % blk]
        s = util + self.noise * noise
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(cand, order, 1), np.take_along_axis(util, order, 1)

    def __call__(self, shopper: str, placement: str, k: int) -> list[str]:
        items, _ = self.batch(np.array([self.population.index[shopper]]), k)
        return self.population.item_ids[items[0]].tolist()


def engine_policy(engine: Any) -> Policy:
    """The real pipeline in process (``service.Shelfwise``): the homepage rail it would serve."""
    from shelfwise.request import RecRequest

    def policy(shopper: str, placement: str, k: int) -> list[str]:
        return [r.item_id for r in engine.recommend(RecRequest(placement=placement, shopper=shopper, k=k)).items]

    return policy


def http_policy(base_url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> Policy:
    """The HTTP API (``GET /v1/recommendations/{placement}``; ``headers``: e.g. the API key)."""
    import httpx

    client = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)

    def policy(shopper: str, placement: str, k: int) -> list[str]:
        r = client.get(f"/v1/recommendations/{placement}", params={"user_id": shopper, "k": k})
        r.raise_for_status()
        return [x["item_id"] for x in r.json()["items"]]

    return policy


@dataclass
class Traffic:
    """Columnar exposures (one row per served rail) and outcomes of a simulated period. Ids are integers: unit,
    shopper and visit codes (``unit_names`` turns a unit code into the id the assignment hashed)."""

    x: dict[str, np.ndarray]
    o: dict[str, np.ndarray]
    variants: list[str]
    unit_names: list[str]
    start: float
    days: float
    item_ids: np.ndarray
    rails: list[np.ndarray] = field(default_factory=list, repr=False)  # item indices of each rail

    def unit_table(self, window_s: float = 86400.0, until: float | None = None,
                   pre_days: float | None = None) -> UnitTable:
        pre = (self.start - pre_days * 86400.0, self.start) if pre_days else (None, None)
        t = numpy_unit_table(self.x, self.o, window_s, self.start, until, pre[0], pre[1])
        t.variant = np.array([self.variants[v] for v in t.variant], dtype=object) if len(t) else t.variant
        return t

    def daily_conversion(self, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(variant code per unit, day of first exposure, day of first purchase — inf when none) of every exposed
        unit. Every simulated purchase of an exposed visit follows an exposure of that visit within minutes, so
        this equals the log's attribution (checked by the benchmarks against ``unit_table``)."""
        x, o = self.x, self.o
        units, first_idx = np.unique(x["unit"], return_index=True)
        order = np.argsort(x["unit"], kind="stable")
        first_ts = np.minimum.reduceat(x["ts"][order], np.flatnonzero(np.r_[True, np.diff(x["unit"][order]) != 0]))
        variant = x["variant"][first_idx]
        buy = (o["type"] == "purchase") & (o["ts"] >= self.start) & np.isin(o["visit"], x["visit"])  # exposed visits
        b_unit = o["unit"][buy]
        b_ts = o["ts"][buy]
        first_buy = np.full(len(units), np.inf)
        pos = np.searchsorted(units, b_unit)
        ok = (pos < len(units)) & (units[np.minimum(pos, len(units) - 1)] == b_unit)
        np.minimum.at(first_buy, pos[ok], b_ts[ok])
        return variant, (first_ts - self.start) / 86400.0, (first_buy - self.start) / 86400.0

    # ---- through the real log / ingestion path ----------------------------------------------------------------
    def exposure_records(self, experiment_id: str, placement: str = "homepage") -> Iterator[ExposureRecord]:
        x = self.x
        for r in range(len(x["ts"])):
            u = int(x["unit"][r])
            unit = self.unit_names[u]
            yield ExposureRecord(request_id=f"r{int(x['request_id'][r])}", ts=float(x["ts"][r]), placement=placement,
                                 unit=unit, shopper=unit, visit=f"v{int(x['visit'][r])}",
                                 items=self.item_ids[self.rails[r]].tolist() if self.rails else [],
                                 assignments=[(experiment_id, self.variants[int(x["variant"][r])], 0.5)],
                                 latency_ms=float(x["latency"][r]) if not x["error"][r] else None,
                                 error=bool(x["error"][r]))

    def outcome_records(self) -> Iterator[OutcomeRecord]:
        o = self.o
        for j in range(len(o["ts"])):
            u = int(o["unit"][j])
            yield OutcomeRecord(event_id=f"o{j}", type=o["type"][j], ts=float(o["ts"][j]),
                                shopper=self.unit_names[u], visit=f"v{int(o['visit'][j])}",
                                request_id=f"r{int(o['request_id'][j])}" if o["has_request"][j] else None,
                                item_id=self.item_ids[int(o["item"][j])] if o["item"][j] >= 0 else None,
                                revenue=float(o["revenue"][j]), quantity=1 if o["type"][j] != "click" else 0)

    def to_log(self, log: Any, experiment_id: str, batch: int = 5000) -> None:
        recs: list[Any] = []
        for rec in self.exposure_records(experiment_id):
            recs.append(rec)
            if len(recs) >= batch:
                log.record(recs)
                recs = []
        log.record(recs)
        outs: list[Any] = []
        for rec in self.outcome_records():
            outs.append(rec)
            if len(outs) >= batch:
                log.record_outcomes(outs)
                outs = []
        log.record_outcomes(outs)
        log.flush()

    def events(self) -> Iterator[Any]:
        """The outcomes as ``domain.Event`` s (recommendation_clicked with its request id, add_to_cart,
        purchase_completed with the price), in time order, for ``Shelfwise.ingest`` / the HTTP API."""
        from shelfwise.domain import Event

        for rec in sorted(self.outcome_records(), key=lambda r: r.ts):
            anon = rec.shopper is not None and rec.shopper.startswith("session:")
            base = {"event_id": f"sim-{rec.event_id}", "user_id": None if anon else rec.shopper,
                    "session_id": rec.visit, "timestamp": datetime.fromtimestamp(rec.ts, timezone.utc)}
            if rec.type == "click":
                yield Event(**base, type="recommendation_clicked", item_id=rec.item_id,
                            context={"request_id": rec.request_id, "placement": "homepage"})
            elif rec.type == "cart":
                yield Event(**base, type="add_to_cart", item_id=rec.item_id,
                            context={"request_id": rec.request_id} if rec.request_id else {})
            else:
                yield Event(**base, type="purchase_completed",
                            items=[{"item_id": rec.item_id, "quantity": 1, "price": round(rec.revenue, 2)}])


class Simulator:
    def __init__(self, population: Population, policies: dict[str, Policy], effects: dict[str, Effect] | None = None,
                 control: str | None = None, k: int = 12, placement: str = "homepage"):
        self.population = population
        self.policies = policies
        self.variants = list(policies)
        self.control = control or self.variants[0]
        self.effects = effects or {}
        self.k = k
        self.placement = placement

    def _attract_table(self, policy: Policy, shoppers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items, attraction) arrays of shape (n_shoppers, k) for one policy (padded with -1 / 0)."""
        p = self.population
        key = (id(policy), self.placement, self.k, "table")
        cached = p._rails.get(key)
        if cached is not None and cached[2][shoppers].all():
            return cached[0], cached[1]
        items = np.full((len(p.shoppers), self.k), -1, np.int64)
        att = np.zeros((len(p.shoppers), self.k))
        done = np.zeros(len(p.shoppers), bool)
        if hasattr(policy, "batch"):
            idx, ut = policy.batch(shoppers, self.k)
            items[shoppers] = idx
            att[shoppers] = _sigmoid(p.model.attract_base + p.model.attract_slope * ut)
            done[shoppers] = True
            p._rails[key] = (items, att, done)
            return items, att
        for u in shoppers.tolist():
            idx, a = p.rail(policy, u, self.placement, self.k)
            items[u, : len(idx)] = idx
            att[u, : len(a)] = a
            done[u] = True
        p._rails[key] = (items, att, done)
        return items, att

    def run(self, assign: Callable[[str], str | None], days: float, start: float, seed: int,
            pre_days: float = 0.0, shoppers: np.ndarray | None = None, keep_rails: bool = False,
            purchase_uniforms: bool = False) -> Traffic:
        """Simulate ``pre_days`` without experiment (outcomes only: the CUPED pre-period), then ``days`` with it.

        ``assign(unit id) -> variant`` (None: not in the experiment, served by control and not logged). The
        same ``seed`` gives the same traffic; the shoppers' latent traits are the population's, fixed."""
        p, m = self.population, self.population.model
        rng = np.random.default_rng(seed)
        sh = np.arange(len(p.shoppers)) if shoppers is None else np.asarray(shoppers)
        tables = {v: self._attract_table(self.policies[v], sh) for v in self.variants}
        exam = p.examine(self.k)
        x_cols: dict[str, list[np.ndarray]] = {k: [] for k in ("request_id", "variant", "unit", "visit", "ts",
                                                              "n_items", "error", "latency")}
        o_cols: dict[str, list[np.ndarray]] = {k: [] for k in ("type", "ts", "unit", "visit", "request_id",
                                                              "has_request", "revenue", "item")}
        unit_names = list(p.shoppers)
        rails_out: list[np.ndarray] = []
        n_visits = n_rails = 0
        uniforms: list[np.ndarray] = []
        for phase, (t0, length) in enumerate(((start - pre_days * 86400.0, pre_days), (start, days))):
            if length <= 0:
                continue
            in_exp = phase == 1
            counts = rng.poisson(p.visit_rate[sh] * length)
            v_shop = np.repeat(sh, counts)
            nv = len(v_shop)
            v_ts = t0 + np.sort(rng.random(nv)) * length * 86400.0
            v_ts = v_ts[rng.permutation(nv)]  # times independent of the shopper order
            anon = rng.random(nv) < m.anonymous_share
            if not in_exp:
                keep = ~anon  # anonymous pre-period visits cannot be linked to anybody: skip them
                v_shop, v_ts, anon, nv = v_shop[keep], v_ts[keep], anon[keep], int(keep.sum())
            v_ids = n_visits + np.arange(nv)
            n_visits += nv
            v_unit = v_shop.copy()
            if anon.any():
                first = len(unit_names)
                unit_names.extend(f"session:v{int(v)}" for v in v_ids[anon])
                v_unit[anon] = first + np.arange(int(anon.sum()))
            # variant per visit (logged-in units hash once)
            v_var = np.full(nv, -1, np.int64)
            if in_exp:
                memo: dict[int, int] = {}
                names = self.variants
                for i, u in enumerate(v_unit.tolist()):
                    got = memo.get(u)
                    if got is None:
                        a = assign(unit_names[u])
                        got = memo[u] = -2 if a is None else names.index(a)
                    v_var[i] = got
            served = np.where(v_var >= 0, v_var, self.variants.index(self.control))
            # rails
            n_r = 1 + rng.poisson(max(m.rails_per_visit - 1, 0.0), nv)
            r_visit = np.repeat(np.arange(nv), n_r)
            nr = len(r_visit)
            r_offset = (np.arange(nr) - np.repeat(np.cumsum(n_r) - n_r, n_r)) * 40.0
            r_ts = v_ts[r_visit] + r_offset
            r_var = served[r_visit]
            eff = [self.effects.get(v, Effect()) for v in self.variants]
            err_p = np.array([m.error_rate * e.errors for e in eff])[r_var]
            r_err = rng.random(nr) < err_p
            lat_mean = np.array([m.latency_ms * e.latency for e in eff])[r_var]
            r_lat = rng.gamma(4.0, lat_mean / 4.0)
            r_items = np.zeros((nr, self.k), np.int64)
            r_att = np.zeros((nr, self.k))
            for vi, v in enumerate(self.variants):
                sel = np.flatnonzero(r_var == vi)
                items, att = tables[v]
                r_items[sel] = items[v_shop[r_visit[sel]]]
                r_att[sel] = att[v_shop[r_visit[sel]]]
            click_mult = np.array([e.click for e in eff])[r_var] * p.engagement[v_shop[r_visit]]
            if m.session_shape:
                click_mult = click_mult * rng.gamma(m.session_shape, 1 / m.session_shape, nv)[r_visit]
            pclick = np.clip(r_att * exam[None, :] * click_mult[:, None], 0, 1)
            pclick[r_err] = 0.0
            clicked = scan_clicks(pclick, m.continue_after_click, rng)
            cart_mult = np.array([e.cart for e in eff])[r_var]
            carted = clicked & (rng.random(clicked.shape) < np.clip(m.cart_given_click * cart_mult, 0, 1)[:, None])
            rid = n_rails + np.arange(nr)
            n_rails += nr
            cr, cp = np.nonzero(clicked)
            kr, kp = np.nonzero(carted)
            # purchase per visit
            rec_cart = np.zeros(nv, bool)
            rec_cart[r_visit[kr]] = True
            buy_mult = np.array([e.purchase for e in eff])[served]
            p_buy = np.clip(p.buy[v_shop] * buy_mult * (1 + m.purchase_boost_from_cart * rec_cart), 0, 1)
            uni = rng.random(nv)
            if in_exp and purchase_uniforms:
                uniforms.append(np.c_[v_unit, uni / np.maximum(p.buy[v_shop] * (1 + m.purchase_boost_from_cart
                                                                               * rec_cart), 1e-12)])
            bought = uni < p_buy
            bv = np.flatnonzero(bought)
            cart_item = np.full(nv, -1, np.int64)
            cart_item[r_visit[kr][::-1]] = r_items[kr, kp][::-1]  # the first carted recommendation of the visit
            buy_item = cart_item[bv].copy()
            organic = buy_item < 0
            for j in np.flatnonzero(organic).tolist():
                org = p.organic(int(v_shop[bv[j]]))
                buy_item[j] = org[rng.integers(len(org))]
            rev_mult = np.array([e.revenue for e in eff])[served[bv]]
            revenue = p.price[buy_item] * rev_mult
            last_rail = v_ts + (n_r - 1) * 40.0
            # outcomes
            o_cols["type"] += [np.full(len(cr), "click", object), np.full(len(kr), "cart", object),
                               np.full(len(bv), "purchase", object)]
            o_cols["ts"] += [r_ts[cr] + 5.0 + cp, r_ts[kr] + 20.0 + kp, last_rail[bv] + 120.0]
            o_cols["unit"] += [v_unit[r_visit[cr]], v_unit[r_visit[kr]], v_unit[bv]]
            o_cols["visit"] += [v_ids[r_visit[cr]], v_ids[r_visit[kr]], v_ids[bv]]
            o_cols["request_id"] += [rid[cr], rid[kr], np.full(len(bv), -1, np.int64)]
            o_cols["has_request"] += [np.ones(len(cr), bool), np.ones(len(kr), bool), np.zeros(len(bv), bool)]
            o_cols["revenue"] += [np.zeros(len(cr)), np.zeros(len(kr)), revenue]
            o_cols["item"] += [r_items[cr, cp], r_items[kr, kp], buy_item]
            if in_exp:
                logged = r_var >= 0
                logged &= v_var[r_visit] >= 0
                li = np.flatnonzero(logged)
                x_cols["request_id"].append(rid[li])
                x_cols["variant"].append(r_var[li])
                x_cols["unit"].append(v_unit[r_visit[li]])
                x_cols["visit"].append(v_ids[r_visit[li]])
                x_cols["ts"].append(r_ts[li])
                x_cols["n_items"].append(np.where(r_err[li], 0, (r_items[li] >= 0).sum(axis=1)).astype(float))
                x_cols["error"].append(r_err[li].astype(float))
                x_cols["latency"].append(r_lat[li])
                if keep_rails:
                    rails_out.extend(r_items[i][r_items[i] >= 0] if not r_err[i] else np.zeros(0, np.int64)
                                     for i in li.tolist())
        x = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in x_cols.items()}
        o = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in o_cols.items()}
        x["seq"] = x["request_id"].astype(np.int64)
        x["shopper"] = x["unit"]
        n_x = len(x["ts"])
        x["has_visit"] = np.ones(n_x, bool)
        x["has_shopper"] = np.ones(n_x, bool)
        o["shopper"] = o["unit"]
        o["has_shopper"] = np.ones(len(o["ts"]), bool)
        o["has_visit"] = np.ones(len(o["ts"]), bool)
        o["type"] = o["type"].astype(object)
        traffic = Traffic(x=x, o=o, variants=list(self.variants), unit_names=unit_names, start=start, days=days,
                          item_ids=p.item_ids, rails=rails_out)
        if purchase_uniforms:
            traffic.purchase_ratios = np.concatenate(uniforms) if uniforms else np.zeros((0, 2))  # type: ignore
        return traffic


def calibrate_purchase_multiplier(sim: Simulator, target_lift: float, days: float, start: float, seeds: Sequence[int],
                                  assign_all: str | None = None) -> tuple[float, float]:
    """The per-visit purchase multiplier that raises shopper-level conversion by ``target_lift``, and the
    baseline conversion. Common random numbers: a unit converts under multiplier m iff some visit has
    ``uniform / p_visit < m``, so conversion(m) is the share of units whose smallest ratio is below m — one
    simulation per seed gives the whole curve, and m solves conversion(m) = (1 + lift)·conversion(1)."""
    variant = assign_all or sim.control
    ratios = []
    exposed = []
    for seed in seeds:
        t = sim.run(lambda _u: variant, days, start, seed, purchase_uniforms=True)
        r = t.purchase_ratios  # type: ignore[attr-defined]
        units = np.unique(t.x["unit"])
        best = np.full(int(max(r[:, 0].max(), units.max())) + 1, np.inf)
        np.minimum.at(best, r[:, 0].astype(np.int64), r[:, 1])
        ratios.append(best[units])
        exposed.append(len(units))
    best = np.concatenate(ratios)
    base = float((best < 1.0).mean())
    target = base * (1 + target_lift)
    srt = np.sort(best)
    m = float(srt[int(math.ceil(target * len(srt))) - 1])
    return m, base


def timestamp(day: str = "2026-12-01") -> float:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()


__all__ = ["BehaviourModel", "Effect", "Population", "PreferencePolicy", "Simulator", "Traffic",
           "calibrate_purchase_multiplier", "engine_policy", "http_policy", "timestamp", "timedelta"]
