"""Failure-detection metrics: how well a per-case score tells failed segmentations from good ones,
and how well pixel probabilities are calibrated. numpy and scikit-learn, used by
`benchmarks/failure_detection.py`; the definitions follow the segmentation failure-detection
benchmark of Zenk et al. (MedIA 2025) and Jaeger et al. (ICLR 2023).

* `auroc`: the probability that a failed case gets a higher uncertainty than a good one, ties
  counted half (the Mann-Whitney U statistic over n_fail * n_good pairs).
* `aurc`: area under the risk-coverage curve. Cases are kept in order of decreasing confidence;
  at coverage k/n the risk is the mean of `risk` (1 - Dice) over the k kept cases; AURC is the mean
  of those n risks. Tied confidences get the expected risk over every order of the tie. Lower is
  better; the oracle ranks by the risk itself, a random score gives about the mean risk.
* `CalibrationAccumulator`: pixel ECE (equal-width bins of the foreground probability, the
  pixel-weighted mean |mean probability - foreground fraction| over bins) and the Brier score
  (mean squared difference between foreground probability and the true foreground), pooled over
  every pixel of every case without holding them all in memory.
* `dice`: per-case Dice (`nnunet_unisegdiff.dice`) with the failure benchmark's empty rule: both
  empty = 1, only one empty = 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from nnunet_unisegdiff.dice import dice as package_dice

ECE_BINS = 15


def auroc(uncertainty: Sequence[float], failed: Sequence[bool]) -> float:
    """AUROC of `uncertainty` (higher = more likely failed) at separating `failed` cases from the
    others (scikit-learn's `roc_auc_score`: tied scores count 1/2); NaN when either group is empty."""
    u = np.asarray(uncertainty, dtype=np.float64)
    y = np.asarray(failed, dtype=bool)
    if u.shape != y.shape:
        raise ValueError(f"{u.shape} scores for {y.shape} labels")
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, u))


def aurc(confidence: Sequence[float], risk: Sequence[float]) -> float:
    """Area under the risk-coverage curve (mean over the n coverages k/n of the mean risk of the k
    most confident cases); ties in `confidence` get the expected value over their orders."""
    c = np.asarray(confidence, dtype=np.float64)
    r = np.asarray(risk, dtype=np.float64)
    if c.shape != r.shape or c.ndim != 1:
        raise ValueError(f"need two 1D arrays of one length, got {c.shape} and {r.shape}")
    if len(c) == 0:
        return float("nan")
    order = np.argsort(-c, kind="mergesort")
    c, r = c[order], r[order]
    starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
    ends = np.r_[starts[1:], len(c)]
    total, kept_risk = 0.0, 0.0
    for s, e in zip(starts, ends):
        group_mean = r[s:e].mean()
        k = np.arange(s + 1, e + 1)  # coverages inside this tie group
        total += float(((kept_risk + (k - s) * group_mean) / k).sum())
        kept_risk += r[s:e].sum()
    return total / len(c)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of the foreground labels (> 0), mean over the labels present in either mask; a case
    with no foreground in either is 1, foreground in only one of them is 0."""
    return package_dice(prediction, reference, labels=None, both_empty=1.0)


def mean_pairwise_dice(masks: Sequence[np.ndarray]) -> float:
    """Mean Dice (with `dice`'s empty rule) over all pairs of the members' masks: the agreement of
    an ensemble, the best per-case score in Zenk et al."""
    if len(masks) < 2:
        raise ValueError("need at least two masks")
    return float(np.mean([dice(masks[i], masks[j]) for i in range(len(masks))
                          for j in range(i + 1, len(masks))]))


class CalibrationAccumulator:
    """Pixel ECE and Brier score of the foreground probability, summed case by case."""

    def __init__(self, bins: int = ECE_BINS) -> None:
        self.bins = bins
        self.count = np.zeros(bins)
        self.prob_sum = np.zeros(bins)
        self.fg_sum = np.zeros(bins)
        self.squared_error = 0.0

    def add(self, p_foreground: np.ndarray, foreground: np.ndarray) -> None:
        """One case: foreground probability (1 - background) and true foreground, same shape."""
        p = np.clip(np.asarray(p_foreground, dtype=np.float64).ravel(), 0.0, 1.0)
        y = np.asarray(foreground, dtype=bool).ravel()
        if p.shape != y.shape:
            raise ValueError(f"{p.shape} probabilities for {y.shape} labels")
        idx = np.minimum((p * self.bins).astype(int), self.bins - 1)  # p = 1 goes to the last bin
        self.count += np.bincount(idx, minlength=self.bins)
        self.prob_sum += np.bincount(idx, weights=p, minlength=self.bins)
        self.fg_sum += np.bincount(idx, weights=y.astype(np.float64), minlength=self.bins)
        self.squared_error += float(((p - y) ** 2).sum())

    @property
    def pixels(self) -> int:
        return int(self.count.sum())

    def ece(self) -> float:
        if self.pixels == 0:
            return float("nan")
        used = self.count > 0
        gap = np.abs(self.prob_sum[used] - self.fg_sum[used]) / self.count[used]
        return float((self.count[used] * gap).sum() / self.pixels)

    def brier(self) -> float:
        return self.squared_error / self.pixels if self.pixels else float("nan")
