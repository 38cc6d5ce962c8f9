"""OnlineState contract: written once, run against the in-process LRU and Redis."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import pytest

from shelfwise.stores import open_online_state
from shelfwise.stores.protocols import Interaction, ShopperState
from tests.conftest import view

H = 5  # history length under test


@pytest.fixture(params=["memory", "redis"])
def open_online(request: pytest.FixtureRequest) -> Iterator[Callable[..., object]]:
    """Opens the online state under test; for Redis every call shares the same keys (restart tests)."""
    opened = []
    base = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")

    def factory(history_length: int = H, **opts: str):
        dsn = base
        if opts:
            dsn += ("&" if "?" in dsn else "?") + "&".join(f"{k}={v}" for k, v in opts.items())
        state = open_online_state(dsn, history_length)
        opened.append(state)
        return state

    factory.backend = request.param  # type: ignore[attr-defined]
    yield factory
    for state in opened:
        state.clear()
        if hasattr(state, "close"):
            state.close()


def it(item: str, ts: float, kind: int = 0) -> Interaction:
    return Interaction(item, kind, ts)


def state(*items: Interaction, bought: set[str] | None = None) -> ShopperState:
    return ShopperState(recent=list(items), purchased=bought or set())


def test_miss_is_none_and_put_get_round_trip(open_online):
    online = open_online()
    assert online.get(["u1", "u2"]) == {"u1": None, "u2": None}
    assert online.get([]) == {}
    online.put({"u1": state(it("b", 2.5), it("a", 1.25), bought={"a"}), "u2": state()})
    got = online.get(["u1", "u2", "u3"])
    assert [i.item_id for i in got["u1"].recent] == ["a", "b"]  # kept in time order
    assert got["u1"].recent[0] == Interaction("a", 0, 1.25) and got["u1"].purchased == {"a"}
    assert got["u2"].recent == [] and got["u2"].purchased == set() and got["u3"] is None
    online.put({"u9": state(*[it(f"x{i}", float(i)) for i in range(20)])})
    assert [i.item_id for i in online.get(["u9"])["u9"].recent] == [f"x{i}" for i in range(15, 20)]


def test_record_only_on_cached_shoppers(open_online):
    online = open_online()
    online.record("ghost", [it("a", 1.0)], [])
    assert online.get(["ghost"])["ghost"] is None
    online.put({"u1": state(it("a", 1.0))})
    v0 = online.get(["u1"])["u1"].version
    online.record("u1", [it("b", 3.0), it("late", 2.0)], [])
    online.record("u1", [it("p", 4.0, kind=3)], ["p"])
    got = online.get(["u1"])["u1"]
    assert [i.item_id for i in got.recent] == ["a", "late", "b", "p"]  # out-of-order event lands by time
    assert got.purchased == {"p"} and got.version == v0 + 2
    online.record("u1", [it(f"n{i}", 10.0 + i) for i in range(10)], [])
    assert [i.item_id for i in online.get(["u1"])["u1"].recent] == [f"n{i}" for i in range(5, 10)]


def test_record_is_idempotent_for_an_interaction_already_held(open_online):
    online = open_online(history_length=50)
    online.put({"u1": state(it("a", 1.0), it("b", 2.0))})
    online.record("u1", [it("b", 2.0), it("c", 3.0)], [])
    assert [i.item_id for i in online.get(["u1"])["u1"].recent] == ["a", "b", "c"]
    # two equal lines within one event (same item twice in a purchase) are both kept
    online.record("u1", [it("d", 4.0, 3), it("d", 4.0, 3)], ["d"])
    assert [i.item_id for i in online.get(["u1"])["u1"].recent][-2:] == ["d", "d"]


def test_record_many_updates_several_shoppers_in_one_call(open_online):
    online = open_online()
    online.put({f"u{i}": state() for i in range(50)})
    online.record_many({f"u{i}": ([it(f"i{i}", float(i))], [f"i{i}"] if i % 2 else []) for i in range(60)})
    got = online.get([f"u{i}" for i in range(60)])
    assert all(got[f"u{i}"].recent == [it(f"i{i}", float(i))] for i in range(50))
    assert got["u3"].purchased == {"i3"} and got["u4"].purchased == set()
    assert all(got[f"u{i}"] is None for i in range(50, 60))


def test_stamped_put_installs_only_when_nothing_happened_meanwhile(open_online):
    online = open_online()
    tokens = online.stamp(["a", "b", "c", "d", "e"])
    online.record("b", [it("x", 1.0)], [])  # an event of b was ingested while b was being loaded
    online.forget("c")  # c was erased meanwhile
    online.put({"d": state(it("other", 0.5))})  # d was loaded by somebody else
    done = online.put({s: state(it("snapshot", 0.1)) for s in "abcde"}, if_unchanged=tokens)
    assert done == {"a", "e"}
    got = online.get(list("abcde"))
    assert got["a"].recent[0].item_id == "snapshot" and got["b"] is None and got["c"] is None
    assert got["d"].recent[0].item_id == "other"
    # a token is used once; a newer stamp supersedes an older one
    assert online.put({"a": state()}, if_unchanged=tokens) == set()
    old = online.stamp(["f"])
    new = online.stamp(["f"])
    assert online.put({"f": state()}, if_unchanged=old) == set()
    assert online.put({"f": state()}, if_unchanged=new) == {"f"}
    assert online.put({"g": state()}) == {"g"}  # without tokens a put always installs


def test_read_through_racing_ingestion_never_caches_a_stale_snapshot(open_online, tmp_path):
    """A load from the event store races ingestion of the same shopper; the cache never misses an event."""
    from shelfwise.stores.bus import EventProcessor
    from shelfwise.stores.sqlite import SQLiteStore

    online = open_online(history_length=1000)
    store = SQLiteStore(f"sqlite:///{tmp_path / 'race.db'}")
    processor = EventProcessor(store, online)
    n = 0
    for _ in range(20):
        online.forget("u1")
        go = threading.Barrier(2)

        def ingest(first: int) -> None:
            go.wait()
            for i in range(first, first + 3):
                processor.process([view(f"r{i}", "u1", f"p{i % 4}", i)])
                time.sleep(0.001)

        def read_through() -> None:
            go.wait()
            tokens = online.stamp(["u1"])
            snap = store.history(["u1"], 1000)["u1"]
            time.sleep(0.002)  # an ingest slips in between the read and the put
            online.put({"u1": snap}, if_unchanged=tokens)

        threads = [threading.Thread(target=ingest, args=(n,)), threading.Thread(target=read_through)]
        n += 3
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cached = online.get(["u1"])["u1"]
        truth = store.history(["u1"], 1000)["u1"]
        if cached is not None:  # a cached state holds every stored event, once, in order
            assert [(i.item_id, i.ts) for i in cached.recent] == [(i.item_id, i.ts) for i in truth.recent]
    store.close()


def test_concurrent_writers_lose_no_update(open_online):
    online = open_online(history_length=10_000)
    online.put({"hot": state()})

    def writer(w: int) -> None:
        for i in range(100):
            online.record_many({"hot": ([it(f"w{w}-{i}", w * 1000.0 + i)], [])})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = online.get(["hot"])["hot"]
    assert len(got.recent) == 400 and got.version == 400
    assert [i.ts for i in got.recent] == sorted(i.ts for i in got.recent)


def test_memory_per_shopper_is_bounded(open_online):
    online = open_online()
    online.put({"u": state()})
    for i in range(30):
        online.record("u", [it(f"p{i}", float(i), 3)], [f"p{i}"])
    got = online.get(["u"])["u"]
    assert len(got.recent) == H
    bound = online.max_purchased
    assert len(got.purchased) == min(30, bound)
    small = open_online(max_purchased="3") if open_online.backend == "redis" else None
    if small is not None:
        small.put({"v": state()})
        small.record("v", [it("a", 1.0, 3), it("b", 2.0, 3)], ["a", "b"])
        small.record("v", [it("c", 3.0, 3), it("d", 4.0, 3)], ["c", "d"])
        assert small.get(["v"])["v"].purchased == {"b", "c", "d"}  # the most recent purchases are kept


def test_states_expire_or_are_evicted(open_online):
    """Online state is a cache: Redis keys carry a TTL renewed by writes; the in-process LRU is bounded."""
    if open_online.backend == "redis":
        online = open_online(ttl="0.3")
        online.put({"u": state(it("a", 1.0))})
        online.record("u", [it("b", 2.0)], [])  # a write renews the TTL
        assert online.get(["u"])["u"] is not None
        deadline = time.monotonic() + 5
        while online.get(["u"])["u"] is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert online.get(["u"])["u"] is None
        online.record("u", [it("c", 3.0)], [])  # expired means not cached: a record does not resurrect it
        assert online.get(["u"])["u"] is None
    else:
        from shelfwise.stores.memory import MemoryOnlineState

        online = MemoryOnlineState(history_length=H, max_shoppers=3)
        online.put({s: state() for s in "abc"})
        online.get(["a"])  # a is now the most recently used
        online.put({"d": state()})
        assert online.get(["b"])["b"] is None and online.get(["a"])["a"] is not None


def test_forget_clear_and_restart(open_online):
    online = open_online()
    online.put({"u1": state(it("a", 1.0)), "u2": state(it("b", 2.0))})
    online.forget("u1")
    assert online.get(["u1"])["u1"] is None
    again = open_online()  # a second process / a restarted API replica
    if open_online.backend == "redis":
        assert again.get(["u2"])["u2"].recent == [it("b", 2.0)]  # shared and kept across restarts
    else:
        assert again.get(["u2"])["u2"] is None  # in-process state lives and dies with its process
    online.clear()
    assert online.get(["u2"])["u2"] is None


def test_redis_clear_touches_only_its_prefix(redis_url):
    import redis

    from shelfwise.stores.redis_state import RedisOnlineState

    mine = RedisOnlineState(redis_url, H)
    other = RedisOnlineState(redis_url.replace("prefix=", "prefix=other-"), H)
    mine.put({"u": state()})
    other.put({"u": state()})
    mine.clear()
    assert mine.get(["u"])["u"] is None and other.get(["u"])["u"] is not None
    other.clear()
    client = redis.Redis.from_url(redis_url.split("?")[0])
    assert client.ttl(f"{mine.prefix}{{u}}:s") == -2
    mine.close()
    other.close()


def test_redis_scripts_run_in_one_round_trip_and_survive_a_script_cache_flush(redis_url):
    """Scripts run by SHA in the request's one pipeline; a server that lost them (restart, SCRIPT FLUSH) gets them
    loaded again and each call applied exactly once."""
    import redis

    from shelfwise.stores.redis_state import RedisOnlineState

    online = RedisOnlineState(redis_url, H, reset_kinds=[5])
    client = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        online.put({"u": state(it("a", 1.0))})

        def asked() -> int:  # SCRIPT EXISTS calls the server has answered (a round trip each)
            return int(client.info("commandstats").get("cmdstat_script|exists", {}).get("calls", 0))

        before = asked()
        online.show({"u": [("a", "homepage")]}, at=10.0)
        online.record_many({"u": ([it("a", 11.0)], [])})
        assert asked() == before  # run by SHA: no question before each pipeline
        for flush in range(2):
            client.script_flush()
            online.record_many({"u": ([it(f"b{flush}", 20.0 + flush, kind=5)], [])})
            client.script_flush()
            online.show({"u": [(f"b{flush}", "homepage")]}, at=30.0 + flush)
        client.script_flush()
        stamp = online.stamp(["v"])
        assert online.put({"v": state(it("c", 2.0))}, if_unchanged=stamp) == {"v"}
        got, seen = online.read(["u", "v"])
        assert [i.item_id for i in got["u"].recent] == ["a", "a", "b0", "b1"]  # each record applied once
        assert seen["u"]["b1"].shown == ((31.0, "homepage"),) and seen["u"]["a"].shown == ((10.0, "homepage"),)
        assert [i.item_id for i in got["v"].recent] == ["c"]
    finally:
        online.clear()
        online.close()


# ---- impressions (frequency caps) ------------------------------------------------------------------------
def _seen_online(open_online, **kw):
    """An online state whose add-to-cart and clicks (kinds 1 and 5) reset impressions."""
    from shelfwise.stores.memory import MemoryOnlineState
    from shelfwise.stores.redis_state import RedisOnlineState

    first = open_online()
    opts = dict(reset_kinds=[1, 5], seen_keep_s=kw.get("keep_s", 1000.0), seen_max_items=kw.get("max_items", 3),
                seen_max_shown=kw.get("max_shown", 4))
    if isinstance(first, MemoryOnlineState):
        return MemoryOnlineState(history_length=H, **opts)
    assert isinstance(first, RedisOnlineState)
    return RedisOnlineState(_redis_dsn(first), H, **opts)


def _redis_dsn(state) -> str:
    kw = state.redis.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}?prefix={state.prefix}"


def test_impressions_are_read_with_the_state_cached_or_not(open_online):
    online = _seen_online(open_online)
    try:
        online.show({"u1": [("a", "homepage"), ("b", "homepage")], "u2": [("a", "email_weekly")]}, at=100.0)
        online.show({"u1": [("a", "pdp_similar")]}, at=101.5)
        states, seen = online.read(["u1", "u2", "u3"])
        assert states == {"u1": None, "u2": None, "u3": None}  # impressions live apart from the cached state
        assert seen["u1"]["a"].shown == ((100.0, "homepage"), (101.5, "pdp_similar"))
        assert seen["u1"]["b"].shown == ((100.0, "homepage"),) and seen["u1"]["a"].reset == 0.0
        assert seen["u2"]["a"].since(0.0, "homepage") == [] and seen["u2"]["a"].since(0.0) == [100.0]
        assert seen["u3"] == {}
        online.put({"u1": state(it("z", 5.0))})
        got = online.get(["u1"])["u1"]
        assert [i.item_id for i in got.recent] == ["z"] and set(got.seen) == {"a", "b"}
    finally:
        online.clear()


def test_engaging_with_an_item_resets_its_impressions(open_online):
    online = _seen_online(open_online)
    try:
        online.show({"u1": [("a", "homepage"), ("b", "homepage")]}, at=100.0)
        online.show({"u1": [("a", "homepage")]}, at=110.0)
        # a view (kind 0) does not reset here; a click (5) at 105 forgets a's impressions up to 105, cached or not
        online.record_many({"u1": ([it("a", 105.0, kind=5), it("b", 106.0, kind=0)], [])})
        seen = online.read(["u1"])[1]["u1"]
        assert seen["a"].reset == 105.0 and seen["a"].shown == ((110.0, "homepage"),)
        assert seen["b"].shown == ((100.0, "homepage"),) and seen["b"].reset == 0.0
        assert seen["a"].since(0.0) == [110.0]
    finally:
        online.clear()


def test_impressions_are_bounded_and_expire(open_online):
    online = _seen_online(open_online, keep_s=50.0, max_items=3, max_shown=4)
    try:
        for t in range(6):
            online.show({"u1": [("a", "homepage")]}, at=100.0 + t)
        assert len(online.read(["u1"])[1]["u1"]["a"].shown) == 4  # the last max_shown
        online.show({"u1": [("b", "homepage")]}, at=110.0)
        online.show({"u1": [("c", "homepage")]}, at=111.0)
        online.show({"u1": [("d", "homepage")]}, at=112.0)
        assert set(online.read(["u1"])[1]["u1"]) == {"b", "c", "d"}  # a, least recently shown, went first
        online.show({"u1": [("e", "homepage")]}, at=161.5)  # b and c are older than keep_s now
        assert set(online.read(["u1"])[1]["u1"]) == {"d", "e"}
        online.forget("u1")
        assert online.read(["u1"])[1]["u1"] == {}
    finally:
        online.clear()
