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
import json
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

from nnunet_unisegdiff.evaluation.aggregate import summarize, summarize_folds
from nnunet_unisegdiff.evaluation.cases import (
    EvaluationError,
    find_dataset_json,
    fold_folders,
    guess_file_ending,
    label_files,
    name_list,
    pair_cases,
)
from nnunet_unisegdiff.evaluation.outputs import summary_markdown, write_outputs
from nnunet_unisegdiff.evaluation.scoring import (
    CLASS_MODES,
    EMPTY_RULES,
    evaluated_classes,
    labels_from_dataset_json,
    labels_from_files,
    reader_writer,
    score_cases,
)
from nnunet_unisegdiff.evaluation.tasks import ALL_TASK, assign_tasks, load_tasks

# the command's public names (the demo's report uses the first three)
__all__ = ["ALL_TASK", "evaluate_folder", "write_outputs", "evaluate_folds", "EvaluationError", "EMPTY_RULES",
           "register", "main"]


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
    source_map, order = load_tasks(sources, task_map)
    tasks = assign_tasks([c for c, _, _ in pairs], source_map, allow_missing=allow_missing)
    per_case = score_cases(pairs, rw, classes, ignore, tasks, empty_rule, num_processes)
    summary = summarize(per_case, order)
    meta = _meta(name or pred_dir.name, empty_rule, classes, class_mode,
                 pred_dir=str(pred_dir), gt_dir=str(gt_dir), sources=str(sources or ""),
                 task_map=str(task_map or ""), file_ending=file_ending)
    return {"meta": meta, "per_case": per_case, "summary": summary}


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
    source_map, order = load_tasks(sources, task_map)
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
        warnings.warn(f"{len(never)} ground truth(s) predicted in no fold: {name_list(never)}",
                      stacklevel=2)
    meta = _meta(name or trainer_dir.name.split("__")[0], empty_rule, classes, class_mode,
                 trainer_dir=str(trainer_dir), gt_dir=str(gt_dir), sources=str(sources or ""),
                 task_map=str(task_map or ""), file_ending=file_ending, folds=list(folds),
                 std="sample standard deviation across folds (ddof=1)")
    return {"meta": meta, "per_case": per_case, "summary": summarize_folds(per_fold),
            "per_fold": [{"fold": f, **r} for f, rows in per_fold.items() for r in rows]}

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
