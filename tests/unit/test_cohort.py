"""The cohort source on hand-made shoppers whose centroids are known: who is in which cohort, every shopper counting
once, the minimum support and the back-off to coarser cohorts, and stepping back for anyone with a history."""

from __future__ import annotations

import numpy as np
import pytest

from shelfwise.domain import EventContext
from shelfwise.request import Query, Visit
from shelfwise.retrieval import TrainData, load_retriever
from shelfwise.retrieval.cohort import CohortRetriever, cohort_keys
from shelfwise.settings import CohortSettings, ModelSettings
from shelfwise.stores import open_event_store
from tests.conftest import tiny_catalog, view


def shop(tmp_path, settings: CohortSettings) -> tuple[TrainData, CohortRetriever]:
    """Mobile shoppers with the 'cases' segment view cases, mobile shoppers without a segment phones, desktop
    shoppers chargers; one very busy mobile 'cases' shopper views p3 fifty times."""
    def ev(eid, shopper, item, minute, **context):
        return view(eid, shopper, item, minute).model_copy(update={"context": EventContext(**context)})

    events = []
    for i in range(6):
        events += [ev(f"a{i}", f"case{i}", f"c{i % 2}", i, device="mobile", segments=["Cases"]),
                   ev(f"b{i}", f"case{i}", "c2", i + 1)]
        events += [ev(f"p{i}", f"phone{i}", f"p{i % 2}", i, device="Mobile")]
        events += [ev(f"h{i}", f"desk{i}", "h0", i, device="desktop")]
    events += [ev(f"busy{j}", "busy", "p3", 100 + j, device="mobile", segments=["cases"]) for j in range(50)]
    store = open_event_store(f"sqlite:///{tmp_path}/c.db")
    store.append(events)
    data = TrainData.from_log(store.scan(), {it.id: it for it in tiny_catalog()}, ModelSettings().event_weights,
                              contexts=store.entry_contexts())
    store.close()
    return data, CohortRetriever(settings).fit(data)


def new(device="", segments=(), category="", placement="homepage") -> Query:
    return Query(visit=Visit(device, placement, category, tuple(segments)))


def top(data, source, q, k=3) -> list[str]:
    row = source.score([q])[0]
    order = np.argsort(-row, kind="stable")
    return [str(data.items.ids[i]) for i in order[:k] if row[i] > 0]


def test_centroids_are_the_mean_of_their_shoppers_each_counting_once(tmp_path):
    settings = CohortSettings(levels=[["segment", "device"], ["device"]], min_support=3, half_life_days=1e6)
    data, source = shop(tmp_path, settings)
    key = cohort_keys(["segment", "device"], Visit("mobile", "", "", ("cases",)))[0]
    row = source.index[key]
    assert source.support[row] == 7  # six case shoppers and the busy one (segments and devices without case)
    centroid = source.centroids[row].toarray().ravel()
    idx = data.items.index
    # each case shopper: half c0|c1, half c2; the busy one: all p3 — 1/7 each however many events
    assert centroid[idx["c2"]] == pytest.approx(3 / 7, rel=1e-5)
    assert centroid[idx["c0"]] == pytest.approx(1.5 / 7, rel=1e-5)
    assert centroid[idx["p3"]] == pytest.approx(1 / 7, rel=1e-5)
    assert centroid.sum() == pytest.approx(1.0, rel=1e-5)
    assert top(data, source, new("MOBILE".casefold(), ["cases"]))[0] == "c2"
    # mobile without segment: the device level (case, phone and busy shoppers: 13)
    mobile = source.index[cohort_keys(["device"], Visit("mobile"))[0]]
    assert source.support[mobile] == 13
    both = source.centroids[mobile].toarray().ravel()
    assert [both[idx[i]] * 13 for i in ("c2", "p0", "p1", "c0", "p3")] == pytest.approx([3, 3, 3, 1.5, 1], rel=1e-5)
    assert top(data, source, new("desktop"), 1) == ["h0"]


def test_small_cohorts_back_off_and_unknown_visits_get_nothing(tmp_path):
    settings = CohortSettings(levels=[["segment", "device"], ["segment"], ["device"]], min_support=8)
    data, source = shop(tmp_path, settings)
    # segment + device has 7 shoppers < 8, segment alone too: the device level answers (13 mobile shoppers)
    assert source.describe(new("mobile", ["cases"])) == "device=mobile (13 shoppers)"
    assert source.describe(new("desktop")) is None  # 6 desktop shoppers: too few
    assert source.describe(new("tablet", ["nobody"])) is None and top(data, source, new("tablet")) == []
    assert source.describe(new()) is None


def test_several_segments_take_the_most_specific_cohort(tmp_path):
    settings = CohortSettings(levels=[["segment"], ["device"]], min_support=3)
    data, source = shop(tmp_path, settings)
    row = source.cohort_of(new("mobile", ["unknown", "cases"]))
    assert source.keys[row] == "segment=cases"


def test_it_steps_back_for_a_history_a_page_a_cart_or_a_model_row(tmp_path):
    settings = CohortSettings(levels=[["device"]], min_support=3)
    data, source = shop(tmp_path, settings)
    p0 = np.array([data.items.index["p0"]], np.int32)
    visit = Visit("mobile", "homepage")
    assert top(data, source, Query(visit=visit))
    for q in (Query(history=p0, history_kind=np.zeros(1, np.int8), history_ts=np.zeros(1), visit=visit),
              Query(anchors=p0, visit=visit), Query(user=0, visit=visit)):
        assert top(data, source, q) == [] and source.scores([q]).peak()[0] == 0


def test_saved_and_loaded_it_answers_the_same(tmp_path):
    settings = CohortSettings(levels=[["segment", "device"], ["device"]], min_support=3)
    data, source = shop(tmp_path, settings)
    source.save(tmp_path)
    again = load_retriever("cohort", tmp_path)
    for q in (new("mobile", ["cases"]), new("mobile"), new("desktop"), new("tablet")):
        assert again.describe(q) == source.describe(q)
        assert np.array_equal(again.score([q]), source.score([q]))
    assert again.levels == [["segment", "device"], ["device"]] and again.n_items == data.n_items


def test_top_items_cuts_each_centroid(tmp_path):
    settings = CohortSettings(levels=[["device"]], min_support=3, top_items=2)
    data, source = shop(tmp_path, settings)
    assert max(np.diff(source.centroids.indptr)) == 2
    assert len(top(data, source, new("mobile"), 5)) == 2


def test_levels_must_name_distinct_dimensions():
    with pytest.raises(ValueError):
        CohortSettings(levels=[["device", "device"]])
    with pytest.raises(ValueError):
        CohortSettings(levels=[["age"]])
