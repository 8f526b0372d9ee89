"""Real-data accuracy: UniSegDiff next to the nnU-Net it stands on, on a real download (issue 13).

    .venv/bin/python benchmarks/accuracy_real.py DOWNLOAD_DIR --converter busi      # 3 splits
    .venv/bin/python benchmarks/accuracy_real.py DOWNLOAD_DIR --converter ebhiseg --splits 0
    .venv/bin/python benchmarks/accuracy_real.py --smoke   # a BUSI-like download of synthetic images, tiny runs

The download is converted with the project's converter (`unisegdiff convert NAME`, BUSI with its
normal images; `--converter synthetic`: accuracy.py's hardened generator, no download), resized with
`convert unified --resize SIZE`, then per split a stratified held-out set is drawn (per class,
lesion-free images kept, whole groups on one side). Per split, as in
`accuracy.py`: `nnUNetTrainer` through `nnUNetv2_train`, UniSegDiff on the same fold with that model
as CFENet (only DNet trains, then the trainer picks its inference pipeline on the fold's validation
cases), `nnUNetv2_predict --disable_tta --save_probabilities` with both, and in-process every
pipeline the network offers on the same preprocessed images. Section 8 of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from _common import RESULTS, add_smoke_arg, apply_smoke
from accuracy import (
    BIN,
    DEFAULT_WIDTH,
    HARDEN,
    ModelScorer,
    aggregate,
    case_scores,
    harden,
    nnunet_env,
    plan_processes,
    predict_cli,
    print_rows,
    run,
    summarize,
    train_fold,
    write_results,
    write_trainers,
)


class Converter(NamedTuple):
    options: list[str]                           # `unisegdiff convert NAME` options beyond the download
    class_of: Callable[[str], str]               # a case's class from its unified case ID
    after: Callable[[Path], None] | None = None  # applied to the converted dataset folder


CONVERTERS = {
    "busi": Converter(["--include-normal"], lambda case: case.split("_")[1]),  # BUSI_benign_0001
    "ebhiseg": Converter([], lambda case: case.split("_")[2]),                # EBHISeg_EBHI_Adeno_GT...
    "polyp": Converter([], lambda case: case.split("_")[1]),                  # Polyp_Kvasir_cju0qkwl35piu0993l0dewei2
    # no download: the generator's images, hardened as accuracy.py's (class: modality)
    "synthetic": Converter(["--num-cases", "600", "--num-test", "0", "--size", "64", "--empty-fraction", "0.15"],
                           lambda case: case.split("_")[3],                   # Synthetic_SYN_0001_endo
                           lambda folder: harden(folder, *HARDEN, seed=0)),
}


def convert_download(args, work: Path) -> Path:
    """The project's converter, then the unified converter's resize; the resized dataset's folder."""
    return convert_downloads({args.converter: args.download}, args.dataset_id, args.size, work / "source_raw")


def convert_downloads(downloads: dict[str, Path], first_id: int, size: int, raw: Path) -> Path:
    """Each download by its converter (IDs first_id, first_id + 1, ...), then `convert unified --resize SIZE` of
    them all into ID first_id + len(downloads); that dataset's folder (kept when it already exists)."""
    unified_id = first_id + len(downloads)
    done = sorted(raw.glob(f"Dataset{unified_id:03d}_*")) if raw.is_dir() else []
    if done:
        return done[0]
    cli = str(BIN / "unisegdiff")
    ids = [str(first_id + j) for j in range(len(downloads))]
    for dataset_id, (converter, download) in zip(ids, downloads.items()):
        subprocess.run([cli, "convert", converter, str(download or "-"), "-d", dataset_id, "-q", "-o", str(raw),
                        *CONVERTERS[converter].options], check=True)
        if CONVERTERS[converter].after:
            CONVERTERS[converter].after(next(raw.glob(f"Dataset{dataset_id}_*")))
    subprocess.run([cli, "convert", "unified", str(raw), "--datasets", *ids, "--resize", str(size), "-d",
                    str(unified_id), "-q", "-o", str(raw)], check=True)
    return sorted(raw.glob(f"Dataset{unified_id:03d}_*"))[0]


def write_smoke_download(folder: Path, per_class: int = 6) -> Path:
    """A download in BUSI's layout (benign/, malignant/, normal/: 'benign (1).png' with 'benign (1)_mask.png')
    of the synthetic generator's ultrasound-like images; the normal images' masks are empty."""
    from PIL import Image

    from nnunet_unisegdiff.conversion.synthetic import generate_cases
    root = folder / "Dataset_BUSI_with_GT"
    cases = generate_cases(3 * per_class, size=48, modalities=("us",), empty_fraction=0.0)
    for i, case in enumerate(cases):
        cls, n = ("benign", "malignant", "normal")[i % 3], i // 3 + 1
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(case.image).save(root / cls / f"{cls} ({n}).png")
        mask = np.zeros_like(case.label) if cls == "normal" else case.label
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(root / cls / f"{cls} ({n})_mask.png")
    return folder


def has_lesion(label_file: Path) -> bool:
    from PIL import Image
    return bool(np.asarray(Image.open(label_file)).any())


def stratified_split(source: Path, converter: str, num_train: int, num_test: int, seed: int,
                     task: str | None = None) -> tuple[list[str], list[str], dict[str, str]]:
    """(train cases, held-out cases, class of each case). Strata are (class, lesion-free or not); each
    stratum gives its share of both sets; a group (patient or case token) goes wholly to one side. `task`:
    only the cases of that source (a unified dataset's sources.json names each case's task)."""
    sources = json.loads((source / "sources.json").read_text())
    sources = {c: info for c, info in sources.items() if task is None or info.get("source") == task}
    class_of = {c: CONVERTERS[converter].class_of(c) for c in sources}
    stratum = {c: (class_of[c], has_lesion(source / "labelsTr" / f"{c}.png")) for c in sources}
    groups: dict[str, list[str]] = {}
    for c, info in sorted(sources.items()):
        groups.setdefault(info.get("group") or c, []).append(c)
    by_stratum: dict[tuple, list[str]] = {}
    for g, cases in sorted(groups.items()):
        by_stratum.setdefault(stratum[cases[0]], []).append(g)
    rng = np.random.default_rng(seed)
    total = len(sources)
    train, test = [], []
    for _key, gs in sorted(by_stratum.items()):
        n_cases = sum(len(groups[g]) for g in gs)
        want_test, want_train = round(num_test * n_cases / total), round(num_train * n_cases / total)
        got_test, got_train = [], []
        for g in rng.permutation(gs):
            if len(got_test) < want_test:
                got_test += groups[g]
            elif len(got_train) < want_train:
                got_train += groups[g]
        train += got_train
        test += got_test
    return sorted(train), sorted(test), class_of


def write_split(source: Path, work: Path, dataset_id: int, name: str, train: list[str], test: list[str]) -> Path:
    """nnU-Net raw dataset of one split (hard links into the resized dataset), with its sources table."""
    raw = work / "raw" / f"Dataset{dataset_id:03d}_{name}"
    if raw.exists():
        shutil.rmtree(raw)
    for sub, cases in (("Tr", train), ("Ts", test)):
        (raw / f"images{sub}").mkdir(parents=True)
        (raw / f"labels{sub}").mkdir()
        for c in cases:
            os.link(source / "imagesTr" / f"{c}_0000.png", raw / f"images{sub}" / f"{c}_0000.png")
            os.link(source / "labelsTr" / f"{c}.png", raw / f"labels{sub}" / f"{c}.png")
    dataset = json.loads((source / "dataset.json").read_text())
    dataset.update(numTraining=len(train), name=raw.name)
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    sources = json.loads((source / "sources.json").read_text())
    (raw / "sources.json").write_text(json.dumps({c: sources[c] for c in train + test}, indent=1))
    return raw


def prepare_split(split: int, args, work: Path, source: Path) -> dict:
    """One split's dataset, planned and preprocessed (kept with `--reuse`): {"raw", "dataset_id", "class_of",
    "env" (nnU-Net's for training it), "logs"}."""
    name = f"{source.name.split('_', 1)[1]}{args.converter.upper()}Split{split}"
    train, test, class_of = stratified_split(source, args.converter, args.num_train, args.num_test, 1000 + split)
    return {**prepare_dataset(work, args.first_split_id + split, name, train, test, source, args,
                              work / "logs" / f"split{split}"), "class_of": class_of}


def prepare_dataset(work: Path, dataset_id: int, name: str, train: list[str], test: list[str], source: Path,
                    args, logs: Path, plans_from: int | None = None) -> dict:
    """A raw dataset of these cases of `source` (hard links), planned and preprocessed, kept with `--reuse`:
    {"raw", "dataset_id", "env" (nnU-Net's for training it), "logs"}. `plans_from`: not planned, but with that
    dataset's plans, as nnU-Net's pretraining documentation moves a pretrained network's plans."""
    env = nnunet_env(work, work / "trainers")
    raw = work / "raw" / f"Dataset{dataset_id:03d}_{name}"
    if not (args.reuse and (work / "preprocessed" / raw.name / "nnUNetPlans.json").is_file()):
        raw = write_split(source, work, dataset_id, name, train, test)
        if plans_from is None:
            run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", *plan_processes(env)], env,
                logs / "plan.log")
        else:  # nnUNetv2_train copies the fingerprint; the target has no plans of its own, so: nnUNetPlans
            n = env["nnUNet_def_n_proc"]
            run(["nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np", n], env, logs / "fingerprint.log")
            run(["nnUNetv2_move_plans_between_datasets", "-s", str(plans_from), "-t", str(dataset_id),
                 "-sp", "nnUNetPlans"], env, logs / "move_plans.log")
            shutil.copy(raw / "dataset.json", work / "preprocessed" / raw.name)  # as nnU-Net's planner does
            run(["nnUNetv2_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", n], env, logs / "preprocess.log")
    env["nnUNet_n_proc_DA"] = "0" if args.device == "cpu" else env.get("nnUNet_n_proc_DA", "4")
    return {"raw": raw, "dataset_id": dataset_id, "env": env, "logs": logs}


def train_split(split: int, args, work: Path, source: Path) -> dict:
    """Split dataset, plan, baseline, UniSegDiff (CFENet reused) and CLI predictions of one split."""
    s = prepare_split(split, args, work, source)
    out = {"raw": s["raw"], "class_of": s["class_of"],
           **train_fold(s["raw"], s["dataset_id"], s["env"], args, s["logs"], args.baselines_only)}
    if not args.baselines_only:
        out["cli"] = predict_cli(f"split{split}", args, work, s["raw"], s["dataset_id"])
    return out


def score_split(paths: dict, args, device: torch.device) -> dict:
    """Every pipeline of each trained UniSegDiff (in-process) and both CLI predictions, per class."""
    raw = paths["raw"]
    images = sorted((raw / "imagesTs").glob("*_0000.png"))
    cases = [f.name[: -len("_0000.png")] for f in images]
    out = {}
    for epochs, model_dir in paths["models"].items():
        scorer = ModelScorer(model_dir, device)
        gts = {c: scorer.rw.read_seg(str(raw / "labelsTs" / f"{c}.png"))[0][0] for c in cases}
        per_row: dict[str, list[dict]] = {}
        for case, image in zip(cases, images):
            segs, entropy = scorer.rows(image)
            if epochs == args.dnet_epochs[0]:
                for label, row in (("baseline", "nnUNetv2_predict: nnUNetTrainer"),
                                   ("unisegdiff", "nnUNetv2_predict: UniSegDiff (chosen pipeline)")):
                    segs[row] = scorer.rw.read_seg(str(paths["cli"][label] / f"{case}.png"))[0]
                    entropy[row] = float("nan")
            for name, seg in segs.items():
                per_row.setdefault(name, []).append(
                    {"case": case, "entropy": entropy[name],
                     **case_scores(seg.reshape(gts[case].shape), gts[case], scorer.labels)})
        chosen = json.loads((model_dir / "fold_0" / "inference_pipeline.json").read_text())
        out[epochs] = {"rows": {n: summarize(r, paths["class_of"]) for n, r in per_row.items()},
                       "chosen_pipeline": chosen["chosen"], "validation": chosen["table"]}
    return out


def add_real_args(ap: argparse.ArgumentParser) -> None:
    """The download, converter and budget options that real-data benchmarks share (not the splits)."""
    ap.add_argument("download", type=Path, nargs="?", help="the dataset as downloaded (the converter's SOURCE_DIR)")
    ap.add_argument("--converter", choices=sorted(CONVERTERS))
    ap.add_argument("--num-train", type=int, default=160)
    ap.add_argument("--num-test", type=int, default=120)
    ap.add_argument("--size", type=int, default=64, help="images resized to SIZE x SIZE (CPU-sized)")
    ap.add_argument("--epochs-cfenet", type=int, default=40, help="nnUNetTrainer epochs (= CFENet)")
    ap.add_argument("--dnet-epochs", type=int, nargs="+", default=[20])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--val-iterations", type=int, default=5)
    ap.add_argument("--width", type=float, default=DEFAULT_WIDTH)
    ap.add_argument("--token-budget", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dataset-id", type=int, default=900, help="converted dataset ID (its resize: ID + 1)")
    ap.add_argument("--first-split-id", type=int, default=None, help="default: --dataset-id + 10")
    ap.add_argument("--work", type=Path, default=None, help="default benchmarks/results/real_work_CONVERTER")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep conversions and finished trainings in --work")
    add_smoke_arg(ap)


def start(ap: argparse.ArgumentParser, args, name: str, **tiny) -> tuple[Path, torch.device, Path]:
    """What every real-data run does first: with --smoke a BUSI-like download and tiny budgets (plus `tiny`),
    the work folder (emptied unless --reuse), torch threads, the trainers and nnU-Net's environment, the
    converted download; (work, device, converted dataset folder)."""
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}_smoke_"))
        apply_smoke(args, name, download=write_smoke_download(tmp / "download"), converter="busi", num_train=12,
                    num_test=4, size=32, epochs_cfenet=1, dnet_epochs=[1], iterations=2, val_iterations=1,
                    reuse=False, work=tmp / "work", **tiny)
    elif args.converter is None or (args.download is None and args.converter != "synthetic"):
        ap.error("DOWNLOAD and --converter are required (--converter synthetic needs no DOWNLOAD; or --smoke)")
    args.first_split_id = args.first_split_id or args.dataset_id + 10
    work = args.work or RESULTS / f"real_work_{args.converter}"
    device = torch.device(args.device)
    if args.threads != 0 and (args.threads or device.type == "cpu"):
        torch.set_num_threads(args.threads or 1)
    if work.exists() and not args.reuse:
        shutil.rmtree(work)
    write_trainers(work / "trainers", args)
    os.environ.update(nnunet_env(work, work / "trainers"))
    return work, device, convert_download(args, work)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_real_args(ap)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--baselines-only", action="store_true",
                    help="convert, split and train nnUNetTrainer only (UniSegDiff later with --reuse)")
    args = ap.parse_args(argv)
    work, device, source = start(ap, args, "accuracy_real", splits=[0], baselines_only=False)
    per_split, timings = [], {}
    for split in args.splits:
        print(f"split {split}: {args.converter}, nnUNetTrainer, UniSegDiff, predictions", flush=True)
        paths = train_split(split, args, work, source)
        timings[split] = paths["seconds"]
        if args.baselines_only:
            continue
        per_split.append(score_split(paths, args, device))
        print(f"split {split}: chosen pipeline {per_split[-1][args.dnet_epochs[0]]['chosen_pipeline']}", flush=True)
        print_rows(aggregate(per_split[-1:], args.dnet_epochs[0]))
    if args.baselines_only:
        return 0
    write_results(f"accuracy_real_{args.converter}", per_split, args.splits, "splits", timings, args, device,
                  title=f"{args.converter} held-out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
