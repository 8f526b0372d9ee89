"""The paper's unified task on real images, Table-3 style: does one model trained on every lesion dataset
lose accuracy against one model per dataset, and does UniSegDiff lose less than nnU-Net (issue 27)?

    .venv/bin/python benchmarks/unified_real.py busi=DOWNLOAD ebhiseg=DOWNLOAD polyp=DOWNLOAD   # splits 0 1
    .venv/bin/python benchmarks/unified_real.py busi=... ebhiseg=... polyp=... --dnet-per-dataset   # + the mixed rows
    .venv/bin/python benchmarks/unified_real.py --smoke   # tiny fake BUSI and Kvasir-SEG downloads, tiny runs

Each download is converted by the project's converter (BUSI with its normal images, EBHI-Seg's
Adenocarcinoma, Kvasir-SEG), then all of them together by `convert unified --resize SIZE`. Per split and
dataset, the stratified held-out draw of `accuracy_real.py` (same seed, so BUSI's and EBHI-Seg's splits are
that script's). Then per split four nnU-Net datasets: one per task and the unified one (the union of their
training sets; its held-out images are the same images). On each, fold 0, as in `accuracy_real.py`:
`nnUNetTrainer`, then UniSegDiff with that model as CFENet (phase B only, the trainer's default recipe) at
the same epochs and iterations; nnU-Net plans the unified set's batch three times larger (its cap is 5 % of
the training cases), so each model sees its images about equally often. In-process on the held-out images,
as nnUNetv2_predict exports them (no mirroring): per task mDice and mIoU (per image, Dice of an empty
reference counted only when a lesion is predicted), their mean, and BUSI's normal images with a false
lesion; the paper's Table 3 beside. With --dnet-per-dataset also the paper's own idea taken per task: the
unified set's CFENet with a DNet trained per dataset (`train_dnet_per_dataset`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, add_smoke_arg, apply_smoke, meta, replace_paths, write_json
from accuracy import (
    BASELINE,
    CFENET_CHECKPOINT_ENV,
    ModelScorer,
    case_scores,
    mean_sd,
    nnunet_env,
    summarize,
    train_fold,
    train_once,
    unisegdiff_trainer,
    write_trainers,
)
from accuracy_real import convert_downloads, prepare_dataset, stratified_split, write_smoke_download
from PIL import Image
from tqdm import tqdm

from nnunet_unisegdiff.conversion.synthetic import generate_cases

NAME = "unified_real"
TASKS = {"busi": "BUSI", "ebhiseg": "EBHISeg", "polyp": "Polyp"}  # converter -> the task `convert unified` records
UNIFIED = "unified"
MIXED = "unified CFENet + DNet per dataset"  # --dnet-per-dataset
PIPELINE_ROWS = ("diffusion", "paper", "cfenet-gated")  # shown beside the chosen one
# Paper Table 3 (mDice, mIoU): its BL (BUSI), ADC (EBHI-Seg Adenocarcinoma) and CP (five polyp sets; Kvasir-SEG
# here) columns, 256 px, 4-fold cross-validation, the paper's own UNet and UniSegDiff.
PAPER = {
    "UNet, per dataset": {"busi": (74.9, 65.5), "ebhiseg": (91.6, 85.2), "polyp": (82.6, 75.5)},
    "UNet, unified": {"busi": (71.1, 61.3), "ebhiseg": (90.2, 83.1), "polyp": (79.6, 71.1)},
    "UniSegDiff, per dataset": {"busi": (81.9, 73.1), "ebhiseg": (93.0, 87.3), "polyp": (89.0, 82.9)},
    "UniSegDiff, unified": {"busi": (79.5, 70.4), "ebhiseg": (92.0, 85.9), "polyp": (88.4, 82.4)},
}


def parse_downloads(items: list[str], ap: argparse.ArgumentParser) -> dict[str, Path]:
    """`converter=folder` arguments -> {converter: folder}, in TASKS' order."""
    pairs = dict(item.split("=", 1) for item in items if "=" in item)
    if len(pairs) != len(items) or not pairs or not set(pairs) <= set(TASKS):
        ap.error(f"give downloads as CONVERTER=FOLDER with CONVERTER in {', '.join(TASKS)}, got {' '.join(items)}")
    return {c: Path(pairs[c]).resolve() for c in TASKS if c in pairs}


def write_smoke_downloads(folder: Path, n: int = 12) -> dict[str, Path]:
    """Tiny downloads in two releases' layouts, of the synthetic generator's images: BUSI's (with normal images)
    and Kvasir-SEG's `Kvasir-SEG/{images,masks}/<id>.jpg` (3-channel JPEG masks), with the black border rows
    of Kvasir's endoscope frames, which nnU-Net's crop to nonzero removes (the image becomes smaller than
    the patch)."""
    kvasir = folder / "kvasir" / "Kvasir-SEG"
    for sub in ("images", "masks"):
        (kvasir / sub).mkdir(parents=True)
    for i, case in enumerate(generate_cases(n, size=48, modalities=("endo",), empty_fraction=0.0, seed=7)):
        case.image[:16], case.label[:16] = 0, 0  # (H, W, 3), (H, W): black rows on top
        mask = np.repeat((case.label > 0)[..., None] * np.uint8(255), 3, axis=2)
        Image.fromarray(case.image).save(kvasir / "images" / f"cju{i:022d}.jpg", quality=95)
        Image.fromarray(mask).save(kvasir / "masks" / f"cju{i:022d}.jpg")
    return {"busi": write_smoke_download(folder / "busi", per_class=n // 3), "polyp": folder / "kvasir"}


def split_cases(split: int, args, source: Path) -> tuple[dict[str, tuple], dict[str, str], dict[str, str]]:
    """({task or UNIFIED: (train cases, held-out cases)}, class of each case, task of each case)."""
    cases, class_of, task_of = {}, {}, {}
    for converter in args.downloads:
        train, test, classes = stratified_split(source, converter, args.num_train, args.num_test, 1000 + split,
                                                task=TASKS[converter])
        cases[converter] = train, test
        class_of.update(classes)
        task_of.update({c: converter for c in classes})
    cases[UNIFIED] = tuple(sorted(c for train_test in cases.values() for c in train_test[i]) for i in (0, 1))
    return cases, class_of, task_of


def train(split: int, cases: dict[str, tuple], args, source: Path) -> dict[str, tuple[dict, Path]]:
    """Per dataset of `cases`, `--parallel` at a time: its nnU-Net dataset (accuracy_real.prepare_dataset), then
    nnUNetTrainer and UniSegDiff (CFENet = that model) on fold 0; {dataset: (prepared, UniSegDiff's folder)}."""
    def one(j_key):
        j, key = j_key
        name = "Unified" if key == UNIFIED else TASKS[key]
        d = prepare_dataset(args.work, args.first_split_id + 10 * split + j, f"{name}Split{split}", *cases[key],
                            source, args, args.work / "logs" / f"split{split}" / key)
        return key, (d, train_fold(d["raw"], d["dataset_id"], d["env"], args, d["logs"])["models"][args.dnet_epochs[0]])
    with ThreadPoolExecutor(args.parallel) as pool:
        return dict(pool.map(one, enumerate(cases)))


def fold0_restricted(splits_file: Path, cases: set[str]) -> list[dict]:
    """Fold 0 of nnU-Net's splits_final.json restricted to `cases`: the split file of a dataset of those cases."""
    fold = json.loads(splits_file.read_text())[0]
    return [{part: [c for c in fold[part] if c in cases] for part in ("train", "val")}]


def train_dnet_per_dataset(split: int, cases: dict[str, tuple], trained: dict[str, tuple[dict, Path]], args,
                           source: Path) -> dict[str, tuple[dict, Path]]:
    """Per task, UniSegDiff (phase B only) on a dataset of that task's training cases with the unified
    nnUNetTrainer's fold 0 as CFENet: a CFENet trained on the unified set, a DNet per dataset. The dataset
    takes the unified plans (nnU-Net's way to fine-tune a pretrained network), with the batch size of the
    task's own plans, so DNet sees each image as often as the per-dataset one; its fold 0 is the unified fold 0
    restricted to the task, so the pipeline is chosen on validation cases that CFENet did not train on either.
    {task: (prepared, UniSegDiff's folder)}."""
    unified = trained[UNIFIED][0]
    results = Path(unified["env"]["nnUNet_results"]) / unified["raw"].name
    cfenet = results / f"{BASELINE}__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    unified_splits = Path(unified["env"]["nnUNet_preprocessed"]) / unified["raw"].name / "splits_final.json"
    trainer = unisegdiff_trainer(args.dnet_epochs[0], args.width)

    def one(j_key):
        j, key = j_key
        d = prepare_dataset(args.work, args.first_split_id + 10 * split + 4 + j,
                            f"{TASKS[key]}UnifiedCFENetSplit{split}", *cases[key], source, args,
                            args.work / "logs" / f"split{split}" / f"{key}_unified_cfenet", unified["dataset_id"])
        preprocessed = Path(d["env"]["nnUNet_preprocessed"])
        own = json.loads((preprocessed / trained[key][0]["raw"].name / "nnUNetPlans.json").read_text())
        plans_file = preprocessed / d["raw"].name / "nnUNetPlans.json"
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["2d"]["batch_size"] = own["configurations"]["2d"]["batch_size"]
        plans_file.write_text(json.dumps(plans, indent=1))
        splits = preprocessed / d["raw"].name / "splits_final.json"
        splits.write_text(json.dumps(fold0_restricted(unified_splits, set(cases[key][0])), indent=1))
        model = Path(d["env"]["nnUNet_results"]) / d["raw"].name / f"{trainer}__nnUNetPlans__2d"
        train_once(trainer, model / "fold_0" / "checkpoint_final.pth", d["dataset_id"],
                   {**d["env"], CFENET_CHECKPOINT_ENV: str(cfenet)}, args, d["logs"], {})
        return key, (d, model)
    with ThreadPoolExecutor(args.parallel) as pool:
        return dict(pool.map(one, enumerate(key for key in cases if key != UNIFIED)))


def score(trained: dict[str, tuple[dict, Path]], class_of: dict[str, str], task_of: dict[str, str],
          device: torch.device, mode: str | None = None) -> dict:
    """{"rows": {row: {task: summarize() of that task's held-out images}}, "chosen"}: for each model (per dataset,
    unified) the nnUNetTrainer row (its CFENet), UniSegDiff's chosen pipeline and PIPELINE_ROWS. With `mode`
    (MIXED), every model's rows are named by it and its CFENet row (the unified one's) is left out."""
    per_row: dict[str, dict[str, list[dict]]] = {}
    chosen = {}
    cfenet_row = mode is None
    for key, (dataset, model) in trained.items():
        row_mode = mode or ("unified" if key == UNIFIED else "per dataset")
        scorer = ModelScorer(model, device)
        chosen[key] = scorer.net.settings.pipeline
        raw = dataset["raw"]
        for image in tqdm(sorted((raw / "imagesTs").glob("*_0000.png")), desc=f"{key} held-out", unit="image"):
            case = image.name[: -len("_0000.png")]
            gt = scorer.rw.read_seg(str(raw / "labelsTs" / f"{case}.png"))[0][0]
            segs, _ = scorer.rows(image)
            rows = {**({f"nnUNetTrainer, {row_mode}": segs["pipeline: cfenet"]} if cfenet_row else {}),
                    f"UniSegDiff, {row_mode}": segs["UniSegDiff (chosen pipeline, network forward)"],
                    **{f"UniSegDiff {p}, {row_mode}": segs[f"pipeline: {p}"] for p in PIPELINE_ROWS}}
            for name, seg in rows.items():
                per_row.setdefault(name, {}).setdefault(task_of[case], []).append(
                    {"case": case, "entropy": float("nan"), **case_scores(seg.reshape(gt.shape), gt, scorer.labels)})
    return {"rows": {name: {task: {**summarize(r, {c["case"]: class_of[c["case"]] for c in r}), "cases": len(r)}
                            for task, r in tasks.items()} for name, tasks in per_row.items()}, "chosen": chosen}


def table(per_split: dict[int, dict], tasks: list[str]) -> list[dict]:
    """Table-3 rows, mean ± sd over the splits: per task mDice / mIoU, their mean, BUSI's false lesions."""
    out = []
    for name in next(iter(per_split.values()))["rows"]:
        runs = [s["rows"][name] for s in per_split.values()]
        row = {"row": name}
        for t in tasks:
            for metric in ("dice", "iou"):
                row[f"{t}_{metric}"] = mean_sd([r[t][f"{metric}_all"] for r in runs])
        for metric in ("dice", "iou"):
            row[f"mean_{metric}"] = mean_sd([float(np.mean([r[t][f"{metric}_all"] for t in tasks])) for r in runs])
        if "busi" in tasks:
            row["busi_false_lesions"] = (float(np.mean([r["busi"]["false_lesions"] for r in runs])),
                                         runs[0]["busi"]["lesion_free"])
        out.append(row)
    return out


def targets(rows: list[dict]) -> dict:
    """Issue 27's two targets on the mean mDice over tasks; with the MIXED rows, the same two for them."""
    dice = {r["row"]: r["mean_dice"][0] for r in rows}
    drop = {m: dice[f"{m}, per dataset"] - dice[f"{m}, unified"] for m in ("nnUNetTrainer", "UniSegDiff")}
    out = {"drop_per_dataset_to_unified": drop,
           "unisegdiff_drops_less": drop["UniSegDiff"] < drop["nnUNetTrainer"],
           "unisegdiff_unified_at_least_nnunet_unified": dice["UniSegDiff, unified"] >= dice["nnUNetTrainer, unified"]}
    if f"UniSegDiff, {MIXED}" in dice:
        drop[MIXED] = dice["UniSegDiff, per dataset"] - dice[f"UniSegDiff, {MIXED}"]
        out.update(mixed_drops_less=drop[MIXED] < drop["nnUNetTrainer"],
                   mixed_at_least_nnunet_unified=dice[f"UniSegDiff, {MIXED}"] >= dice["nnUNetTrainer, unified"])
    return out


def markdown(rows: list[dict], tasks: list[str]) -> str:
    head = "| row | " + " | ".join(f"{TASKS[t]} mDice | {TASKS[t]} mIoU" for t in tasks) + \
        " | mean mDice | mean mIoU | BUSI normal imgs with a false lesion |"
    lines = [head, "|---" + "|---:" * (2 * len(tasks) + 3) + "|"]
    for r in rows:
        cells = [f"{r[f'{t}_{m}'][0]:.1f} ± {r[f'{t}_{m}'][1]:.1f}" for t in tasks for m in ("dice", "iou")]
        cells += [f"{r[f'mean_{m}'][0]:.1f}" for m in ("dice", "iou")]
        fl = r.get("busi_false_lesions")
        cells.append(f"{fl[0]:.1f} / {fl[1]}" if fl else "-")
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    for name, cols in PAPER.items():
        cells = [f"{cols[t][k]:.1f}" for t in tasks for k in (0, 1)]
        cells += [f"{np.mean([cols[t][k] for t in tasks]):.1f}" for k in (0, 1)] + ["-"]
        lines.append(f"| paper: {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("downloads", nargs="*", help="CONVERTER=FOLDER, CONVERTER one of " + ", ".join(TASKS))
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--num-train", type=int, default=160, help="training images per dataset and split")
    ap.add_argument("--num-test", type=int, default=120, help="held-out images per dataset and split")
    ap.add_argument("--size", type=int, default=64, help="`convert unified --resize` (CPU-sized)")
    ap.add_argument("--epochs-cfenet", type=int, default=40)
    ap.add_argument("--dnet-epochs", type=int, nargs=1, default=[20])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--val-iterations", type=int, default=5)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--token-budget", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dataset-id", type=int, default=940, help="first converted dataset ID")
    ap.add_argument("--parallel", type=int, default=2, help="datasets trained at a time")
    ap.add_argument("--work", type=Path, default=RESULTS / "unified_real_work")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep conversions and finished trainings in --work")
    ap.add_argument("--dnet-per-dataset", action="store_true",
                    help=f"also the '{MIXED}' rows: per task, DNet trained on that task with the unified CFENet")
    ap.add_argument("--json", type=Path, default=None)
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix=f"{NAME}_smoke_"))
        apply_smoke(args, NAME, downloads=[f"{c}={p}" for c, p in write_smoke_downloads(tmp / "download").items()],
                    splits=[0], num_train=8, num_test=3, size=32, epochs_cfenet=1, dnet_epochs=[1], iterations=2,
                    val_iterations=1, work=tmp / "work", dnet_per_dataset=True)
    args.downloads = parse_downloads(args.downloads, ap)
    args.first_split_id = args.dataset_id + 10
    device = torch.device(args.device)
    torch.set_num_threads(args.threads or 1)
    if args.work.exists() and not args.reuse:
        shutil.rmtree(args.work)
    write_trainers(args.work / "trainers", args)
    os.environ.update(nnunet_env(args.work, args.work / "trainers"))  # the predictor finds the trainers
    source = convert_downloads(args.downloads, args.dataset_id, args.size, args.work / "source_raw")
    tasks, per_split = list(args.downloads), {}
    for split in args.splits:
        print(f"split {split}: {', '.join(tasks)} and unified; nnUNetTrainer, UniSegDiff", flush=True)
        cases, class_of, task_of = split_cases(split, args, source)
        trained = train(split, cases, args, source)
        result = score(trained, class_of, task_of, device)
        if args.dnet_per_dataset:
            mixed = score(train_dnet_per_dataset(split, cases, trained, args, source), class_of,
                          task_of, device, mode=MIXED)
            result = {"rows": {**result["rows"], **mixed["rows"]},
                      "chosen": {**result["chosen"], **{f"{key}, {MIXED}": p for key, p in mixed["chosen"].items()}}}
        per_split[split] = result
        write_results(per_split, tasks, args, device)  # after each split: a run cut short keeps what it measured
    return 0


def write_results(per_split: dict[int, dict], tasks: list[str], args, device: torch.device) -> None:
    """The table over the splits so far: printed, JSON and Markdown, machine paths replaced."""
    rows = table(per_split, tasks)
    results = {"per_split": per_split, "table": rows, "targets": targets(rows), "paper": PAPER}
    text = markdown(rows, tasks) + "\n" + json.dumps(results["targets"], indent=1) + "\n"
    print(text)
    placeholders = {**{str(p): f"DOWNLOAD_{c.upper()}" for c, p in args.downloads.items()},
                    str(args.work.resolve()): "WORK"}
    info = replace_paths(meta(device, settings={k: str(v) for k, v in vars(args).items()}), placeholders)
    path = write_json(NAME, info, results, args.json)
    path.with_suffix(".md").write_text(f"Held-out images, splits {list(per_split)}, mean ± sd\n\n{text}")


if __name__ == "__main__":
    sys.exit(main())
