"""Re-ranking the shop's own lists (rerank placements), query-item text match, request-time filters, placement
kinds: through the engine's pipeline on the tiny shop."""

import numpy as np
import pytest

from shelfwise.ranking.query import terms
from shelfwise.request import Filters, RecRequest
from shelfwise.settings import ModelSettings
from shelfwise.stages.shoporder import rank_scores
from tests.conftest import ids


def test_terms_fold_case_and_plurals():
    assert terms("Phone CASES, Batteries & USB-C cables 4K TVs") == ["phone", "case", "battery", "usb", "c", "cable",
                                                                     "4k", "tv"]
    assert terms("glass boxes glasses") == ["glass", "box", "glass"]


def test_rank_scores_blend_scale():
    score = np.array([[0.1, 5.0, -np.inf, 2.0]], np.float32)
    valid = np.array([[True, True, False, True]])
    assert rank_scores(score, valid)[0].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 2 / 3])


def test_placement_kinds_follow_names_and_rails_run_their_own_stages(trained_engine):
    kinds = {n: p.kind for n, p in ModelSettings().placements.items()}
    assert kinds == {"homepage": "homepage", "pdp_similar": "item", "pdp_fbt": "item", "cart_upsell": "cart",
                     "search": "rerank", "category": "rerank", "email_weekly": "homepage",
                     "wishlist_alerts": "homepage"}
    pipe = trained_engine.pipeline
    assert "shop_order" not in [s.name for s in pipe.stages]  # the rails pay nothing for re-ranking
    assert "shop_order" in [s.name for s in pipe.rerank_stages]


def test_rerank_keeps_the_list_and_blends_with_its_order(trained_engine):
    shop = ["h1", "h0", "c2", "c3", "p3", "p1", "c1", "p2", "zz"]
    keep = trained_engine.recommend(RecRequest("search", shopper="u1", given=shop, k=9, impact=0.0))
    assert ids(keep) == shop[:-1]  # impact 0: the shop's order (the unknown id left out)
    mine = trained_engine.recommend(RecRequest("search", shopper="u1", given=shop, k=9, impact=1.0))
    assert sorted(ids(mine)) == sorted(shop[:-1]) and ids(mine) != shop[:-1]
    half = trained_engine.recommend(RecRequest("search", shopper="u1", given=shop, k=9, impact=0.5))
    # halfway: each item's place is between its shop and its personal place (rank blend), roughly
    for x in shop[:-1]:
        lo, hi = sorted((ids(keep).index(x), ids(mine).index(x)))
        assert lo - 2 <= ids(half).index(x) <= hi + 2


def test_rerank_applies_exclusions_stock_and_rules_filters(trained_engine):
    item = trained_engine.get_item("c2")
    trained_engine.upsert_items([item.model_copy(update={"stock": 0})])
    shop = ["c2", "c3", "p2", "h1"]
    got = ids(trained_engine.recommend(RecRequest("search", shopper="u1", given=shop, k=4, exclude=["p2"])))
    assert sorted(got) == ["c3", "h1"]
    got = ids(trained_engine.recommend(RecRequest("search", given=shop, k=4,
                                                  filters=Filters(brands=("volt",)))))
    assert got == ["h1"]


def test_items_new_to_the_model_are_scored_from_content_not_dumped(trained_engine):
    from shelfwise.domain import Item
    from tests.conftest import CATALOG_SINCE

    trained_engine.upsert_items([Item(id="c7", title="Case for phone 1", category=["Accessories", "Phone Cases"],
                                      brand="Shield", price=20, stock=5, created_at=CATALOG_SINCE)])
    if trained_engine.encoder is not None:  # its content vector is encoded in the background
        import time

        for _ in range(200):
            if trained_engine.encoder.pending == 0 and trained_engine.encoder.encoded:
                break
            time.sleep(0.05)
    shop = ["h1", "h0", "c7", "p3", "c3"]
    ans = trained_engine.recommend(RecRequest("search", shopper="u1", given=shop, k=5, impact=1.0))
    new = next(r for r in ans.items if r.item_id == "c7")
    assert "content" in new.sources and new.score > 0
    assert ids(ans).index("c7") < ids(ans).index("h1")  # a phone 1 case before a charger, for a phone 1 shopper


@pytest.mark.parametrize("filters, expect", [
    (Filters(categories=("Accessories",)), {"c1", "c2", "c3", "h0", "h1"}),
    (Filters(brands=("SHIELD", "volt")), {"c1", "c2", "c3", "h0", "h1"}),
    (Filters(price_min=25, price_max=40), {"h0", "h1"}),
    (Filters(categories=("Phones",), price_max=501.5), {"p1"}),
])
def test_filters_on_rails(trained_engine, filters, expect):
    got = ids(trained_engine.recommend(RecRequest("homepage", shopper="u0", k=10, filters=filters)))
    assert set(got) == expect - {"p0", "c0"}  # u0 bought p0 and c0: never shown again


def test_filtered_rail_searches_past_the_candidate_pool(trained_engine, monkeypatch):
    # a candidate pool of 1 (the blend's best): the filter's items come from the filtered popular fill
    cand = trained_engine.pipeline.stage("candidates")
    monkeypatch.setattr(cand.settings, "limit", 1)
    got = ids(trained_engine.recommend(RecRequest("homepage", shopper="u1", k=5,
                                                  filters=Filters(brands=("Volt",)))))
    assert set(got) == {"h0", "h1"}
