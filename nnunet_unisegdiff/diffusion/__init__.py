"""The diffusion method as tensor functions: noise schedule, staged objective, staged sampler, STAPLE and
fusion. Pure torch: nothing here knows nnU-Net or a network."""
from nnunet_unisegdiff.diffusion.ablations import (  # noqa: E402,F401
    OneStepObjective,
    UniformEpsObjective,
    UniformX0Objective,
)
from nnunet_unisegdiff.diffusion.sampler import StagedSampler  # noqa: E402,F401
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan, StagedPlan  # noqa: E402,F401
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings  # noqa: E402,F401
from nnunet_unisegdiff.diffusion.staged import StagedObjective, phase_b_loss  # noqa: E402,F401
