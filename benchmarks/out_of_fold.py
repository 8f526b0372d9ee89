"""Does DNet add to CFENet once phase B trains on out-of-fold conditions? One split of a real download
(section 13 of benchmarks/README.md).

    .venv/bin/python benchmarks/out_of_fold.py DOWNLOAD --converter busi --split 0 --reuse
    .venv/bin/python benchmarks/out_of_fold.py DOWNLOAD --converter busi --split 0 --reuse --unisegdiff-folds 0 1 2 3 4
    .venv/bin/python benchmarks/out_of_fold.py --converter synthetic --split 0 --reuse   # accuracy.py's images
    .venv/bin/python benchmarks/out_of_fold.py --smoke   # two nnUNetTrainer folds, so fold 0 also meets a missing one

The split, conversion, budgets and work folder of `accuracy_real.py`. nnUNetTrainer trains on all five folds;
then on each fold of --unisegdiff-folds UniSegDiff with that fold's nnUNetTrainer as CFENet, once per phase-B
recipe, at the same budget: `in-sample` (the paper's: the fold's own CFENet on its own training cases),
`out-of-fold` (each training case by the other fold's CFENet that did not train on it, stitched), and each
with condition noise (--noise) and with nnU-Net's cascade augmentation of the condition (--morphology). Each
recipe chooses its pipeline on the fold's validation cases as usual.

On the held-out images, in-process, as nnUNetv2_predict exports them: every pipeline of every recipe, each
recipe's chosen pipeline, CFENet of the fold, nnU-Net's five-fold ensemble (mean of the folds' logits, what
`nnUNetv2_predict -f 0 1 2 3 4` averages) and the fold ensemble of each recipe trained on several folds.
Per row: Dice on all images and on lesion images, normal images with a false lesion. Per-case failure
detection (AUROC at Dice < 0.5, AURC): the `confidence` of each exported map, the draws' mean pairwise Dice,
their product, and the five-fold ensemble's pairwise Dice (Zenk et al., MedIA 2025).
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import meta, replace_paths, write_json
from accuracy import BASELINE, ModelScorer, case_scores, summarize, train_once, unisegdiff_trainer
from accuracy_real import add_real_args, prepare_split, start
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from tqdm import tqdm

from nnunet_unisegdiff.diffusion.fusion import temper_by_draws
from nnunet_unisegdiff.evaluation.confidence import case_confidence
from nnunet_unisegdiff.evaluation.failure_metrics import aurc, auroc, mean_pairwise_dice
from nnunet_unisegdiff.evaluation.failure_metrics import dice as failure_dice
from nnunet_unisegdiff.model.pipelines import PIPELINES, pipeline_probabilities, tempers
from nnunet_unisegdiff.training.selection import PIPELINE_RECORD, validation_cases
from nnunet_unisegdiff.training.trainer import CFENET_CHECKPOINT_ENV

NAME = "out_of_fold"
RECIPES = {"in-sample": "out_of_fold_conditions = False", "out-of-fold": "out_of_fold_conditions = True"}
FAILED_BELOW = 0.5  # a case failed when its Dice (empty rule) is below this


def recipe_trainers(args) -> dict[str, str]:
    """{recipe: trainer class name}; their classes are appended to the benchmark's trainer module."""
    base = unisegdiff_trainer(args.dnet_epochs[0], args.width)
    modifiers = {"": ""}
    if args.noise:
        modifiers[" + noise"] = f"\n    condition_noise = {args.noise}"
    if args.morphology:
        modifiers[" + morphology"] = "\n    condition_augmentation = SegmentationAugmentation()"
    names, text = {}, "\n\nfrom nnunet_unisegdiff.training.augmentation import SegmentationAugmentation\n"
    for recipe, line in RECIPES.items():
        for modifier, extra in modifiers.items():
            name = f"{base}_{recipe.replace('-', '')}{modifier.replace(' + ', '_')}"
            names[recipe + modifier] = name
            text += f"\n\nclass {name}({base}):\n    {line}{extra}\n"
    module = args.work_dir / "trainers" / "accuracy_trainers.py"
    if any(f"class {name}(" not in module.read_text() for name in names.values()):
        module.write_text(module.read_text() + text)
    return names


def train_all(s: dict, args, trainers: dict[str, str]) -> dict:
    """nnUNetTrainer on every fold, then each recipe on --unisegdiff-folds, `--parallel` trainings at a time."""
    results = Path(s["env"]["nnUNet_results"]) / s["raw"].name
    baseline = results / f"{BASELINE}__nnUNetPlans__2d"
    seconds: dict[str, float] = {}

    def train(job):
        trainer, fold, env = job
        train_once(trainer, results / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" / "checkpoint_final.pth",
                   s["dataset_id"], env, args, s["logs"], seconds, fold)
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(train, [(BASELINE, f, s["env"]) for f in args.baseline_folds]))
        list(pool.map(train, [(t, f, {**s["env"], CFENET_CHECKPOINT_ENV: str(baseline / f"fold_{f}" /
                                                                                "checkpoint_final.pth")})
                              for f in args.unisegdiff_folds for t in trainers.values()]))
    return {"baseline": baseline, "recipes": {r: results / f"{t}__nnUNetPlans__2d" for r, t in trainers.items()},
            "seconds": seconds}


@torch.no_grad()
def recipe_outputs(net, x: torch.Tensor) -> dict:
    """One recipe's fold on one image x (1, C_in, *spatial): every pipeline's probabilities, the exported map of
    the chosen pipeline (tempered where the settings say so) and the draws' foreground masks."""
    condition = net.condition(x)
    plain = pipeline_probabilities(net, x, PIPELINES, condition)
    masks = net.sample(x, cond=condition[1]).masks  # the same seeded draws the pipelines used (B, N, *spatial)
    chosen = net.settings.pipeline
    exported = temper_by_draws(plain[chosen], masks) if tempers(net.settings) else plain[chosen]
    return {"pipelines": {n: p[0] for n, p in plain.items()}, "exported": exported[0],
            "draws": [m.cpu().numpy() for m in masks[0]]}


@torch.no_grad()
def score_image(image: Path, gt: np.ndarray, scorers: dict, baselines: list) -> dict:
    """{row: (segmentation, failure scores)} for one held-out image."""
    first = baselines[0]
    x, props = first.preprocess(image)
    seg = lambda p: first.segmentation(torch.log(p.clamp_min(1e-8)), props).reshape(gt.shape)  # noqa: E731
    base_logits = [b.net(x)[0].float() for b in baselines]  # (C, *spatial) per fold
    members = [first.segmentation(lg, props).reshape(gt.shape) for lg in base_logits]
    ens = torch.stack(base_logits).mean(0).softmax(0)
    rows = {"nnU-Net fold ensemble": (seg(ens), {"confidence": case_confidence(ens.cpu().numpy()),
                                                      "folds_pairwise": mean_pairwise_dice(members)})}
    for (recipe, fold), scorer in scorers.items():
        out = recipe_outputs(scorer.net, x)
        exported = out["exported"].cpu().numpy()
        draws = mean_pairwise_dice(out["draws"])
        conf = case_confidence(exported)
        rows[f"{recipe} f{fold}: chosen ({scorer.net.settings.pipeline})"] = (
            seg(out["exported"]), {"confidence": conf, "draws_pairwise": draws, "confidence_x_draws": conf * draws})
        for name, p in out["pipelines"].items():
            key = f"CFENet f{fold} (nnU-Net)" if name == "cfenet" else f"{recipe} f{fold}: {name}"
            rows.setdefault(key, (seg(p), {"confidence": case_confidence(p.cpu().numpy())}))
        rows.setdefault(f"{recipe}: ensemble", []).append(torch.log(out["exported"].clamp_min(1e-8)))
    for key in [k for k in rows if k.endswith(": ensemble")]:
        mean = torch.stack(rows[key]).mean(0).softmax(0)
        rows[key] = (seg(mean), {"confidence": case_confidence(mean.cpu().numpy())}) if len(rows[key]) > 1 else None
    return {k: v for k, v in rows.items() if v is not None}


def failure_detection(per_case: list[dict]) -> dict:
    """Per score: AUROC at Dice < FAILED_BELOW (of the row's own segmentation) and AURC (risk 1 - Dice)."""
    d = np.array([c["failure_dice"] for c in per_case])
    scores = {name: {"auroc": auroc([-c[name] for c in per_case], d < FAILED_BELOW),
                     "aurc": aurc([c[name] for c in per_case], 1 - d)} for name in per_case[0]["scores"]}
    return {**scores, "failed": int((d < FAILED_BELOW).sum()), "cases": len(d)}


def score(s: dict, trained: dict, args, device: torch.device) -> dict:
    raw = s["raw"]
    baselines = [ModelScorer(trained["baseline"], device, f) for f in args.baseline_folds]
    scorers = {(r, f): ModelScorer(m, device, f) for r, m in trained["recipes"].items() for f in args.unisegdiff_folds}
    rows: dict[str, list[dict]] = {}
    for image in tqdm(sorted((raw / "imagesTs").glob("*_0000.png")), desc="held-out images", unit="image"):
        case = image.name[: -len("_0000.png")]
        gt = baselines[0].rw.read_seg(str(raw / "labelsTs" / f"{case}.png"))[0][0]
        for name, (seg, scores) in score_image(image, gt, scorers, baselines).items():
            rows.setdefault(name, []).append({"case": case, "entropy": float("nan"), "scores": list(scores),
                                              "failure_dice": failure_dice(seg, gt), **scores,
                                              **case_scores(seg, gt, baselines[0].labels)})
    chosen = {f"{r} f{f}": json.loads((m / f"fold_{f}" / PIPELINE_RECORD).read_text())["chosen"]
              for r, m in trained["recipes"].items() for f in args.unisegdiff_folds}
    return {"rows": {n: summarize(r, s["class_of"]) for n, r in rows.items()},
            "failure_detection": {n: failure_detection(r) for n, r in rows.items()},
            "chosen": chosen, "per_case": rows}


@torch.no_grad()
def cause(s: dict, trained: dict, args, device: torch.device, limit: int = 64) -> dict:
    """The stacking problem measured: on up to `limit` of fold k's training cases and on its validation cases
    (preprocessed, as phase B and the choice see them), the Dice of CFENet, and of each recipe's `diffusion`
    pipeline against the reference and against CFENet's segmentation."""
    preprocessed = Path(s["env"]["nnUNet_preprocessed"]) / s["raw"].name
    splits = json.loads((preprocessed / "splits_final.json").read_text())
    out = {}
    for fold in args.unisegdiff_folds:
        nets = {r: ModelScorer(m, device, fold).net for r, m in trained["recipes"].items()}
        for part in ("train", "val"):
            keys = sorted(splits[fold][part])[:limit]
            rows: dict[str, list[float]] = {}
            for _, data, ref in validation_cases(infer_dataset_class(str(preprocessed / "nnUNetPlans_2d")),
                                                  str(preprocessed / "nnUNetPlans_2d"), keys):
                if data.ndim == 4:  # a 2D case as nnU-Net stores it: (C, 1 slice, H, W)
                    data, ref = data[:, 0], ref[0]
                x = torch.from_numpy(np.ascontiguousarray(data)).float()[None].to(device)
                cfenet = None
                for recipe, net in nets.items():
                    p = pipeline_probabilities(net, x, ["cfenet", "diffusion"])
                    cfenet = p["cfenet"][0].argmax(0).cpu().numpy()
                    diffusion = p["diffusion"][0].argmax(0).cpu().numpy()
                    rows.setdefault(f"{recipe}: diffusion vs reference", []).append(failure_dice(diffusion, ref))
                    rows.setdefault(f"{recipe}: diffusion vs CFENet", []).append(failure_dice(diffusion, cfenet))
                rows.setdefault("CFENet vs reference", []).append(failure_dice(cfenet, ref))
            out[f"fold {fold} {part} ({len(keys)} cases)"] = {k: 100 * float(np.mean(v)) for k, v in rows.items()}
    return out


def report(results: dict) -> str:
    """The Markdown table: accuracy and failure detection per row."""
    lines = ["| row | Dice all | Dice lesion imgs | false-lesion imgs | AUROC conf | AURC conf | AUROC draws |"
             " AUROC conf x draws / folds |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["rows"].items():
        fd = results["failure_detection"][name]
        other = fd.get("confidence_x_draws", fd.get("folds_pairwise", {})).get("auroc", float("nan"))
        lines.append(f"| {name} | {r['dice_all']:.1f} | {r['dice_lesion']:.1f} | {r['false_lesions']} / "
                     f"{r['lesion_free']} | {fd['confidence']['auroc']:.3f} | {fd['confidence']['aurc']:.3f} | "
                     f"{fd.get('draws_pairwise', {}).get('auroc', float('nan')):.3f} | {other:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_real_args(ap)
    ap.add_argument("--split", type=int, default=0, help="the split of accuracy_real.py")
    ap.add_argument("--baseline-folds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="nnUNetTrainer's folds: the other folds' CFENets and nnU-Net's fold ensemble")
    ap.add_argument("--unisegdiff-folds", type=int, nargs="+", default=[0])
    ap.add_argument("--noise", type=float, default=0.5, help="condition noise of the '+ noise' recipes (0: none)")
    ap.add_argument("--morphology", action="store_true",
                    help="also the '+ morphology' recipes: nnU-Net's cascade augmentation of the condition")
    ap.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    args = ap.parse_args(argv)
    work, device, source = start(ap, args, NAME, split=0, baseline_folds=[0, 1], unisegdiff_folds=[0], noise=0.0,
                                 parallel=2)
    args.work_dir = work
    s = prepare_split(args.split, args, work, source)
    trained = train_all(s, args, recipe_trainers(args))
    results = {"split": args.split, "seconds": trained["seconds"], "cause": cause(s, trained, args, device),
               **score(s, trained, args, device)}
    text = report(results) + "\nDice (%, empty rule) on the fold's own training and validation cases\n\n" + \
        "\n".join(f"- {part}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows.items())
                  for part, rows in results["cause"].items()) + "\n"
    print(text)
    placeholders = {str(args.download): "DOWNLOAD", str(work): "WORK"}
    info = meta(device, settings={k: str(v) for k, v in vars(args).items()})
    info = replace_paths(info, placeholders)
    path = write_json(f"{NAME}_{args.converter}_split{args.split}", info, results, args.json)
    path.with_suffix(".md").write_text(f"{args.converter} split {args.split}, chosen {results['chosen']}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
