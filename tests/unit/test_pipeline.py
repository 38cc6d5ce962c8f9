"""The pipeline's filters, exclusions and fallbacks."""

import numpy as np
import pytest

from shelfwise.request import RecRequest
from shelfwise.service import Shelfwise
from shelfwise.stores.protocols import Interaction, ShopperState
from tests.conftest import tiny_catalog, ids


@pytest.fixture
def engine(trained_engine):
    return trained_engine


def test_untrained_engine_still_fills_rails(settings):
    eng = Shelfwise(settings)
    assert not eng.trained
    eng.upsert_items(tiny_catalog())
    ans = eng.recommend(RecRequest("homepage", shopper="nobody", k=5))
    assert len(ans.items) == 5 and ans.fallback
    assert all(r.sources == ["fallback"] for r in ans.items)


def test_unknown_shopper_gets_trending(engine):
    ans = engine.recommend(RecRequest("homepage", shopper="stranger", k=4))
    assert ids(ans)[0] == "p0"  # viewed by everybody
    assert ans.items[0].sources == ["trending"]


@pytest.mark.parametrize("placement", ["homepage", "pdp_similar", "pdp_fbt", "cart_upsell"])
def test_never_empty_and_never_unservable(engine, placement):
    for it in ("c1", "h0"):
        item = engine.get_item(it)
        engine.upsert_items([item.model_copy(update={"stock": 0} if it == "c1" else {"available": False})])
    ans = engine.recommend(RecRequest(placement, shopper="u1", item_id="p1", cart=["p1"], k=50))
    got = ids(ans)
    assert len(got) == 10 - 1 - 2  # everything but p1 (anchor) and the two unservable items
    assert "c1" not in got and "h0" not in got and "p1" not in got
    assert len(set(got)) == len(got)
    scores = [r.score for r in ans.items]
    assert scores == sorted(scores, reverse=True)


def test_deleted_item_disappears(engine):
    assert "c2" in ids(engine.recommend(RecRequest("pdp_fbt", item_id="p2", k=3)))
    engine.delete_item("c2")
    assert "c2" not in ids(engine.recommend(RecRequest("pdp_fbt", item_id="p2", k=10)))


def test_exclusions_purchases_and_category_filter(engine):
    # u0 bought p0 and c0: never recommended again on the homepage
    got = ids(engine.recommend(RecRequest("homepage", shopper="u0", k=10)))
    assert "p0" not in got and "c0" not in got
    got = ids(engine.recommend(RecRequest("homepage", shopper="u1", k=10, exclude=["p2", "p3"])))
    assert "p2" not in got and "p3" not in got
    got = ids(engine.recommend(RecRequest("homepage", shopper="u1", k=10, category="Accessories")))
    assert got and all(i[0] in "ch" for i in got)
    got = ids(engine.recommend(RecRequest("homepage", shopper="u1", k=10, category="Accessories > Chargers")))
    assert sorted(got) == ["h0", "h1"]


def test_fbt_and_cart_upsell_use_copurchases(engine):
    fbt = engine.recommend(RecRequest("pdp_fbt", item_id="p2", k=3))
    assert fbt.items[0].item_id == "c2" and fbt.items[0].sources[0] == "copurchase"
    cart = engine.recommend(RecRequest("cart_upsell", cart=["p0"], k=3))
    assert cart.items[0].item_id == "c0"


def test_answer_follows_fresh_history(engine):
    """A history newer than the model changes the answer (fold-in + co-visitation), without retraining."""
    p = engine.pipeline
    now = p.trained_until + 60
    base = engine.recommend(RecRequest("homepage", shopper="newbie", k=3,
                                       state=ShopperState(recent=[], purchased=set())))
    state = ShopperState(recent=[Interaction("p3", 0, now), Interaction("c3", 0, now + 1)], purchased=set())
    after = engine.recommend(RecRequest("homepage", shopper="newbie", k=3, state=state))
    assert ids(after) != ids(base)
    assert "covisit" in after.items[0].sources
    q = p.query(RecRequest("homepage", shopper="u3", state=state))
    assert q.fresh and q.user == p.shopper_index["u3"]


def test_batch_equals_single_requests(engine):
    reqs = [RecRequest("homepage", shopper=f"u{i}", k=5) for i in range(6)]
    for r in reqs:
        r.state = engine.shopper_state(r.shopper)
    batch = engine.pipeline.recommend(reqs)
    single = [engine.pipeline.recommend([r])[0] for r in reqs]
    assert [ids(a) for a in batch] == [ids(a) for a in single]
    np.testing.assert_allclose([[x.score for x in a.items] for a in batch],
                               [[x.score for x in a.items] for a in single], rtol=1e-5)


def test_unknown_placement_is_an_error(engine):
    with pytest.raises(ValueError, match="unknown placement"):
        engine.recommend(RecRequest("checkout", k=3))


def test_request_ids_are_unique_hex_and_forked_processes_draw_their_own_prefix():
    import os

    from shelfwise.request import new_request_id

    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(w, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    assert len(child) == 32 and child[:16] != ids[0][:16]


def test_a_history_of_only_unknown_items_is_answered_like_no_history(engine):
    state = ShopperState(recent=[Interaction("never-seen-1", 0, 1.0), Interaction("never-seen-2", 2, 2.0)],
                         purchased={"never-seen-2"})
    odd = engine.pipeline.recommend([RecRequest("homepage", shopper="ghost", k=5, state=state)])[0]
    none = engine.pipeline.recommend([RecRequest("homepage", shopper="ghost", k=5,
                                                 state=ShopperState(recent=[], purchased=set()))])[0]
    assert ids(odd) == ids(none) and len(ids(odd)) == 5
    assert engine.pipeline.query(RecRequest("homepage", state=state)).history.size == 0
