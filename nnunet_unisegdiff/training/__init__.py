"""The nnU-Net trainer of UniSegDiff (both phases in one run), its variants and its training plots."""
