"""Is test-time mirroring worth its cost for UniSegDiff? Predicts the same images with a trained
model folder with and without mirroring (nnU-Net's own predictor; the checkpoint's stored axes
are overridden) and reports wall time and Dice against the labels, side by side in one run.

    python benchmarks/mirroring.py MODEL_FOLDER IMAGES_DIR LABELS_DIR [--folds 0] [--device cpu]

MODEL_FOLDER is nnU-Net's `.../TRAINER__PLANS__CONFIG` folder (nnUNet_extTrainer must be set, as
for nnUNetv2_predict). `--smoke` needs none of the three: an untrained model of a tiny plan and two
synthetic images.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke_arg, apply_smoke, meta, print_table, write_json
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_unisegdiff.dice import dice


def foreground_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of the foreground (> 0) as one label; NaN when both are empty."""
    return dice(pred > 0, ref > 0, labels=(1,), both_empty=float("nan"))


def smoke_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """An untrained nnUNetTrainerUniSegDiff model folder of a tiny 32x32 RGB plan, and two held-out images
    with labels."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_unisegdiff.conversion.synthetic import write_heldout_images
    from nnunet_unisegdiff.model.plans import unet_plans
    from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
    from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff

    model = folder / "nnUNetTrainerUniSegDiff__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    plans = unet_plans([32, 32], (8, 16, 32, 32), num_channels=3, decoder_convs=1,
                       original_spacing=(999.0, 1.0, 1.0))  # nnU-Net's spacing of natural 2D images
    stats = {"mean": 128.0, "std": 64.0, "min": 0.0, "max": 255.0, "median": 128.0,
             "percentile_00_5": 0.0, "percentile_99_5": 255.0}
    plans["foreground_intensity_properties_per_channel"] = {str(c): stats for c in range(3)}  # read, unused by z-score
    pm = PlansManager(plans)
    net = nnUNetTrainerUniSegDiff.build_network_architecture(pm, pm.get_configuration("2d"), 3, 2, False)
    torch.save({"trainer_name": "nnUNetTrainerUniSegDiff", "init_args": {"configuration": "2d"},
                "network_weights": net.state_dict()}, model / "fold_0" / "checkpoint_final.pth")
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                    "labels": {"background": 0, "lesion": 1},
                                                    "numTraining": 2, "file_ending": ".png"}))
    os.environ["nnUNet_extTrainer"] = str(TRAINER_DIR)
    images, labels = write_heldout_images(folder, num_cases=2, size=32)
    return model, images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_folder", type=Path, nargs="?")
    ap.add_argument("images", type=Path, nargs="?")
    ap.add_argument("labels", type=Path, nargs="?")
    ap.add_argument("--folds", nargs="+", type=int, default=[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    add_smoke_arg(ap)
    args = ap.parse_args()
    apply_smoke(args, "mirroring")
    if args.smoke:
        args.model_folder, args.images, args.labels = smoke_inputs(Path(tempfile.mkdtemp(prefix="mirroring_smoke_")))
    elif None in (args.model_folder, args.images, args.labels):
        ap.error("MODEL_FOLDER, IMAGES and LABELS are required (or --smoke)")
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
            scores.append(foreground_dice(seg, ref[0]))
        rows.append({"mirroring": "on (4 passes)" if mirror else "off", "images": len(images),
                     "s_per_image": float(np.median(seconds)), "mean_dice": float(np.nanmean(scores))})
    rows[1]["time_ratio"] = rows[1]["s_per_image"] / rows[0]["s_per_image"]
    print_table(rows, [("mirroring", "mirroring", ""), ("images", "images", "d"),
                       ("s_per_image", "s/image (median)", ".2f"), ("mean_dice", "mean Dice", ".4f"),
                       ("time_ratio", "time vs off", ".2f")])
    write_json("mirroring", meta(device, model_folder=str(args.model_folder)), rows, args.json)


if __name__ == "__main__":
    main()
