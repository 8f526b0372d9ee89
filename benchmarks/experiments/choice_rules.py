"""Rules for choosing a fold's inference pipeline, compared on recorded runs: the pipeline each rule picks
from the fold's validation table, and what that pipeline scored on the run's held-out images.

    .venv/bin/python benchmarks/experiments/choice_rules.py \\
        --run busi_split0.json WORK/results/Dataset910_.../TRAINER__nnUNetPlans__2d/fold_0 \\
        --run ... --json benchmarks/results/choice_rules.json

Each --run pairs a result of accuracy.py / accuracy_real.py (one seed or split; its held-out rows
`pipeline: NAME`) with that run's UniSegDiff fold folder (its inference_pipeline.json). A table written
before per-case Dice was recorded is scored again (`--rescore`): the fold's validation cases through its
checkpoint_final, as the trainer scored them, checked against the recorded means and cached beside the record.
`--candidates current` scores every fold again with the pipelines this version offers (a fold trained before
a candidate existed: what its trainer would choose today), the recorded ones checked the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import _path  # noqa: F401  (first: benchmarks/ on the module path)
import numpy as np
import torch
from _common import add_smoke_arg, apply_smoke, meta, print_table, write_json

from nnunet_unisegdiff.model.pipelines import PIPELINES
from nnunet_unisegdiff.training.selection import (
    CONFIDENCE,
    MARGIN,
    PIPELINE_RECORD,
    choose_pipeline,
    label_map_predictor,
    score_pipelines,
    validation_cases,
)

RESCORED = "inference_pipeline.rescored.json"
RESCORED_CURRENT = "inference_pipeline.rescored_current.json"  # with every pipeline of this version
RULES = {  # name: (margin, confidence); None: CFENet always (nnUNetTrainer's own prediction)
    "cfenet always": None,
    f"mean, margin {MARGIN}": (MARGIN, None),
    f"mean, margin {MARGIN} + paired bootstrap {CONFIDENCE:g}": (MARGIN, CONFIDENCE),
}
MATCH_TOL = 1e-6  # Dice points: a rescored table must reproduce the recorded means


def rescore(fold: Path, device: torch.device, candidates: list[str] | None = None) -> dict:
    """The fold's validation table with per-case Dice, from its checkpoint_final (benchmark layout:
    WORK/results/DATASET/TRAINER/fold_N beside WORK/preprocessed/DATASET and WORK/trainers), for `candidates`
    (default: the recorded table's pipelines)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    trainers = fold.parents[3] / "trainers"  # the benchmark's trainer variants, found as nnU-Net finds them
    if trainers.is_dir():
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(filter(None, [str(trainers),
                                                                         os.environ.get("nnUNet_extTrainer")]))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    fold_number = int(fold.name.split("_")[-1])
    predictor.initialize_from_trained_model_folder(str(fold.parent), (fold_number,), "checkpoint_final.pth")
    dataset = fold.parents[1].name
    preprocessed = fold.parents[3] / "preprocessed" / dataset
    folder = preprocessed / predictor.configuration_manager.data_identifier
    val_keys = json.loads((preprocessed / "splits_final.json").read_text())[fold_number]["val"]
    recorded = json.loads((fold / PIPELINE_RECORD).read_text())["table"]
    labels = [int(k) for k in predictor.label_manager.foreground_labels]
    table = score_pipelines(label_map_predictor(predictor, predictor.network.eval()),
                            validation_cases(infer_dataset_class(str(folder)), str(folder), val_keys),
                            candidates or list(recorded), labels)
    for name, row in recorded.items():
        if abs(row["dice"] - table[name]["dice"]) > MATCH_TOL:
            raise RuntimeError(f"{fold}: rescored {name} Dice {table[name]['dice']:.4f} differs from the recorded "
                               f"{row['dice']:.4f}; not the model or cases the trainer scored")
    return table


def validation_table(fold: Path, allow_rescore: bool, device: torch.device, current: bool = False) -> dict:
    if current:
        return _cached(fold / RESCORED_CURRENT, lambda: rescore(fold, device, list(PIPELINES)))
    table = json.loads((fold / PIPELINE_RECORD).read_text())["table"]
    if all("per_case" in row for row in table.values()):
        return table
    if not allow_rescore and not (fold / RESCORED).is_file():
        raise SystemExit(f"{fold / PIPELINE_RECORD}: no per-case Dice; pass --rescore to score its validation "
                         "cases again")
    return _cached(fold / RESCORED, lambda: rescore(fold, device))


def _cached(file: Path, score: Callable[[], dict]) -> dict:
    if file.is_file():
        return json.loads(file.read_text())
    table = score()
    file.write_text(json.dumps(table, indent=2))
    return table


def held_out_rows(result_file: Path) -> tuple[str, dict[str, dict]]:
    """(run label, {pipeline: held-out row}) of a one-seed/one-split result file (first phase-B budget)."""
    data = json.loads(result_file.read_text())
    kind = next(k for k in ("per_split", "per_seed") if k in data["results"])
    (run, per_budget), = data["results"][kind].items()
    rows = next(iter(per_budget.values()))["rows"]
    dataset = data["meta"]["settings"].get("converter", "synthetic")
    return f"{dataset} {kind[4:]} {run}", {k.split(": ", 1)[1]: v for k, v in rows.items()
                                          if k.startswith("pipeline: ")}


def choose(rule: tuple[float, float | None] | None, table: dict) -> str:
    return "cfenet" if rule is None else choose_pipeline(table, *rule)


def compare(runs: list[tuple[Path, Path]], allow_rescore: bool, device: torch.device, current: bool = False) -> dict:
    per_run, summary = [], []
    for result_file, fold in runs:
        label, held_out = held_out_rows(result_file)
        table = validation_table(fold, allow_rescore, device, current)
        for rule_name, rule in RULES.items():
            chosen = choose(rule, table)
            row = held_out[chosen]
            per_run.append({"run": label, "rule": rule_name, "chosen": chosen,
                            "validation_dice": table[chosen]["dice"], "dice_all": row["dice_all"],
                            "dice_lesion": row["dice_lesion"], "false_lesions": row["false_lesions"]})
    datasets = sorted({r["run"].rsplit(" ", 2)[0] for r in per_run})
    for dataset in datasets:
        for rule_name in RULES:
            rows = [r for r in per_run if r["rule"] == rule_name and r["run"].rsplit(" ", 2)[0] == dataset]
            summary.append({"run": f"{dataset}: mean of {len(rows)}", "rule": rule_name,
                            "chosen": " ".join(r["chosen"] for r in rows),
                            **{k: float(np.mean([r[k] for r in rows]))
                               for k in ("dice_all", "dice_lesion", "false_lesions")}})
    return {"per_run": per_run, "summary": summary}


def write_smoke_runs(folder: Path) -> list[tuple[Path, Path]]:
    """Two runs whose validation tables plant the two cases the rules differ on: a gain made by one case
    (the bootstrap refuses it) and a gain on most cases (every rule but 'cfenet always' takes it)."""
    runs = []
    for split, gains in ((0, [100.0] + [0.0] * 19), (1, [3.0] * 18 + [-1.0] * 2)):
        fold = folder / f"split{split}" / "fold_0"
        fold.mkdir(parents=True)
        base = {f"c{i}": 70.0 for i in range(20)}
        per_case = {"cfenet": base, "diffusion": {k: v + g for (k, v), g in zip(base.items(), gains)}}
        table = {name: {"dice": float(np.mean(list(pc.values()))), "per_case": pc} for name, pc in per_case.items()}
        (fold / PIPELINE_RECORD).write_text(json.dumps({"chosen": "cfenet", "table": table}))
        rows = {f"pipeline: {name}": {"dice_all": 60.0 + shift, "dice_lesion": 65.0 + shift, "false_lesions": 2.0}
                for name, shift in (("cfenet", 0.0), ("diffusion", 1.0))}
        result = folder / f"split{split}.json"
        result.write_text(json.dumps({"meta": {"settings": {"converter": "busi"}},
                                      "results": {"per_split": {str(split): {"20": {"rows": rows}}}}}))
        runs.append((result, fold))
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs=2, type=Path, action="append", default=[], metavar=("RESULT_JSON", "FOLD_FOLDER"))
    ap.add_argument("--rescore", action="store_true", help="score validation cases again where no per-case Dice")
    ap.add_argument("--candidates", choices=("recorded", "current"), default="recorded",
                    help="the recorded table's pipelines, or every pipeline of this version (folds scored again)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="output (default results/choice_rules.json)")
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        apply_smoke(args, "choice_rules", run=write_smoke_runs(Path(tempfile.mkdtemp(prefix="choice_rules_smoke_"))))
    elif not args.run:
        ap.error("give at least one --run RESULT_JSON FOLD_FOLDER (or --smoke)")
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)
    results = compare(args.run, args.rescore, device, args.candidates == "current")
    columns = [("run", "run", "s"), ("rule", "rule", "s"), ("chosen", "chosen", "s"), ("dice_all", "Dice", ".2f"),
               ("dice_lesion", "Dice lesion", ".2f"), ("false_lesions", "false lesions", ".1f")]
    print_table(results["per_run"], columns)
    print()
    print_table(results["summary"], columns)
    write_json("choice_rules", meta(device, runs=[[str(r), str(f)] for r, f in args.run], candidates=args.candidates),
               results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
