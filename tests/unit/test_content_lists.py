"""Neighbour lists of item vectors: product pages and carts scored from their items' lists instead of a product
with every item (``ItemVectors.build_lists`` / ``combined``; the content source), kept right while items are added
or changed live."""

from pathlib import Path

import numpy as np

from shelfwise.request import Exclusions, Query
from shelfwise.retrieval.base import RowStack, SparseScores
from shelfwise.retrieval.content import LISTS, ContentRetriever
from shelfwise.retrieval.embedding import ItemVectors
from shelfwise.settings import ContentSettings

F32 = np.float32


def clustered(n=400, dim=16, seed=0, unit=False):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    x = centers[rng.integers(0, 20, n)] + 0.6 * rng.normal(size=(n, dim))
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    else:
        x *= rng.uniform(0.5, 1.5, size=(n, 1))
    return x.astype(F32)


def one(i):
    return np.array([0]), np.array([i]), np.array([1.0], F32)


def test_lists_give_one_items_top_as_the_product_does_and_carts_exactly_on_their_union():
    x = clustered()
    space = ItemVectors("t", x)
    space.build_lists(50)
    assert space.lists.shape == (400, 400) and (np.diff(space.lists.indptr) <= 50).all()
    assert space.unlisted_share == 0 and space.can_combine(np.array([0, 5]))
    exact = x @ x.T
    for i in (0, 7, 123, 399):
        got = space.combined(x[[i]], *one(i))
        idx, val = got.top(10, Exclusions.none(400, 1))
        want = np.argsort(-exact[i], kind="stable")[:10]
        np.testing.assert_allclose(val[0], exact[i, want], rtol=1e-5)
        assert (idx[0] == want).mean() >= 0.9  # float sums in another order: at most a near-tie swaps
        assert got.peak()[0] == np.float32(val[0, 0])
    # a cart of two items, weighted: exact on the union of their lists, nothing elsewhere
    q = (x[3] + 2 * x[9])[None]
    got = space.combined(q, np.array([0, 0]), np.array([3, 9]), np.array([1.0, 2.0], F32)).dense()[0]
    union = np.array(sorted(set(space.lists[3].indices) | set(space.lists[9].indices)))
    np.testing.assert_allclose(got[union], np.maximum((q @ x.T)[0, union], 0), rtol=1e-4, atol=1e-5)
    assert not got[np.setdiff1d(np.arange(400), union)].any()


def test_rows_added_or_changed_leave_the_lists_and_are_scored_exactly():
    x = clustered()
    space = ItemVectors("t", x)
    space.build_lists(30)
    grown = np.vstack([x, 1.5 * x[9:10]])
    grown[5] = 3 * x[3]  # row 5 changed: now item 3's best match by far
    new = space.updated(grown, np.array([5, 400]))
    assert new.can_combine(np.array([3])) and not new.can_combine(np.array([5]))
    assert not new.can_combine(np.array([400, 3])) and new.unlisted_share == 2 / 401
    d = new.combined(x[[3]], *one(3)).dense()[0]
    assert d.shape == (401,) and int(d.argmax()) == 5
    np.testing.assert_allclose(d[5], 3 * x[3] @ x[3], rtol=1e-5)
    np.testing.assert_allclose(d[400], max(0.0, 1.5 * x[9] @ x[3]), rtol=1e-5, atol=1e-6)
    # item 9's neighbours: the appended copy of it is found, row 5's old vector is not used
    d9 = new.combined(x[[9]], *one(9)).dense()[0]
    np.testing.assert_allclose(d9[400], 1.5 * x[9] @ x[9], rtol=1e-5)
    np.testing.assert_allclose(d9[5], max(0.0, 3 * x[3] @ x[9]), rtol=1e-5, atol=1e-6)
    assert space.can_combine(np.array([5])) and len(space) == 400  # the old object is unchanged


def retriever(x, **settings):
    r = ContentRetriever(ContentSettings(**settings))
    r.vectors = r._listed(ItemVectors("content", x))
    return r


def queries():
    rng = np.random.default_rng(1)
    out = [Query(anchors=np.array([i], np.int32)) for i in (0, 17, 250)]
    out += [Query(anchors=rng.choice(400, 3, replace=False).astype(np.int32)) for _ in range(3)]
    out += [Query(history=rng.choice(400, 6, replace=False).astype(np.int32)), Query()]
    return out


def test_content_source_answers_pages_and_carts_from_lists_like_the_product():
    x = clustered(unit=True)
    lists, plain = retriever(x, neighbours=60), retriever(x, neighbours=0)
    assert lists.vectors.lists is not None and plain.vectors.lists is None
    qs = queries()
    a, b = lists.scores(qs), plain.scores(qs)
    ex = Exclusions.none(400, len(qs))
    ta, tb = a.top(20, ex)[0], b.top(20, ex)[0]
    for r in range(3):  # one item: the same neighbours
        assert (ta[r] == tb[r]).mean() >= 0.9
        assert abs(a.peak()[r] - b.peak()[r]) < 1e-5
    da, db = a.dense(), b.dense()
    for r in range(3, 6):  # a cart of three items: the product's scores on the union of their lists
        scored = da[r] > 0
        np.testing.assert_allclose(da[r, scored], db[r, scored], rtol=1e-4, atol=1e-5)
        assert len(set(ta[r]) & set(tb[r])) >= 18  # the union of lists holds (nearly) all of the product's best
    assert np.array_equal(ta[6], tb[6])  # a shopper's history: the product, as before
    assert isinstance(a, RowStack) and isinstance(a.parts[0][1], SparseScores)
    assert list(a.parts[0][0]) == [0, 1, 2, 3, 4, 5]
    assert (ta[7] < 0).all() and a.peak()[7] == 0  # nothing: no evidence
    assert da.shape == (8, 400) and np.allclose(da[6], db[6])


def test_live_items_are_scored_at_once_and_relisted_past_the_share(tmp_path: Path):
    x = clustered(unit=True)
    r = retriever(x, neighbours=40, relist_share=0.05)
    r.add(np.array([400]), x[[17]])  # a copy of item 17 added live
    assert r.vectors.lists is not None and r.vectors.unlisted_share == 1 / 401
    idx, _ = r.scores([Query(anchors=np.array([17], np.int32))]).top(2, Exclusions.none(401, 1))
    assert 400 in idx[0]
    new = np.random.default_rng(5).normal(size=(30, 16)).astype(F32)
    r.add(np.arange(401, 431), new / np.linalg.norm(new, axis=1, keepdims=True))  # past 5 %: relisted
    assert r.vectors.unlisted_share == 0 and r.vectors.lists.shape == (431, 431)
    assert r.vectors.can_combine(np.array([400, 430]))
    r.save(tmp_path)
    assert (tmp_path / LISTS).is_file()
    back = ContentRetriever.load(tmp_path)
    assert (back.vectors.lists != r.vectors.lists).nnz == 0
    r.add(np.array([3]), x[[4]])
    (tmp_path / LISTS).unlink()
    r.save(tmp_path)  # lists not of the saved vectors alone: not saved, rebuilt at load
    assert not (tmp_path / LISTS).is_file() and ContentRetriever.load(tmp_path).vectors.unlisted_share == 0
    big = retriever(x, neighbours=40, neighbours_max_items=399)
    assert big.vectors.lists is None and big.vectors.unlisted_share == 1.0

