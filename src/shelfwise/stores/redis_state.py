"""Scale-out online state on Redis: one key per cached shopper, updated atomically by Lua, read with pipelines.

Layout (``prefix`` defaults to ``shelfwise:``; the shopper is a hash tag so both keys share a Cluster slot):

- ``{prefix}{<shopper>}:s`` — the cached state, JSON ``{"v": version, "r": [[item, kind, "ts"], …], "p": [item, …]}``
  with a TTL (``ttl``, default 7 days) renewed by every write: a shopper idle that long is reloaded from the event
  store on the next request (read-through), so eviction is always safe.
- ``{prefix}{<shopper>}:l`` — a read-through load in flight (a token, 60 s TTL); see ``stamp``/``put``.
- ``{prefix}{<shopper>}:i`` — the shopper's impressions (frequency caps), JSON ``{item: [reset, [[ts, placement],
  …]]}`` (times as text), TTL ``seen_keep_s`` renewed by each impression; read in the same pipeline as the state,
  appended by Lua (``show``), reset by ``record_many`` for interactions of the ``reset_kinds`` (cached or not).

Memory per shopper is bounded: at most ``history_length`` interactions and ``max_purchased`` (default 200)
purchased items, so a state is about ``history_length × (len(item_id) + 30) + max_purchased × (len(item_id) + 3)
+ 100`` bytes (≈ 2.5 KB for 50 events and 12-character ids, plus Redis' ~70 bytes per key). Bound the total with
``maxmemory`` and ``maxmemory-policy volatile-lru`` (every key here has a TTL): an evicted shopper is reloaded.

Races: ``record`` (from ingestion) runs in Lua and appends only to a cached state; a shopper not cached is left
alone, but a pending read-through load of that shopper is invalidated, so ``put(..., if_unchanged=tokens)`` never
caches a snapshot that misses an event ingested while it was read. Appending an interaction equal to one already
held (same item, kind and timestamp) is a no-op, so a record that lands after a load that already saw the
event does not double it.

DSN: ``redis://[:password@]host:6379/0?prefix=shelfwise:&ttl=604800&max_purchased=200`` (``rediss://`` for TLS).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Sequence

import orjson
import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from shelfwise.stores._dsn import split_options
from shelfwise.stores.protocols import Interaction, Seen, SeenItem, ShopperState

_RECORD = """
local resets = cjson.decode(ARGV[6])
if next(resets) ~= nil then
  local sraw = redis.call('GET', KEYS[3])
  if sraw then
    local doc = cjson.decode(sraw)
    local changed = false
    for item, ts in pairs(resets) do
      local e = doc[item]
      if type(e) == 'table' and tonumber(ts) > tonumber(e[1]) then
        local kept = {}
        if type(e[2]) == 'table' then
          for _, x in ipairs(e[2]) do if tonumber(x[1]) > tonumber(ts) then kept[#kept + 1] = x end end
        end
        doc[item] = {ts, kept}
        changed = true
      end
    end
    if changed then redis.call('SET', KEYS[3], cjson.encode(doc), 'KEEPTTL') end
  end
end
local raw = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[2])
if not raw then return 0 end
local st = cjson.decode(raw)
local recent = st['r']
if type(recent) ~= 'table' then recent = {} end
local held = {}
for _, e in ipairs(recent) do held[e[1] .. '\\0' .. e[2] .. '\\0' .. e[3]] = true end
for _, it in ipairs(cjson.decode(ARGV[1])) do
  if not held[it[1] .. '\\0' .. it[2] .. '\\0' .. it[3]] then
    local t = tonumber(it[3])
    local pos = #recent + 1
    while pos > 1 and tonumber(recent[pos - 1][3]) > t do pos = pos - 1 end
    table.insert(recent, pos, it)
  end
end
local limit = tonumber(ARGV[3])
if #recent > limit then
  local kept = {}
  for i = #recent - limit + 1, #recent do kept[#kept + 1] = recent[i] end
  recent = kept
end
local bought = st['p']
if type(bought) ~= 'table' then bought = {} end
local newp = cjson.decode(ARGV[2])
if #newp > 0 then
  local fresh = {}
  for _, item in ipairs(newp) do fresh[item] = true end
  local kept = {}
  for _, item in ipairs(bought) do if not fresh[item] then kept[#kept + 1] = item end end
  for _, item in ipairs(newp) do if fresh[item] then kept[#kept + 1] = item; fresh[item] = nil end end
  local cap = tonumber(ARGV[4])
  bought = {}
  for i = math.max(1, #kept - cap + 1), #kept do bought[#bought + 1] = kept[i] end
end
st['r'] = recent
st['p'] = bought
st['v'] = (tonumber(st['v']) or 0) + 1
redis.call('SET', KEYS[1], cjson.encode(st), 'PX', ARGV[5])
return 1
"""

_SHOW = """
local raw = redis.call('GET', KEYS[1])
local doc = {}
if raw then doc = cjson.decode(raw) end
local at = ARGV[2]
local maxs = tonumber(ARGV[5])
for _, p in ipairs(cjson.decode(ARGV[1])) do
  local e = doc[p[1]]
  if type(e) ~= 'table' then e = {'0', {}} end
  local shown = e[2]
  if type(shown) ~= 'table' then shown = {} end
  local pos = #shown + 1
  while pos > 1 and tonumber(shown[pos - 1][1]) > tonumber(at) do pos = pos - 1 end
  table.insert(shown, pos, {at, p[2]})
  while #shown > maxs do table.remove(shown, 1) end
  doc[p[1]] = {e[1], shown}
end
local cutoff = tonumber(at) - tonumber(ARGV[3])
local lasts = {}
for item, e in pairs(doc) do
  local shown = e[2]
  local last = nil
  if type(shown) == 'table' and #shown > 0 then last = tonumber(shown[#shown][1]) end
  if last == nil or last <= cutoff then doc[item] = nil else lasts[#lasts + 1] = {last, item} end
end
local maxi = tonumber(ARGV[4])
if #lasts > maxi then
  table.sort(lasts, function(a, b) return a[1] < b[1] end)
  for i = 1, #lasts - maxi do doc[lasts[i][2]] = nil end
end
redis.call('SET', KEYS[1], cjson.encode(doc), 'PX', ARGV[6])
return 1
"""

_PUT_IF_UNCHANGED = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_OPTIONS = {"prefix", "ttl", "max_purchased"}


def _ts(value: float) -> str:
    return repr(float(value))


class RedisOnlineState:
    def __init__(self, dsn: str, history_length: int = 50, reset_kinds: Iterable[int] = (),
                 seen_keep_s: float = 30 * 86400.0, seen_max_items: int = 200, seen_max_shown: int = 5) -> None:
        url, opts = split_options(dsn, _OPTIONS)
        self.prefix = opts.get("prefix", "shelfwise:")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the redis key prefix must not contain braces")
        self.ttl_ms = int(float(opts.get("ttl", 7 * 86400)) * 1000)
        self.max_purchased = int(opts.get("max_purchased", 200))
        self.history_length = history_length
        self.reset_kinds = frozenset(int(k) for k in reset_kinds)
        self.seen_keep_s, self.seen_max_items, self.seen_max_shown = seen_keep_s, seen_max_items, seen_max_shown
        # on the request path: a Redis that hangs fails the call in 2 s (then the breaker answers without it),
        # instead of holding the request forever (``?socket_timeout=`` in the DSN overrides)
        self.redis = redis.Redis.from_url(url, health_check_interval=30, socket_timeout=2.0,
                                          socket_connect_timeout=2.0)
        self._record = self.redis.register_script(_RECORD)
        self._put_if = self.redis.register_script(_PUT_IF_UNCHANGED)
        self._show = self.redis.register_script(_SHOW)
        self.redis.ping()

    def _keys(self, shopper: str) -> tuple[str, str]:
        base = f"{self.prefix}{{{shopper}}}"
        return base + ":s", base + ":l"

    def _seen_key(self, shopper: str) -> str:
        return f"{self.prefix}{{{shopper}}}:i"

    @staticmethod
    def _decode_seen(raw: bytes | None) -> Seen:
        if not raw:
            return {}
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):  # Lua's cjson writes an empty object as {} and an empty list as {} too
            return {}
        out: Seen = {}
        for item, (reset, shown) in doc.items():
            out[item] = SeenItem(float(reset), tuple((float(t), str(p)) for t, p in (shown or [])))
        return out

    def _encode(self, st: ShopperState) -> bytes:
        recent = sorted(st.recent, key=lambda x: x.ts)[-self.history_length:]
        return orjson.dumps({"v": st.version, "r": [[i.item_id, int(i.kind), _ts(i.ts)] for i in recent],
                             "p": sorted(st.purchased)[-self.max_purchased:]})

    @staticmethod
    def _decode(raw: bytes) -> ShopperState:
        doc = orjson.loads(raw)
        recent = doc.get("r") or []  # Lua's cjson writes an empty list as {}
        bought = doc.get("p") or []
        return ShopperState(recent=[Interaction(str(i), int(k), float(t)) for i, k, t in recent],
                            purchased={str(p) for p in bought}, version=int(doc.get("v", 0)))

    def get(self, shoppers: Sequence[str]) -> dict[str, ShopperState | None]:
        return self.read(shoppers)[0]

    def read(self, shoppers: Sequence[str]) -> tuple[dict[str, ShopperState | None], dict[str, Seen]]:
        if not shoppers:
            return {}, {}
        pipe = self.redis.pipeline(transaction=False)
        for s in shoppers:
            pipe.get(self._keys(s)[0])
            pipe.get(self._seen_key(s))
        got = pipe.execute()
        states: dict[str, ShopperState | None] = {}
        seen: dict[str, Seen] = {}
        for n, s in enumerate(shoppers):
            seen[s] = self._decode_seen(got[2 * n + 1])
            raw = got[2 * n]
            states[s] = None if raw is None else self._decode(raw)
            if states[s] is not None:
                states[s].seen = seen[s]  # type: ignore[union-attr]
        return states, seen

    def show(self, shown: dict[str, list[tuple[str, str]]], at: float) -> None:
        pairs = {s: p for s, p in shown.items() if p}
        if not pairs:
            return
        self._run([(self._show, [self._seen_key(shopper)],
                     [orjson.dumps([[i, pl] for i, pl in p]), _ts(at), self.seen_keep_s, self.seen_max_items,
                      self.seen_max_shown, int(self.seen_keep_s * 1000)]) for shopper, p in pairs.items()])

    def _run(self, calls: list[tuple[Script, list, list]]) -> list[Any]:
        """Run scripts in one pipeline by their SHA alone: one round trip. (A script object called on a pipeline
        asks the server whether it knows the script first, on every call: a second round trip on the request path.)
        Scripts the server does not know (restarted, SCRIPT FLUSH) are loaded and only those calls run again."""
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        got = pipe.execute(raise_on_error=False)
        missing = [n for n, r in enumerate(got) if isinstance(r, NoScriptError)]
        if missing:
            for script in {calls[n][0].sha: calls[n][0] for n in missing}.values():
                self.redis.script_load(script.script)
            pipe = self.redis.pipeline(transaction=False)
            for n in missing:
                script, keys, args = calls[n]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for n, r in zip(missing, pipe.execute(raise_on_error=False)):
                got[n] = r
        for r in got:
            if isinstance(r, Exception):
                raise r
        return got

    def stamp(self, shoppers: Sequence[str]) -> dict[str, str]:
        tokens = {s: uuid.uuid4().hex for s in shoppers}
        pipe = self.redis.pipeline(transaction=False)
        for s, token in tokens.items():
            pipe.set(self._keys(s)[1], token, px=60_000)
        pipe.execute()
        return tokens

    def put(self, states: dict[str, ShopperState], if_unchanged: dict[str, str] | None = None) -> set[str]:
        if not states:
            return set()
        names = list(states)
        if if_unchanged is not None:
            got = self._run([(self._put_if, list(self._keys(s)), [self._encode(states[s]), self.ttl_ms,
                                                                  if_unchanged.get(s, "")]) for s in names])
            return {s for s, ok in zip(names, got) if ok}
        pipe = self.redis.pipeline(transaction=False)
        for s in names:
            pipe.set(self._keys(s)[0], self._encode(states[s]), px=self.ttl_ms)
        return {s for s, ok in zip(names, pipe.execute()) if ok}

    def record(self, shopper: str, interactions: Iterable[Interaction], purchased: Iterable[str]) -> None:
        self.record_many({shopper: (list(interactions), list(purchased))})

    def record_many(self, updates: dict[str, tuple[list[Interaction], list[str]]]) -> None:
        if not updates:
            return
        calls = []
        for shopper, (interactions, purchased) in updates.items():
            new = orjson.dumps([[i.item_id, int(i.kind), _ts(i.ts)] for i in interactions])
            resets: dict[str, float] = {}
            for i in interactions:
                if int(i.kind) in self.reset_kinds and i.ts > resets.get(i.item_id, 0.0):
                    resets[i.item_id] = i.ts
            calls.append((self._record, [*self._keys(shopper), self._seen_key(shopper)],
                          [new, orjson.dumps(list(purchased)), self.history_length, self.max_purchased, self.ttl_ms,
                           orjson.dumps({k: _ts(v) for k, v in resets.items()})]))
        self._run(calls)

    def forget(self, shopper: str) -> None:
        self.redis.delete(*self._keys(shopper), self._seen_key(shopper))

    def clear(self) -> None:
        """Remove every key under this prefix (SCAN, so it never blocks the server)."""
        batch = []
        for key in self.redis.scan_iter(match=self.prefix.replace("*", r"\*") + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.redis.unlink(*batch)
                batch = []
        if batch:
            self.redis.unlink(*batch)

    def close(self) -> None:
        self.redis.close()
