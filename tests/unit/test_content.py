"""Content tower (``shelfwise.content``): MiniLM encoder, content features, projection, incremental tower."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shelfwise.content.encoder import DIM, TextEncoder
from shelfwise.content.features import (FeatureLayout, attribute_tokens, content_hash, content_vectors,
                                        item_text, price_band_vector, structured_vector, text_hash)
from shelfwise.content.projection import fit_projection, recall_at_k, true_neighbours
from shelfwise.content.tower import BackgroundEncoder, ContentTower, interaction_counts, warm_mask
from shelfwise.domain import Item
from shelfwise.settings import ContentSettings

TEXTS = ["Pulse Wireless Headphones Black. Over-ear noise cancelling headphones.",
         "Sonora Bluetooth earphones with charging case",
         "MountMaster Full-Motion TV Wall Mount for 55 to 77 inch screens",
         "日本語の商品説明: ワイヤレスイヤホン",  # non-Latin
         "",  # no text at all
         "battery " * 3000]  # far past 256 word pieces


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("content-cache")


@pytest.fixture(scope="module")
def onnx_encoder(cache_dir: Path) -> TextEncoder:
    return TextEncoder("onnx", cache_dir=cache_dir, batch_size=4).load()


@pytest.fixture(scope="module")
def torch_encoder() -> TextEncoder:
    return TextEncoder("torch", batch_size=4).load()


class CountingEncoder:
    """The real encoder, counting the texts it is asked to encode."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.texts = inner, []

    def encode(self, texts, progress=None, batch_size=None):
        self.texts.extend(texts)
        return self.inner.encode(texts, progress=progress, batch_size=batch_size)

    def load(self):
        return self

    def describe(self):
        return self.inner.describe()


# -- encoder ----------------------------------------------------------------------------------------------------
def test_encoder_shape_norm_determinism_and_order(onnx_encoder: TextEncoder) -> None:
    seen = []
    a = onnx_encoder.encode(TEXTS, progress=lambda d, n: seen.append((d, n)))
    b = onnx_encoder.encode(TEXTS)
    assert a.shape == (len(TEXTS), DIM) and a.dtype == np.float32
    assert np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert seen == [(4, 6), (6, 6)]  # a progress call per batch
    rev = onnx_encoder.encode(TEXTS[::-1], batch_size=1)  # other batches, other padding: same vectors
    np.testing.assert_allclose(rev[::-1], a, atol=1e-5)
    assert onnx_encoder.encode([]).shape == (0, DIM)


def test_encoder_is_semantic(onnx_encoder: TextEncoder) -> None:
    v = onnx_encoder.encode(["wireless headphones", "bluetooth earphones", "TV wall mount"])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_torch_and_onnx_agree(onnx_encoder: TextEncoder, torch_encoder: TextEncoder) -> None:
    a, b = onnx_encoder.encode(TEXTS), torch_encoder.encode(TEXTS)
    assert np.abs(a - b).max() < 1e-4
    assert onnx_encoder.onnx_path().is_file()  # exported once, into the cache directory


def test_torch_matches_sentence_transformers_reference(torch_encoder: TextEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    from shelfwise.content.encoder import model_dir

    ref = SentenceTransformer(str(model_dir()), device="cpu").encode(TEXTS[:4], normalize_embeddings=True)
    assert np.abs(torch_encoder.encode(TEXTS[:4]) - ref).max() < 1e-5


# -- features ---------------------------------------------------------------------------------------------------
LAYOUT = FeatureLayout.from_settings(ContentSettings())


def full_item(**over) -> Item:
    base = dict(id="a", title="Tempo Sport Watch Band", description="Silicone band.", category=["Accessories",
                "Watch Bands"], brand="Tempo", price=25.0, attributes={"color": "Black", "material": "Silicone",
                "size": "45mm", "sustainability": {"rating": 4.5, "recycled": True}, "season": ["summer", "sport"]},
                tags=["new"])
    base.update(over)
    return Item(**base)


def test_features_for_missing_fields_are_zero_blocks() -> None:
    b = LAYOUT.blocks()
    bare = structured_vector(Item(id="x"), LAYOUT)
    assert bare.shape == (LAYOUT.dim,) and not bare.any()
    v = structured_vector(full_item(brand=None, price=None), LAYOUT)
    assert not v[b["brand"]].any() and not v[b["price"]].any()
    assert v[b["category"]].any() and v[b["attributes"]].any()
    for name, weight in (("category", LAYOUT.category_weight), ("attributes", LAYOUT.attribute_weight)):
        assert np.linalg.norm(v[b[name]]) == pytest.approx(weight, rel=1e-5)
    # no text: the text block stays zero whatever the encoder returned
    items = [Item(id="t", title="", description="   "), full_item()]
    cv = content_vectors(items, np.ones((2, DIM), np.float32), LAYOUT)
    assert not cv[0, b["text"]].any() and cv[1, b["text"]].any()
    assert item_text(items[0]) == ""


def test_features_are_deterministic_and_order_free() -> None:
    a = full_item()
    b = full_item(attributes=dict(reversed(list(a.attributes.items()))))
    assert np.array_equal(structured_vector(a, LAYOUT), structured_vector(b, LAYOUT))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(full_item(price=26.0))
    assert text_hash(a) == text_hash(full_item(price=26.0))


def test_attribute_tokens() -> None:
    toks = attribute_tokens({"Colour": " Dark  Blue ", "rating": 4.25, "stock_count": 3, "eco": False,
                             "none": None, "nan": float("nan"), "dims": {"w": 10, "h": 2.5}, "tags": ["a", "B"]},
                            tags=["Summer"])
    assert toks == ["colour=dark blue", "dims.h=2.5", "dims.w=10", "eco=false", "rating=4.25", "stock_count=3",
                    "tags=a", "tags=b", "tag=summer"]


def test_price_bands_are_smooth() -> None:
    def cos(p, q):
        a, b = price_band_vector(p, LAYOUT), price_band_vector(q, LAYOUT)
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(100, 110) > cos(100, 300) > cos(100, 3000)
    assert not price_band_vector(None, LAYOUT).any()
    assert price_band_vector(1e9, LAYOUT).argmax() == LAYOUT.price_bands - 1  # clipped into the last band


# -- tower ------------------------------------------------------------------------------------------------------
def catalog() -> list[Item]:
    items = []
    for i in range(6):
        items.append(Item(id=f"hp{i}", title=f"Pulse Wireless Headphones {i}", category=["Audio", "Headphones"],
                          brand="Pulse", price=80 + i, attributes={"color": "Black"}))
        items.append(Item(id=f"mt{i}", title=f"MountMaster TV Wall Mount {i}", category=["Accessories", "TV Mounts"],
                          brand="MountMaster", price=40 + i, attributes={"type": "Tilting"}))
    return items


def fitted_tower(encoder, items=None) -> tuple[ContentTower, np.ndarray]:
    items = items or catalog()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 8))
    emb = np.array([centres[0 if it.id.startswith("hp") else 1] + 0.1 * rng.normal(size=8) for it in items])
    tower = ContentTower(ContentSettings(ridge_alphas=[1.0]), encoder=encoder)
    return tower.fit(items, emb, np.ones(len(items), bool)), emb


def test_incremental_encode_only_touches_changed_items(onnx_encoder: TextEncoder) -> None:
    enc = CountingEncoder(onnx_encoder)
    items = catalog()
    tower, _ = fitted_tower(enc, items)
    assert len(enc.texts) == len(items)
    ids, vecs = tower.encode_changed(items)
    assert ids == [] and vecs.shape == (0, tower.dim) and len(enc.texts) == len(items)
    enc.texts.clear()
    # price change: the vector changes, MiniLM does not run
    cheaper = items[0].model_copy(update={"price": 20.0})
    ids, vecs = tower.encode_changed([cheaper] + items[1:])
    assert ids == ["hp0"] and vecs.shape == (1, tower.dim) and enc.texts == []
    # new title: only that text is encoded; a new item with the same text as another new item: encoded once
    retitled = items[1].model_copy(update={"title": "MountMaster Full-Motion TV Wall Mount"})
    new1 = Item(id="hpX", title="Pulse Studio Headphones", category=["Audio", "Headphones"], brand="Pulse")
    new2 = new1.model_copy(update={"id": "hpY"})
    ids, vecs = tower.encode_changed([retitled, new1, new2, items[2]])
    assert ids == ["mt0", "hpX", "hpY"]
    assert sorted(enc.texts) == sorted([item_text(retitled), item_text(new1)])
    assert len(tower) == len(items) + 2
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # encode() answers every item in order, encoding nothing it already has
    enc.texts.clear()
    out = tower.encode([items[3], new1])
    assert out.shape == (2, tower.dim) and enc.texts == []


def test_variants_share_a_text_encoding_and_bad_input_is_encoded(onnx_encoder: TextEncoder) -> None:
    enc = CountingEncoder(onnx_encoder)
    tower, _ = fitted_tower(enc)
    enc.texts.clear()
    variant = catalog()[0].model_copy(update={"id": "hp0-white", "attributes": {"color": "White"}})
    odd = [Item(id="long", title="Case", description="protective " * 1800),  # 19,800 characters
           Item(id="cyr", title="Беспроводные наушники", description="耳机"),
           Item(id="bare"),
           Item(id="weird", attributes={"dims": {"w": [1, {"deep": None}]}, "flag": True, "n": 1e300})]
    ids, vecs = tower.encode_changed([variant, *odd])
    assert ids == ["hp0-white", "long", "cyr", "bare", "weird"]
    assert len(enc.texts) == 2  # the variant reuses hp0's text vector; "bare" and "weird" have no text
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    again, _ = fitted_tower(enc)  # deterministic: a second fit gives the same vectors
    ids0 = [it.id for it in catalog()]
    np.testing.assert_array_equal(again.vectors(ids0), tower.vectors(ids0))


def test_new_item_lands_near_the_warm_items_it_resembles(onnx_encoder: TextEncoder) -> None:
    tower, emb = fitted_tower(onnx_encoder)
    _, v = tower.encode_changed([Item(id="new", title="Pulse Wireless Headphones Pro", category=["Audio",
                                 "Headphones"], brand="Pulse", price=99.0)])
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ v[0]
    heads = [i for i, it in enumerate(catalog()) if it.id.startswith("hp")]
    assert set(np.argsort(-sims)[:6]) == set(heads)
    m, known = tower.aligned(["mt2", "nope", "new"])
    assert known.tolist() == [True, False, True] and not m[1].any()
    np.testing.assert_array_equal(m[2], v[0])
    assert tower.target_norm == pytest.approx(float(np.median(np.linalg.norm(emb, axis=1))))
    f = tower.similarity_to_history(["hp1", "hp2", "unknown"], ["hp3", "mt3", "unknown"])
    assert f[0] > f[1] > 0 and f[2] == 0
    assert not tower.similarity_to_history([], ["hp3"]).any()


def test_save_load_round_trip(onnx_encoder: TextEncoder, tmp_path: Path) -> None:
    enc = CountingEncoder(onnx_encoder)
    tower, _ = fitted_tower(enc)
    tower.encode_changed([Item(id="solo", title="")])  # an item without text
    tower.save(tmp_path / "v1")
    assert not list((tmp_path / "v1").glob(".*"))  # no temporary files left
    back = ContentTower.load(tmp_path / "v1", ContentSettings(), encoder=enc)
    assert back.ids == tower.ids and back.content_hashes == tower.content_hashes
    for space in ("projected", "content"):
        np.testing.assert_array_equal(back.all_vectors(space)[1], tower.all_vectors(space)[1])
    x = np.random.default_rng(1).normal(size=(3, back.layout.dim)).astype(np.float32)
    np.testing.assert_array_equal(back.projection.transform(x), tower.projection.transform(x))
    enc.texts.clear()
    assert back.encode_changed(catalog())[0] == [] and enc.texts == []
    with np.load(tmp_path / "v1" / "content_tower.npz", allow_pickle=False) as z:  # no object arrays
        assert all(z[k].dtype != object for k in z.files)


def test_saved_layout_wins_and_encoder_change_reencodes(onnx_encoder: TextEncoder, tmp_path: Path) -> None:
    enc = CountingEncoder(onnx_encoder)
    tower, _ = fitted_tower(enc)
    tower.save(tmp_path)
    meta = (tmp_path / "content_tower.json").read_text().replace(enc.describe()["weights"], "0" * 16)
    (tmp_path / "content_tower.json").write_text(meta)
    back = ContentTower.load(tmp_path, ContentSettings(category_buckets=32), encoder=enc)
    assert back.layout.category_buckets == 256
    enc.texts.clear()
    assert len(back.encode_changed(catalog())[0]) == len(catalog()) and len(enc.texts) == len(catalog())


def test_tower_rejects_bad_fit_input(onnx_encoder: TextEncoder) -> None:
    tower = ContentTower(encoder=onnx_encoder)
    with pytest.raises(RuntimeError, match="not fitted"):
        tower.encode_changed(catalog())
    items = catalog()
    with pytest.raises(ValueError, match="warm"):
        tower.fit(items, np.zeros((len(items), 4)), np.ones(len(items), bool))
    with pytest.raises(ValueError, match="unique"):
        tower.fit(items + items[:1], np.ones((len(items) + 1, 4)), np.ones(len(items) + 1, bool))


def test_background_encoder_hands_changes_to_the_sink(onnx_encoder: TextEncoder) -> None:
    tower, _ = fitted_tower(onnx_encoder)
    got: list[tuple[list[str], np.ndarray]] = []
    lock = threading.Lock()

    def sink(ids, vecs):
        with lock:
            got.append((ids, vecs))

    worker = BackgroundEncoder(tower, sink)
    try:
        worker.submit([Item(id="n1", title="Pulse Headphones Mini")])
        worker.submit([Item(id="n1", title="Pulse Headphones Mini"), Item(id="n2", title="Wall mount")])
        worker.submit(catalog())  # unchanged: nothing for the sink
        assert worker.flush(timeout=30)
        assert sorted(i for ids, _ in got for i in ids) == ["n1", "n2"]
        assert worker.errors == 0
    finally:
        worker.close()


# -- projection -------------------------------------------------------------------------------------------------
def test_neighbour_helpers() -> None:
    ref = np.eye(4, dtype=np.float32)
    q = np.array([[1.0, 0.1, 0, 0]], np.float32)
    assert true_neighbours(q, ref, 2).tolist() == [[0, 1]]
    assert true_neighbours(ref[:1], ref, 1, exclude=np.array([0])).tolist()[0][0] != 0
    assert recall_at_k(np.array([[0, 1]]), np.array([[1, 2]])) == 0.5
    counts = interaction_counts(np.array([0, 0, 2, 2, 2]), 4, np.array([1, 0, 1, 1, 1]))
    assert counts.tolist() == [1, 0, 3, 0] and warm_mask(counts, 2).tolist() == [False, False, True, False]


@pytest.fixture(scope="module")
def synthetic_slice():
    return _synthetic_slice()


def _synthetic_slice():
    from shelfwise.domain import EventType
    from shelfwise.retrieval.als import ALSRetriever
    from shelfwise.retrieval.base import TrainData
    from shelfwise.settings import ALSSettings, EventWeights
    from shelfwise.stores.protocols import EventLog
    from shelfwise.synthetic import generate_storefront

    shop = generate_storefront(n_items=800, n_shoppers=1500, n_events=40_000, seed=3)
    rows = sorted(((e.shopper, e.session_id or "", iid, int(EventType[e.type]), e.timestamp.timestamp())
                   for e in shop.events() for iid, _, _ in e.lines()), key=lambda r: (r[0], r[4]))
    c = list(zip(*rows))
    n = len(rows)
    log = EventLog(np.array(c[0], object), np.array(c[1], object), np.array(c[2], object),
                   np.array(c[3], np.int8), np.array(c[4]), np.full(n, "", object), np.ones(n, np.int32),
                   np.full(n, np.nan))
    catalog_ = {it.id: it for it in shop.items}
    data = TrainData.from_log(log, catalog_, EventWeights())
    als = ALSRetriever(ALSSettings(factors=32, iterations=10)).fit(data)
    items = [catalog_[str(i)] for i in data.items.ids]
    return items, als.item_factors, interaction_counts(data.item, data.n_items, data.weight)


@pytest.mark.parametrize("kind", ["ridge", "mlp", "knn"])
def test_projection_beats_popularity_on_a_synthetic_slice(kind: str, synthetic_slice) -> None:
    """Catalog fields only (text_weight=0, so MiniLM does not run): held-out warm items must find their true ALS
    neighbours far better than the most popular items do."""
    items, emb, counts = synthetic_slice
    settings = ContentSettings(text_weight=0.0, projection=kind, mlp_epochs=30, mlp_hidden=128, ridge_alphas=[0.1],
                               progress=False)
    warm = warm_mask(counts, settings.min_interactions)
    rng = np.random.default_rng(0)
    test = rng.choice(np.nonzero(warm)[0], int(warm.sum() * 0.15), replace=False)
    train = warm.copy()
    train[test] = False
    tower = ContentTower(settings).fit(items, emb, train)
    ref = np.nonzero(train)[0]
    truth = true_neighbours(emb[test], emb[ref], 10)
    projected = true_neighbours(tower.vectors([items[i].id for i in test]), emb[ref], 10)
    popular = np.argsort(-counts[ref], kind="stable")[:10]
    r_proj = recall_at_k(projected, truth)
    r_pop = recall_at_k(np.tile(popular, (len(test), 1)), truth)
    print(f"{kind}: recall@10 {r_proj:.3f}, popularity {r_pop:.3f}, random {10 / len(ref):.3f}")
    assert r_proj > max(3 * r_pop, r_pop + 0.05), (r_proj, r_pop)
    assert r_proj > 10 * 10 / len(ref)  # and random


@pytest.mark.slow
def test_projection_with_text_on_a_synthetic_slice(cache_dir: Path, synthetic_slice) -> None:
    items, emb, counts = synthetic_slice
    settings = ContentSettings()
    warm = warm_mask(counts, settings.min_interactions)
    test = np.random.default_rng(0).choice(np.nonzero(warm)[0], int(warm.sum() * 0.15), replace=False)
    train = warm.copy()
    train[test] = False
    tower = ContentTower(settings, cache_dir=cache_dir).fit(items, emb, train)
    ref = np.nonzero(train)[0]
    truth = true_neighbours(emb[test], emb[ref], 10)
    r_proj = recall_at_k(true_neighbours(tower.vectors([items[i].id for i in test]), emb[ref], 10), truth)
    popular = np.argsort(-counts[ref], kind="stable")[:10]
    assert r_proj > 3 * recall_at_k(np.tile(popular, (len(test), 1)), truth)


def test_knn_projection_votes_with_true_vectors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.normal(size=(60, 3)).astype(np.float32)
    proj = fit_projection(x, y, ContentSettings(knn_neighbours=[1], knn_temperatures=[0.1]))
    assert proj.kind == "knn" and proj.out_dim == 3
    # with one voter, a training item maps (nearly always) to its own collaborative direction
    hits = np.sum(proj.transform(x) * (y / np.linalg.norm(y, axis=1, keepdims=True)), axis=1) > 0.999
    assert hits.mean() > 0.9


def test_settings_validate_grids() -> None:
    with pytest.raises(ValueError, match="knn_neighbours"):
        ContentSettings(knn_neighbours=[])
    with pytest.raises(ValueError, match="ridge_alphas"):
        ContentSettings(ridge_alphas=[0.0])


def test_fit_projection_validates() -> None:
    with pytest.raises(ValueError):
        fit_projection(np.zeros((1, 3)), np.zeros((1, 2)), ContentSettings())
    with pytest.raises(ValueError):
        fit_projection(np.zeros((3, 3)), np.zeros((2, 2)), ContentSettings())
