"""After phase B: which inference pipeline a fold's model predicts with, chosen on the fold's own
validation cases (never seen in training), the way nnU-Net picks configurations and postprocessing
from validation. CFENet alone is always a candidate, so on validation the chosen pipeline is never
worse than the nnU-Net the model stands on; a DNet pipeline must beat it by `margin` Dice points
(the cheaper, simpler model wins near-ties).

Score per case: Dice averaged over foreground labels, where a label absent from both the reference
and the prediction counts 1 (a lesion-free image left empty is right) and one absent from the
reference but predicted counts 0 (a false lesion); the pipeline's score is the mean over cases.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

PIPELINE_RECORD = "inference_pipeline.json"  # in the fold folder


def mirroring_axes(pipeline: str, plan_axes: Sequence[int] | None, dnet_mirroring: bool) -> tuple[int, ...] | None:
    """The test-time mirroring axes a checkpoint records for its pipeline: the plan's (nnU-Net's default) for
    CFENet alone, none for a DNet pipeline unless the trainer mirrors those too."""
    if plan_axes is None or not (pipeline == "cfenet" or dnet_mirroring):
        return None
    return tuple(plan_axes)


def case_dice(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> float:
    """Mean over `labels` of Dice(pred == k, ref == k); 1 where both are empty. Pixels with ref < 0
    (outside nnU-Net's crop) are ignored."""
    valid = ref >= 0
    scores = []
    for k in labels:
        p, r = (pred == k) & valid, (ref == k) & valid
        denom = int(p.sum()) + int(r.sum())
        scores.append(1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom)
    return float(np.mean(scores))


def score_pipelines(predict: Callable[[str, np.ndarray], np.ndarray], cases: Iterable[tuple[str, np.ndarray,
                    np.ndarray]], candidates: Sequence[str], labels: Sequence[int]) -> dict[str, dict]:
    """{pipeline: Dice (%) over all cases and over lesion cases, false-lesion count, case count and each
    case's Dice (%), kept so that other choice rules can be studied on the record}.
    predict(pipeline, data) -> label map; cases: (key, preprocessed data, reference label map)."""
    per = {name: [] for name in candidates}
    keys, lesion, false_lesion = [], [], {name: 0 for name in candidates}
    for key, data, ref in cases:
        has_lesion = bool(np.isin(ref, labels).any())
        keys.append(key)
        lesion.append(has_lesion)
        for name in candidates:
            pred = predict(name, data)
            per[name].append(case_dice(pred, ref, labels))
            false_lesion[name] += int(not has_lesion and bool(np.isin(pred[ref >= 0], labels).any()))
    lesion_mask = np.array(lesion, dtype=bool)
    table = {}
    for name, dice in per.items():
        d = np.array(dice)
        table[name] = {"dice": 100 * float(d.mean()) if d.size else float("nan"),
                       "dice_lesion": 100 * float(d[lesion_mask].mean()) if lesion_mask.any() else float("nan"),
                       "false_lesions": false_lesion[name], "lesion_free": int((~lesion_mask).sum()),
                       "cases": int(d.size), "per_case": {k: 100 * float(v) for k, v in zip(keys, dice)}}
    return table


def choose_pipeline(table: dict[str, dict], margin: float, baseline: str = "cfenet") -> str:
    """The candidate with the highest Dice; a candidate other than `baseline` only if it beats the
    baseline by more than `margin` points. Ties go to the candidate listed first."""
    best = max(table, key=lambda name: table[name]["dice"])  # max keeps the first of equal scores
    if baseline in table and best != baseline and table[best]["dice"] <= table[baseline]["dice"] + margin:
        return baseline
    return best


def format_table(table: dict[str, dict], chosen: str) -> str:
    lines = [f"{'pipeline':<18}{'Dice':>8}{'Dice lesion':>13}{'false lesions':>15}"]
    for name, r in table.items():
        mark = "  <- chosen" if name == chosen else ""
        lines.append(f"{name:<18}{r['dice']:>8.2f}{r['dice_lesion']:>13.2f}"
                     f"{r['false_lesions']:>9d} / {r['lesion_free']:<3d}{mark}")
    return "\n".join(lines)


def write_record(folder: str | Path, chosen: str, table: dict[str, dict], rule: str) -> Path:
    path = Path(folder) / PIPELINE_RECORD
    path.write_text(json.dumps({"chosen": chosen, "rule": rule, "table": table}, indent=2))
    return path
