"""nnU-Net's segmentation loss (Dice + CE on label maps), built the way `nnUNetTrainer._build_loss` builds it,
for whatever trains outside a trainer: the gradients tool, the benchmarks and the tests. The trainer itself
takes nnU-Net's `_build_loss` hook, so that loss variants of nnU-Net apply."""
from __future__ import annotations

import numpy as np
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

__all__ = ["segmentation_loss"]


def segmentation_loss(batch_dice: bool = False, ignore_label: int | None = None, deep_supervision_outputs: int = 0,
                      ddp: bool = False) -> nn.Module:
    """Dice + CE (weights 1 : 1, no background Dice). With `deep_supervision_outputs` n > 0, wrapped for n
    outputs with nnU-Net's weights 1/2^i, the lowest resolution's set to 0 (1e-6 under DDP), normalised."""
    loss = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
    if deep_supervision_outputs <= 0:
        return loss
    weights = np.array([1 / (2 ** i) for i in range(deep_supervision_outputs)])
    weights[-1] = 1e-6 if ddp else 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())
