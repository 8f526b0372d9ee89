"""Which files `unisegdiff evaluate` compares: label files and their endings, prediction/ground-truth
pairs, nnU-Net's fold folders and the dataset.json beside them."""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

KNOWN_ENDINGS = (".nii.gz", ".png", ".nii", ".mha", ".nrrd", ".tif", ".tiff", ".bmp", ".gipl")


class EvaluationError(ValueError):
    """Bad input for an evaluation (missing files, unknown cases, unreadable sources)."""


def guess_file_ending(folder: Path) -> str:
    """The most frequent known label-file ending in `folder`."""
    counts: dict[str, int] = {}
    for f in folder.iterdir():
        ending = next((e for e in KNOWN_ENDINGS if f.name.lower().endswith(e)), None)
        if ending and f.is_file():
            counts[ending] = counts.get(ending, 0) + 1
    if not counts:
        raise EvaluationError(f"no label files ({', '.join(KNOWN_ENDINGS)}) in {folder}")
    return max(counts, key=counts.get)


def label_files(folder: Path, file_ending: str) -> dict[str, Path]:
    """case id -> file, for the files of `folder` ending in `file_ending`."""
    if not folder.is_dir():
        raise EvaluationError(f"not a folder: {folder}")
    return {f.name[: -len(file_ending)]: f for f in sorted(folder.iterdir())
            if f.is_file() and f.name.endswith(file_ending)}


def name_list(names: Sequence[str], limit: int = 20) -> str:
    """The first `limit` names, comma-separated, with the total when there are more."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def pair_cases(pred: Mapping[str, Path], gt: Mapping[str, Path], *, allow_missing: bool = False,
               every_gt_needs_pred: bool = True, pred_dir: Path | str = "PRED_DIR",
               gt_dir: Path | str = "GT_DIR") -> list[tuple[str, Path, Path]]:
    """(case, prediction file, ground-truth file) for every case with both. A prediction without a
    ground truth (and, if `every_gt_needs_pred`, a ground truth without a prediction) is an
    `EvaluationError` naming the files, or with `allow_missing` a warning and the case is skipped."""
    if not pred:
        raise EvaluationError(f"no prediction files in {pred_dir}")
    problems = []
    no_gt = sorted(set(pred) - set(gt))
    if no_gt:
        problems.append(f"{len(no_gt)} prediction(s) without a ground truth in "
                        f"{gt_dir}: "
                        + name_list([pred[c].name for c in no_gt]))
    no_pred = sorted(set(gt) - set(pred)) if every_gt_needs_pred else []
    if no_pred:
        problems.append(f"{len(no_pred)} ground truth(s) without a prediction in "
                        f"{pred_dir}: "
                        + name_list([gt[c].name for c in no_pred]))
    if problems and not allow_missing:
        raise EvaluationError("; ".join(problems) + " (use --allow-missing to skip them)")
    for p in problems:
        warnings.warn("skipped " + p, stacklevel=2)
    pairs = [(c, pred[c], gt[c]) for c in sorted(pred) if c in gt]
    if not pairs:
        raise EvaluationError("no case has both a prediction and a ground truth")
    return pairs


def find_dataset_json(*folders: Path) -> Path | None:
    """dataset.json in the first of `folders` (or its parent: labelsTr/../dataset.json) having one."""
    for folder in folders:
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate.is_file():
                return candidate
    return None


def fold_folders(trainer_dir: Path, fold_ids: Sequence[int] | None = None) -> dict[str, Path]:
    """fold name -> validation folder of an nnU-Net trainer output folder (`fold_k/validation`)."""
    if not trainer_dir.is_dir():
        raise EvaluationError(f"not a folder: {trainer_dir}")
    found = {}
    for d in sorted(trainer_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
        m = re.fullmatch(r"fold_(\d+)", d.name)
        if not m or (fold_ids is not None and int(m.group(1)) not in fold_ids):
            continue
        if (d / "validation").is_dir():
            found[d.name] = d / "validation"
        else:
            warnings.warn(f"{d} has no validation/ folder (fold not finished?); skipped",
                          stacklevel=2)
    if not found:
        raise EvaluationError(f"no fold_*/validation/ folder in {trainer_dir}")
    return found
