"""Scanned by nnU-Net through `nnUNet_extTrainer`: only re-exports, so every class keeps its home in
the installed package (nnU-Net drops this module from sys.modules after its search)."""
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff  # noqa: F401
from nnunet_unisegdiff.training.variants import *  # noqa: F401,F403
