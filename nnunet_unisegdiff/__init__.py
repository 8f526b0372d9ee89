"""UniSegDiff (MICCAI 2025) as an nnU-Net v2 plugin: staged diffusion on top of nnU-Net's UNet."""
__version__ = "0.1.0"
from nnunet_unisegdiff.diffusion.staple import staple, staple_batched, staple_multiclass  # noqa: E402,F401
