"""`unisegdiff pipeline MODEL_FOLDER -f FOLD [--set NAME | --pool] [--temper on|off]`: show which inference
pipeline a trained fold predicts with (the validation table the trainer chose it from), override the choice, or
choose once for several folds from their pooled validation cases; and whether its saved probabilities are
tempered by the draws. Both live in the checkpoint's settings record, so nnUNetv2_predict, ensembling and
find_best_configuration all follow them; the checkpoint is rewritten atomically and the record notes the
override.

`--temper`: `free` (the default of new trainings) tempers the probabilities of the pipelines that sample the
draws anyway; `on` also those of `cfenet`, `rs` and `paper`, at 12 more DNet calls per tile and mirror;
`off` exports every pipeline's probabilities as they are, as models of older versions do.

`--pool` is nnU-Net's habit of choosing from all folds' validation together: each fold alone chooses on a
fifth of the training cases, where a few images can decide; pooled, the same rule sees all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from nnunet_unisegdiff.model.network import EXTRA_STATE_KEY
from nnunet_unisegdiff.model.pipelines import PIPELINES, tempers
from nnunet_unisegdiff.model.settings import (
    SETTINGS_FORMAT,
    TEMPER_MODES,
    UniSegDiffSettings,
    settings_from_dict,
    settings_to_dict,
)
from nnunet_unisegdiff.training.selection import (
    CONFIDENCE,
    MARGIN,
    PIPELINE_RECORD,
    choose_pipeline,
    format_table,
    mirroring_axes,
    pool_tables,
    rule_text,
)

POOLED_RECORD = "inference_pipeline_pooled.json"  # in the model folder


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pipeline", help="show or override a trained fold's inference pipeline",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("model_folder", type=Path, help="the trainer folder (TRAINER__PLANS__CONFIGURATION)")
    p.add_argument("-f", "--folds", nargs="+", default=["0"], help="fold number(s) (default 0)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--set", choices=PIPELINES, default=None, help="predict with this pipeline from now on")
    choice.add_argument("--pool", action="store_true",
                        help="choose one pipeline for all the given folds from their validation cases together "
                             "(the rule the trainer used) and predict with it in each")
    p.add_argument("--temper", choices=TEMPER_MODES, default=None,
                   help="when to export probabilities tempered by the draws' disagreement (segmentation unchanged): "
                        "off, free (only pipelines that sample the draws anyway), on (always)")
    p.set_defaults(func=run)


def set_pipeline(checkpoint_file: Path, pipeline: str) -> str:
    """Rewrite the checkpoint's recorded pipeline and the test-time mirroring that goes with it (the plan's
    for CFENet alone, as the trainer records it); returns the previous pipeline."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
    checkpoint, settings = _load_settings(checkpoint_file)
    meta = checkpoint.get("unisegdiff", {})
    if "plan_mirroring_axes" in meta:  # checkpoints from before it was recorded keep their mirroring
        checkpoint["inference_allowed_mirroring_axes"] = mirroring_axes(pipeline, meta["plan_mirroring_axes"],
                                                                        meta["dnet_mirroring"])
    _save_settings(checkpoint, checkpoint_file, replace(settings, pipeline=pipeline))
    return settings.pipeline


def set_tempering(checkpoint_file: Path, temper: str) -> str:
    """Rewrite when the checkpoint exports probabilities tempered by the draws (one of TEMPER_MODES); returns
    the previous mode. A record of an older format is rewritten in today's, its other settings as it read them."""
    checkpoint, settings = _load_settings(checkpoint_file)
    _save_settings(checkpoint, checkpoint_file, replace(settings, temper_with_draws=temper))
    return settings.temper_with_draws


def recorded_settings(checkpoint_file: Path) -> UniSegDiffSettings:
    """The inference settings a checkpoint records (what nnUNetv2_predict will use)."""
    return _load_settings(checkpoint_file)[1]


def _load_settings(checkpoint_file: Path) -> tuple[dict, UniSegDiffSettings]:
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    record = checkpoint["network_weights"].get(EXTRA_STATE_KEY)
    if record is None:
        raise ValueError(f"{checkpoint_file}: no recorded inference settings (not a UniSegDiff checkpoint, or one "
                         "saved before they were recorded); retrain or predict with the trainer's defaults")
    return checkpoint, settings_from_dict(record["settings"], record.get("format"))


def _save_settings(checkpoint: dict, checkpoint_file: Path, settings: UniSegDiffSettings) -> None:
    checkpoint["network_weights"][EXTRA_STATE_KEY] = {"format": SETTINGS_FORMAT, "settings": settings_to_dict(settings)}
    partial = f"{checkpoint_file}.partial"
    torch.save(checkpoint, partial)
    os.replace(partial, checkpoint_file)


def _error(message: str) -> int:
    print(f"unisegdiff pipeline: error: {message}", file=sys.stderr)
    return 1


def _read_record(folder: Path) -> dict | None:
    record_file = folder / PIPELINE_RECORD
    return json.loads(record_file.read_text()) if record_file.is_file() else None


def _override(folder: Path, checkpoint: Path, pipeline: str, note: str, extra: dict | None = None) -> str:
    """Set the checkpoint's pipeline and note it in the fold's record; the line to print. Raises ValueError."""
    previous = set_pipeline(checkpoint, pipeline)
    record = _read_record(folder)
    if record is not None:
        record[note] = {"checkpoint": checkpoint.name, "pipeline": pipeline, "was": previous, **(extra or {})}
        (folder / PIPELINE_RECORD).write_text(json.dumps(record, indent=2))
    return f"{checkpoint}: pipeline {previous} -> {pipeline}"


def pool(model_folder: Path, folds: list[str], checkpoint_name: str) -> int:
    records = {}
    for fold in folds:
        folder = model_folder / f"fold_{fold}"
        if not (folder / checkpoint_name).is_file():
            return _error(f"{folder / checkpoint_name} does not exist")
        records[fold] = _read_record(folder)
        if records[fold] is None:
            return _error(f"{folder / PIPELINE_RECORD} does not exist (the fold's pipeline was fixed, not chosen)")
    first = records[folds[0]]
    margin, confidence = first.get("margin", MARGIN), first.get("confidence", CONFIDENCE)
    try:
        table = pool_tables([r["table"] for r in records.values()])
        chosen = choose_pipeline(table, margin, confidence)
    except ValueError as e:
        return _error(f"{model_folder}: folds {' '.join(folds)}: {e}")
    rule = rule_text(margin, confidence).replace("the fold's validation cases", f"the validation cases of folds "
                                                 f"{' '.join(folds)} together")
    (model_folder / POOLED_RECORD).write_text(json.dumps(
        {"folds": folds, "chosen": chosen, "rule": rule, "margin": margin, "confidence": confidence,
         "per_fold": {f: r["chosen"] for f, r in records.items()}, "table": table}, indent=2))
    done = []  # every fold is written before anything is printed: output cut short (`| head`) leaves none behind
    for fold in folds:
        folder = model_folder / f"fold_{fold}"
        try:
            done.append(_override(folder, folder / checkpoint_name, chosen, "pooled", {"folds": folds}))
        except ValueError as e:
            return _error(str(e))
    print(f"{model_folder}: folds {' '.join(folds)} pooled: {chosen} ({rule})")
    print(format_table(table, chosen))
    print("\n".join(done))
    return 0


def run(args: argparse.Namespace) -> int:
    status = pool(args.model_folder, args.folds, args.checkpoint) if args.pool else show_or_set(args)
    if status == 0 and args.temper is not None:
        status = temper_folds(args.model_folder, args.folds, args.checkpoint, args.temper)
    return status


def show_or_set(args: argparse.Namespace) -> int:
    for fold in args.folds:
        folder = args.model_folder / f"fold_{fold}"
        checkpoint = folder / args.checkpoint
        if not checkpoint.is_file():
            return _error(f"{checkpoint} does not exist")
        record = _read_record(folder)
        if record is not None:
            print(f"{folder}: chosen on validation: {record['chosen']} ({record['rule']})")
            print(format_table(record["table"], record["chosen"]))
        if args.set is None:
            try:
                settings = _load_settings(checkpoint)[1]
                print(f"{checkpoint.name} predicts with: {settings.pipeline}, probabilities "
                      f"{'tempered by the draws' if tempers(settings) else 'untempered'} "
                      f"(--temper {settings.temper_with_draws})")
            except ValueError as e:  # no record (the class's settings, untempered), or one this version refuses
                print(f"{checkpoint.name}: {e}")
            continue
        try:
            print(_override(folder, checkpoint, args.set, "overridden"))
        except ValueError as e:
            return _error(str(e))
    return 0


def temper_folds(model_folder: Path, folds: list[str], checkpoint_name: str, temper: str) -> int:
    for fold in folds:
        checkpoint = model_folder / f"fold_{fold}" / checkpoint_name
        if not checkpoint.is_file():
            return _error(f"{checkpoint} does not exist")
        try:
            previous = set_tempering(checkpoint, temper)
        except ValueError as e:
            return _error(str(e))
        print(f"{checkpoint}: --temper {previous} -> {temper}")
    return 0
