"""Each ranking metric against values computed by hand."""

import math

import numpy as np
import pytest

from shelfwise.evaluation import metrics as M


def test_single_target_hr_ndcg_mrr_by_hand():
    lists = [["a", "b", "c", "d", "e", "f"],  # target at position 0
             ["a", "b", "c", "d", "e", "f"],  # target at position 2
             ["a", "b", "c", "d", "e", "f"],  # target at position 5 (outside top-5)
             ["a", "b", "c"]]  # target missing
    targets = [["a"], ["c"], ["f"], ["z"]]
    v = M.per_user(lists, targets, ks=(1, 5, 10))
    assert v["HR@1"].tolist() == [1, 0, 0, 0]
    assert v["HR@5"].tolist() == [1, 1, 0, 0]
    assert v["HR@10"].tolist() == [1, 1, 1, 0]
    assert v["NDCG@5"] == pytest.approx([1.0, 1 / math.log2(4), 0, 0])
    assert v["NDCG@10"] == pytest.approx([1.0, 0.5, 1 / math.log2(7), 0])
    assert v["MRR"] == pytest.approx([1.0, 1 / 3, 1 / 6, 0.0])
    # with one target, recall@k is the hit rate
    assert v["Recall@5"].tolist() == v["HR@5"].tolist()
    s = M.summarise(v)
    assert s["HR@5"] == pytest.approx(0.5)
    assert s["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(7)) / 4)
    assert s["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 4)


def test_multi_target_recall_and_ndcg_by_hand():
    # targets b and d at positions 1 and 3; a third target never listed
    v = M.per_user([["a", "b", "c", "d"]], [["b", "d", "x"]], ks=(2, 4))
    assert v["HR@2"][0] == 1 and v["Recall@2"][0] == pytest.approx(1 / 3)
    assert v["Recall@4"][0] == pytest.approx(2 / 3)
    dcg2 = 1 / math.log2(3)
    idcg2 = 1 + 1 / math.log2(3)
    assert v["NDCG@2"][0] == pytest.approx(dcg2 / idcg2)
    dcg4 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg4 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert v["NDCG@4"][0] == pytest.approx(dcg4 / idcg4)
    assert v["MRR"][0] == pytest.approx(0.5)


def test_perfect_list_has_ndcg_one():
    v = M.per_user([["a", "b", "c"]], [["a", "b"]], ks=(1, 3))
    assert v["NDCG@1"][0] == pytest.approx(1.0) and v["NDCG@3"][0] == pytest.approx(1.0)


def test_segment_means():
    v = {"HR@10": np.array([1.0, 0.0, 0.0, 1.0])}
    mask = np.array([True, True, False, False])
    assert M.summarise(v, mask) == {"HR@10": 0.5}
    assert M.summarise(v, np.zeros(4, bool)) == {"HR@10": 0.0}


def test_coverage_and_long_tail_by_hand():
    lists = [["a", "b", "c"], ["a", "d", "e"]]
    assert M.coverage(lists, 10, 2) == pytest.approx(3 / 10)  # a, b, d
    assert M.coverage(lists, 10, 3) == pytest.approx(5 / 10)
    popularity = {"a": 9, "b": 5, "c": 3, "d": 1, "e": 1}
    tail = M.long_tail_items(popularity, ["a", "b", "c", "d", "e"], head_share=0.4)  # head = a, b
    assert tail == {"c", "d", "e"}
    assert M.long_tail_share(lists, tail, 3) == pytest.approx(3 / 6)
    assert M.long_tail_share(lists, tail, 1) == 0.0
    assert M.long_tail_share([], tail, 3) == 0.0


def test_lists_and_targets_must_align():
    with pytest.raises(ValueError):
        M.per_user([["a"]], [["a"], ["b"]])
