"""Summary rows from per-case scores: mDice/mIoU per task in percent, the `all` and `mean` rows,
counts of empty masks, and mean ± std across folds."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nnunet_unisegdiff.evaluation.tasks import ALL_TASK, MEAN_TASK


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
