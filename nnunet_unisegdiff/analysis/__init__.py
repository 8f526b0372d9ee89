"""Analyses of a model in training (the paper's Fig. 1: gradient magnitude against timestep)."""
