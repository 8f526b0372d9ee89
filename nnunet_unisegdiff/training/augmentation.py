"""Condition augmentation of phase B: the condition features made less trustworthy than they are, so that
DNet learns to weigh them against the noisy mask rather than copy them (cascaded diffusion's conditioning
augmentation, Ho et al., JMLR 2022)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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
