"""The networks nnU-Net builds from its plan: CFENet (the planned UNet) and its feature tap, DNet with DCA
and feature fusion, and the composite nnU-Net saves and predicts with."""
from nnunet_unisegdiff.model.network import UniSegDiffNetwork, UniSegDiffSettings, build_unisegdiff_network  # noqa: E402,F401
