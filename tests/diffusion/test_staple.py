"""STAPLE: agreement with SimpleITK's STAPLEImageFilter (the oracle), robustness, shapes, multi-class."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_unisegdiff import staple, staple_multiclass
from nnunet_unisegdiff.dice import dice as package_dice
from nnunet_unisegdiff.diffusion.staple import staple_batched

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def sitk_staple(masks: torch.Tensor) -> torch.Tensor:
    """SimpleITK posterior (float64) of an (N, *spatial) 0/1 stack; run to convergence (ITK default)."""
    filt = sitk.STAPLEImageFilter()
    filt.SetForegroundValue(1.0)
    imgs = [sitk.GetImageFromArray(m.cpu().numpy().astype(np.uint8)) for m in masks]
    for img in imgs:
        assert img.GetPixelID() == sitk.sitkUInt8
    return torch.from_numpy(sitk.GetArrayFromImage(filt.Execute(imgs)))


def noisy_raters(gt: torch.Tensor, n: int, max_flip: float, seed: int) -> torch.Tensor:
    """(n, *gt.shape) bool: each rater flips every pixel of gt with its own rate in [0.02, max_flip]."""
    g = torch.Generator().manual_seed(seed)
    rates = 0.02 + (max_flip - 0.02) * torch.rand((n,) + (1,) * gt.dim(), generator=g)
    return gt ^ (torch.rand((n, *gt.shape), generator=g) < rates)


def box(shape: tuple[int, ...], lo: int, hi: int, shift: int = 0) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[tuple(slice(lo + shift, hi + shift) for _ in shape)] = True
    return m


def ball(shape: tuple[int, ...], radius: float, center_shift: float = 0.0) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    r2 = sum((x - (s - 1) / 2 - center_shift) ** 2 for x, s in zip(grids, shape))
    return r2 <= radius**2


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return package_dice(a.cpu().numpy(), b.cpu().numpy(), labels=(1,), both_empty=0.0)


def gt_2d() -> torch.Tensor:
    return ball((48, 48), 12.0) | box((48, 48), 4, 12)


def gt_3d() -> torch.Tensor:
    return ball((20, 20, 20), 6.0)


RANDOM_STACKS = {
    "random2d": lambda: noisy_raters(gt_2d(), 9, 0.25, seed=1),
    "random3d": lambda: noisy_raters(gt_3d(), 6, 0.2, seed=2),
}
STRUCTURED_STACKS = {
    "disks2d": lambda: torch.stack([ball((48, 48), r) for r in (6.0, 8.0, 9.0, 10.0, 13.0)]),
    "squares2d": lambda: torch.stack([box((40, 40), 10, 24, s) for s in (-3, -1, 0, 2, 4)]),
    "balls3d": lambda: torch.stack([ball((18, 18, 18), r, c) for r, c in ((4.0, 0.0), (5.0, 0.5), (6.0, -1.0))]),
    "cubes3d": lambda: torch.stack([box((16, 16, 16), 4, 11, s) for s in (-2, 0, 1, 3)]),
}


RANDOM_STACKS["raters40_2d"] = lambda: noisy_raters(gt_2d()[:24], 40, 0.3, seed=9)  # int64 pattern keys
RANDOM_STACKS["raters70_2d"] = lambda: noisy_raters(gt_2d()[8:24], 70, 0.3, seed=10)  # > 63 raters: row-unique path


@pytest.mark.parametrize("name", list(RANDOM_STACKS) + list(STRUCTURED_STACKS))
def test_itk_mode_matches_simpleitk(name: str) -> None:
    masks = {**RANDOM_STACKS, **STRUCTURED_STACKS}[name]()
    ref = sitk_staple(masks)
    assert torch.isfinite(ref).all(), "oracle must be well defined on this stack"
    ours = staple(masks, mode="itk", dtype=torch.float64)
    assert ours.dtype == torch.float64 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # float32 (the default) reaches the same consensus.
    assert torch.equal(staple(masks, mode="itk") > 0.5, ref > 0.5)


def numpy_warfield(masks: torch.Tensor, p0: float, f0: float, prior: float, iterations: int) -> np.ndarray:
    """Textbook E-first Warfield EM (products of likelihoods, float64): an oracle for the paper schedule."""
    d = masks.reshape(masks.shape[0], -1).double().numpy()  # (N, P)
    p, f = np.full(len(d), p0), np.full(len(d), f0)
    for _ in range(iterations):
        a = prior * np.prod(np.where(d == 1, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - prior) * np.prod(np.where(d == 1, f[:, None], 1 - f[:, None]), axis=0)
        w = a / (a + b)
        p, f = (w * d).sum(1) / w.sum(), ((1 - w) * d).sum(1) / (1 - w).sum()
    return w.reshape(masks.shape[1:])


@pytest.mark.parametrize("name", ["random2d", "random3d", "disks2d", "balls3d"])
def test_paper_mode_matches_textbook_em(name: str) -> None:
    masks = {**RANDOM_STACKS, **STRUCTURED_STACKS}[name]()
    ref = torch.from_numpy(numpy_warfield(masks, 0.9, 0.1, 0.5, 20))
    ours = staple(masks, dtype=torch.float64, pseudocount=0.0)  # plain EM: no Beta prior
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    # The default one-pixel Beta prior changes nothing visible on such stacks.
    assert torch.equal(staple(masks) > 0.5, ref > 0.5)


def well_posed_stacks() -> dict[str, torch.Tensor]:
    """20 raters (the sampler's count), each a noisy version of one truth.

    The paper's fixed prior 0.5 differs from ITK's mean-vote prior; on stacks with few raters or purely
    structural disagreement (nested balls, shifted squares) the two legitimately move the boundary, so they are
    not compared.
    """
    return {
        "random2d": noisy_raters(gt_2d(), 20, 0.25, seed=1),
        "random3d": noisy_raters(gt_3d(), 20, 0.2, seed=2),
        "shifted_disks2d": torch.stack([ball((48, 48), 10.0, 0.5 * (i % 7 - 3)) for i in range(20)]),
        "noisy_cubes3d": noisy_raters(box((18, 18, 18), 4, 13), 20, 0.15, seed=8),
    }


@pytest.mark.parametrize("name", list(well_posed_stacks()))
def test_paper_mode_consensus_matches_simpleitk(name: str) -> None:
    masks = well_posed_stacks()[name]
    ref = sitk_staple(masks) > 0.5
    post = staple(masks)  # paper: E-first, p=0.9, fpr=0.1, prior 0.5, 20 iterations
    assert post.dtype == torch.float32
    assert dice(post > 0.5, ref) >= 0.99


def test_paper_mode_recovers_ground_truth_and_weighs_raters() -> None:
    gt = gt_2d()
    masks = noisy_raters(gt, 20, 0.3, seed=3)
    post = staple(masks)
    assert dice(post > 0.5, gt) > dice(masks.float().mean(0) > 0.5, gt) - 1e-9
    assert dice(post > 0.5, gt) >= 0.98


@pytest.mark.parametrize("mode", ["paper", "itk"])
def test_degenerate_stacks_are_finite(mode: str) -> None:
    shape = (5, 16, 16)
    gt = box(shape[1:], 4, 10)
    one_px = torch.zeros(20, 16, 16, dtype=torch.bool)
    one_px[3, 7, 7] = True  # one rater, one pixel: near-empty
    cases = {
        "empty": torch.zeros(shape, dtype=torch.uint8),
        "full": torch.ones(shape, dtype=torch.uint8),
        "unanimous": gt.expand(*shape).clone(),
        "single_rater": gt[None],
        "one_pixel": one_px,
    }
    for name, masks in cases.items():
        post = staple(masks, mode=mode)
        assert torch.isfinite(post).all(), name
        assert ((post >= 0) & (post <= 1)).all(), name
    assert staple(cases["empty"], mode=mode).max() < 1e-6
    assert staple(cases["full"], mode=mode).min() > 1 - 1e-6
    assert torch.equal(staple(cases["unanimous"], mode=mode) > 0.5, gt)
    if mode == "paper":  # a lone vote among 20 is outvoted (ITK instead trusts the perfectly specific rater)
        assert staple(cases["one_pixel"]).max() < 0.5


def test_paper_mode_fp16_input_under_autocast() -> None:
    masks = noisy_raters(gt_2d(), 20, 0.2, seed=4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        post = staple(masks.half())
    assert post.dtype == torch.float32
    torch.testing.assert_close(post, staple(masks))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spatial,mode", [((24, 20), "paper"), ((10, 12, 14), "paper"), ((24, 20), "itk")])
def test_shapes_dtypes_and_batching(device: str, spatial: tuple[int, ...], mode: str) -> None:
    gt = ball(spatial, 5.0)
    stacks = torch.stack([noisy_raters(gt, 7, 0.1 + 0.1 * s, seed=s) for s in range(3)]).to(device)  # (3, 7, ...)
    stacks[2] = 0  # an all-empty stack next to normal ones
    n_threads = torch.get_num_threads()
    batched = staple_batched(stacks, mode=mode)
    assert torch.get_num_threads() == n_threads  # the CPU single-thread section restores the setting
    assert batched.shape == (3, *spatial) and batched.dtype == torch.float32 and batched.device.type == device
    assert batched[2].abs().max() == 0
    for i in range(3):
        single_bool = staple(stacks[i], mode=mode)
        single_int = staple(stacks[i].to(torch.int64), mode=mode)
        assert single_bool.shape == spatial
        torch.testing.assert_close(single_int, single_bool)
        torch.testing.assert_close(batched[i], single_bool, atol=1e-5, rtol=0)
    assert staple(stacks[0], mode=mode, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
def test_multiclass(device: str) -> None:
    truth = torch.zeros(32, 32, dtype=torch.int64)
    truth[4:20, 4:20] = 1
    truth[16:30, 18:30] = 2
    g = torch.Generator().manual_seed(5)
    n = 11
    wrong = torch.rand(n, 32, 32, generator=g) < 0.15  # each rater mislabels ~15% of pixels at random
    labels = torch.where(wrong, torch.randint(0, 3, (n, 32, 32), generator=g), truth).to(device)
    probs = staple_multiclass(labels, 3)
    assert probs.shape == (3, 32, 32) and probs.device.type == device
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(32, 32, device=device))
    assert torch.equal(probs.argmax(0).cpu(), truth)
    batched = staple_multiclass(torch.stack([labels, labels.flip(-1)]), 3, batched=True)
    assert batched.shape == (2, 3, 32, 32)
    torch.testing.assert_close(batched[0], probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1], probs.flip(-1), atol=1e-5, rtol=0)
    # A class no rater uses gets ~0 probability, and sums stay 1.
    probs4 = staple_multiclass(labels, 4)
    assert probs4[3].max() < 1e-6
    torch.testing.assert_close(probs4.sum(0), torch.ones(32, 32, device=device))
