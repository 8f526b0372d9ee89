"""The networks nnU-Net builds from its plan: CFENet (the planned UNet) and its feature tap, DNet with DCA
and feature fusion, and the composite nnU-Net saves and predicts with."""
