"""Linear stitches between the condition features of two separately trained CFENets.

Two CFENets trained on different cases compute similar features in different channel bases, so DNet,
trained on one network's features, cannot be given another's as they are. A 1x1 linear map per stage,
fitted by ridge least squares on images both networks trained on, carries one network's features into
the other's basis (model stitching: Lenc & Vedaldi, CVPR 2015; Bansal et al., NeurIPS 2021). What the
stitch cannot carry over is what the source network knows about an image: that is the point, when
the source never saw the image and the target did (training/out_of_fold.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Stitch:
    """Per stage s: target_s ≈ weight_s^T source_s + bias_s over channels; `r2` is the fit's explained
    variance on the fitting pixels (1 = exact)."""
    weights: tuple[Tensor, ...]  # (C_s, C_s) source channels x target channels
    biases: tuple[Tensor, ...]   # (C_s,)
    r2: tuple[float, ...]

    def __call__(self, features: Sequence[Tensor]) -> list[Tensor]:
        """features: the source network's CF_0..CF_{S-1}, each (B, C_s, *spatial_s) -> the same in the
        target's basis."""
        out = []
        for f, w, b in zip(features, self.weights, self.biases):
            w, b = w.to(f.device, f.dtype), b.to(f.device, f.dtype)
            out.append(torch.einsum("bc...,cd->bd...", f, w) + b.view(1, -1, *[1] * (f.ndim - 2)))
        return out


def _pixels(f: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B * prod(spatial), C) in float64."""
    return f.movedim(1, -1).reshape(-1, f.shape[1]).double()


def fit_stitch(pairs: Iterable[tuple[Sequence[Tensor], Sequence[Tensor]]], ridge: float = 1e-3) -> Stitch:
    """Ridge least squares per stage from batches of (source features, target features) of the same images.
    Normal equations are accumulated in float64, so any number of batches fits in memory; `ridge` is relative
    to the mean source variance, so the fit does not depend on the features' scale."""
    gram = cross = None  # per stage: [X 1]^T [X 1] (C+1, C+1), [X 1]^T Y (C+1, C)
    y_sum = y_sq = None  # per stage: sum of Y and of Y^2 per channel, for R^2
    count = None
    for source, target in pairs:
        xs = [torch.cat((_pixels(s), torch.ones(s.shape[0] * s[0, 0].numel(), 1, dtype=torch.float64,
                                                 device=s.device)), 1) for s in source]
        ys = [_pixels(t) for t in target]
        if gram is None:
            gram = [torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device) for x in xs]
            cross = [torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=x.device) for x, y in zip(xs, ys)]
            y_sum = [torch.zeros(y.shape[1], dtype=torch.float64, device=y.device) for y in ys]
            y_sq = [torch.zeros(y.shape[1], dtype=torch.float64, device=y.device) for y in ys]
            count = [0] * len(xs)
        for s, (x, y) in enumerate(zip(xs, ys)):
            gram[s] += x.T @ x
            cross[s] += x.T @ y
            y_sum[s] += y.sum(0)
            y_sq[s] += (y * y).sum(0)
            count[s] += x.shape[0]
    if gram is None:
        raise ValueError("fit_stitch: no feature pairs to fit on")
    weights, biases, r2 = [], [], []
    for g, c, ys, yq, n in zip(gram, cross, y_sum, y_sq, count):
        channels = g.shape[0] - 1
        scale = torch.diagonal(g)[:channels].sum() / (channels * n)
        reg = torch.zeros_like(g)
        reg.diagonal()[:channels] = ridge * n * scale.clamp_min(1e-12)  # the bias is not shrunk
        solution = torch.linalg.solve(g + reg, c)  # (C+1, C_target)
        # residual sum of squares from the normal equations: Y^T Y - 2 W^T X^T Y + W^T X^T X W
        sse = (yq.sum() - 2 * (solution * c).sum() + (solution * (g @ solution)).sum()).item()
        sst = (yq - ys * ys / n).sum().item()
        weights.append(solution[:channels].float())
        biases.append(solution[channels].float())
        r2.append(1.0 - sse / sst if sst > 0 else 1.0)
    return Stitch(tuple(weights), tuple(biases), tuple(r2))
