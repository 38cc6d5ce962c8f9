"""Frequency caps, property-tested on both online-state backends (in-process and Redis): in any sequence of
requests, events and waiting, no shopper is shown an item beyond its cap, and capping never leaves a rail
emptier than the servable items allow (the next eligible items take the capped ones' slots)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from shelfwise.domain import Event
from shelfwise.request import RecRequest
from shelfwise.settings import load_settings
from tests.conftest import T0, tiny_catalog, tiny_events

ITEMS = [i.id for i in tiny_catalog()]
START = T0 + timedelta(days=10)
CAPS = {"homepage": {"max_impressions": 2, "window_hours": 1.0, "penalty": 0.2, "half_life_hours": 0.5},
        "pdp_similar": {"max_impressions": 3, "window_hours": 2.0, "scope": "all"}}
RESETS = {"product_viewed", "recommendation_clicked", "add_to_cart"}
_ids = itertools.count()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny storefront, trained once for every backend."""
    from shelfwise.service import Shelfwise
    from shelfwise.training import train

    path = tmp_path_factory.mktemp("caps") / "data"
    eng = Shelfwise(load_settings(data_dir=path))
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, eng.settings.models)
    eng.close()
    return path


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest, data_dir: Path):
    from shelfwise.service import Shelfwise

    online = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    settings = load_settings(data_dir=data_dir, stores={"online": online},
                             models={"caps": {"placements": CAPS, "reset_on": sorted(RESETS)},
                                     "explore": {"enabled": False}})
    eng = Shelfwise(settings)
    yield eng
    eng.close()


OPS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from(["homepage", "pdp_similar"]), st.integers(1, 8)),
    st.tuples(st.just("event"), st.sampled_from(ITEMS),
              st.sampled_from(["product_viewed", "recommendation_clicked", "add_to_cart", "remove_from_cart"])),
    st.tuples(st.just("wait"), st.integers(1, 100), st.just(0)),
), min_size=1, max_size=40)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_no_shopper_sees_an_item_beyond_its_cap(engine, ops):
    shopper = f"cap-{next(_ids)}"
    minute = 0.0
    shows: dict[str, list[tuple[float, str]]] = {}  # item -> (minute, placement) of every impression
    reset: dict[str, float] = {}  # item -> minute of the last event that resets its impressions
    for op, a, b in ops:
        minute += 1 / 60  # a second between steps: an event and an impression never share a timestamp, whose order
        # (shown before or after the reset?) the timestamps alone could not tell
        now = START + timedelta(minutes=minute)
        if op == "wait":
            minute += a
        elif op == "event":
            engine.ingest([Event(event_id=f"{shopper}-{next(_ids)}", type=b, user_id=shopper, item_id=a,
                                 timestamp=now)])
            if b in RESETS:
                reset[a] = minute
        else:
            cap = CAPS[a]
            item_page = "p1" if a == "pdp_similar" else None
            ans = engine.recommend(RecRequest(a, shopper=shopper, item_id=item_page, k=b, now=now.timestamp()))
            got = [r.item_id for r in ans.items]
            capped = set()
            for item in ITEMS:
                prior = [t for t, p in shows.get(item, ())
                         if t > max(minute - cap["window_hours"] * 60, reset.get(item, -1e9))
                         and (cap.get("scope") == "all" or p == a)]
                if len(prior) >= cap["max_impressions"]:
                    capped.add(item)
            assert not capped & set(got), f"shown beyond the cap at minute {minute}: {capped & set(got)}"
            servable = [x for x in ITEMS if x not in capped and x != item_page]
            assert len(got) == min(b, len(servable)), "a capped item left its slot empty"
            for item in got:
                shows.setdefault(item, []).append((minute, a))
