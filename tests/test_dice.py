"""The package's one Dice (nnunet_unisegdiff/dice.py): each caller's empty rule is a parameter, and the
callers' own functions keep their rules."""
import numpy as np
import pytest

from nnunet_unisegdiff.dice import dice


def _masks():
    empty = np.zeros((4, 4), int)
    lesion = empty.copy()
    lesion[1:3, 1:3] = 1
    half = empty.copy()
    half[1:3, 1] = 1
    return empty, lesion, half


def test_dice_by_hand_and_the_empty_rule_is_a_parameter():
    empty, lesion, half = _masks()
    assert dice(half, lesion, labels=(1,)) == pytest.approx(2 * 2 / (2 + 4))
    assert dice(empty, empty, labels=(1,)) == 1.0
    assert np.isnan(dice(empty, empty, labels=(1,), both_empty=float("nan")))
    assert dice(lesion, empty, labels=(1,), both_empty=float("nan")) == 0.0
    assert dice(empty, empty) == 1.0 and np.isnan(dice(empty, empty, both_empty=float("nan")))


def test_labels_none_scores_the_labels_present_in_either_mask():
    gt = np.array([1, 1, 2, 0])
    pred = np.array([1, 0, 2, 3])
    assert dice(pred, gt) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert dice(pred, gt, labels=(1, 2, 4)) == pytest.approx((2 / 3 + 1 + 1) / 3)  # 4: empty in both


def test_pixels_outside_valid_are_not_scored_and_shapes_must_match():
    empty, lesion, _ = _masks()
    ref = np.where(lesion == 1, -1, 0)
    assert dice(lesion, ref, labels=(1,), valid=ref >= 0) == 1.0
    assert dice(lesion, ref, labels=(1,)) == 0.0
    with pytest.raises(ValueError, match="differ"):
        dice(lesion, lesion[:2])


def test_the_callers_keep_their_empty_rules():
    from nnunet_unisegdiff.evaluation.failure_metrics import dice as failure_dice
    from nnunet_unisegdiff.training.selection import case_dice

    empty, lesion, half = _masks()
    assert case_dice(empty, empty, [1]) == failure_dice(empty, empty) == 1.0
    assert case_dice(half, lesion, [1]) == failure_dice(half, lesion) == dice(half, lesion, labels=(1,))
    ignored = np.where(lesion == 1, -1, 0)
    assert case_dice(lesion, ignored, [1]) == 1.0  # outside nnU-Net's crop
