"""A per-case confidence in [0, 1] from a class-probability map: higher means the segmentation is
more likely good. It ranks cases for review (`unisegdiff uncertainty`) and is the score the
failure-detection benchmark (`benchmarks/failure_detection.py`) measures.

Why this score. The image's mean entropy (the `mean_entropy` column) is dominated by the size of
the lesion's border and by the lesion-free background, so it ranks failed segmentations poorly. How
the pixel values are aggregated per case matters more than which pixel value is used (Kahl et al.,
ValUES, ICLR 2024): scores that look at the predicted lesion itself rank failures better (measured
figures: docs/method.md, "Per-case confidence"). The score here is one of those, and it reads
nothing but the probabilities, so it scores any trainer's
`nnUNetv2_predict --save_probabilities` output (nnUNetTrainer's softmax, UniSegDiff's fused draws,
an ensemble's mean) the same way.

Definition, for probabilities p of shape (C, *spatial) (class 0 = background) and the mask
m_c = (argmax_k p_k == c) that nnU-Net writes from them:

* **A lesion is predicted** (some foreground class c has m_c non-empty): the soft Dice between
  each predicted class's probabilities and its own mask,
      conf_c = 2 sum(p_c m_c) / (sum(p_c) + sum(m_c)),
  averaged over the foreground classes present in the prediction. It is 1 when the probabilities
  are crisp (1 inside the mask, 0 outside) and falls when the lesion's pixels are barely above the
  decision boundary or probability mass lies outside it (a blurred border, a second near-lesion):
  a self-consistency of the map with its own decision, a "soft Dice confidence".
  Probabilities below `FLOOR` (0.05) count as 0 in it: summed over a large image, a far field of
  near-zero values (1e-4 over the 10^7 voxels of a CT is 1000 voxels' worth) would otherwise
  outweigh a small lesion and rank cases by image size, not by doubt.
* **No lesion is predicted**: an empty prediction is confident when no pixel comes near the
  decision boundary. With q(x) = max_{c>0} p_c(x) / (p_c(x) + p_0(x)), the probability of the
  strongest foreground class against background (< 0.5 wherever background wins the argmax; for a
  binary map simply p_1), and q* = max_x q(x) the most lesion-like pixel,
      conf = 2 (1 - q*) / (2 - q*),
  which is the soft Dice a predicted lesion would get if all its pixels sat as far above the
  boundary as q* sits below it (a lesion at p = 0.7 everywhere and an empty map whose strongest
  pixel is at 0.3 both score 0.82). 0 everywhere gives 1; a pixel at 0.5 gives 2/3, the value of a
  lesion whose pixels all sit on the boundary. A single pixel decides this branch.

**Weighed by the model's validation record** (`unisegdiff uncertainty --model`): a lesion the
network never responded to leaves no trace in the map, so the empty branch alone ranks missed
lesions as the surest cases. When the model's empty predictions were worse than its lesion
predictions on its own validation cases, the empty branch is multiplied by the ratio of their
mean Dice (`validation_record.py`); it is never raised, and lesions are never reweighed.

So both branches put a crisp map at 1 and a map on the decision boundary near 2/3, and cases with
and without a predicted lesion are ranked on one scale; only a lesion with probability mass outside
its own mask (a blurred border, a second near-lesion) falls below 2/3, towards 0.

Region-based (sigmoid) probabilities, whose channels do not sum to 1, are not covered. The mask is
recomputed from the probabilities (argmax), so the score stays a pure function of them; nnU-Net
writes its label files from the same argmax.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12
FLOOR = 0.05  # probabilities below this count as 0 in the soft Dice (the far field of a large image)


def foreground_soft_dice(p: np.ndarray, mask: np.ndarray, floor: float = FLOOR) -> float:
    """Soft Dice 2 sum(p m) / (sum(p) + sum(m)) between one class's probabilities and a binary mask,
    probabilities below `floor` set to 0 (1.0 when both are empty: nothing predicted, nothing
    probable)."""
    p = np.asarray(p, dtype=np.float32)
    if floor > 0:
        p = np.where(p >= floor, p, np.float32(0))
    m = np.asarray(mask, dtype=bool)
    denom = float(p.sum(dtype=np.float64)) + float(m.sum())
    if denom <= EPS:
        return 1.0
    return float(np.clip(2.0 * p[m].sum(dtype=np.float64) / denom, 0.0, 1.0))


def empty_prediction_confidence(probs: np.ndarray) -> float:
    """2 (1 - q*) / (2 - q*), q* the most lesion-like pixel's foreground-vs-background probability:
    how far an empty prediction stays from the decision boundary. probs: (C, *spatial)."""
    probs = np.asarray(probs, dtype=np.float32)
    fg = probs[1:].max(axis=0).astype(np.float64)
    bg = probs[0].astype(np.float64)
    q = np.where(fg > 0, fg / np.maximum(fg + bg, EPS), 0.0)
    q_star = min(float(q.max(initial=0.0)), 1.0)
    return float(np.clip(2.0 * (1.0 - q_star) / (2.0 - q_star), 0.0, 1.0))


def case_confidence(probs: np.ndarray, floor: float = FLOOR, empty_weight: float = 1.0) -> float:
    """The per-case confidence in [0, 1] defined in the module docstring.
    probs: (C, *spatial) class probabilities summing to 1 over axis 0, background first;
    empty_weight: the empty branch's weight from the validation record (1: the map alone decides)."""
    if not 0.0 <= empty_weight <= 1.0:
        raise ValueError(f"empty_weight must lie in [0, 1], got {empty_weight}")
    probs = np.asarray(probs)
    if probs.ndim < 2 or probs.shape[0] < 2:
        raise ValueError(f"need (C >= 2, *spatial) probabilities, got shape {probs.shape}")
    prediction = probs.argmax(axis=0)
    present = [c for c in range(1, probs.shape[0]) if (prediction == c).any()]
    if not present:
        return empty_weight * empty_prediction_confidence(probs)
    return float(np.mean([foreground_soft_dice(probs[c], prediction == c, floor) for c in present]))
