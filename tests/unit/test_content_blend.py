"""The blend of projected and content similarity (``content/blend.py``) and the tower's ``blend`` space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelfwise.content.blend import blend_vectors, choose_blend_weight, gain, validation_queries
from shelfwise.content.projection import fit_projection, unit_rows
from shelfwise.content.tower import ContentTower
from shelfwise.domain import Item
from shelfwise.settings import ContentSettings

SETTINGS = ContentSettings(projection="ridge", ridge_alphas=[1.0], text_weight=0.0, progress=False)


def test_blend_vectors_inner_product_is_the_weighted_similarity() -> None:
    rng = np.random.default_rng(0)
    p, c = rng.normal(size=(5, 3)), rng.normal(size=(5, 7))
    v = blend_vectors(p, c, 0.3)
    want = 0.3 * unit_rows(p) @ unit_rows(p).T + 0.7 * unit_rows(c) @ unit_rows(c).T
    np.testing.assert_allclose(v @ v.T, want, atol=1e-5)
    assert v.shape == (5, 10)


def test_gain_and_validation_queries() -> None:
    assert gain(np.array([0, 1, 60]), 50).tolist() == pytest.approx([1.0, 1 / np.log2(3), 0.0])
    # shopper 0: items 1, 2 (slice), 3 -> target 2 after [1]; shopper 1 starts with a slice item -> skipped
    user = np.array([0, 0, 0, 1, 1])
    item = np.array([1, 2, 3, 2, 1])
    ts = np.array([1.0, 2.0, 3.0, 1.0, 2.0])
    hists, targets, excludes = validation_queries(user, item, ts, np.ones(5, bool), np.isin(np.arange(4), [2]), 20)
    assert targets.tolist() == [2] and hists[0].tolist() == [1] and excludes[0].tolist() == [1]


def _shop(content_signal: bool, seed: int = 0):
    """40 clusters of 10 items; each shopper buys within one cluster. Either the content vectors carry the
    cluster (and the collaborative embeddings are noise) or the other way round."""
    rng = np.random.default_rng(seed)
    n_clusters, per = 40, 10
    n = n_clusters * per
    cluster = np.repeat(np.arange(n_clusters), per)
    centres_c, centres_e = rng.normal(size=(n_clusters, 32)), rng.normal(size=(n_clusters, 8))
    informative_c = centres_c[cluster] + 0.3 * rng.normal(size=(n, 32))
    informative_e = centres_e[cluster] + 0.3 * rng.normal(size=(n, 8))
    content = informative_c if content_signal else rng.normal(size=(n, 32))
    emb = rng.normal(size=(n, 8)) if content_signal else informative_e
    users, items, ts = [], [], []
    for u in range(1500):
        c = rng.integers(n_clusters)
        seq = rng.choice(np.flatnonzero(cluster == c), 4, replace=False)
        users += [u] * 4
        items += seq.tolist()
        ts += list(range(4))
    return (content.astype(np.float32), emb.astype(np.float32), np.array(users), np.array(items),
            np.array(ts, float))


@pytest.mark.parametrize("content_signal", [True, False])
def test_the_weight_follows_the_evidence(content_signal: bool) -> None:
    content, emb, user, item, ts = _shop(content_signal)
    warm = np.ones(len(content), bool)
    projection = fit_projection(content, emb, SETTINGS)
    choice = choose_blend_weight(content, emb, warm, projection, user, item, ts, np.ones(len(user), bool), SETTINGS)
    assert choice.queries >= 50 and set(choice.scores) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    if content_signal:  # the projection of noise predicts nothing: content similarity takes over
        assert choice.weight < 1.0 and choice.z is not None and choice.z >= 2.0, choice.report()
    else:  # the content vectors are noise: the projection (w = 1) is kept
        assert choice.weight == 1.0, choice.report()


def test_one_configured_weight_or_too_few_targets_keep_the_projection() -> None:
    content, emb, user, item, ts = _shop(True)
    warm = np.ones(len(content), bool)
    projection = fit_projection(content, emb, SETTINGS)
    only = SETTINGS.model_copy(update={"blend_weights": [1.0]})
    assert choose_blend_weight(content, emb, warm, projection, user, item, ts, np.ones(len(user), bool),
                               only).weight == 1.0
    few = user < 20
    got = choose_blend_weight(content, emb, warm, projection, user[few], item[few], ts[few], np.ones(few.sum(), bool),
                              SETTINGS)
    assert got.weight == 1.0 and "fewer than" in got.reason
    with pytest.raises(ValueError, match="blend_weights"):
        ContentSettings(blend_weights=[1.5])


def test_tower_blend_space_round_trip(tmp_path: Path) -> None:
    content, emb, user, item, ts = _shop(True)
    rng = np.random.default_rng(1)
    items = [Item(id=f"i{r}", category=[f"c{r // 10}"], brand=f"b{r // 10}", price=float(5 + r % 7),
                  attributes={"x": int(rng.integers(3))}) for r in range(len(content))]
    tower = ContentTower(SETTINGS)
    assert tower.space_dim("content") == tower.layout.dim  # known before any fit
    with pytest.raises(RuntimeError):
        tower.space_dim("blend")
    tower.fit(items, emb, np.ones(len(items), bool))
    assert tower.blend_weight == 1.0
    choice = tower.fit_blend(items, emb, np.ones(len(items), bool), user, item, ts, np.ones(len(user), bool))
    assert tower.blend_weight == choice.weight and tower.meta["blend"]["queries"] == choice.queries
    ids = [it.id for it in items[:5]]
    v = tower.vectors(ids, "blend")
    assert v.shape == (5, tower.space_dim("blend")) == (5, tower.dim + tower.layout.dim)
    np.testing.assert_allclose(v, blend_vectors(tower.vectors(ids, "projected"), tower.vectors(ids, "content"),
                                                choice.weight), atol=1e-6)
    tower.save(tmp_path)
    again = ContentTower.load(tmp_path, SETTINGS)
    assert again.blend_weight == tower.blend_weight
    np.testing.assert_allclose(again.vectors(ids, "blend"), v, atol=1e-6)
    new = Item(id="new", category=["c3"], brand="b3", price=6.0, attributes={"x": 1})
    got_ids, got = again.encode_changed([new], space="blend")
    assert got_ids == ["new"] and got.shape == (1, tower.space_dim("blend"))
