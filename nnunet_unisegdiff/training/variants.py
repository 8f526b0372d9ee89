"""Trainer variants, nnU-Net style: `_Xepochs` for length (split between CFENet and DNet), a
CamelCase modifier for behaviour. Each only sets class attributes (the demo's two also the
iteration counts per epoch, which nnU-Net sets in `__init__`)."""
from dataclasses import replace

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unisegdiff.diffusion.ablations import OneStepObjective, UniformEpsObjective, UniformX0Objective
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan
from nnunet_unisegdiff.model.pipelines import PAPER_PSEUDO_PIXELS, PAPER_SAMPLER
from nnunet_unisegdiff.training.augmentation import SegmentationAugmentation
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff

__all__ = [  # the trainers only: nnU-Net's trainer folder re-exports these by `import *`
    "nnUNetTrainerUniSegDiff_5epochs", "nnUNetTrainerUniSegDiff_50epochs", "nnUNetTrainerUniSegDiff_100epochs",
    "nnUNetTrainerUniSegDiff_250epochs", "nnUNetTrainerUniSegDiff_500epochs", "nnUNetTrainerUniSegDiff_1000epochs",
    "nnUNetTrainerUniSegDiffMirroring", "nnUNetTrainerUniSegDiffUniformEps", "nnUNetTrainerUniSegDiffUniformX0",
    "nnUNetTrainerUniSegDiffOneStep", "nnUNetTrainerUniSegDiffNoDCA", "nnUNetTrainerUniSegDiffNoSTAPLE",
    "nnUNetTrainerUniSegDiffDemo", "nnUNetTrainerDemoBaseline", "nnUNetTrainerUniSegDiffPaper",
    "nnUNetTrainerUniSegDiffInSample", "nnUNetTrainerUniSegDiffConditionNoise",
    "nnUNetTrainerUniSegDiffConditionMorphology",
]

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


# ---- ablations of the paper's Tables 4 and 6: each predicts with its own sampler and fusion ---------
class _Ablation(nnUNetTrainerUniSegDiff):
    inference_pipeline = "diffusion"  # the ablated method itself, never replaced by CFENet or another plan


class nnUNetTrainerUniSegDiffUniformEps(_Ablation):
    """Plain eps-prediction diffusion, sampled with DDIM-100."""
    objective = UniformEpsObjective()
    unisegdiff = replace(_BASE, sampler=DDIMPlan(samples=20, steps=100, prediction="eps"))


class nnUNetTrainerUniSegDiffUniformX0(_Ablation):
    """Plain x0-prediction diffusion, sampled with DDIM-100."""
    objective = UniformX0Objective()
    unisegdiff = replace(_BASE, sampler=DDIMPlan(samples=20, steps=100, prediction="x0"))


class nnUNetTrainerUniSegDiffOneStep(_Ablation):
    """x0 from pure noise in one call (SDSeg-style), trained at t = 999 only."""
    objective = OneStepObjective()
    unisegdiff = replace(_BASE, sampler=OneStepPlan(samples=20))


class nnUNetTrainerUniSegDiffNoDCA(_Ablation):
    """Feature fusion at every stage instead of Dual Cross-Attention."""
    unisegdiff = replace(_BASE, use_dca=False)


class nnUNetTrainerUniSegDiffNoSTAPLE(_Ablation):
    """Mean vote of the 20 draws instead of STAPLE."""
    unisegdiff = replace(_BASE, fusion="vote")


# ---- the demo (`unisegdiff demo`): minutes on 2 CPU cores for 64x64 images -----------------------
class nnUNetTrainerUniSegDiffDemo(nnUNetTrainerUniSegDiff):
    """14 CFENet + 10 DNet epochs of 40 iterations (with 4-6 CFENet epochs CFENet still found lesions
    in lesion-free images, and DNet follows its features there). DNet at a quarter of the plan's width,
    DCA only at stages of <= 256 positions, and lr 3e-3: at the paper's 1e-4 DNet needs hundreds of
    epochs, at 3e-3 a few hundred iterations. Sampling is the default (staged, 20 draws, STAPLE)."""
    num_epochs_cfenet, num_epochs_dnet = 14, 10
    dnet_lr = 3e-3
    unisegdiff = replace(_BASE, dnet_width=0.25, token_budget=256)
    iterations_per_epoch, val_iterations_per_epoch = 40, 5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = self.iterations_per_epoch  # nnU-Net sets these in __init__
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch


class nnUNetTrainerDemoBaseline(nnUNetTrainer):
    """nnU-Net's baseline with the CFENet budget of nnUNetTrainerUniSegDiffDemo (epochs x iterations):
    the demo trains it first and UniSegDiff reuses it as its CFENet, so the two differ by DNet alone."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        demo = nnUNetTrainerUniSegDiffDemo
        self.num_epochs = demo.num_epochs_cfenet
        self.num_iterations_per_epoch = demo.iterations_per_epoch
        self.num_val_iterations_per_epoch = demo.val_iterations_per_epoch


class nnUNetTrainerUniSegDiffPaper(nnUNetTrainerUniSegDiff):
    """The paper's inference taken literally: DR draws from the eps decoder, PM estimates unclamped,
    STAPLE with a fixed prior of 0.5 (and one pseudo-pixel), always (no choice of pipeline); STAPLE's
    posterior is exported as it is, untempered."""
    unisegdiff = replace(_BASE, sampler=PAPER_SAMPLER, fusion="staple", staple_pseudo_pixels=PAPER_PSEUDO_PIXELS,
                         temper_with_draws="off")
    inference_pipeline = "diffusion"


# ---- phase-B conditions -------------------------------------------------------------------------
class nnUNetTrainerUniSegDiffInSample(nnUNetTrainerUniSegDiff):
    """DNet trained on this fold's own CFENet's features of its own training cases, as the paper trains it,
    even where the other folds' CFENets are trained (training/out_of_fold.py)."""
    out_of_fold_conditions = False


class nnUNetTrainerUniSegDiffConditionNoise(nnUNetTrainerUniSegDiff):
    """Condition augmentation: Gaussian noise of half a channel's sd on the condition features in phase B."""
    condition_noise = 0.5


class nnUNetTrainerUniSegDiffConditionMorphology(nnUNetTrainerUniSegDiff):
    """Condition augmentation in nnU-Net's cascade style: a random dilation, erosion, opening or closing and a
    removed connected component of the segmentation the condition features encode, the features following it."""
    condition_augmentation = SegmentationAugmentation()
