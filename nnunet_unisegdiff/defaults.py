"""Defaults shared by several layers, declared once."""

DEFAULT_SEED = 12345  # splits, synthetic data and case sampling unless a seed is given
