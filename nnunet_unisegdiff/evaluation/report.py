"""Paper-style tables from evaluation summaries: the layout of the UniSegDiff paper's Table 3
(one row per method, an mDice and an mIoU column per task, values in percent, `mean ± std` across
folds), plus the count table of empty masks that goes with it.

Pure formatting: a summary row is a dict with at least `task`, `mDice`, `mIoU` (percent) and, from
fold mode, `mDice_std`, `mIoU_std`. `aggregate.py` produces them; the demo can put several methods
into one table with `table3_markdown([("UniSegDiff", rows_a), ("nnUNetTrainer", rows_b)])`.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

PM = "\u00b1"  # the paper's "84.4 ± 1.2"


def _is_missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def fmt_value(mean, std=None, digits: int = 1) -> str:
    """`84.4`, or `84.4 ± 1.2` when a std is given; `n/a` for a missing mean (nothing was scored)."""
    if _is_missing(mean):
        return "n/a"
    text = f"{float(mean):.{digits}f}"
    if not _is_missing(std):
        text += f" {PM} {float(std):.{digits}f}"
    return text


def _task_order(methods: Sequence[tuple[str, Sequence[Mapping]]]) -> list[str]:
    tasks: list[str] = []
    for _, rows in methods:
        for row in rows:
            if row["task"] not in tasks:
                tasks.append(row["task"])
    return tasks


def table3_markdown(methods: Sequence[tuple[str, Sequence[Mapping]]], digits: int = 1) -> str:
    """One Markdown row per method, `<task> mDice | <task> mIoU` column pairs in task order
    (first appearance), as in the paper's Table 3."""
    tasks = _task_order(methods)
    header = ["Method"] + [f"{t} {m}" for t in tasks for m in ("mDice", "mIoU")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for name, rows in methods:
        by_task = {row["task"]: row for row in rows}
        cells = [name]
        for task in tasks:
            row = by_task.get(task)
            for metric in ("mDice", "mIoU"):
                cells.append("" if row is None else
                             fmt_value(row.get(metric), row.get(f"{metric}_std"), digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COUNT_COLUMNS = (
    ("n", "cases"),
    ("n_scored", "scored"),
    ("n_empty_gt", "empty GT"),
    ("n_both_empty", "GT and prediction empty"),
    ("n_fp_on_empty_gt", "prediction on empty GT"),
)


def counts_markdown(rows: Sequence[Mapping]) -> str:
    """Per task: how many cases, how many entered the mean, and the empty-mask counts (rows
    without a case count, such as the cross-task `mean`, are left out)."""
    columns = [c for c in COUNT_COLUMNS if any(c[0] in row for row in rows)]
    lines = ["| task | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in rows:
        if _is_missing(row.get("n")):  # e.g. the `mean` row: no cases of its own
            continue
        cells = ["" if _is_missing(row.get(key)) else str(row[key]) for key, _ in columns]
        lines.append(f"| {row['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_cell(value):
    if _is_missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1 else f"{value:.4f}"
    return value


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Iterable[str] | None = None) -> None:
    """Rows to CSV; columns default to the union of keys in first-seen order; NaN/None become empty."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    columns = list(columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})


def json_safe(obj):
    """NaN -> None, numpy scalars -> Python numbers, tuples -> lists, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def load_summary(path: str | Path) -> tuple[str, list[dict]]:
    """(method name, summary rows) from an `evaluate` summary.json, for `table3_markdown`."""
    data = json.loads(Path(path).read_text())
    rows = [{k: (math.nan if v is None else v) for k, v in row.items()} for row in data["summary"]]
    return data.get("name", Path(path).parent.name), rows
