"""The per-case confidence: a pure function of the probability map that ranks planted cases."""
import numpy as np
import pytest

from nnunet_unisegdiff.evaluation.confidence import (
    case_confidence,
    empty_prediction_confidence,
    foreground_soft_dice,
)

H = W = 32


def binary(p_fg: np.ndarray) -> np.ndarray:
    """(H, W) foreground probability -> (2, H, W) class probabilities."""
    p_fg = np.asarray(p_fg, dtype=np.float64)
    return np.stack([1 - p_fg, p_fg])


def disc(radius: float = 7.0, centre: tuple[float, float] = (15.5, 15.5)) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.float64)


def blurred(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (numpy only) of a mask: probabilities with a soft border."""
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.apply_along_axis(lambda v: np.convolve(np.pad(v, r, mode="edge"), k, "valid"), 0, mask)
    return np.apply_along_axis(lambda v: np.convolve(np.pad(v, r, mode="edge"), k, "valid"), 1, out)


def vote(n_draws: int, jitter: float, seed: int = 0) -> np.ndarray:
    """Mean of `n_draws` disc masks whose centres move by `jitter` pixels: a vote of draws."""
    rng = np.random.default_rng(seed)
    return np.mean([disc(centre=tuple(15.5 + jitter * rng.standard_normal(2))) for _ in range(n_draws)], 0)


def planted_stack() -> dict[str, np.ndarray]:
    """Named cases, each (2, H, W), from most to least trustworthy by construction."""
    near = np.full((H, W), 0.01)
    near[4:9, 4:9] = 0.48  # a near-lesion the network did not commit to
    ambiguous = disc() * 0.55 + (disc(9.0) - disc()) * 0.45  # lesion and a ring both near 0.5
    return {"crisp": binary(disc()), "empty_confident": binary(np.full((H, W), 0.01)),
            "blurred": binary(blurred(disc(), 1.5)), "empty_near_threshold": binary(near),
            "ambiguous": binary(ambiguous)}


def test_soft_dice_of_a_uniform_lesion_is_2q_over_1_plus_q():
    for q in (0.55, 0.7, 0.9, 1.0):
        assert foreground_soft_dice(disc() * q, disc() > 0) == pytest.approx(2 * q / (1 + q))


def test_mass_outside_the_mask_lowers_the_soft_dice():
    p = disc()
    ring = disc(9.0) - disc()
    assert foreground_soft_dice(p + 0.4 * ring, p > 0) < foreground_soft_dice(p, p > 0)
    # by hand: 2 n / (n + 0.4 m + n) with n lesion and m ring pixels
    n, m = disc().sum(), ring.sum()
    assert foreground_soft_dice(p + 0.4 * ring, p > 0) == pytest.approx(2 * n / (2 * n + 0.4 * m))


def test_empty_prediction_score_by_hand_and_symmetric_to_a_lesion():
    p = np.zeros((H, W))
    assert empty_prediction_confidence(binary(p)) == 1.0
    p[3, 3] = 0.3
    assert empty_prediction_confidence(binary(p)) == pytest.approx(2 * 0.7 / 1.7)
    # an empty map whose strongest pixel is at 0.3 scores like a lesion at 0.7 everywhere
    assert case_confidence(binary(p)) == pytest.approx(case_confidence(binary(disc() * 0.7)))
    p[3, 3] = 0.5  # on the boundary (argmax keeps background)
    assert case_confidence(binary(p)) == pytest.approx(2 / 3)


def test_planted_cases_are_ranked_in_the_planted_order():
    scores = {name: case_confidence(probs) for name, probs in planted_stack().items()}
    assert sorted(scores, key=scores.get, reverse=True) == list(planted_stack())
    assert scores["crisp"] == pytest.approx(1.0)
    assert scores["empty_confident"] == pytest.approx(2 * 0.99 / 1.99)
    assert scores["empty_near_threshold"] == pytest.approx(2 * 0.52 / 1.52)


def test_draws_that_disagree_give_less_confidence_than_draws_that_agree():
    agree, some, disagree = (case_confidence(binary(vote(20, j))) for j in (0.0, 1.0, 3.0))
    assert agree == pytest.approx(1.0)
    assert agree > some > disagree


def test_multiclass_is_the_mean_over_predicted_foreground_classes():
    probs = np.zeros((4, H, W))
    left, right = np.zeros((H, W), bool), np.zeros((H, W), bool)
    left[4:12, 4:12], right[20:28, 20:28] = True, True
    probs[1][left] = 1.0                        # class 1: crisp -> 1
    probs[2][right], probs[0][right] = 0.6, 0.4  # class 2: uniform 0.6 -> 0.75
    probs[3] = np.where(left | right, 0.0, 0.2)  # class 3: never predicted, ignored
    probs[0] = 1 - probs[1:].sum(0)
    assert np.allclose(probs.sum(0), 1)
    assert case_confidence(probs) == pytest.approx((1.0 + 2 * 0.6 / 1.6) / 2)


def test_multiclass_empty_prediction_uses_the_strongest_class_against_background():
    probs = np.zeros((3, H, W))
    probs[0], probs[1], probs[2] = 0.5, 0.2, 0.3  # background wins; class 2 vs background: 0.3/0.8
    q = 0.3 / 0.8
    assert case_confidence(probs) == pytest.approx(2 * (1 - q) / (2 - q))


def test_confidence_lies_in_0_1_for_random_maps_and_any_dtype():
    rng = np.random.default_rng(1)
    for c, shape in ((2, (16, 16)), (3, (6, 8, 8)), (5, (12, 12))):
        probs = rng.dirichlet(np.full(c, 0.3), size=shape).transpose(-1, *range(len(shape)))
        score = case_confidence(probs)
        assert 0.0 <= score <= 1.0
        assert case_confidence(probs.astype(np.float16)) == pytest.approx(score, abs=2e-3)


def test_confidence_rejects_a_single_channel():
    with pytest.raises(ValueError, match="C >= 2"):
        case_confidence(np.ones((1, 4, 4)))


def test_a_near_zero_far_field_does_not_rank_cases_by_image_size():
    def case(size: int, far: float) -> np.ndarray:
        p = np.full((size, size), far)
        p[:8, :8] = 0.99  # the same small crisp lesion
        return binary(p)
    small, large = case(32, 1e-3), case(1024, 1e-3)
    assert case_confidence(small) == pytest.approx(case_confidence(large), abs=1e-6)
    assert case_confidence(large) > 0.99
    assert case_confidence(large, floor=0.0) < 0.2  # without the floor, 1e6 pixels of 1e-3 swamp 64 pixels
    doubt = case(1024, 1e-3)
    doubt[1, 500:510, 500:510], doubt[0, 500:510, 500:510] = 0.3, 0.7  # a second near-lesion still counts
    # by hand: 64 lesion pixels at 0.99, 100 near-lesion pixels at 0.3, the far field dropped
    assert case_confidence(doubt) == pytest.approx(2 * 0.99 * 64 / (0.99 * 64 + 0.3 * 100 + 64), rel=1e-5)
