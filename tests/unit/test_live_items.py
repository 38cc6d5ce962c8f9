"""Items added after training: rows in the serving item table (copy on write), sources fitted on fewer items
resized in the candidate stage, the content source's vectors added while serving, and its fit at training."""

import numpy as np
import pytest

from shelfwise.content.encoder import TextEncoder
from shelfwise.domain import Item
from shelfwise.items import ItemTable
from shelfwise.request import Exclusions, Query, RecRequest
from shelfwise.retrieval.base import DenseScores, Retriever, scores_over
from shelfwise.retrieval.content import ContentRetriever
from shelfwise.retrieval.embedding import ItemVectors
from shelfwise.service import Shelfwise
from shelfwise.settings import CandidateSettings
from shelfwise.stores.vectors import ExactIndex
from shelfwise.stores.protocols import Interaction, ShopperState
from shelfwise.training import train
from tests.conftest import ids, tiny_catalog, tiny_events

NEW = [Item(id="p9", title="Phone 9", category=["Phones", "Smartphones"], brand="Nova", price=505, stock=3),
       Item(id="g1", title="Garden hose", category=["Garden", "Hoses"], brand="Aqua", price=25)]


def test_with_items_appends_rows_to_a_new_table_and_keeps_codes():
    cat = {it.id: it for it in tiny_catalog()}
    table = ItemTable.build(sorted(cat), cat)
    n, version = len(table), table.version
    known = cat["p1"].model_copy(update={"price": 1.0})
    grown = table.with_items([known, *NEW])
    assert len(table) == n and table.version == version and "p9" not in table.index  # the old table is untouched
    assert len(grown) == n + 2 and grown.version > version and list(grown.ids[n:]) == ["p9", "g1"]
    p9, g1, p1 = grown.index["p9"], grown.index["g1"], grown.index["p1"]
    assert grown.price[p1] == table.price[p1]  # known items are not changed by with_items (update does that)
    assert grown.category[p9] == grown.category[p1] and grown.top_category[p9] == grown.top_category[p1]
    assert grown.brand[p9] == grown.brand[p1] and grown.stock[p9] == 3 and np.isinf(grown.stock[g1])
    assert grown.category_names[grown.category[g1]] == "Garden > Hoses" and grown.brand_names[grown.brand[g1]] == "Aqua"
    assert grown.top_category[g1] == table.top_category.max() + 1
    assert grown.category_mask("Phones")[p9] and not grown.category_mask("Phones")[g1]
    assert table.with_items([known]) is table


def test_scores_over_a_catalog_larger_or_smaller_than_the_source():
    class Fixed(Retriever):
        name = "fixed"

        def __init__(self, m):
            self.m, self.seen = m, []

        def fit(self, data):
            return self

        @property
        def n_items(self):
            return self.m

        def scores(self, queries):
            self.seen += list(queries)
            return DenseScores(np.tile(np.arange(self.m, 0, -1, dtype=np.float32), (len(queries), 1)))

        def save(self, path):
            pass

        @classmethod
        def load(cls, path):
            raise NotImplementedError

    q = Query(history=np.array([0, 4], np.int32), history_kind=np.zeros(2, np.int8), history_ts=np.array([1.0, 2.0]),
              anchors=np.array([5], np.int32))
    ex = Exclusions(np.array([False, True, False, False, False, False]), [np.array([0, 5])], [None])
    small = Fixed(3)  # fitted before items 3..5 were added
    sc = scores_over(small, [q], 6)
    assert small.seen[0].history.tolist() == [0] and small.seen[0].anchors.size == 0  # only items it knows
    idx, val = sc.top(4, ex)
    assert idx[0].tolist() == [2, -1, -1, -1]  # 0 excluded, 1 banned; 3..5 unknown to it: no evidence
    assert sc.at(np.array([[2, 3, 5, -1]])).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert sc.dense().shape == (1, 6) and sc.dense()[0, 3:].tolist() == [0, 0, 0]
    big = Fixed(8)  # grew while the request (6 items) was running: its items 6, 7 are never proposed
    idx, _ = scores_over(big, [Query()], 6).top(8, Exclusions.none(6, 1))
    assert set(idx[0][idx[0] >= 0].tolist()) == {0, 1, 2, 3, 4, 5}
    assert scores_over(big, [Query()], 6).dense().shape == (1, 6)


def test_item_vectors_take_new_rows_beside_their_index():
    def exact(name, v):
        idx = ExactIndex()
        idx.build(np.arange(len(v)), v)
        return idx

    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    space = ItemVectors("t", x, CandidateSettings(exact_max_items=10))
    space.attach(exact)
    assert space.index is not None and space.indexed == 50 and not space.exact_for(1)
    grown = space.updated(np.vstack([x, 3 * x[:2]]), np.array([50, 51]))  # rows 50, 51: the best matches of queries like rows 0, 1
    q = x[:4]
    keys, scores = grown.search(q, 5)
    full = q @ grown.vectors.T
    assert np.array_equal(keys, np.argsort(-full, axis=1, kind="stable")[:, :5])  # index + the rows past it
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    assert keys[0, 0] == 50 and keys[1, 0] == 51
    old = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :5]
    assert len(space) == 50 and np.array_equal(space.search(q, 5)[0], old)  # the old object is unchanged


def test_requests_with_new_items_in_history_and_cart_and_a_request_on_the_old_table(trained_engine):
    eng = trained_engine
    old = eng.pipeline
    eng.upsert_items(NEW)
    assert eng.pipeline is not old and len(old.items) == len(eng.pipeline.items) - 2
    assert eng.encoder.flush(30) and eng.encoder.errors == 0
    now = eng.pipeline.trained_until + 60
    state = ShopperState(recent=[Interaction("p9", 0, now), Interaction("p1", 0, now + 1)], purchased=set())
    for placement in ("homepage", "pdp_similar", "pdp_fbt", "cart_upsell"):
        ans = eng.recommend(RecRequest(placement, shopper="newbie", item_id="p9", cart=["p9", "g1"], k=6,
                                       state=state))
        assert len(ans.items) == 6 and "p9" not in ids(ans), placement
    # a request still running on the table before the upsert: the content source has more rows than it
    ans = old.recommend([RecRequest("pdp_similar", item_id="p1", k=20)])[0]
    assert "p9" not in ids(ans) and "g1" not in ids(ans) and len(ans.items) == len(old.items) - 1
    # homepage: no content weight, so new items have no evidence there: they come only in exploration slots, and
    # the warm answer is as before
    warm = ids(old.recommend([RecRequest("homepage", shopper="u2", k=5, state=eng.shopper_state("u2"))])[0])
    for n in range(10):
        ans = eng.recommend(RecRequest("homepage", shopper="u2", k=5, request_id=f"r{n}"))
        ranked = [r.item_id for r in ans.items if r.reason != "exploration"]
        assert ranked == warm[:len(ranked)] and set(ids(ans)) - set(ranked) <= {"p9", "g1"}
        eng.merch.log.flush()
        eng.cache.clear()


def test_a_changed_title_re_encodes_the_item(trained_engine):
    eng = trained_engine
    content = eng.pipeline.retrievers["content"]
    assert isinstance(content, ContentRetriever)
    row = eng.pipeline.items.index["h1"]
    before = content.vectors.vectors[row].copy()
    version = eng.pipeline.items.version
    eng.upsert_items([eng.get_item("h1").model_copy(update={"title": "Wireless charging pad, 15 W, fast"})])
    assert eng.encoder.flush(30)
    assert not np.allclose(content.vectors.vectors[row], before) and eng.pipeline.items.version > version


@pytest.fixture
def counted(monkeypatch):
    texts: list[str] = []
    real = TextEncoder.encode

    def encode(self, batch, *a, **kw):
        texts.extend(batch)
        return real(self, batch, *a, **kw)

    monkeypatch.setattr(TextEncoder, "encode", encode)
    return texts


def test_training_projects_into_als_and_encodes_only_new_texts(settings, counted):
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, settings.models)
    assert len(counted) == len(tiny_catalog())  # every text once (the prefix fit's tower is reused)
    eng.upsert_items(NEW)
    eng.refresh_model(0.0)
    assert eng.encoder.flush(30)  # serving encodes them too (and the engine's own encoder counts)
    counted.clear()
    train(eng.store, eng.catalog, eng.models, settings.models)
    assert sorted(counted) == sorted(["Phone 9", "Garden hose"])  # the serving version's texts are reused
    other = settings.models.model_copy(update={"content": settings.models.content.model_copy(
        update={"category_buckets": 64})})
    counted.clear()
    train(eng.store, eng.catalog, eng.models, other)
    assert len(counted) == len(tiny_catalog()) + 2  # another feature layout: nothing of the serving tower reused
    eng.close()
    eng = Shelfwise(settings)
    content = eng.pipeline.retrievers["content"]
    assert isinstance(content, ContentRetriever) and content.space == "projected"
    assert content.n_items == len(eng.pipeline.items)
    eng.close()


@pytest.mark.parametrize("why", ["switched off", "catalog above max_items"])
def test_no_content_source_when_switched_off(settings, why):
    off = {"source": False} if why == "switched off" else {"max_items": len(tiny_catalog()) - 1}
    ms = settings.models.model_copy(update={"content": settings.models.content.model_copy(update=off)})
    eng = Shelfwise(settings)
    eng.upsert_items(tiny_catalog())
    eng.ingest(tiny_events())
    train(eng.store, eng.catalog, eng.models, ms)
    eng.close()
    eng = Shelfwise(settings)
    assert "content" not in eng.pipeline.retrievers and eng.encoder is None
    eng.upsert_items(NEW)  # rows without a content source: served without evidence, no error
    assert "p9" in eng.pipeline.items.index
    assert len(eng.recommend(RecRequest("pdp_similar", item_id="p9", k=4)).items) == 4
    eng.close()


def test_rules_facts_grow_with_the_table_without_reading_the_whole_catalog():
    from shelfwise.rules.compile import match_mask
    from shelfwise.rules.schema import ItemMatch
    from shelfwise.rules.stage import RulesStage, StaticRules

    cat = {it.id: it for it in tiny_catalog()}
    reads = []
    stage = RulesStage(StaticRules(), lambda: reads.append(1) or list(cat.values()))
    table = ItemTable.build(sorted(cat), cat)
    before = stage.facts(table)
    assert len(reads) == 1
    grown = table.with_items(NEW)
    stage.catalog_changed(grown, NEW)  # what Shelfwise.upsert_items does after swapping in the grown table
    after = stage.facts(grown)
    assert len(reads) == 1  # the appended rows came from the upserted items, not from a catalog read
    assert len(before.attributes) == len(table) and len(after.attributes) == len(grown)  # the old facts untouched
    g1 = grown.index["g1"]
    assert after.brand[g1] == "Aqua" and match_mask(ItemMatch(brands=["Aqua"]), grown, after).nonzero()[0].tolist() == [g1]
    # another table (a new model) is read from the catalog again
    stage.catalog_changed(ItemTable.build(sorted(cat), cat), NEW)
    stage.facts(ItemTable.build(sorted(cat), cat))
    assert len(reads) == 2
