"""After phase B: which inference pipeline a fold's model predicts with, chosen on the fold's own
validation cases (never seen in training), the way nnU-Net picks configurations and postprocessing
from validation. CFENet alone is always a candidate, so on validation the chosen pipeline is never
worse than the nnU-Net the model stands on; a DNet pipeline must beat it by `margin` Dice points
(the cheaper, simpler model wins near-ties) and, by default, its per-case gain must hold under a paired
bootstrap of the validation cases: on a few dozen cases two lesion-free images can make a mean gain of
several points that does not carry to new images.

Score per case: Dice averaged over foreground labels, where a label absent from both the reference
and the prediction counts 1 (a lesion-free image left empty is right) and one absent from the
reference but predicted counts 0 (a false lesion); the pipeline's score is the mean over cases.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_unisegdiff.dice import dice
from nnunet_unisegdiff.model.pipelines import INFERENCE_PIPELINES

PIPELINE_RECORD = "inference_pipeline.json"  # in the fold folder
MARGIN = 0.5         # Dice points a DNet pipeline must gain over CFENet on validation
CONFIDENCE = 0.95    # one-sided, family-wise over the candidates: the gain's paired bootstrap lower bound > 0
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_CHUNK = 1 << 20  # resampled case indices held at once


def mirroring_axes(pipeline: str, plan_axes: Sequence[int] | None, dnet_mirroring: bool) -> tuple[int, ...] | None:
    """The test-time mirroring axes a checkpoint records for its pipeline: the plan's (nnU-Net's default) for
    CFENet alone (a registered pipeline that does not call DNet), none for a DNet pipeline or one not chosen
    yet ("auto") unless the trainer mirrors those too."""
    cfenet_alone = pipeline in INFERENCE_PIPELINES and not INFERENCE_PIPELINES[pipeline].calls_dnet
    if plan_axes is None or not (cfenet_alone or dnet_mirroring):
        return None
    return tuple(plan_axes)


def case_dice(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> float:
    """Mean over `labels` of Dice(pred == k, ref == k); 1 where both are empty. Pixels with ref < 0
    (outside nnU-Net's crop) are ignored."""
    return dice(pred, ref, labels, both_empty=1.0, valid=ref >= 0)


def label_map_predictor(predictor: nnUNetPredictor, net) -> Callable[[str, np.ndarray], np.ndarray]:
    """predict(pipeline, data (C, *spatial)) -> label map (*spatial): nnU-Net's sliding-window prediction with
    the UniSegDiff network `net` (the predictor's network) set to each pipeline in turn, untempered (tempering
    keeps every call's argmax), its settings restored after."""
    settings = net.settings

    def predict(pipeline: str, data: np.ndarray) -> np.ndarray:
        net.set_settings(replace(settings, pipeline=pipeline, temper_with_draws="off"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nnU-Net's 'array is not writable'
                logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data))
        finally:
            net.set_settings(settings)
        return logits.argmax(0).cpu().numpy()

    return predict


def validation_cases(dataset_class: type, preprocessed_folder: str, keys: Sequence[str],
                     folder_with_segs_from_previous_stage: str | None = None
                     ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(key, preprocessed data (C, *spatial), reference labels (*spatial)) of `keys`, read as nnU-Net's
    dataloader reads them (dataset_class: nnU-Net's dataset class of the folder)."""
    dataset = dataset_class(preprocessed_folder, keys,
                            folder_with_segs_from_previous_stage=folder_with_segs_from_previous_stage)
    for key in dataset.identifiers:
        data, seg, _, _ = dataset.load_case(key)
        yield key, np.asarray(data[:]), np.asarray(seg[:])[0]


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
    for name, scores in per.items():
        d = np.array(scores)
        table[name] = {"dice": 100 * float(d.mean()) if d.size else float("nan"),
                       "dice_lesion": 100 * float(d[lesion_mask].mean()) if lesion_mask.any() else float("nan"),
                       "false_lesions": false_lesion[name], "lesion_free": int((~lesion_mask).sum()),
                       "cases": int(d.size), "per_case": {k: 100 * float(v) for k, v in zip(keys, scores)}}
    return table


def paired_gain_lower_bound(gain: np.ndarray, confidence: float, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = 0) -> float:
    """One-sided percentile-bootstrap lower bound, at `confidence`, of the mean of per-case gains (cases
    resampled with replacement; seeded, so a table always gives the same choice)."""
    gain = np.asarray(gain, dtype=float)
    if gain.size == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    rows = max(1, BOOTSTRAP_CHUNK // gain.size)  # resamples drawn per block, memory bounded for any case count
    # one block of (rows, n) draws takes the generator's stream as `rows` draws of n: the means are the same
    means = np.concatenate([gain[rng.integers(0, gain.size, (min(rows, resamples - start), gain.size))].mean(axis=1)
                            for start in range(0, resamples, rows)])
    return float(np.quantile(means, 1.0 - confidence))


def paired_gain(table: dict[str, dict], name: str, baseline: str) -> np.ndarray:
    """Per-case Dice of `name` minus the baseline's, over the cases both were scored on."""
    if "per_case" not in table[name] or "per_case" not in table[baseline]:
        raise ValueError(f"the validation table has no per-case Dice for {name!r} or {baseline!r} (written before "
                         "it was recorded); choose with confidence=None or score the validation cases again")
    ours, theirs = table[name]["per_case"], table[baseline]["per_case"]
    if set(ours) != set(theirs):
        raise ValueError(f"{name!r} and {baseline!r} were scored on different cases")
    return np.array([ours[k] - theirs[k] for k in theirs])


def pool_tables(tables: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """One validation table from several folds' tables (cross-validation: disjoint cases), as nnU-Net pools
    its folds' validation to pick a configuration: means over all cases, counts summed."""
    names = list(tables[0])
    pooled = {}
    for name in names:
        rows = [t[name] for t in tables if name in t]
        if len(rows) != len(tables):
            raise ValueError(f"pipeline {name!r} was not scored in every fold")
        per_case = {}
        for row in rows:
            if "per_case" not in row:
                raise ValueError("a fold's validation table has no per-case Dice (written before it was recorded)")
            if set(per_case) & set(row["per_case"]):
                raise ValueError(f"folds share validation cases ({sorted(set(per_case) & set(row['per_case']))[:3]}"
                                 "...): not folds of one cross-validation")
            per_case.update(row["per_case"])
        lesion_rows = [r for r in rows if r["cases"] > r["lesion_free"]]  # mean of lesion cases, fold-weighted
        lesion_dice = [r["dice_lesion"] for r in lesion_rows]
        lesion_cases = [r["cases"] - r["lesion_free"] for r in lesion_rows]
        pooled[name] = {"dice": float(np.mean(list(per_case.values()))),
                        "dice_lesion": float(np.average(lesion_dice, weights=lesion_cases)) if lesion_rows
                        else float("nan"),
                        "false_lesions": sum(r["false_lesions"] for r in rows),
                        "lesion_free": sum(r["lesion_free"] for r in rows),
                        "cases": sum(r["cases"] for r in rows), "per_case": per_case}
    return pooled


def choose_pipeline(table: dict[str, dict], margin: float = MARGIN, confidence: float | None = CONFIDENCE,
                    baseline: str = "cfenet") -> str:
    """The candidate with the highest mean Dice; one other than `baseline` only if it beats the baseline by
    more than `margin` points and, unless `confidence` is None, the paired bootstrap lower bound of its
    per-case gain is above 0 at that confidence, Bonferroni-corrected over the other candidates (the best
    of several noisy gains is biased upwards). Ties go to the candidate listed first."""
    if baseline not in table:
        return max(table, key=lambda name: table[name]["dice"])  # max keeps the first of equal scores
    others = [name for name in table if name != baseline]
    level = None if confidence is None else 1.0 - (1.0 - confidence) / max(1, len(others))
    eligible = [name for name in others if table[name]["dice"] > table[baseline]["dice"] + margin
                and (level is None or paired_gain_lower_bound(paired_gain(table, name, baseline), level) > 0)]
    return max(eligible, key=lambda name: table[name]["dice"]) if eligible else baseline


def rule_text(margin: float, confidence: float | None) -> str:
    text = (f"highest mean per-case Dice on the fold's validation cases; a DNet pipeline only if it beats cfenet by "
            f"more than {margin} points")
    if confidence is not None:
        text += (f" and its paired bootstrap gain over cfenet stays above 0 at {100 * confidence:g} % one-sided "
                 "confidence (Bonferroni over the candidates)")
    return text


def format_table(table: dict[str, dict], chosen: str) -> str:
    lines = [f"{'pipeline':<18}{'Dice':>8}{'Dice lesion':>13}{'false lesions':>15}"]
    for name, r in table.items():
        mark = "  <- chosen" if name == chosen else ""
        lines.append(f"{name:<18}{r['dice']:>8.2f}{r['dice_lesion']:>13.2f}"
                     f"{r['false_lesions']:>9d} / {r['lesion_free']:<3d}{mark}")
    return "\n".join(lines)


def write_record(folder: str | Path, chosen: str, table: dict[str, dict], margin: float,
                 confidence: float | None) -> Path:
    path = Path(folder) / PIPELINE_RECORD
    record = {"chosen": chosen, "rule": rule_text(margin, confidence), "margin": margin, "confidence": confidence,
              "table": table}
    path.write_text(json.dumps(record, indent=2))
    return path
