"""Trainer variants, nnU-Net style: `_Xepochs` for length (split between CFENet and DNet), a
CamelCase modifier for behaviour. Each only sets class attributes."""
from dataclasses import replace

from nnunet_unisegdiff.sampler import SamplerConfig
from nnunet_unisegdiff.staged import StagedObjective
from nnunet_unisegdiff.trainer import nnUNetTrainerUniSegDiff

_BASE = nnUNetTrainerUniSegDiff.unisegdiff


# ---- length: (CFENet epochs, DNet epochs) -------------------------------------------------------
class nnUNetTrainerUniSegDiff_5epochs(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 3, 2


class nnUNetTrainerUniSegDiff_50epochs(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 30, 20


class nnUNetTrainerUniSegDiff_100epochs(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 60, 40


class nnUNetTrainerUniSegDiff_250epochs(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 150, 100


class nnUNetTrainerUniSegDiff_500epochs(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 300, 200


class nnUNetTrainerUniSegDiff_1000epochs(nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet = 700, 300


# ---- inference --------------------------------------------------------------------------------
class nnUNetTrainerUniSegDiffMirroring(nnUNetTrainerUniSegDiff):
    """Test-time mirroring on (4x the sampling cost in 2D, 8x in 3D)."""
    inference_mirroring = True


# ---- ablations of the paper's Tables 4 and 6 ------------------------------------------------------
class nnUNetTrainerUniSegDiffUniformEps(nnUNetTrainerUniSegDiff):
    """Plain eps-prediction diffusion, sampled with DDIM-100."""
    objective = StagedObjective(mode="uniform-eps")
    unisegdiff = replace(_BASE, sampler=SamplerConfig(plan="ddim", ddim_steps=100, ddim_prediction="eps",
                                                      draws_per_branch=20))


class nnUNetTrainerUniSegDiffUniformX0(nnUNetTrainerUniSegDiff):
    """Plain x0-prediction diffusion, sampled with DDIM-100."""
    objective = StagedObjective(mode="uniform-x0")
    unisegdiff = replace(_BASE, sampler=SamplerConfig(plan="ddim", ddim_steps=100, ddim_prediction="x0",
                                                      draws_per_branch=20))


class nnUNetTrainerUniSegDiffOneStep(nnUNetTrainerUniSegDiff):
    """x0 from pure noise in one call (SDSeg-style), trained at t = 999 only."""
    objective = StagedObjective(mode="one-step")
    unisegdiff = replace(_BASE, sampler=SamplerConfig(plan="one-step", draws_per_branch=20))


class nnUNetTrainerUniSegDiffNoDCA(nnUNetTrainerUniSegDiff):
    """Feature fusion at every stage instead of Dual Cross-Attention."""
    unisegdiff = replace(_BASE, use_dca=False)


class nnUNetTrainerUniSegDiffNoSTAPLE(nnUNetTrainerUniSegDiff):
    """Mean vote of the 20 draws instead of STAPLE."""
    unisegdiff = replace(_BASE, fusion="vote")
