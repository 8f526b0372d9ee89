"""Failure detection from prediction folders: does a per-case score flag the failed segmentations?

Works on what `nnUNetv2_predict --save_probabilities` writes (CASE.npz + label files), so any
trainer can be compared on the same held-out cases; nothing is trained or predicted here.

    python benchmarks/failure_detection.py --gt LABELS_DIR \\
        --pred unisegdiff=PRED_U --pred nnunet=PRED_N --pred nnunet_tta=PRED_N_MIRRORED \\
        --ensemble nnunet_5fold=FOLD0,FOLD1,FOLD2,FOLD3,FOLD4 \\
        --model nnunet=MODEL_FOLDER_N:0    # adds confidence_validated (the validation record's weight)
    python benchmarks/failure_detection.py --smoke   # synthetic folders in a temp dir, end to end

Per case: Dice of the label file (or the argmax where there is none) against LABELS_DIR, mean over
the foreground labels present in either; a lesion-free ground truth with an empty prediction is 1,
with any predicted lesion 0. Per model and per-case score:

* failure AUROC at Dice < 0.5 and at Dice < 0.8 (failures ranked above successes; 0.5 = chance);
* AURC, risk 1 - Dice (lower is better; `aurc_oracle` is the best any score could reach);
* per model, pixel ECE (15 bins of the foreground probability 1 - p_background) and Brier score.

Scores: `mean_entropy` (the image's mean normalised entropy, a column of `unisegdiff
uncertainty`'s csv before the confidence), `confidence` (the soft-Dice confidence,
`nnunet_unisegdiff.evaluation.confidence`) for
every model; an ensemble (several models' folders, e.g. nnU-Net folds; its prediction is the argmax
of the mean probabilities, as `nnUNetv2_ensemble` makes it) is also scored by `pairwise_dice`, the
mean Dice between its members' masks (Zenk et al., MedIA 2025), at N times one model's compute.
A mirrored-TTA prediction folder is one more `--pred`. Metrics: `failure_metrics`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, meta, print_table, write_json

from nnunet_unisegdiff.evaluation.cases import find_dataset_json, guess_file_ending, label_files
from nnunet_unisegdiff.evaluation.confidence import case_confidence
from nnunet_unisegdiff.evaluation.failure_metrics import (
    CalibrationAccumulator,
    aurc,
    auroc,
    dice,
    mean_pairwise_dice,
)
from nnunet_unisegdiff.evaluation.scoring import reader_writer
from nnunet_unisegdiff.evaluation.uncertainty import entropy_map, load_probabilities
from nnunet_unisegdiff.evaluation.validation_record import ValidationRecord, model_record

NAME = "failure_detection"
THRESHOLDS = (0.5, 0.8)  # a case failed when its Dice is below
# score -> (how to read it as an uncertainty: higher = more likely failed, description)
SCORES = {"mean_entropy": (lambda v: v, "mean normalised entropy"),
          "confidence": (lambda v: 1.0 - v, "soft-Dice confidence"),
          "confidence_validated": (lambda v: 1.0 - v, "soft-Dice confidence weighed by the model's validation "
                                                      "record (unisegdiff uncertainty --model)"),
          "pairwise_dice": (lambda v: 1.0 - v, "mean pairwise Dice of the members")}


# ----------------------------------------------------------------------------- reading folders
class Labels:
    """Label files of one ending, read with nnU-Net's reader, singleton axes dropped (the same
    layout as `load_probabilities`)."""

    def __init__(self, gt_dir: Path) -> None:
        self.ending = guess_file_ending(gt_dir)
        self.gt = label_files(gt_dir, self.ending)
        if not self.gt:
            raise SystemExit(f"no {self.ending} label files in {gt_dir}")
        ds_json = find_dataset_json(gt_dir)
        self.rw = reader_writer(self.ending, next(iter(self.gt.values())),
                                json.loads(ds_json.read_text()) if ds_json else None)

    def read(self, path: Path) -> np.ndarray:
        seg, _ = self.rw.read_seg(str(path))
        return np.squeeze(np.asarray(seg[0])).astype(np.int64)

    def prediction(self, folder: Path, case: str, probs: np.ndarray) -> np.ndarray:
        """The label file nnU-Net wrote for `case`, or the argmax of its probabilities."""
        path = folder / f"{case}{self.ending}"
        mask = self.read(path) if path.is_file() else probs.argmax(0)
        if mask.shape != probs.shape[1:]:
            raise SystemExit(f"{path}: label shape {mask.shape} differs from the probabilities' {probs.shape[1:]}")
        return mask


def npz_path(folder: Path, case: str) -> Path:
    path = folder / f"{case}.npz"
    if not path.is_file():
        raise SystemExit(f"{folder}: no {case}.npz (run nnUNetv2_predict with --save_probabilities)")
    return path


def parse_named(spec: str, several: bool = False) -> tuple[str, list[Path]]:
    """'NAME=DIR' (or a bare DIR, named after it); with `several`, 'NAME=DIR1,DIR2,...'."""
    name, _, dirs = spec.rpartition("=")
    paths = [Path(d) for d in (dirs.split(",") if several else [dirs])]
    if several and len(paths) < 2:
        raise SystemExit(f"--ensemble {spec}: give at least two folders, comma-separated")
    for p in paths:
        if not p.is_dir():
            raise SystemExit(f"not a folder: {p}")
    return name or paths[0].name, paths


def parse_model(spec: str) -> tuple[str, ValidationRecord]:
    """'NAME=MODEL_FOLDER[:FOLDS]' -> (NAME, its validation record)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"--model {spec}: expected NAME=MODEL_FOLDER[:FOLDS]")
    folder, _, folds = rest.partition(":")
    try:
        return name, model_record(folder, folds.split(",") if folds else None)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"--model {spec}: {e}") from e


# ----------------------------------------------------------------------------- scoring
def score_model(name: str, folders: list[Path], labels: Labels, record: ValidationRecord | None = None) -> dict:
    """Per-case Dice and scores, and the pixel calibration, of one model (one folder) or of an
    ensemble (several folders, mean probabilities); with `record` (its validation
    record, `validation_record.py`) also `confidence_validated`."""
    calibration = CalibrationAccumulator()
    cases = []
    for case, gt_file in labels.gt.items():
        gt = labels.read(gt_file)
        member_probs = [load_probabilities(npz_path(f, case)).astype(np.float32) for f in folders]
        probs = np.mean(member_probs, axis=0) if len(folders) > 1 else member_probs[0]
        if probs.shape[1:] != gt.shape:
            raise SystemExit(f"{case}: probabilities {probs.shape[1:]} and ground truth {gt.shape} differ")
        if len(folders) > 1:
            prediction = probs.argmax(0)
        else:
            prediction = labels.prediction(folders[0], case, probs)
        row = {"case": case, "dice": dice(prediction, gt), "gt_empty": bool((gt == 0).all()),
               "pred_empty": bool((prediction == 0).all()),
               "mean_entropy": float(entropy_map(probs).mean()), "confidence": case_confidence(probs)}
        if record is not None:
            row["confidence_validated"] = case_confidence(probs, empty_weight=record.empty_weight)
        if len(folders) > 1:
            masks = [labels.prediction(f, case, p) for f, p in zip(folders, member_probs)]
            row["pairwise_dice"] = mean_pairwise_dice(masks)
        calibration.add(1.0 - probs[0], gt > 0)
        cases.append(row)
    return {"model": name, "members": [str(f) for f in folders], "compute": f"{len(folders)}x one model",
            "validation_record": None if record is None else {**asdict(record), "empty_weight": record.empty_weight},
            "cases": cases, "ece": calibration.ece(), "brier": calibration.brier(),
            "pixels": calibration.pixels}


def summarize(model: dict) -> list[dict]:
    """One row per score of `model`: failure AUROCs, AURC, and the model's Dice and calibration."""
    cases = model["cases"]
    d = np.array([c["dice"] for c in cases])
    risk = 1.0 - d
    base = {"model": model["model"], "cases": len(cases), "mean_dice": float(d.mean()),
            "ece": model["ece"], "brier": model["brier"], "aurc_oracle": aurc(-risk, risk),
            "compute": model["compute"]}
    for t in THRESHOLDS:
        base[f"failures_{t}"] = int((d < t).sum())
    rows = []
    for score, (to_uncertainty, _) in SCORES.items():
        if score not in cases[0]:
            continue
        u = np.array([to_uncertainty(c[score]) for c in cases])
        row = dict(base, score=score, aurc=aurc(-u, risk))
        for t in THRESHOLDS:
            row[f"auroc_{t}"] = auroc(u, d < t)
        rows.append(row)
    return rows


COLUMNS = [("model", "model", ""), ("score", "score", ""), ("cases", "cases", "d"),
           ("mean_dice", "Dice", ".3f"), ("failures_0.5", "fail<0.5", "d"), ("auroc_0.5", "AUROC<0.5", ".3f"),
           ("failures_0.8", "fail<0.8", "d"), ("auroc_0.8", "AUROC<0.8", ".3f"), ("aurc", "AURC", ".4f"),
           ("aurc_oracle", "AURC oracle", ".4f"), ("ece", "pixel ECE", ".4f"), ("brier", "Brier", ".4f"),
           ("compute", "compute", "")]


def markdown_table(rows: list[dict]) -> str:
    """The printed table as Markdown (NaN AUROC: no failure or no success at that threshold)."""
    def cell(row: dict, key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join("---" if not f else "---:" for _, _, f in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- smoke data
def _disc(shape: tuple[int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _save_case(folder: Path, case: str, p_fg: np.ndarray) -> None:
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.stack([1 - p_fg, p_fg])[:, None].astype(np.float32)  # nnU-Net's 2D layout (C, 1, H, W)
    np.savez_compressed(folder / f"{case}.npz", probabilities=probs)
    Image.fromarray((p_fg > 0.5).astype(np.uint8)).save(folder / f"{case}.png")


def write_smoke_folders(root: Path, n_cases: int = 16, seed: int = 0) -> dict[str, list[Path]]:
    """Ground truth and predictions of a 'model' whose errors are planted: per case a shift of the
    lesion (large for some cases), a missed lesion, or a false lesion on a lesion-free image. The
    'calibrated' model's softmax is blurrier where it errs, the 'overconfident' one's is crisp
    everywhere; three ensemble members jitter around the calibrated prediction."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    shape = (32, 32)
    folders = {k: root / k for k in ("gt", "calibrated", "overconfident", "m0", "m1", "m2")}
    folders["gt"].mkdir(parents=True)
    for i in range(n_cases):
        case = f"case_{i:03d}"
        empty = i % 4 == 0
        centre, radius = rng.uniform(10, 22, 2), rng.uniform(4, 7)
        gt = np.zeros(shape, bool) if empty else _disc(shape, centre, radius)
        Image.fromarray(gt.astype(np.uint8)).save(folders["gt"] / f"{case}.png")
        error = rng.uniform(0, 1)  # how badly this case goes
        if empty:
            pred = _disc(shape, rng.uniform(8, 24, 2), 3) if error > 0.7 else np.zeros(shape, bool)
        else:
            pred = np.zeros(shape, bool) if error > 0.85 else _disc(shape, centre + error * 8 * rng.normal(size=2),
                                                                   radius)
        temperature = 0.2 + 2.5 * error
        soft = 1 / (1 + np.exp(-_signed_distance(pred) / temperature))
        if not pred.any():
            soft = np.where(gt | (rng.random(shape) < 0.02), 0.45 * error, 0.01)  # a hint where it missed
        _save_case(folders["calibrated"], case, soft)
        _save_case(folders["overconfident"], case, np.where(pred, 0.99, 0.01))
        for m in ("m0", "m1", "m2"):
            shifted = np.roll(soft, tuple(rng.integers(-1, 2, 2) * int(1 + 3 * error)), axis=(0, 1))
            _save_case(folders[m], case, shifted)
    return {"gt": [folders["gt"]], "calibrated": [folders["calibrated"]],
            "overconfident": [folders["overconfident"]], "ensemble": [folders[m] for m in ("m0", "m1", "m2")]}


def write_smoke_validation(model_folder: Path, gt_dir: Path, pred_dir: Path) -> Path:
    """A model folder whose fold_0/validation/summary.json nnU-Net's own evaluation writes from
    `pred_dir` against `gt_dir` (the smoke's stand-in for a fold's validation)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    out = model_folder / "fold_0" / "validation"
    out.mkdir(parents=True)
    compute_metrics_on_folder(str(gt_dir), str(pred_dir), str(out / "summary.json"), NaturalImage2DIO(), ".png", [1],
                              num_processes=1)
    return model_folder


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the mask border (> 0 inside), from the pixel's distance to
    the nearest pixel of the other kind (brute force: the smoke images are small)."""
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    pts = np.stack([yy.ravel(), xx.ravel()], 1).astype(float)
    inside, outside = pts[mask.ravel()], pts[~mask.ravel()]
    if len(inside) == 0:
        return np.full(mask.shape, -10.0)
    d_in = np.sqrt(((pts[:, None] - outside[None]) ** 2).sum(-1)).min(1) if len(outside) else np.full(len(pts), 10.0)
    d_out = np.sqrt(((pts[:, None] - inside[None]) ** 2).sum(-1)).min(1)
    return np.where(mask.ravel(), d_in - 0.5, -(d_out - 0.5)).reshape(mask.shape)


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", type=Path, help="ground-truth label folder (nnU-Net file naming)")
    ap.add_argument("--pred", action="append", default=[], metavar="NAME=DIR",
                    help="a prediction folder with CASE.npz (--save_probabilities) and label files; repeatable")
    ap.add_argument("--ensemble", action="append", default=[], metavar="NAME=DIR1,DIR2,...",
                    help="several models' prediction folders scored as one ensemble; repeatable")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=MODEL_FOLDER[:FOLDS]",
                    help="the trained model behind --pred/--ensemble NAME (its fold_X/validation/summary.json, "
                         "FOLDS e.g. 0 or 0,1,2; default every fold): adds the score confidence_validated")
    ap.add_argument("--json", type=Path, default=None, help=f"default benchmarks/results/{NAME}.json")
    ap.add_argument("--markdown", type=Path, default=None, help="default: the JSON path with .md")
    ap.add_argument("--smoke", action="store_true", help="synthetic folders in a temp dir, end to end")
    args = ap.parse_args(argv)
    if not args.smoke and (args.gt is None or not (args.pred or args.ensemble)):
        ap.error("give --gt and at least one --pred or --ensemble (or --smoke)")
    return args


def run(args: argparse.Namespace, tmp: Path | None = None) -> list[dict]:
    if args.smoke:
        folders = write_smoke_folders(tmp)
        args.gt = folders.pop("gt")[0]
        args.pred = [f"{k}={v[0]}" for k, v in folders.items() if len(v) == 1]
        args.ensemble = [f"ensemble={','.join(str(p) for p in folders['ensemble'])}"]
        model = write_smoke_validation(tmp / "model_calibrated", args.gt, folders["calibrated"][0])
        args.model = [f"calibrated={model}"]
        args.json = args.json or tmp / f"{NAME}.json"
    labels = Labels(args.gt)
    records = dict(parse_model(s) for s in args.model)
    named = [parse_named(s) for s in args.pred] + [parse_named(s, several=True) for s in args.ensemble]
    unknown = set(records) - {name for name, _ in named}
    if unknown:
        raise SystemExit(f"--model {', '.join(sorted(unknown))}: no --pred or --ensemble of that name")
    models = [score_model(name, folders, labels, records.get(name)) for name, folders in named]
    rows = [row for m in models for row in summarize(m)]
    print_table(rows, COLUMNS)
    json_path = args.json or RESULTS / f"{NAME}.json"
    md_path = args.markdown or json_path.with_suffix(".md")
    write_json(NAME, meta(torch.device("cpu"), gt=str(args.gt), smoke=args.smoke, thresholds=list(THRESHOLDS),
                          scores={k: v[1] for k, v in SCORES.items()}),
               {"rows": rows, "models": models}, json_path)
    md_path.write_text(markdown_table(rows))
    print(f"wrote {md_path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="failure_detection_smoke_")) if args.smoke else None
    if tmp is not None:
        print(f"smoke: synthetic folders and results in {tmp}")
    run(args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
