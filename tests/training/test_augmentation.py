"""Condition augmentation of phase B: Gaussian feature noise of the asked size, and nnU-Net's cascade
augmentation of the segmentation the condition features encode, which CFENet's head then reads back exactly."""
import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.nnunet.random_binary_operator import (
    binary_closing_torch,
    binary_dilation_torch,
    binary_erosion_torch,
    binary_opening_torch,
)
from scipy.ndimage import binary_dilation, binary_erosion, label
from skimage.morphology import disk

from nnunet_unisegdiff.training.augmentation import (
    SegmentationAugmentation,
    augment_conditions,
    feature_noise,
    transplant_features,
)

OPERATORS = (binary_dilation_torch, binary_erosion_torch, binary_closing_torch, binary_opening_torch)


def test_feature_noise_has_the_asked_size_per_channel():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1)
    planted = [torch.randn(4, 3, 32, 32, generator=g) * scale + 5.0]
    assert feature_noise(planted, 0.0)[0] is planted[0]
    noisy = feature_noise(planted, 0.5, torch.Generator().manual_seed(1))[0]
    added = (noisy - planted[0]).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(added.std(1), 0.5 * scale.view(3), rtol=0.05)
    assert torch.allclose(added.mean(1), torch.zeros(3), atol=0.05 * scale.view(3).max())
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        feature_noise(planted, -1.0)


def planted(batch: int = 2, size: int = 32) -> torch.Tensor:
    """(B, H, W) masks: a 10 x 10 lesion and a 3 x 3 one."""
    seg = torch.zeros(batch, size, size, dtype=torch.long)
    seg[:, 10:20, 8:18] = 1
    seg[:, 25:28, 25:28] = 1
    return seg


def reading_head() -> torch.nn.Conv2d:
    """A 1x1 head (2 classes) that reads lesion from channel 0 > 0."""
    head = torch.nn.Conv2d(4, 2, 1, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1, 0] = 1.0
    return head


def features_of(seg: torch.Tensor) -> list[torch.Tensor]:
    """CF_0 (B, 4, H, W) with the mask in channel 0 (+-2) and noise elsewhere, and a half-resolution CF_1."""
    g = torch.Generator().manual_seed(0)
    cf0 = torch.randn(seg.shape[0], 4, *seg.shape[1:], generator=g)
    cf0[:, 0] = seg.float() * 4 - 2 + 0.1 * cf0[:, 0]
    cf1 = torch.randn(seg.shape[0], 8, *(s // 2 for s in seg.shape[1:]), generator=g)
    return [cf0, cf1]


@pytest.mark.parametrize("operator", [binary_dilation, binary_erosion])
def test_transplanted_features_encode_the_new_mask_and_change_nothing_else(operator):
    seg = planted()
    new = torch.from_numpy(np.stack([operator(s.numpy(), iterations=2) for s in seg])).long()
    cond = features_of(seg)
    out = transplant_features(cond, seg, new)
    head = reading_head()
    with torch.no_grad():
        assert torch.equal(head(out[0]).argmax(1), new)
    changed = (new != seg)[:, None].expand_as(cond[0])
    assert torch.equal(out[0][~changed], cond[0][~changed])
    # a changed pixel carries a feature vector of its new class, copied from an unchanged pixel
    b, y, x = [int(i[0]) for i in torch.nonzero(new != seg, as_tuple=True)]
    donors = cond[0][b].reshape(4, -1).T[(seg[b] == new[b, y, x]).reshape(-1)]
    assert (donors == out[0][b, :, y, x]).all(1).any()
    # the half-resolution stage follows its resized masks the same way, and keeps its shape
    assert out[1].shape == cond[1].shape and not torch.equal(out[1], cond[1])
    assert transplant_features(cond, seg, seg)[0].equal(cond[0])


def test_removing_a_component_gives_its_pixels_background_features():
    seg = planted(1)
    new = seg.clone()
    new[:, 25:28, 25:28] = 0
    out = transplant_features(features_of(seg), seg, new)
    assert torch.equal(reading_head()(out[0]).argmax(1), new)


def test_cascade_augmentation_of_a_planted_mask():
    seg = planted(60)
    torch.manual_seed(0)
    np.random.seed(0)
    off = SegmentationAugmentation(p_binary_operator=0, p_remove_component=0)
    assert torch.equal(off(seg, 2), seg)
    # a binary operator alone: each case is one of nnU-Net's four operators by a disk of the asked radii
    operator = SegmentationAugmentation(p_binary_operator=1, strel_size=(1, 3), p_per_label=1,
                                        p_remove_component=0)(seg, 2)
    disks = {disk(r, dtype=bool).tobytes(): disk(r, dtype=bool) for r in np.arange(1, 3.0001, 0.0005)}.values()
    candidates = {op(seg[0].bool(), torch.from_numpy(d)).numpy().tobytes() for op in OPERATORS for d in disks}
    assert all(case.bool().numpy().tobytes() in candidates for case in operator)
    assert len({case.numpy().tobytes() for case in operator}) > 10
    assert (operator > seg).flatten(1).any(1).any() and (operator < seg).flatten(1).any(1).any()
    # a component removed alone: exactly one of the two lesions, never a lesion over 15 % of the image
    removed = SegmentationAugmentation(p_binary_operator=0, p_remove_component=1, p_per_label=1)(seg, 2)
    counts = [label(r.numpy())[1] for r in removed]
    assert counts == [1] * len(seg) and (removed <= seg).all()
    assert {int(r.sum()) for r in removed} == {9, 100}
    big = torch.zeros(4, 32, 32, dtype=torch.long)
    big[:, 4:28, 4:28] = 1  # 56 % of the image
    assert torch.equal(SegmentationAugmentation(p_binary_operator=0, p_remove_component=1, p_per_label=1)(big, 2),
                       big)
    # nnU-Net's rates: (1 - 0.4 x 0.5) x (1 - 0.2 x 0.5) = 0.72 of the cases keep their mask
    kept = (SegmentationAugmentation()(planted(300), 2) == planted(300)).flatten(1).all(1).float().mean()
    assert 0.65 < kept < 0.79


def test_augmented_conditions_are_read_as_the_augmented_mask():
    seg = planted(8)
    cond = features_of(seg)
    head = reading_head()
    augmentation = SegmentationAugmentation(p_binary_operator=1, p_per_label=1, p_remove_component=0)
    torch.manual_seed(3)
    np.random.seed(3)
    out = augment_conditions(cond, head, augmentation)
    torch.manual_seed(3)
    np.random.seed(3)
    expected = augmentation(seg, 2)
    assert torch.equal(head(out[0]).argmax(1), expected) and not torch.equal(expected, seg)
    assert [o.shape for o in out] == [c.shape for c in cond]
