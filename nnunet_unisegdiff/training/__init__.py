"""The nnU-Net trainer of UniSegDiff (both phases in one run), its variants and its training plots."""
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff  # noqa: E402,F401
from nnunet_unisegdiff.training.variants import *  # noqa: E402,F401,F403
