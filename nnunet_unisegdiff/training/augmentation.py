"""Condition augmentation of phase B: the condition made less trustworthy than it is, so that DNet learns to
weigh it against the noisy mask rather than copy it (cascaded diffusion's conditioning augmentation, Ho et al.,
JMLR 2022; nnU-Net's cascade augments its first stage's segmentation the same way).

Two kinds, each off by default in the trainer:
- `feature_noise`: Gaussian noise on the features;
- `SegmentationAugmentation` + `augment_conditions`: nnU-Net's own cascade transforms (a random binary
  operator, a removed connected component) applied to the segmentation that the features encode, carried back
  to the features by moving every changed pixel's feature vector to that of the nearest pixel of its new class.
  CFENet's 1x1 segmentation head then reads the augmented segmentation from the augmented full-resolution
  features exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from batchgeneratorsv2.transforms.nnunet.random_binary_operator import ApplyRandomBinaryOperatorTransform
from batchgeneratorsv2.transforms.nnunet.remove_connected_components import (
    RemoveRandomConnectedComponentFromOneHotEncodingTransform,
)
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from scipy.ndimage import distance_transform_edt
from torch import Tensor
from torch.nn import functional as F


def feature_noise(cond: Sequence[Tensor], sigma: float, generator: torch.Generator | None = None) -> list[Tensor]:
    """Each CF_s (B, F_s, *spatial_s) plus Gaussian noise of `sigma` times its channel's standard deviation over
    the batch and space; sigma 0 returns the features unchanged."""
    if sigma < 0:
        raise ValueError(f"feature_noise: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return list(cond)
    out = []
    for f in cond:
        sd = f.float().transpose(0, 1).reshape(f.shape[1], -1).std(1).view(1, -1, *[1] * (f.ndim - 2))
        noise = torch.randn(f.shape, generator=generator, device=f.device, dtype=torch.float32)
        out.append((f.float() + sigma * sd * noise).to(f.dtype))
    return out


@dataclass(frozen=True)
class SegmentationAugmentation:
    """The augmentation nnUNetTrainer.get_training_transforms gives the previous stage's segmentation when the
    cascade is on (these defaults are its values), in nnU-Net's RNG (numpy's and torch's global generators)."""
    p_binary_operator: float = 0.4         # a dilation, erosion, closing or opening ...
    strel_size: tuple[float, float] = (1, 8)  # ... by a disk / ball of this radius, in full-resolution pixels
    p_remove_component: float = 0.2        # a random connected component removed ...
    max_component_fraction: float = 0.15   # ... among those covering less than this fraction of the image
    p_per_label: float = 0.5               # each foreground label's chance, given the transform

    def transforms(self, num_foreground: int) -> ComposeTransforms:
        """nnU-Net's two cascade transforms on a one-hot image of `num_foreground` foreground channels."""
        channels = list(range(num_foreground))
        return ComposeTransforms([
            RandomTransform(ApplyRandomBinaryOperatorTransform(channels, strel_size=self.strel_size,
                                                               p_per_label=self.p_per_label),
                            apply_probability=self.p_binary_operator),
            RandomTransform(RemoveRandomConnectedComponentFromOneHotEncodingTransform(
                channels, fill_with_other_class_p=0, dont_do_if_covers_more_than_x_percent=self.max_component_fraction,
                p_per_label=self.p_per_label), apply_probability=self.p_remove_component)])

    def __call__(self, seg: Tensor, num_classes: int) -> Tensor:
        """Label maps (B, *spatial) of classes 0..num_classes-1 -> augmented label maps, case by case."""
        transform = self.transforms(num_classes - 1)
        out = seg.detach().cpu().clone()
        for b in range(seg.shape[0]):
            onehot = torch.stack([out[b] == c for c in range(1, num_classes)]).to(torch.uint8)  # (C-1, *spatial)
            onehot = transform(image=onehot)["image"]
            out[b] = 0
            for c in range(1, num_classes):
                out[b][onehot[c - 1] > 0] = c
        return out.to(seg.device)


def _resize_labels(seg: Tensor, shape: Sequence[int]) -> Tensor:
    """(B, *spatial) labels -> (B, *shape), nearest neighbour."""
    if tuple(seg.shape[1:]) == tuple(shape):
        return seg
    return F.interpolate(seg[:, None].float(), size=tuple(shape), mode="nearest")[:, 0].to(seg.dtype)


def transplant_features(cond: Sequence[Tensor], seg: Tensor, new_seg: Tensor) -> list[Tensor]:
    """Carry a change of segmentation to the features that encode it: at each stage CF_s (B, F_s, *spatial_s),
    with both label maps (B, *spatial) resized to its grid, every pixel whose label changed to class c takes
    the feature vector of the nearest pixel that `seg` labels c (left as is where `seg` has no pixel of c)."""
    out = []
    for f in cond:
        old = _resize_labels(seg, f.shape[2:]).cpu().numpy()
        new = _resize_labels(new_seg, f.shape[2:]).cpu().numpy()
        f = f.clone()
        for b in np.flatnonzero((old != new).reshape(len(old), -1).any(1)):
            for c in np.unique(new[b][old[b] != new[b]]):
                source = old[b] == c
                if not source.any():
                    continue
                nearest = distance_transform_edt(~source, return_distances=False, return_indices=True)
                target = np.flatnonzero((new[b] == c) & (old[b] != c))
                index = np.ravel_multi_index(tuple(i.ravel()[target] for i in nearest), source.shape)
                flat = f[b].reshape(f.shape[1], -1)  # (F_s, prod(spatial_s)), a view of f[b]
                flat[:, torch.as_tensor(target, device=f.device)] = flat[:, torch.as_tensor(index, device=f.device)]
        out.append(f)
    return out


def augment_conditions(cond: Sequence[Tensor], head: Callable[[Tensor], Tensor],
                       augmentation: SegmentationAugmentation) -> list[Tensor]:
    """Condition features [CF_0 (full resolution) .. CF_{S-1}] whose segmentation, as CFENet's 1x1 head reads it
    from CF_0 (logits (B, C, *spatial)), is augmented by `augmentation`; the features follow it."""
    logits = head(cond[0])
    seg = logits.argmax(1)  # (B, *spatial)
    return transplant_features(cond, seg, augmentation(seg, logits.shape[1]))
