"""How good a model's empty predictions were against its lesion predictions, read from its own
cross-validation: the weight of the empty branch of the per-case confidence.

Why. The confidence (`confidence.py`) judges a map by itself: a lesion by how crisp it is, an
empty map by how far its pixels stay from the decision boundary. A lesion the network never
responded to leaves no trace in the map, so on its own the empty branch ranks missed lesions as
the surest cases, however often they held a lesion the network missed (docs/method.md, "Per-case
confidence"; measured in benchmarks/README.md, section 8). How
often that happened on the fold's validation cases is known: nnU-Net writes every fold's
validation metrics to `fold_X/validation/summary.json` for any trainer (per case and label the
Dice and `n_pred` / `n_ref`, the predicted and reference voxel counts), as it reads its
cross-validation to choose postprocessing.

Per kind of prediction (empty, or with a lesion) the record holds the mean validation Dice of the
cases predicted that way: an empty prediction scores 1 when the reference is empty too and 0 when
it missed a lesion; a lesion prediction scores its Dice (0 on a lesion-free reference). One fold
validates on few cases, a handful of them predicted empty, so each kind's mean is
shrunk toward the mean over all validation cases by two pseudo-cases at that mean,
(sum + 2 mu) / (n + 2): a kind that validation never produced weighs mu, and a few right empty
predictions of a model that is right almost everywhere do not fall to Laplace's 1/2.

The weight corrects one blind spot and only that: when empty predictions were worse than lesion
predictions on validation, an empty prediction's confidence is multiplied by the ratio of the two
means; otherwise it stays as the map says (weight 1). Validation never raises an empty prediction:
a record of right empty predictions on validation says nothing of a shifted test set where lesions
are missed more often (benchmarks/README.md, section 8, measures what raising them would cost).
The ranking within a kind is unchanged; lesion predictions are never reweighed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunetv2.evaluation.evaluate_predictions import load_summary_json

SUMMARY = Path("validation") / "summary.json"
PSEUDO_CASES = 2  # each kind's mean is shrunk toward the overall mean by this many cases at it


@dataclass(frozen=True)
class ValidationRecord:
    """Validation cases by kind of prediction, with the Dice they reached."""
    empty: int  # cases predicted without any foreground
    empty_right: int  # of those, with an empty reference (Dice 1; the others 0)
    lesion: int  # cases predicted with some foreground
    lesion_dice: float  # the sum of their Dice
    sources: tuple[str, ...]  # the summary.json files read

    @property
    def mean_dice(self) -> float:
        """The mean Dice over all validation cases, both kinds."""
        return (self.empty_right + self.lesion_dice) / (self.empty + self.lesion)

    @property
    def empty_mean(self) -> float:
        """(k + 2 mu) / (n + 2): the share of empty predictions that were right, shrunk toward mu."""
        return (self.empty_right + PSEUDO_CASES * self.mean_dice) / (self.empty + PSEUDO_CASES)

    @property
    def lesion_mean(self) -> float:
        """(sum of Dice + 2 mu) / (n + 2): the lesion predictions' mean Dice, shrunk toward mu."""
        return (self.lesion_dice + PSEUDO_CASES * self.mean_dice) / (self.lesion + PSEUDO_CASES)

    @property
    def empty_weight(self) -> float:
        """min(1, empty mean / lesion mean): empty predictions are only ever lowered."""
        return 1.0 if self.lesion_mean <= 0 else min(1.0, self.empty_mean / self.lesion_mean)

    def describe(self) -> str:
        """One line for a person: the counts behind the weight, and the weight."""
        return (f"validation ({len(self.sources)} summary.json, {self.empty + self.lesion} cases): "
                f"{self.empty_right} of {self.empty} empty predictions were lesion-free, "
                f"{self.lesion} lesion predictions reached mean Dice "
                f"{self.lesion_dice / max(self.lesion, 1):.2f}; empty predictions' confidence "
                f"x {self.empty_weight:.2f}")


def case_outcomes(summary_file: str | Path) -> list[tuple[bool, float]]:
    """(prediction empty, Dice) per case of an nnU-Net `summary.json`. Empty: every label (or
    region) predicts 0 voxels; its Dice is 1 when every reference is empty too, else 0. Otherwise
    the mean Dice over the labels that are present in the prediction or the reference."""
    path = Path(summary_file)
    try:
        per_case = load_summary_json(str(path))["metric_per_case"]
        return [_outcome(list(case["metrics"].values())) for case in per_case]
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # ValueError: also bad JSON
        raise ValueError(f"{path}: not an nnU-Net validation summary with per-case Dice, n_pred and n_ref "
                         f"({type(e).__name__}: {e})") from e


def _outcome(metrics: list[dict]) -> tuple[bool, float]:
    if not metrics:
        raise ValueError("a case without metrics")
    if all(m["n_pred"] == 0 for m in metrics):
        return True, float(all(m["n_ref"] == 0 for m in metrics))
    dice = [float(m["Dice"]) for m in metrics if m["n_pred"] + m["n_ref"] > 0]
    if any(math.isnan(d) for d in dice):
        raise ValueError("Dice is NaN where a label is present")
    return False, sum(dice) / len(dice)


def summary_files(model_folder: str | Path, folds: Sequence[int | str] | None = None) -> list[Path]:
    """The validation summaries of a trained model: `fold_X/validation/summary.json` for `folds`
    (default: every fold that has one); a single fold's folder is accepted too."""
    folder = Path(model_folder)
    if folds is None and (folder / SUMMARY).is_file():
        return [folder / SUMMARY]
    if folds is None:
        found = sorted(p for p in folder.glob(f"fold_*/{SUMMARY}") if p.is_file())
    else:
        found = [folder / f"fold_{f}" / SUMMARY for f in folds]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no validation summary: {', '.join(missing)} (nnUNetv2_train writes it "
                                    "after training; --val runs it again)")
    if not found:
        raise FileNotFoundError(f"{folder}: no fold_X/{SUMMARY} (give the trained model's folder, "
                                "TRAINER__PLANS__CONFIGURATION, after nnUNetv2_train finished its validation)")
    return found


def validation_record(files: Iterable[str | Path]) -> ValidationRecord:
    """The record over the given summaries (e.g. all folds of a cross-validation)."""
    files = [Path(f) for f in files]
    outcomes = [o for f in files for o in case_outcomes(f)]
    if not outcomes:
        raise ValueError(f"{', '.join(str(f) for f in files)}: no validation cases")
    empty = [d for is_empty, d in outcomes if is_empty]
    lesion = [d for is_empty, d in outcomes if not is_empty]
    return ValidationRecord(empty=len(empty), empty_right=int(sum(empty)), lesion=len(lesion),
                            lesion_dice=float(sum(lesion)), sources=tuple(str(f) for f in files))


def model_record(model_folder: str | Path, folds: Sequence[int | str] | None = None) -> ValidationRecord:
    """`validation_record` of a trained model's (or one fold's) validation summaries."""
    return validation_record(summary_files(model_folder, folds))
