"""Is test-time mirroring worth its cost for UniSegDiff? Predicts the same images with a trained
model folder with and without mirroring (nnU-Net's own predictor; the checkpoint's stored axes
are overridden) and reports wall time and Dice against the labels, side by side in one run.

    python benchmarks/mirroring.py MODEL_FOLDER IMAGES_DIR LABELS_DIR [--folds 0] [--device cpu]

MODEL_FOLDER is nnU-Net's `.../TRAINER__PLANS__CONFIG` folder (nnUNet_extTrainer must be set, as
for nnUNetv2_predict).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import meta, print_table, write_json
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred > 0, ref > 0
    total = p.sum() + r.sum()
    return float(2 * (p & r).sum() / total) if total else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_folder", type=Path)
    ap.add_argument("images", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--folds", nargs="+", type=int, default=[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    images = sorted(args.images.glob("*_0000.png"))
    reader = NaturalImage2DIO()
    rows = []
    for mirror in (False, True):
        predictor = nnUNetPredictor(use_mirroring=mirror, device=device, allow_tqdm=False, verbose=False)
        predictor.initialize_from_trained_model_folder(str(args.model_folder), tuple(args.folds))
        predictor.allowed_mirroring_axes = (0, 1) if mirror else None
        scores, seconds = [], []
        for img in images:
            data, props = reader.read_images([str(img)])
            t0 = time.perf_counter()
            seg = predictor.predict_single_npy_array(data, props)
            seconds.append(time.perf_counter() - t0)
            ref, _ = reader.read_seg(str(args.labels / img.name.replace("_0000.png", ".png")))
            scores.append(dice(seg, ref[0]))
        rows.append({"mirroring": "on (4 passes)" if mirror else "off", "images": len(images),
                     "s_per_image": float(np.median(seconds)), "mean_dice": float(np.nanmean(scores))})
    rows[1]["time_ratio"] = rows[1]["s_per_image"] / rows[0]["s_per_image"]
    print_table(rows, [("mirroring", "mirroring", ""), ("images", "images", "d"),
                       ("s_per_image", "s/image (median)", ".2f"), ("mean_dice", "mean Dice", ".4f"),
                       ("time_ratio", "time vs off", ".2f")])
    write_json("mirroring", meta(device, model_folder=str(args.model_folder)), rows, args.json)


if __name__ == "__main__":
    main()
