"""Does tempering keep the segmentation on images larger than one patch? (docs/method.md item 18)

    .venv/bin/python benchmarks/experiments/tiling.py MODEL_FOLDER RAW_DATASET [--trainer-dir DIR] [--pairs 30]
    .venv/bin/python benchmarks/experiments/tiling.py --smoke   # an untrained tiny network on synthetic images

Each network call keeps its argmax when tempered, so a single-tile image gets the same segmentation
tempered or not. On a larger image nnU-Net's sliding window blends the overlapping tiles' logits with
Gaussian weights, and a tempered tile weighs less where its draws disagree, so the blended argmax can
move in the overlaps. This measures how much: held-out single-tile images of RAW_DATASET (what
accuracy_real.py writes per split) are preprocessed as nnUNetv2_predict does and put side by side in
pairs, one image two patches wide (three tiles at nnU-Net's step 0.5); each DNet pipeline predicts
every pair through nnU-Net's `predict_sliding_window_return_logits`, tempering off and on. Per pipeline:
pixels whose label moved (in the overlaps and outside them), and the mean Dice of each half against its
own ground truth (a lesion-free half left empty counts 1).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import _path  # noqa: F401  (first: benchmarks/ on the module path)
import numpy as np
import torch
from _common import apply_smoke, meta, print_table, write_json
from draw_agreement import add_model_args, load_cases

from nnunet_unisegdiff.evaluation.failure_metrics import dice
from nnunet_unisegdiff.model.pipelines import DRAW_PIPELINES

NAME = "tiling"


@torch.no_grad()
def pair_segmentations(predictor, x: torch.Tensor) -> np.ndarray:
    """nnU-Net's sliding-window label map of x (1, C_in, H, W): (H, W)."""
    logits = predictor.predict_sliding_window_return_logits(x[0][:, None])  # (C, 1, H, W)
    return logits[:, 0].argmax(0).cpu().numpy()


def measure(predictor, cases: list, pairs: int) -> list[dict]:
    """One row per DNet pipeline: `pairs` stitched images, each predicted untempered and tempered."""
    net, width = predictor.network, cases[0][1].shape[-1]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(cases))[: 2 * pairs]
    stitched = [(torch.cat((cases[a][1], cases[b][1]), -1), np.concatenate((cases[a][2], cases[b][2]), -1))
                for a, b in zip(order[::2], order[1::2])]
    cover = tile_cover(predictor, tuple(stitched[0][0].shape[2:]))  # (H, 2W)
    halves = (np.s_[:, :width], np.s_[:, width:])
    settings, rows = net.settings, []
    for pipeline in DRAW_PIPELINES:  # the ones `free` tempers
        segs = {}
        for mode in ("off", "on"):
            net.set_settings(replace(settings, pipeline=pipeline, temper_with_draws=mode))
            segs[mode] = [pair_segmentations(predictor, x) for x, _ in stitched]
        net.set_settings(settings)
        moved = [a != b for a, b in zip(segs["off"], segs["on"])]
        row = {"pipeline": pipeline, "pairs": len(stitched), "pixels": int(sum(m.size for m in moved)),
               "moved": int(sum(m.sum() for m in moved)),
               "moved_outside_overlaps": int(sum(m[cover == 1].sum() for m in moved)),
               "pairs_with_moves": int(sum(m.any() for m in moved))}
        for mode in ("off", "on"):
            row[f"dice_{mode}"] = float(np.mean([dice(s[h], gt[h]) for s, (_, gt) in zip(segs[mode], stitched)
                                                 for h in halves]))
        rows.append(row)
    return rows


def tile_cover(predictor, spatial: tuple[int, ...]) -> np.ndarray:
    """How many sliding-window tiles cover each pixel of a 2D preprocessed image of `spatial` (H, W)."""
    cover = np.zeros((1, *spatial), int)
    for slicer in predictor._internal_get_sliding_window_slicers((1, *spatial)):
        cover[tuple(slicer[1:])] += 1  # slicer: (channels, z index, rows, columns)
    return cover[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--pairs", type=int, default=30, help="stitched images (two held-out images each)")
    args = ap.parse_args(argv)
    apply_smoke(args, NAME, pairs=3)
    device, (predictor, cases) = load_cases(ap, args)
    rows = measure(predictor, cases, min(args.pairs, len(cases) // 2))
    print_table(rows, [("pipeline", "pipeline", "s"), ("pairs", "pairs", "d"), ("moved", "pixels moved", "d"),
                       ("moved_outside_overlaps", "outside overlaps", "d"), ("pixels", "of pixels", "d"),
                       ("dice_off", "Dice untempered", ".4f"), ("dice_on", "Dice tempered", ".4f")])
    write_json(NAME, meta(device, settings={k: str(v) for k, v in vars(args).items()}), {"rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
