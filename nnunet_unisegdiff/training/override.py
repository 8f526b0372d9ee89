"""`unisegdiff pipeline MODEL_FOLDER -f FOLD [--set NAME]`: show which inference pipeline a trained fold
predicts with (the validation table the trainer chose it from), or override the choice. The choice
lives in the checkpoint's settings record, so nnUNetv2_predict, ensembling and find_best_configuration
all follow it; the checkpoint is rewritten atomically and the record notes the override."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from nnunet_unisegdiff.model.settings import PIPELINES
from nnunet_unisegdiff.training.selection import PIPELINE_RECORD, format_table, mirroring_axes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pipeline", help="show or override a trained fold's inference pipeline",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("model_folder", type=Path, help="the trainer folder (TRAINER__PLANS__CONFIGURATION)")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold number(s) (default 0)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--set", choices=PIPELINES, default=None, help="predict with this pipeline from now on")
    p.set_defaults(func=run)


def set_pipeline(checkpoint_file: Path, pipeline: str) -> str:
    """Rewrite the checkpoint's recorded pipeline and the test-time mirroring that goes with it (the plan's
    for CFENet alone, as the trainer records it); returns the previous pipeline."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    record = checkpoint["network_weights"].get("_extra_state")
    if record is None:
        raise ValueError(f"{checkpoint_file}: no recorded inference settings (not a UniSegDiff checkpoint, or one "
                         "saved before they were recorded); retrain or predict with the trainer's defaults")
    previous = record["settings"]["pipeline"]
    record["settings"]["pipeline"] = pipeline
    meta = checkpoint.get("unisegdiff", {})
    if "plan_mirroring_axes" in meta:  # checkpoints from before it was recorded keep their mirroring
        checkpoint["inference_allowed_mirroring_axes"] = mirroring_axes(pipeline, meta["plan_mirroring_axes"],
                                                                        meta["dnet_mirroring"])
    partial = f"{checkpoint_file}.partial"
    torch.save(checkpoint, partial)
    os.replace(partial, checkpoint_file)
    return previous


def run(args: argparse.Namespace) -> int:
    for fold in args.folds:
        folder = args.model_folder / f"fold_{fold}"
        checkpoint = folder / args.checkpoint
        if not checkpoint.is_file():
            print(f"unisegdiff pipeline: error: {checkpoint} does not exist", file=sys.stderr)
            return 1
        record_file = folder / PIPELINE_RECORD
        record = json.loads(record_file.read_text()) if record_file.is_file() else None
        if record is not None:
            print(f"{folder}: chosen on validation: {record['chosen']} ({record['rule']})")
            print(format_table(record["table"], record["chosen"]))
        if args.set is None:
            settings = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"].get(
                "_extra_state")
            print(f"{checkpoint.name} predicts with: "
                  f"{settings['settings']['pipeline'] if settings else 'unrecorded (the trainer class default)'}")
            continue
        try:
            previous = set_pipeline(checkpoint, args.set)
        except ValueError as e:
            print(f"unisegdiff pipeline: error: {e}", file=sys.stderr)
            return 1
        if record is not None:
            record["overridden"] = {"checkpoint": checkpoint.name, "pipeline": args.set, "was": previous}
            record_file.write_text(json.dumps(record, indent=2))
        print(f"{checkpoint}: pipeline {previous} -> {args.set}")
    return 0
