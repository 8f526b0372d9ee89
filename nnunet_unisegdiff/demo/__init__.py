"""`unisegdiff demo`: synthetic data through nnU-Net's own commands for UniSegDiff and a baseline, and the report."""
