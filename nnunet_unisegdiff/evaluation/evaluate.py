"""`unisegdiff evaluate`: paper-style evaluation (mDice, mIoU per task, Table 3 of the paper) of
nnU-Net label files, for one prediction folder or across nnU-Net's cross-validation folds.

    unisegdiff evaluate PRED_DIR GT_DIR [--sources SOURCES] [--labels 1 2] -o OUT_DIR
    unisegdiff evaluate --folds RESULTS/DatasetX/TRAINER__nnUNetPlans__2d GT_DIR [...] -o OUT_DIR

Per case and label the scores are nnU-Net's own (`compute_metrics` of
`nnunetv2.evaluation.evaluate_predictions`, read with nnU-Net's reader/writer for the file ending:
PNG, NIfTI, ...): Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN). Aggregation:

* mDice / mIoU of a task = the mean over cases of the per-case score, in percent (the paper's
  mDice/mIoU); with several foreground labels, the mean over labels of those per-label means
  (nnU-Net's `foreground_mean`), or, with `--classes union`, the score of the union of all
  foreground labels as one region.
* tasks come from the unified converter's source table (`--sources`, case_id -> source or task;
  `--task-map paper` renames sources to the paper's WA BT ADC CP LI BL, in that order); an `all`
  row pools every case, and with several tasks a `mean` row is the unweighted mean of the task
  rows (how the paper's cross-task means are formed).
* fold mode scores each `fold_k/validation/` folder on its own and reports mean ± std across
  folds (sample standard deviation, ddof=1) per task.

Empty masks (the rule is written into every output): a case whose ground truth has no foreground
for a label is an "empty-GT" case. A prediction with foreground there scores 0 (Dice's formula:
TP = 0, FP > 0) unless `--empty drop` removes the case. When prediction and ground truth are both empty, Dice is 0/0;
`--empty` decides:

* `exclude` (default, nnU-Net's rule): the score is NaN, the case leaves the mean and is counted in
  `n_both_empty`;
* `one`: scored 1 (100 %), a correct "no lesion";
* `zero`: scored 0 (0/0 as 0, what some evaluation scripts do by accident);
* `drop`: every empty-GT case leaves the mean, whatever was predicted (the "cleaned" data set).

The paper traces its lung-infection defect to such cases (about a third of that set's masks are
empty), so every summary counts them per task: `n_empty_gt`, `n_both_empty`,
`n_fp_on_empty_gt`, and `n_scored` (cases that entered the mean).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import re
import sys
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunet_unisegdiff.evaluation import report

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
ALL_TASK, MEAN_TASK = "all", "mean"
KNOWN_ENDINGS = (".nii.gz", ".png", ".nii", ".mha", ".nrrd", ".tif", ".tiff", ".bmp", ".gipl")
PER_CASE_COLUMNS = ("fold", "case", "task", "label", "Dice", "IoU", "gt_voxels", "pred_voxels",
                    "tp", "fp", "fn", "gt_empty", "pred_empty", "scored")


class EvaluationError(ValueError):
    """Bad input for an evaluation (missing files, unknown cases, unreadable sources)."""


# ----------------------------------------------------------------------------- files and cases
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


def _name_list(names: Sequence[str], limit: int = 20) -> str:
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
                        + _name_list([pred[c].name for c in no_gt]))
    no_pred = sorted(set(gt) - set(pred)) if every_gt_needs_pred else []
    if no_pred:
        problems.append(f"{len(no_pred)} ground truth(s) without a prediction in "
                        f"{pred_dir}: "
                        + _name_list([gt[c].name for c in no_pred]))
    if problems and not allow_missing:
        raise EvaluationError("; ".join(problems) + " (use --allow-missing to skip them)")
    for p in problems:
        warnings.warn("skipped " + p, stacklevel=2)
    pairs = [(c, pred[c], gt[c]) for c in sorted(pred) if c in gt]
    if not pairs:
        raise EvaluationError("no case has both a prediction and a ground truth")
    return pairs


# ----------------------------------------------------------------------------- sources (tasks)
def load_sources(path: str | Path, column: str | None = None) -> dict[str, str]:
    """case id -> task, in the table's order, from the unified converter's source table.

    Accepted: JSON `{case_id: task}`, `{case_id: {"task"|"source": ...}}` (what
    `nnunet_unisegdiff.conversion.common` writes: `sources.json` beside dataset.json, with `source`,
    `group`, `subset`, `origin` per case), a list of records
    `[{"case_id": ..., "task"|"source": ...}]` (also under a top-level `"cases"` key), or a CSV
    with a `case_id` (or `case`) column and a `task` or `source` column. `column` picks the
    grouping field; default `task` when present, else `source`.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"sources table not found: {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    else:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("cases"), (list, dict)):
            data = data["cases"]
        if isinstance(data, dict):
            records = [{"case_id": k, **(v if isinstance(v, dict) else {"task": v})}
                       for k, v in data.items()]
        elif isinstance(data, list):
            records = data
        else:
            raise EvaluationError(f"{path}: expected a JSON object or list of records")
    mapping: dict[str, str] = {}
    for i, rec in enumerate(records):
        case = rec.get("case_id", rec.get("case"))
        key = column or next((k for k in ("task", "source") if k in rec), None)
        if case is None or key is None or key not in rec:
            raise EvaluationError(f"{path}: record {i} has no case_id and "
                                  f"{column or 'task/source'} field: {rec}")
        mapping[str(case)] = str(rec[key])
    return mapping


# The paper's six tasks (Table 3 column order) and the source names that belong to each; keys are
# compared lower-case with everything but letters and digits removed ("CVC-ClinicDB" -> cvcclinicdb).
PAPER_TASK_ORDER = ("WA", "BT", "ADC", "CP", "LI", "BL")
PAPER_TASKS = {
    **dict.fromkeys(("wa", "amdsd", "wetamd"), "WA"),
    **dict.fromkeys(("bt", "btd", "braintumor", "braintumour"), "BT"),
    **dict.fromkeys(("adc", "ebhiseg", "ebhi", "adenocarcinoma"), "ADC"),
    **dict.fromkeys(("cp", "polyp", "colonpolyp", "kvasir", "kvasirseg", "cvcclinicdb", "clinicdb",
                     "cvc612", "cvccolondb", "colondb", "etis", "etislaribpolypdb", "etislarib",
                     "cvc300", "endoscene", "cvcendoscenestill"), "CP"),
    **dict.fromkeys(("li", "covid19", "covid", "lunginfection", "medseg", "covid19ctseg"), "LI"),
    **dict.fromkeys(("bl", "busi", "breastlesion", "breastultrasound"), "BL"),
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_task_map(spec: str | Path) -> tuple[dict[str, str], list[str]]:
    """(normalised source name -> task, task order) from `paper` (the built-in map to the paper's
    abbreviations WA BT ADC CP LI BL) or a JSON `{source: task}` / CSV `source,task` file."""
    if str(spec) == "paper":
        return dict(PAPER_TASKS), list(PAPER_TASK_ORDER)
    path = Path(spec)
    if not path.is_file():
        raise EvaluationError(f"task map not found: {path} (a file, or 'paper')")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            pairs = [(r["source"], r["task"]) for r in csv.DictReader(f)]
    else:
        pairs = list(json.loads(path.read_text()).items())
    return {_norm(k): str(v) for k, v in pairs}, list(dict.fromkeys(v for _, v in pairs))


def map_tasks(sources: Mapping[str, str], task_map: Mapping[str, str]) -> dict[str, str]:
    """Rename each case's source to its task (sources not in the map keep their name)."""
    return {case: task_map.get(_norm(src), src) for case, src in sources.items()}


def assign_tasks(cases: Sequence[str], sources: Mapping[str, str] | None, *,
                 allow_missing: bool = False) -> dict[str, str]:
    """case -> task; every case is task `all` without a sources table."""
    if sources is None:
        return {c: ALL_TASK for c in cases}
    unknown = [c for c in cases if c not in sources]
    if unknown and not allow_missing:
        raise EvaluationError(f"{len(unknown)} case(s) missing from the sources table: "
                              f"{_name_list(unknown)} (use --allow-missing to put them in task "
                              f"'unknown')")
    if unknown:
        warnings.warn(f"{len(unknown)} case(s) not in the sources table go to task 'unknown'",
                      stacklevel=2)
    return {c: sources.get(c, "unknown") for c in cases}


# ----------------------------------------------------------------------------- labels and reader
def find_dataset_json(*folders: Path) -> Path | None:
    """dataset.json in the first of `folders` (or its parent: labelsTr/../dataset.json) having one."""
    for folder in folders:
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate.is_file():
                return candidate
    return None


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


# ----------------------------------------------------------------------------- per-case scores
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


# ----------------------------------------------------------------------------- aggregation
def _nanmean(values) -> float:
    values = np.asarray(list(values), dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _summary_row(task: str, rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """mDice/mIoU in percent (mean over labels of the per-label means over cases) and counts."""
    out = {"task": task}
    per_label = {k: {m: 100 * _nanmean(r[m] for r in rows if r["label"] == k)
                     for m in ("Dice", "IoU")} for k in keys}
    for m in ("Dice", "IoU"):
        out[f"m{m}"] = _nanmean(per_label[k][m] for k in keys)
    if len(keys) > 1:
        for k in keys:
            out[f"Dice_{k}"], out[f"IoU_{k}"] = per_label[k]["Dice"], per_label[k]["IoU"]
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    gt_empty = {c: all(r["gt_empty"] for r in rs) for c, rs in by_case.items()}
    pred_empty = {c: all(r["pred_empty"] for r in rs) for c, rs in by_case.items()}
    out["n"] = len(by_case)
    out["n_scored"] = sum(any(r["scored"] for r in rs) for rs in by_case.values())
    out["n_empty_gt"] = sum(gt_empty.values())
    out["n_both_empty"] = sum(gt_empty[c] and pred_empty[c] for c in by_case)
    out["n_fp_on_empty_gt"] = sum(gt_empty[c] and not pred_empty[c] for c in by_case)
    return out


def summarize(case_rows: Sequence[dict], task_order: Sequence[str] | None = None) -> list[dict]:
    """Summary rows: one per task (in `task_order`, then first appearance), `all` pooling every
    case and, with several tasks, `mean`: the unweighted mean of the task rows' scores."""
    keys = list(dict.fromkeys(r["label"] for r in case_rows))
    present = list(dict.fromkeys(r["task"] for r in case_rows))
    tasks = [t for t in (task_order or []) if t in present] + \
            [t for t in present if t not in (task_order or [])]
    rows = [] if tasks == [ALL_TASK] else \
        [_summary_row(t, [r for r in case_rows if r["task"] == t], keys) for t in tasks]
    all_row = _summary_row(ALL_TASK, case_rows, keys)
    if len(rows) > 1:
        mean_row = {"task": MEAN_TASK}
        for col in [c for c in all_row if c.startswith(("mDice", "mIoU", "Dice_", "IoU_"))]:
            mean_row[col] = _nanmean(r[col] for r in rows)
        rows.append(mean_row)
    rows.append(all_row)
    return rows


def summarize_folds(per_fold: Mapping[str, Sequence[dict]]) -> list[dict]:
    """Per task, mean and sample std (ddof=1) across folds of each score column; counts summed."""
    order: list[str] = []
    for rows in per_fold.values():
        order += [r["task"] for r in rows if r["task"] not in order]
    out = []
    for task in order:
        rows = [r for fold_rows in per_fold.values() for r in fold_rows if r["task"] == task]
        row = {"task": task, "n_folds": len(rows)}
        for col in [c for c in rows[0] if c.startswith(("mDice", "mIoU", "Dice_", "IoU_"))]:
            values = np.array([r.get(col, math.nan) for r in rows], dtype=float)
            values = values[~np.isnan(values)]
            row[col] = float(values.mean()) if values.size else math.nan
            row[f"{col}_std"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        for col in ("n", "n_scored", "n_empty_gt", "n_both_empty", "n_fp_on_empty_gt"):
            if all(col in r for r in rows):
                row[col] = int(sum(r[col] for r in rows))
        out.append(row)
    return out


# ----------------------------------------------------------------------------- one folder / folds
def _setup(pred_dirs: Sequence[Path], gt_dir: Path, *, labels, file_ending, class_mode,
           extra_json_dirs: Sequence[Path] = ()):
    """File ending, reader/writer, evaluated classes and ignore label for these folders."""
    dj_path = find_dataset_json(gt_dir, *extra_json_dirs)
    dataset_json = json.loads(dj_path.read_text()) if dj_path else None
    if file_ending is None:
        file_ending = dataset_json["file_ending"] if dataset_json else guess_file_ending(gt_dir)
    gt = label_files(gt_dir, file_ending)
    if not gt:
        raise EvaluationError(f"no '{file_ending}' files in {gt_dir}")
    rw = reader_writer(file_ending, next(iter(gt.values())), dataset_json)
    ignore_label = None
    if labels is None and dataset_json is not None:
        labels, ignore_label = labels_from_dataset_json(dataset_json)
    elif labels is None:
        labels = labels_from_files(list(gt.values()), rw)
        if not labels:
            raise EvaluationError(f"no foreground label in any file of {gt_dir}; pass --labels")
    return file_ending, gt, rw, evaluated_classes(labels, class_mode), ignore_label


def _meta(name, empty_rule, classes, class_mode, **extra) -> dict:
    return {"name": name, "empty_rule": empty_rule, "empty_rule_text": EMPTY_RULES[empty_rule],
            "classes": class_mode, "labels": [k for k, _ in classes],
            "scores": "per_case.csv: Dice/IoU in [0, 1]; summaries: percent", **extra}


def _load_tasks(sources, task_map) -> tuple[dict[str, str] | None, list[str] | None]:
    """case -> task from the sources table (renamed through the task map), and the task order."""
    if not sources:
        if task_map:
            raise EvaluationError("--task-map needs --sources")
        return None, None
    mapping = load_sources(sources)
    order: list[str] = []
    if task_map:
        table, order = load_task_map(task_map)
        mapping = map_tasks(mapping, table)
    return mapping, order + [t for t in dict.fromkeys(mapping.values()) if t not in order]


def evaluate_folder(pred_dir, gt_dir, *, sources=None, task_map=None, labels=None,
                    class_mode="per-label",
                    empty_rule="exclude", allow_missing=False, file_ending=None,
                    num_processes=1, name=None) -> dict:
    """Score every prediction in `pred_dir` against `gt_dir`: {"meta", "per_case", "summary"}."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    file_ending, gt, rw, classes, ignore = _setup([pred_dir], gt_dir, labels=labels,
                                                  file_ending=file_ending, class_mode=class_mode)
    pairs = pair_cases(label_files(pred_dir, file_ending), gt, allow_missing=allow_missing,
                       pred_dir=pred_dir, gt_dir=gt_dir)
    source_map, order = _load_tasks(sources, task_map)
    tasks = assign_tasks([c for c, _, _ in pairs], source_map, allow_missing=allow_missing)
    per_case = score_cases(pairs, rw, classes, ignore, tasks, empty_rule, num_processes)
    summary = summarize(per_case, order)
    meta = _meta(name or pred_dir.name, empty_rule, classes, class_mode,
                 pred_dir=str(pred_dir), gt_dir=str(gt_dir), sources=str(sources or ""),
                 task_map=str(task_map or ""), file_ending=file_ending)
    return {"meta": meta, "per_case": per_case, "summary": summary}


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


def evaluate_folds(trainer_dir, gt_dir, *, sources=None, task_map=None, labels=None,
                   class_mode="per-label",
                   empty_rule="exclude", allow_missing=False, file_ending=None, num_processes=1,
                   fold_ids=None, name=None) -> dict:
    """Each fold's validation predictions scored on its own; summary = mean ± std across folds.
    Ground truths of cases validated in other folds are expected in `gt_dir` and ignored."""
    trainer_dir, gt_dir = Path(trainer_dir), Path(gt_dir)
    folds = fold_folders(trainer_dir, fold_ids)
    file_ending, gt, rw, classes, ignore = _setup(list(folds.values()), gt_dir, labels=labels,
                                                  file_ending=file_ending, class_mode=class_mode,
                                                  extra_json_dirs=[trainer_dir])
    source_map, order = _load_tasks(sources, task_map)
    per_case, per_fold = [], {}
    for fold, folder in folds.items():
        pairs = pair_cases(label_files(folder, file_ending), gt, allow_missing=allow_missing,
                           every_gt_needs_pred=False, pred_dir=folder, gt_dir=gt_dir)
        tasks = assign_tasks([c for c, _, _ in pairs], source_map, allow_missing=allow_missing)
        rows = score_cases(pairs, rw, classes, ignore, tasks, empty_rule, num_processes)
        per_case += [{"fold": fold, **r} for r in rows]
        per_fold[fold] = summarize(rows, order)
    never = sorted(set(gt) - {r["case"] for r in per_case})
    if never:
        warnings.warn(f"{len(never)} ground truth(s) predicted in no fold: {_name_list(never)}",
                      stacklevel=2)
    meta = _meta(name or trainer_dir.name.split("__")[0], empty_rule, classes, class_mode,
                 trainer_dir=str(trainer_dir), gt_dir=str(gt_dir), sources=str(sources or ""),
                 task_map=str(task_map or ""), file_ending=file_ending, folds=list(folds),
                 std="sample standard deviation across folds (ddof=1)")
    return {"meta": meta, "per_case": per_case, "summary": summarize_folds(per_fold),
            "per_fold": [{"fold": f, **r} for f, rows in per_fold.items() for r in rows]}


# ----------------------------------------------------------------------------- outputs
def summary_columns(rows: Sequence[dict], folds: bool) -> list[str]:
    score_cols = [c for c in rows[-1] if c.startswith(("mDice", "mIoU", "Dice_", "IoU_"))]
    head = ["task", "n_folds", "n"] if folds else ["task", "n"]
    return head + ["n_scored"] + score_cols + ["n_empty_gt", "n_both_empty", "n_fp_on_empty_gt"]


def summary_markdown(result: dict) -> str:
    meta = result["meta"]
    mode = (f"mean {report.PM} std over {len(meta['folds'])} folds ({', '.join(meta['folds'])})"
            if "folds" in meta else "one prediction folder")
    if meta["classes"] == "union":
        labels = "union of the foreground labels"
    elif len(meta["labels"]) == 1:
        labels = f"label {meta['labels'][0]}"
    else:
        labels = "mean over foreground labels " + ", ".join(meta["labels"])
    return (f"# Evaluation: {meta['name']}\n\n"
            f"mDice and mIoU in percent, mean over cases ({labels}); {mode}.\n\n"
            + report.table3_markdown([(meta["name"], result["summary"])])
            + f"\n**Empty masks** (`--empty {meta['empty_rule']}`): {meta['empty_rule_text']}\n\n"
            + report.counts_markdown(result["summary"]))


def write_outputs(result: dict, out_dir) -> dict[str, Path]:
    """per_case.csv, summary.csv, summary.md, summary.json (+ summary_per_fold.csv) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = "per_fold" in result
    paths = {k: out_dir / f for k, f in (("per_case", "per_case.csv"), ("csv", "summary.csv"),
                                         ("md", "summary.md"), ("json", "summary.json"))}
    report.write_csv(paths["per_case"], result["per_case"],
                     [c for c in PER_CASE_COLUMNS if folds or c != "fold"])
    report.write_csv(paths["csv"], result["summary"], summary_columns(result["summary"], folds))
    paths["md"].write_text(summary_markdown(result))
    doc = {**result["meta"], "summary": result["summary"]}
    if folds:
        paths["per_fold"] = out_dir / "summary_per_fold.csv"
        report.write_csv(paths["per_fold"], result["per_fold"],
                         ["fold"] + summary_columns(result["per_fold"], False))
        doc["per_fold"] = result["per_fold"]
    paths["json"].write_text(json.dumps(report.json_safe(doc), indent=2) + "\n")
    return paths


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="paper-style mDice/mIoU per task (Table 3 layout), per fold or folder",
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n".join(
            textwrap.fill(f"--empty {k}: {v}", 100, subsequent_indent="    ")
            for k, v in EMPTY_RULES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred", metavar="PRED_DIR",
                   help="folder of predicted label files, or with --folds an nnU-Net trainer "
                        "folder (.../TRAINER__PLANS__CONFIG) holding fold_k/validation/")
    p.add_argument("gt", metavar="GT_DIR", help="ground-truth label files (e.g. labelsTr, "
                   "or nnUNet_preprocessed/DatasetX/gt_segmentations)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--folds", action="store_true",
                   help="PRED_DIR is a trainer folder: mean ± std across its folds")
    p.add_argument("--fold-ids", type=int, nargs="+", default=None, metavar="K",
                   help="with --folds, only these folds (default: every fold_k with validation/)")
    p.add_argument("--sources", default=None, metavar="SOURCES",
                   help="case_id -> task table of the unified converter (JSON or CSV); "
                        "default: every case in task 'all'")
    p.add_argument("--task-map", default=None, metavar="MAP",
                   help="rename sources to tasks: 'paper' (the paper's WA BT ADC CP LI BL, e.g. "
                        "the five polyp sets -> CP, in Table 3's order) or a JSON {source: task} "
                        "/ CSV source,task file")
    p.add_argument("--labels", type=int, nargs="+", default=None, metavar="L",
                   help="foreground labels (default: dataset.json beside GT_DIR or in the "
                        "trainer folder, else the values found in the ground truths)")
    p.add_argument("--classes", choices=CLASS_MODES, default="per-label",
                   help="per-label: each foreground label, mDice = mean over labels (default); "
                        "union: all foreground labels as one region")
    p.add_argument("--empty", choices=list(EMPTY_RULES), default="exclude",
                   help="scoring of empty ground truths (see above; default: exclude)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip unmatched prediction/ground-truth files with a warning instead of "
                        "failing; cases absent from --sources go to task 'unknown'")
    p.add_argument("--file-ending", default=None,
                   help="label file ending (default: dataset.json's, else the most common one)")
    p.add_argument("--name", default=None,
                   help="method name in the table (default: trainer or folder name)")
    p.add_argument("-np", "--num-processes", type=int, default=1,
                   help="worker processes for reading files (default 1)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    kwargs = dict(sources=args.sources, task_map=args.task_map, labels=args.labels,
                  class_mode=args.classes,
                  empty_rule=args.empty, allow_missing=args.allow_missing,
                  file_ending=args.file_ending, num_processes=args.num_processes, name=args.name)
    try:
        if args.folds:
            result = evaluate_folds(args.pred, args.gt, fold_ids=args.fold_ids, **kwargs)
        else:
            result = evaluate_folder(args.pred, args.gt, **kwargs)
    except EvaluationError as e:
        print(f"unisegdiff evaluate: error: {e}", file=sys.stderr)
        return 2
    paths = write_outputs(result, args.output)
    print(summary_markdown(result))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
