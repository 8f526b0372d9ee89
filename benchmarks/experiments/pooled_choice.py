"""Choosing the pipeline once from all folds' validation cases against each fold choosing alone, on a real
download (issue 13): does `unisegdiff pipeline MODEL -f 0 1 2 3 4 --pool` keep the gains that one fold's 32
validation cases cannot confirm, and refuse the ones that do not carry?

    .venv/bin/python benchmarks/experiments/pooled_choice.py DOWNLOAD_DIR --converter busi --split 0 --reuse
    .venv/bin/python benchmarks/experiments/pooled_choice.py --smoke

One split of `accuracy_real.py` (the same conversion, split, budgets and work folder, so `--reuse` keeps
what it trained on fold 0) trained on every fold: nnUNetTrainer, then UniSegDiff with that fold's model as
CFENet, which chooses its pipeline on the fold's own validation cases. Then the choice pooled over the
folds, and on the split's held-out images, in-process: every pipeline of every fold as the network exports
it, each fold's own choice, the pooled choice, and nnU-Net's fold ensemble of each (the mean of the folds'
exported log-probabilities, what `nnUNetv2_predict -f ...` averages); `nnUNetv2_predict -f FOLDS` of
nnUNetTrainer and of UniSegDiff after pooling as the end-to-end cross-check. Section 11 of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import _path  # noqa: F401  (first: benchmarks/ on the module path)
import numpy as np
import torch
from _common import meta, write_json
from accuracy import (
    BASELINE,
    ModelScorer,
    aggregate,
    case_scores,
    markdown_rows,
    nnunet_env,
    print_rows,
    run,
    summarize,
    train_fold,
    unisegdiff_trainer,
)
from accuracy_real import add_real_args, prepare_split, start
from tqdm import tqdm

from nnunet_unisegdiff.diffusion.fusion import probabilities_to_logits
from nnunet_unisegdiff.model.pipelines import PIPELINES, pipeline_probabilities, tempers
from nnunet_unisegdiff.training.override import POOLED_RECORD
from nnunet_unisegdiff.training.selection import PIPELINE_RECORD


@torch.no_grad()
def exported_log_probabilities(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{pipeline: (C, *spatial) log-probabilities} for image x (1, C_in, *spatial), each as the network
    exports it when that pipeline is recorded (tempered by the draws where its temper mode says so); CFENet
    once, and the same seeded draws for the tempered and untempered maps."""
    condition = net.condition(x)
    plain = pipeline_probabilities(net, x, PIPELINES, condition)
    tempered = pipeline_probabilities(net, x, PIPELINES, condition, temper=True)
    chosen = {name: tempered if tempers(replace(net.settings, pipeline=name)) else plain for name in PIPELINES}
    out = {name: probabilities_to_logits(chosen[name][name])[0] for name in PIPELINES}
    if chosen["cfenet"] is plain:  # the forward exports CFENet's logits as they are, not clamped log-probabilities
        out["cfenet"] = condition[0][0].float()
    return out


def pool(model: Path, folds: list[int], env: dict, logs: Path) -> dict:
    """`unisegdiff pipeline MODEL -f FOLDS --pool`, as a user runs it; its record (chosen, table, per fold)."""
    run(["unisegdiff", "pipeline", str(model), "-f", *map(str, folds), "--pool"], env, logs / "pool.log")
    return json.loads((model / POOLED_RECORD).read_text())


def predict_folds(trainer: str, label: str, raw: Path, dataset_id: int, folds: list[int], work: Path, args,
                  logs: Path) -> Path:
    """nnUNetv2_predict of the held-out images with the fold ensemble, no mirroring (as in accuracy_real)."""
    out = work / "predictions" / f"pooled_split{args.split}" / label
    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c", "2d",
         "-tr", trainer, "-f", *map(str, folds), "-device", args.device, "--disable_tta", "-npp", "1", "-nps", "1"],
        nnunet_env(work, work / "trainers"), logs / f"predict_folds_{label}.log")
    return out


def score(raw: Path, model: Path, folds: list[int], own: dict[int, str], pooled: str, cli: dict[str, Path],
          class_of: dict[str, str], device: torch.device) -> dict:
    """Per fold and for the fold ensemble: each pipeline's, the fold's own choice's and the pooled choice's
    scores on the held-out images; the CLI ensembles beside the in-process ones, with their pixel agreement."""
    scorers = {f: ModelScorer(model, device, f) for f in folds}
    first = scorers[folds[0]]
    per_fold: dict[int, dict[str, list]] = {f: {} for f in folds}
    ensemble: dict[str, list] = {}
    agreement: dict[str, list] = {}
    for image in tqdm(sorted((raw / "imagesTs").glob("*_0000.png")), desc="held-out images", unit="image"):
        case = image.name[: -len("_0000.png")]
        gt = first.rw.read_seg(str(raw / "labelsTs" / f"{case}.png"))[0][0]
        x, props = first.preprocess(image)  # the folds share one plan: read and preprocess the image once
        logp = {f: exported_log_probabilities(scorer.net, x) for f, scorer in scorers.items()}  # {pipeline: (C, *sp.)}
        rows_of = {f: {f"pipeline: {n}": first.segmentation(lp, props) for n, lp in logp[f].items()} for f in folds}
        for f in folds:
            rows_of[f].update({"own choice": rows_of[f][f"pipeline: {own[f]}"],
                               "pooled choice": rows_of[f][f"pipeline: {pooled}"]})
        mean = {n: torch.stack([logp[f][n] for f in folds]).mean(0) for n in PIPELINES}
        ens = {f"pipeline: {n}": first.segmentation(mean[n], props) for n in PIPELINES}
        ens["own choices"] = first.segmentation(torch.stack([logp[f][own[f]] for f in folds]).mean(0), props)
        ens["pooled choice"] = ens[f"pipeline: {pooled}"]
        for label, row, ours in (("baseline", "nnUNetv2_predict: nnUNetTrainer", "pipeline: cfenet"),
                                 ("unisegdiff", "nnUNetv2_predict: UniSegDiff pooled", "pooled choice")):
            ens[row] = first.rw.read_seg(str(cli[label] / f"{case}.png"))[0]
            same = ens[row].reshape(gt.shape) == ens[ours].reshape(gt.shape)
            agreement.setdefault(row, []).append(float(same.mean()))
        for rows, segs in [*((per_fold[f], rows_of[f]) for f in folds), (ensemble, ens)]:
            for name, seg in segs.items():
                rows.setdefault(name, []).append({"case": case, "entropy": float("nan"),
                                                  **case_scores(seg.reshape(gt.shape), gt, first.labels)})
    return {"per_fold": {f: {"rows": {n: summarize(r, class_of) for n, r in rows.items()}}
                         for f, rows in per_fold.items()},
            "ensemble": {"rows": {n: summarize(r, class_of) for n, r in ensemble.items()}},
            "cli_pixel_agreement": {k: float(np.mean(v)) for k, v in agreement.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_real_args(ap)
    ap.add_argument("--split", type=int, default=0, help="the split of accuracy_real.py")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args(argv)
    work, device, source = start(ap, args, "pooled_choice", split=0, folds=[0, 1])
    s = prepare_split(args.split, args, work, source)
    raw, dataset_id, logs = s["raw"], s["dataset_id"], s["logs"]
    seconds = {}
    for fold in args.folds:
        print(f"split {args.split} fold {fold}: nnUNetTrainer, UniSegDiff", flush=True)
        seconds.update(train_fold(raw, dataset_id, s["env"], args, logs, fold=fold)["seconds"])
    trainer = unisegdiff_trainer(args.dnet_epochs[0], args.width)
    model = Path(s["env"]["nnUNet_results"]) / raw.name / f"{trainer}__nnUNetPlans__2d"
    records = {f: json.loads((model / f"fold_{f}" / PIPELINE_RECORD).read_text()) for f in args.folds}
    own = {f: r["chosen"] for f, r in records.items()}
    pooled = pool(model, args.folds, s["env"], logs)
    print(f"own choices {own}; pooled: {pooled['chosen']}", flush=True)
    cli = {"baseline": predict_folds(BASELINE, "baseline", raw, dataset_id, args.folds, work, args, logs),
           "unisegdiff": predict_folds(trainer, "unisegdiff", raw, dataset_id, args.folds, work, args, logs)}
    scores = score(raw, model, args.folds, own, pooled["chosen"], cli, s["class_of"], device)
    folds_table = aggregate([{0: scores["per_fold"][f]} for f in args.folds], 0)
    ensemble_table = aggregate([{0: scores["ensemble"]}], 0)
    print(f"\nheld-out, each fold alone, mean ± sd over folds {args.folds}")
    print_rows(folds_table)
    print(f"\nheld-out, ensemble of folds {args.folds}; CLI pixel agreement {scores['cli_pixel_agreement']}")
    print_rows(ensemble_table)
    results = {"split": args.split, "folds": args.folds, "own_choice": own, "pooled": pooled,
               "validation": {f: r["table"] for f, r in records.items()}, "seconds": seconds, **scores,
               "tables": {"folds": folds_table, "ensemble": ensemble_table}}
    path = write_json(f"pooled_choice_{args.converter}_split{args.split}",
                      meta(device, settings={k: str(v) for k, v in vars(args).items()}), results, args.json)
    path.with_suffix(".md").write_text(
        f"{args.converter} split {args.split}: own choices {own}, pooled {pooled['chosen']}\n\n"
        f"Each fold alone, mean ± sd over folds {args.folds}\n\n{markdown_rows(folds_table)}\n"
        f"Fold ensemble\n\n{markdown_rows(ensemble_table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
