"""The diffusion method as tensor functions: noise schedule, staged objective, staged sampler, STAPLE and
fusion. Pure torch: nothing here knows nnU-Net or a network."""
