"""Failure-detection metrics against hand-computed values."""
import itertools

import numpy as np
import pytest

from nnunet_unisegdiff.evaluation.failure_metrics import (
    CalibrationAccumulator,
    aurc,
    auroc,
    dice,
    mean_pairwise_dice,
)


def test_auroc_by_hand():
    # pairs (failed, good): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, 0.1) right, (0.8, 0.4) right
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0


def test_auroc_counts_ties_half():
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == pytest.approx(0.5)
    assert auroc([0.2, 0.5, 0.5], [False, True, False]) == pytest.approx(0.75)


def test_auroc_is_nan_without_failures_or_without_successes():
    assert np.isnan(auroc([0.1, 0.2], [False, False]))
    assert np.isnan(auroc([0.1, 0.2], [True, True]))


def test_auroc_matches_the_pair_count_on_tied_data():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60) / 4  # many ties
    failed = rng.random(60) < 0.3
    pos, neg = scores[failed], scores[~failed]
    by_pairs = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert auroc(scores, failed) == pytest.approx(by_pairs)


def test_auroc_refuses_scores_and_labels_of_different_shapes():
    with pytest.raises(ValueError, match="scores for"):
        auroc([0.1, 0.2, 0.3], [True, False])


def test_aurc_by_hand():
    # most confident first: risks 0, 1, 0.5 -> running means 0, 0.5, 0.5
    assert aurc([0.9, 0.8, 0.7], [0.0, 1.0, 0.5]) == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert aurc([0.9, 0.9], [0.0, 1.0]) == pytest.approx(0.5)  # a tie: either order, expected value


def test_aurc_of_ties_is_the_mean_over_all_orders():
    conf = np.array([0.9, 0.5, 0.5, 0.5, 0.2])
    risk = np.array([0.1, 0.0, 0.7, 0.3, 1.0])

    def ordered(order):
        r = risk[list(order)]
        return np.mean(np.cumsum(r) / np.arange(1, len(r) + 1))
    expected = np.mean([ordered((0, *perm, 4)) for perm in itertools.permutations([1, 2, 3])])
    assert aurc(conf, risk) == pytest.approx(expected)


def test_aurc_oracle_beats_random_beats_reversed():
    rng = np.random.default_rng(1)
    risk = rng.random(50)
    oracle = aurc(-risk, risk)
    worst = aurc(risk, risk)
    random = np.mean([aurc(rng.random(50), risk) for _ in range(50)])
    assert oracle < random < worst
    assert random == pytest.approx(risk.mean(), abs=0.05)


def test_ece_and_brier_by_hand_and_accumulated_over_cases():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1], bool)
    acc = CalibrationAccumulator()
    acc.add(p, y)
    # bin of 0.1: mean 0.1 vs fraction 0.5 (gap 0.4); bin of 0.9: 0.9 vs 1.0 (gap 0.1); half the pixels each
    assert acc.ece() == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    assert acc.brier() == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    split = CalibrationAccumulator()
    split.add(p[:1], y[:1])
    split.add(p[1:], y[1:])
    assert split.ece() == pytest.approx(acc.ece()) and split.brier() == pytest.approx(acc.brier())


def test_calibrated_probabilities_have_zero_ece():
    acc = CalibrationAccumulator()
    acc.add(np.full(10, 0.3), np.arange(10) < 3)
    acc.add(np.ones(4), np.ones(4, bool))  # p = 1 lands in the last bin
    assert acc.ece() == pytest.approx(0.0)
    assert acc.pixels == 14


def test_dice_with_the_empty_rule():
    empty = np.zeros((4, 4), int)
    lesion = empty.copy()
    lesion[1:3, 1:3] = 1
    assert dice(empty, empty) == 1.0
    assert dice(lesion, empty) == 0.0 and dice(empty, lesion) == 0.0
    half = empty.copy()
    half[1:3, 1] = 1
    assert dice(half, lesion) == pytest.approx(2 * 2 / (2 + 4))


def test_dice_is_the_mean_over_labels_in_either_mask():
    gt = np.array([1, 1, 2, 0])
    pred = np.array([1, 0, 2, 3])
    # label 1: 2*1/3, label 2: 1, label 3 (predicted only): 0
    assert dice(pred, gt) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_mean_pairwise_dice():
    a = np.array([1, 1, 0, 0])
    b = np.array([1, 0, 0, 0])
    c = np.zeros(4, int)
    assert mean_pairwise_dice([a, b, c]) == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert mean_pairwise_dice([c, c]) == 1.0
    with pytest.raises(ValueError):
        mean_pairwise_dice([a])
