"""Per-case scores: nnU-Net's reader/writer and `compute_metrics` for each (case, label), and the
rule for empty masks (docstring of `evaluate.py`)."""
from __future__ import annotations

import math
import multiprocessing
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunet_unisegdiff.evaluation.cases import EvaluationError

EMPTY_RULES = {
    "exclude": "Dice/IoU of a case whose ground truth and prediction are both empty is undefined "
               "(nnU-Net: NaN); such cases are excluded from the means and counted in n_both_empty. "
               "A prediction with foreground on an empty ground truth scores 0.",
    "one": "A case whose ground truth and prediction are both empty scores 1 (100 %). "
           "A prediction with foreground on an empty ground truth scores 0.",
    "zero": "A case whose ground truth and prediction are both empty scores 0. "
            "A prediction with foreground on an empty ground truth scores 0.",
    "drop": "Every case whose ground truth is empty is excluded from the means, whatever the "
            "prediction (counted in n_empty_gt).",
}
CLASS_MODES = ("per-label", "union")
UNION_KEY = "fg"
PER_CASE_COLUMNS = ("fold", "case", "task", "label", "Dice", "IoU", "gt_voxels", "pred_voxels",
                    "tp", "fp", "fn", "gt_empty", "pred_empty", "scored")


def reader_writer(file_ending: str, example_file: Path, dataset_json: dict | None):
    """nnU-Net's reader/writer for these label files (dataset.json's choice when there is one)."""
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
        determine_reader_writer_from_file_ending,
    )
    if dataset_json is not None and dataset_json.get("file_ending") == file_ending:
        cls = determine_reader_writer_from_dataset_json(dataset_json, str(example_file),
                                                        verbose=False)
    else:
        cls = determine_reader_writer_from_file_ending(file_ending, str(example_file),
                                                       allow_nonmatching_filename=True,
                                                       verbose=False)
    return cls()


def labels_from_dataset_json(dataset_json: dict) -> tuple[list, int | None]:
    """(foreground labels or regions, ignore label) as nnU-Net's LabelManager reads them."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    lm = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    return (lm.foreground_regions if lm.has_regions else lm.foreground_labels), lm.ignore_label


def labels_from_files(files: Sequence[Path], rw) -> list[int]:
    """Foreground values present in the given label files (used without --labels/dataset.json)."""
    values: set[int] = set()
    for f in files:
        seg, _ = rw.read_seg(str(f))
        values.update(int(v) for v in np.unique(seg))
    return sorted(v for v in values if v != 0)


def evaluated_classes(labels: Sequence, class_mode: str) -> list[tuple[str, object]]:
    """(output key, nnU-Net label or region) pairs: each label, or their union as key `fg`."""
    if class_mode == "union":
        flat = []
        for lab in labels:
            flat += list(lab) if isinstance(lab, (tuple, list)) else [lab]
        return [(UNION_KEY, tuple(sorted(set(int(v) for v in flat))))]
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    return [(label_or_region_to_key(lab), tuple(lab) if isinstance(lab, list) else lab)
            for lab in labels]


def _score_one(case: str, pred: Path, gt: Path, rw, regions: list, ignore_label) -> dict:
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    try:
        return compute_metrics(str(gt), str(pred), rw, regions, ignore_label)
    except Exception as e:  # e.g. shape mismatch: say which files
        raise EvaluationError(f"case {case}: cannot compare prediction {pred} with ground truth "
                              f"{gt}: {type(e).__name__}: {e}") from e


def apply_empty_rule(dice: float, iou: float, gt_empty: bool, pred_empty: bool,
                     rule: str) -> tuple[float, float]:
    """The (Dice, IoU) that enter the means, from nnU-Net's (NaN when both masks are empty)."""
    if rule not in EMPTY_RULES:
        raise ValueError(f"unknown empty rule {rule!r}; one of {sorted(EMPTY_RULES)}")
    if gt_empty and rule == "drop":
        return math.nan, math.nan
    if gt_empty and pred_empty:
        return {"exclude": (math.nan, math.nan), "one": (1.0, 1.0), "zero": (0.0, 0.0)}[rule]
    return float(dice), float(iou)


def score_cases(pairs: Sequence[tuple[str, Path, Path]], rw, classes: list[tuple[str, object]],
                ignore_label: int | None, tasks: Mapping[str, str], empty_rule: str,
                num_processes: int = 1) -> list[dict]:
    """One row per (case, evaluated label): nnU-Net's counts and the scores after the empty rule."""
    regions = [r for _, r in classes]
    args = [(c, p, g, rw, regions, ignore_label) for c, p, g in pairs]
    if num_processes > 1 and len(args) >= 8 * num_processes:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = pool.starmap(_score_one, args)
    else:
        results = [_score_one(*a) for a in args]
    rows = []
    for (case, _, _), res in zip(pairs, results):
        for key, region in classes:
            m = res["metrics"][region]
            gt_empty, pred_empty = int(m["n_ref"]) == 0, int(m["n_pred"]) == 0
            dice, iou = apply_empty_rule(m["Dice"], m["IoU"], gt_empty, pred_empty, empty_rule)
            rows.append({"case": case, "task": tasks[case], "label": key, "Dice": dice, "IoU": iou,
                         "gt_voxels": int(m["n_ref"]), "pred_voxels": int(m["n_pred"]),
                         "tp": int(m["TP"]), "fp": int(m["FP"]), "fn": int(m["FN"]),
                         "gt_empty": gt_empty, "pred_empty": pred_empty,
                         "scored": not math.isnan(dice)})
    return rows
