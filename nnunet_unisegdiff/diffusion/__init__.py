"""The diffusion method as tensor functions: noise schedule, staged objective, staged sampler, STAPLE and
fusion. Pure torch: nothing here knows nnU-Net or a network."""
from nnunet_unisegdiff.diffusion.sampler import SamplerConfig, StagedSampler  # noqa: E402,F401
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings  # noqa: E402,F401
from nnunet_unisegdiff.diffusion.staged import StagedObjective, phase_b_loss  # noqa: E402,F401
