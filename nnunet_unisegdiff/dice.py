"""The package's one per-case Dice of two label maps, for every layer that scores a segmentation
in memory: the pipeline choice on validation cases (`training/selection.py`), the failure-detection
metrics (`evaluation/failure_metrics.py`) and the benchmarks. Pure numpy, below every layer.

The callers differ only in their rule for a label that is empty in both masks, which is a choice
of what an empty image left empty is worth: 1 (right) for the pipeline choice and the failure
benchmark, NaN (undefined, as nnU-Net's `compute_metrics`) where a benchmark averages lesion
cases only. `unisegdiff evaluate` scores files with nnU-Net's own `compute_metrics` and its
explicit empty-mask rules (`evaluation/scoring.py`), so its numbers are nnU-Net's.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int] | None = None,
         both_empty: float = 1.0, valid: np.ndarray | None = None) -> float:
    """Mean over `labels` of Dice(prediction == k, reference == k).

    labels: the labels to score; None: every foreground label (!= 0) present in either mask, so
    that a label absent from both does not enter the mean.
    both_empty: the score of a label empty in both masks, and with labels=None of a case with no
    foreground in either.
    valid: a boolean mask of the pixels to score (e.g. `reference >= 0`, inside nnU-Net's crop);
    None: all of them."""
    p, r = np.asarray(prediction), np.asarray(reference)
    if p.shape != r.shape:
        raise ValueError(f"prediction {p.shape} and reference {r.shape} differ")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
    if labels is None:
        p_in, r_in = (p, r) if valid is None else (p[valid], r[valid])
        labels = sorted((set(np.unique(p_in).tolist()) | set(np.unique(r_in).tolist())) - {0})
        if not labels:
            return float(both_empty)
    scores = []
    for k in labels:
        pk, rk = p == k, r == k
        if valid is not None:
            pk, rk = pk & valid, rk & valid
        denominator = int(pk.sum()) + int(rk.sum())
        scores.append(float(both_empty) if denominator == 0 else 2.0 * int((pk & rk).sum()) / denominator)
    return float(np.mean(scores))
