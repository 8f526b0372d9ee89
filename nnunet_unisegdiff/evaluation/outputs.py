"""What `unisegdiff evaluate` writes: per_case.csv, summary.csv/.md/.json (+ summary_per_fold.csv)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from nnunet_unisegdiff.evaluation import report
from nnunet_unisegdiff.evaluation.scoring import PER_CASE_COLUMNS


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
