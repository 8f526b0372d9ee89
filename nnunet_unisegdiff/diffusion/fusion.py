"""Uncertainty fusion (paper section 2.4): the sampled masks become one probability map, and the
probability map becomes the logits nnU-Net's predictor averages over tiles, mirrors and folds."""
from __future__ import annotations

import torch
from torch import Tensor

from nnunet_unisegdiff.diffusion.staple import staple_multiclass

# nnU-Net accumulates logits in fp16 and rejects infinities: log(1e-4) = -9.2 stays finite
MIN_PROB = 1e-4
TEMPER_CAP = 0.99  # never fully uniform, so the argmax (nnU-Net's segmentation) is kept


def fuse_masks(masks: Tensor, num_classes: int, method: str = "staple",
               pseudo_pixels: float | None = None) -> Tensor:
    """masks: (B, N, *spatial) label maps of N draws -> (B, C, *spatial) class probabilities.

    'staple' is per-class STAPLE (for two classes the background posterior is 1 - foreground's, so
    this is binary STAPLE); 'vote' is the mean of the one-hot draws, the paper's no-STAPLE ablation.
    `pseudo_pixels`: STAPLE's prior on each rater's rates (pseudo-pixels at the initial 0.9 / 0.1) as a
    fraction of the image's pixels; None is the paper's reading (one pseudo-pixel). On a near-empty
    stack, say 20 draws with a few scattered pixels each and no pixel above 6 votes, the paper's
    fixed-prior EM drifts to rates that carry no information and returns about 0.5 everywhere: a
    false lesion. A few percent of the pixels keep the rates informative, and change little where
    the draws hold a real lesion.
    """
    if method == "staple":
        k = None if pseudo_pixels is None else max(1.0, pseudo_pixels * masks.shape[2:].numel())
        return staple_multiclass(masks, num_classes, batched=True, pseudocount=k)
    if method == "vote":
        classes = torch.arange(num_classes, device=masks.device).view(1, 1, num_classes, *[1] * (masks.ndim - 2))
        return (masks.unsqueeze(2) == classes).float().mean(1)
    raise ValueError(f"fusion method must be 'staple' or 'vote', got {method!r}")


def temper_by_draws(probs: Tensor, masks: Tensor, cap: float = TEMPER_CAP) -> Tensor:
    """probs (B, C, *spatial) shrunk toward uniform where the draws masks (B, N, *spatial) disagree: not at
    all where every draw gives the same class, by `cap` where they split evenly among the C classes.

    Why: a pipeline's probabilities are crisp (CFENet's softmax is polarised, STAPLE's posterior saturates),
    so the saved probabilities said nothing of the draws. Tempered, they show where and how much the
    draws disagree, for the entropy map and the per-case confidence read from them (docs/method.md,
    item 18, and benchmarks/README.md, section 10, for what that changes). Each pixel keeps its argmax,
    so the segmentation is the pipeline's.
    """
    c = probs.shape[1]
    lam = cap * (1 - fuse_masks(masks, c, "vote").amax(1, keepdim=True)) / (1 - 1 / c)  # (B, 1, *spatial)
    return (1 - lam) * probs + lam / c


def probabilities_to_logits(probs: Tensor) -> Tensor:
    """Logits whose softmax is `probs` (renormalised after clamping to MIN_PROB), always finite."""
    p = probs.float().clamp(min=MIN_PROB)
    return (p / p.sum(1, keepdim=True)).log()
