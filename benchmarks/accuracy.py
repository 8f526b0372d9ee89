"""Does UniSegDiff beat the nnU-Net it stands on? Held-out accuracy over seeds (docs/method.md)."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, add_smoke_arg, apply_smoke, meta, print_table, write_json
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
from PIL import Image

from nnunet_unisegdiff.commands import console_script, run_logged
from nnunet_unisegdiff.conversion.synthetic import write_synthetic_dataset
from nnunet_unisegdiff.diffusion.fusion import probabilities_to_logits
from nnunet_unisegdiff.evaluation.tasks import load_sources
from nnunet_unisegdiff.evaluation.uncertainty import entropy_map
from nnunet_unisegdiff.model.pipelines import PIPELINES, pipeline_probabilities
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
from nnunet_unisegdiff.training.trainer import CFENET_CHECKPOINT_ENV

BIN = Path(sys.executable).parent  # console scripts (accuracy_real.py imports it)
BASELINE = "nnUNetTrainerAccuracyBaseline"
UNPAD = "benchmark_unpad"  # ModelScorer: the slicer that removes the padding to the patch (in the properties)
TRAINERS_MODULE = '''"""Written by benchmarks/accuracy.py: the benchmark's budgets as nnU-Net trainer variants."""
from dataclasses import replace

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff

SAVE_EVERY = 5  # checkpoint_latest every 5 epochs (nnU-Net: 50), so `--reuse` continues a run cut short
{smoke_class}

class {baseline}({smoke}nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if {threads}:  # nnUNetv2_train sets one torch thread per core before building the trainer
            torch.set_num_threads({threads})
        self.num_epochs, self.num_iterations_per_epoch = {epochs_a}, {iterations}
        self.num_val_iterations_per_epoch = {val_iterations}
        self.save_every = SAVE_EVERY
'''
UNISEGDIFF_CLASS = '''

class {name}({smoke}nnUNetTrainerUniSegDiff):
    num_epochs_cfenet, num_epochs_dnet, dnet_lr = {epochs_a}, {epochs_b}, {lr}
    unisegdiff = replace(nnUNetTrainerUniSegDiff.unisegdiff, dnet_width={width}, token_budget={token_budget})

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if {threads}:
            torch.set_num_threads({threads})
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = {iterations}, {val_iterations}
        self.save_every = SAVE_EVERY
'''


SMOKE_CLASS = '''

class SmokeRun:
    """--smoke: nnU-Net's final validation (export and metrics, each in spawned worker processes) is skipped;
    the end-to-end tests run it."""

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("--smoke: nnU-Net's final validation skipped")
'''
DEFAULT_WIDTH = 0.25  # --width's default; other widths get their own trainer (and results folder) name


def unisegdiff_trainer(epochs_dnet: int, width: float = DEFAULT_WIDTH) -> str:
    suffix = "" if width == DEFAULT_WIDTH else f"_w{round(width * 100):03d}"
    return f"nnUNetTrainerAccuracyUniSegDiff_{epochs_dnet}dnet{suffix}"


def write_trainers(folder: Path, args) -> Path:
    """One module with the baseline and a UniSegDiff trainer per phase-B budget: what a user of nnU-Net
    writes to change epochs, found through nnUNet_extTrainer."""
    folder.mkdir(parents=True, exist_ok=True)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    smoke = getattr(args, "smoke", False)
    common = dict(epochs_a=args.epochs_cfenet, iterations=args.iterations, val_iterations=args.val_iterations,
                  threads=threads, smoke="SmokeRun, " if smoke else "")
    text = TRAINERS_MODULE.format(baseline=BASELINE, smoke_class=SMOKE_CLASS if smoke else "", **common)
    for e in args.dnet_epochs:
        text += UNISEGDIFF_CLASS.format(name=unisegdiff_trainer(e, args.width), epochs_b=e, lr=args.lr,
                                        width=args.width, token_budget=args.token_budget, **common)
    path = folder / "accuracy_trainers.py"
    path.write_text(text)
    return path


def run(cmd: list[str], env: dict, log: Path) -> None:
    """An nnU-Net command (console script name first), its output into `log`; on failure a
    `CommandError` with the log's end."""
    run_logged([console_script(cmd[0]), *cmd[1:]], env, log)


def plan_processes(env: dict) -> list[str]:
    """nnUNetv2_plan_and_preprocess's process options: as many as nnU-Net's own pools get in `env`."""
    return ["-np", env["nnUNet_def_n_proc"], "-npfp", env["nnUNet_def_n_proc"]]


def nnunet_env(work: Path, trainer_dir: Path) -> dict:
    """nnU-Net's variables for a run in `work`; its export and metric pools 2 processes unless already set
    (each spawned worker imports nnU-Net and torch again)."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_compile="0",
               nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "2"),
               nnUNet_extTrainer=os.pathsep.join([str(TRAINER_DIR), str(trainer_dir)]))
    return env


def train_seed(seed: int, args, work: Path) -> dict:
    """Dataset, plan, baseline, UniSegDiff per budget and CLI predictions of one seed; returns paths.
    With `--reuse`, what `work` already holds (dataset, finished trainings) is kept."""
    dataset_id = args.dataset_id + seed
    raw = work / "raw" / f"Dataset{dataset_id:03d}_Accuracy{seed}"
    env = nnunet_env(work, work / "trainers")
    logs = work / "logs" / f"seed{seed}"
    if not (args.reuse and (work / "preprocessed" / raw.name / "nnUNetPlans.json").is_file()):
        raw = write_synthetic_dataset(work / "raw", dataset_id=dataset_id, name=f"Accuracy{seed}",
                                      num_cases=args.num_cases, num_test=args.num_test, size=args.size,
                                      seed=10_000 + seed, empty_fraction=args.empty_fraction,
                                      preprocessed_root=work / "preprocessed", overwrite=True)
        harden(raw, args.contrast, args.noise, seed)
        run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", *plan_processes(env)], env,
            logs / "plan.log")
    env["nnUNet_n_proc_DA"] = "0" if args.device == "cpu" else env.get("nnUNet_n_proc_DA", "4")
    out = {"raw": raw, "dataset_id": dataset_id, **train_fold(raw, dataset_id, env, args, logs)}
    out["cli"] = predict_cli(f"seed{seed}", args, work, raw, dataset_id)
    return out


def train_fold(raw: Path, dataset_id: int, env: dict, args, logs: Path, baseline_only: bool = False,
               fold: int = 0) -> dict:
    """nnUNetTrainer on `fold`, then per phase-B budget UniSegDiff with that model as CFENet (only DNet
    trains); {"models": {budget: UniSegDiff's model folder}, "seconds": {trainer: wall time}}."""
    results = Path(env["nnUNet_results"]) / raw.name
    out = {"models": {}, "seconds": {}}
    cfenet = results / f"{BASELINE}__nnUNetPlans__2d" / f"fold_{fold}" / "checkpoint_final.pth"
    train_once(BASELINE, cfenet, dataset_id, env, args, logs, out["seconds"], fold)
    for e in ([] if baseline_only else args.dnet_epochs):
        name = unisegdiff_trainer(e, args.width)
        out["models"][e] = results / f"{name}__nnUNetPlans__2d"
        train_once(name, out["models"][e] / f"fold_{fold}" / "checkpoint_final.pth", dataset_id,
                   {**env, CFENET_CHECKPOINT_ENV: str(cfenet)}, args, logs, out["seconds"], fold)
    return out


def train_once(trainer: str, final: Path, dataset_id: int, env: dict, args, logs: Path, seconds: dict,
               fold: int = 0) -> None:
    """nnUNetv2_train `fold`, unless `--reuse` and its checkpoint_final exists; with `--reuse` an interrupted
    training continues from its checkpoint_latest (`--c`), so a run cut short loses at most an epoch or so.
    Its wall time (this invocation's part) into `seconds`."""
    if args.reuse and final.is_file():
        return
    resume = ["--c"] if args.reuse and (final.parent / "checkpoint_latest.pth").is_file() else []
    t0 = time.monotonic()
    run(["nnUNetv2_train", str(dataset_id), "2d", str(fold), "-device", args.device, "-tr", trainer, *resume], env,
        logs / f"train_{trainer}{f'_fold{fold}' if fold else ''}{'_continued' if resume else ''}.log")
    seconds[trainer if not fold else f"{trainer} fold {fold}"] = time.monotonic() - t0


HARDEN = (0.5, 0.08)  # the synthetic benchmark's image contrast factor and pixel noise sd (`harden`)


def harden(raw: Path, contrast: float, noise: float, seed: int) -> None:
    """Every image of the dataset (training and held-out) with its contrast scaled by `contrast` around
    the image mean and Gaussian pixel noise of sd `noise` (in [0, 1] units) added, in place: the demo's
    generator is easy enough for a short nnU-Net run to reach ~97 Dice, which leaves DNet nothing to add."""
    if contrast == 1 and noise == 0:
        return
    for f in sorted(raw.glob("imagesT[rs]/*.png")):
        img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255  # (H, W, 3)
        rng = np.random.default_rng([seed, zlib.crc32(f.name.encode())])
        mean = img.mean(axis=(0, 1), keepdims=True)
        out = mean + contrast * (img - mean) + noise * rng.standard_normal(img.shape[:2])[..., None]
        Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8)).save(f)


def predict_cli(run_name: str, args, work: Path, raw: Path, dataset_id: int) -> dict[str, Path]:
    """nnUNetv2_predict of the held-out images with both trainers, without test-time augmentation, with
    the probabilities (the failure-detection benchmark reads them); {label: prediction folder}."""
    env, out = nnunet_env(work, work / "trainers"), {}
    shipped = unisegdiff_trainer(args.dnet_epochs[0], args.width)
    for label, trainer in (("baseline", BASELINE), ("unisegdiff", shipped)):
        pred = work / "predictions" / run_name / label
        if pred.exists():
            shutil.rmtree(pred)
        run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", str(dataset_id), "-c", "2d",
             "-tr", trainer, "-f", "0", "-device", args.device, "--disable_tta", "--save_probabilities",
             "-npp", "1", "-nps", "1"], env, work / "logs" / run_name / f"predict_{label}.log")
        out[label] = pred
    return out


# ----------------------------------------------------------------------------- scoring one model
@torch.no_grad()
def row_probabilities(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every inference pipeline's class probabilities (C, *spatial) for one preprocessed image x
    (1, C_in, *spatial), CFENet once and one set of draws for the pipelines that share them; the row of
    the pipeline the trainer chose is the network's own forward (what nnUNetv2_predict runs)."""
    out = pipeline_probabilities(net, x, PIPELINES)
    rows = {f"pipeline: {name}": p[0] for name, p in out.items()}
    rows["UniSegDiff (chosen pipeline, network forward)"] = out[net.settings.pipeline][0]
    return rows


def case_scores(seg: np.ndarray, gt: np.ndarray, labels: list[int]) -> dict:
    """Dice / IoU averaged over lesion labels (nnU-Net's counts); NaN where neither mask has the label."""
    dice, iou = [], []
    for k in labels:
        tp, fp, fn, _ = compute_tp_fp_fn_tn(gt == k, seg == k)
        denom = 2 * tp + fp + fn
        dice.append(2 * tp / denom if denom else np.nan)
        iou.append(tp / (tp + fp + fn) if denom else np.nan)
    return {"dice": float(np.nanmean(dice)) if not np.isnan(dice).all() else np.nan,
            "iou": float(np.nanmean(iou)) if not np.isnan(iou).all() else np.nan,
            "gt_lesion": bool((gt > 0).any()), "pred_lesion": bool((seg > 0).any())}


class ModelScorer:
    """The trained UniSegDiff network as nnUNetv2_predict loads it, and nnU-Net's own preprocessing
    and export, so each row's labels are what nnU-Net would write for that probability map."""

    def __init__(self, model_dir: Path, device: torch.device, fold: int = 0) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        self.predictor = nnUNetPredictor(use_mirroring=False, device=device, verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(model_dir), (fold,), "checkpoint_final.pth")
        self.net = self.predictor.network.to(device).eval()
        self.device = device
        p = self.predictor
        self.rw = p.plans_manager.image_reader_writer_class()
        self.preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        self.labels = [int(k) for k in p.label_manager.foreground_labels]

    def preprocess(self, image_file: Path) -> tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing of one image: x (1, C_in, *patch) on the device, and its properties. An image
        that nnU-Net's crop to its nonzero region left smaller than the patch (a black border row) is padded as
        nnU-Net's sliding window pads it (zeros, one tile); `segmentation` removes the padding again."""
        p = self.predictor
        data, props = self.rw.read_images([str(image_file)])
        data, _, props = self.preprocessor.run_case_npy(data, None, props, p.plans_manager,
                                                        p.configuration_manager, p.dataset_json)
        patch = tuple(p.configuration_manager.patch_size)
        if data.shape[1] != 1 or any(n > m for n, m in zip(data.shape[2:], patch)):
            raise ValueError(f"{image_file}: preprocessed shape {data.shape[1:]} is not one 2D tile {patch}; "
                             "the benchmark scores single-tile 2D images (use --size equal to the patch)")
        data, props[UNPAD] = pad_nd_image(data[:, 0], patch, "constant", {"constant_values": 0}, True, None)
        return torch.from_numpy(np.ascontiguousarray(data)).float()[None].to(self.device), props

    def segmentation(self, logits: torch.Tensor, props: dict) -> np.ndarray:
        """nnU-Net's export of logits (C, *patch): the label map in the image's own shape."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        p = self.predictor
        logits = logits[(slice(None), *props[UNPAD][1:])] if UNPAD in props else logits
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.cpu()[:, None], p.plans_manager, p.configuration_manager, p.label_manager, props,
            num_threads_torch=1))

    def rows(self, image_file: Path) -> tuple[dict[str, np.ndarray], dict]:
        """Label map in the image's own shape and mean normalised entropy, per row."""
        x, props = self.preprocess(image_file)
        segs, entropy = {}, {}
        for name, probs in row_probabilities(self.net, x).items():
            probs = probs.cpu()
            segs[name] = self.segmentation(probabilities_to_logits(probs[None])[0], props)
            entropy[name] = float(entropy_map(probs.numpy()).mean())
        return segs, entropy


# ----------------------------------------------------------------------------- one seed's table
def summarize(case_rows: list[dict], modality_of: dict[str, str]) -> dict:
    """One row's scores over the held-out cases of one seed (Dice in %)."""
    def mean(values):
        values = [v for v in values if not np.isnan(v)]
        return 100 * float(np.mean(values)) if values else float("nan")
    out = {"dice_all": mean(r["dice"] for r in case_rows), "iou_all": mean(r["iou"] for r in case_rows),
           "dice_lesion": mean(r["dice"] for r in case_rows if r["gt_lesion"]),
           "false_lesions": sum(r["pred_lesion"] and not r["gt_lesion"] for r in case_rows),
           "lesion_free": sum(not r["gt_lesion"] for r in case_rows),
           "entropy": float(np.mean([r["entropy"] for r in case_rows]))}
    for mod in sorted(set(modality_of.values())):
        out[f"dice_{mod}"] = mean(r["dice"] for r in case_rows if modality_of[r["case"]] == mod)
        out[f"iou_{mod}"] = mean(r["iou"] for r in case_rows if modality_of[r["case"]] == mod)
    return out


def score_seed(paths: dict, args, device: torch.device) -> dict:
    raw = paths["raw"]
    modality_of = load_sources(raw / "sources.json")
    images = sorted((raw / "imagesTs").glob("*_0000.png"))
    cases = [f.name[: -len("_0000.png")] for f in images]
    modality_of = {c: modality_of.get(c, c.rsplit("_", 1)[-1]) for c in cases}
    out = {}
    for epochs, model_dir in paths["models"].items():
        first = epochs == args.dnet_epochs[0]  # CLI predictions exist for the first budget
        scorer = ModelScorer(model_dir, device)
        gts = {c: scorer.rw.read_seg(str(raw / "labelsTs" / f"{c}.png"))[0][0] for c in cases}
        per_row: dict[str, list[dict]] = {}
        agree = {}
        for case, image in zip(cases, images):
            segs, entropy = scorer.rows(image)
            if first:
                segs.update(cli_rows(paths, case, scorer.rw))
                entropy.update({k: float("nan") for k in segs if k not in entropy})
                agree.setdefault("cfenet_vs_cli_baseline", []).append(
                    float((segs["pipeline: cfenet"] == segs["nnUNetv2_predict: nnUNetTrainer"]).mean()))
                forward = segs["UniSegDiff (chosen pipeline, network forward)"]
                agree.setdefault("default_vs_cli_unisegdiff", []).append(
                    float((forward == segs["nnUNetv2_predict: UniSegDiff"]).mean()))
            for name, seg in segs.items():
                per_row.setdefault(name, []).append(
                    {"case": case, "entropy": entropy[name], **case_scores(seg.reshape(gts[case].shape),
                                                                            gts[case], scorer.labels)})
        out[epochs] = {"rows": {name: summarize(rows, modality_of) for name, rows in per_row.items()},
                       "pixel_agreement": {k: float(np.mean(v)) for k, v in agree.items()},
                       "chosen_pipeline": scorer.net.settings.pipeline}
    return out


def cli_rows(paths: dict, case: str, rw) -> dict[str, np.ndarray]:
    """The label maps nnUNetv2_predict wrote for this case."""
    return {"nnUNetv2_predict: nnUNetTrainer": rw.read_seg(str(paths["cli"]["baseline"] / f"{case}.png"))[0],
            "nnUNetv2_predict: UniSegDiff": rw.read_seg(str(paths["cli"]["unisegdiff"] / f"{case}.png"))[0]}


# ----------------------------------------------------------------------------- over seeds
def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(per_seed: list[dict], epochs: int) -> list[dict]:
    names = list(per_seed[0][epochs]["rows"])
    table = []
    for name in names:
        row = {"row": name}
        for key in per_seed[0][epochs]["rows"][name]:
            m, sd = mean_sd([s[epochs]["rows"][name][key] for s in per_seed])
            row[key], row[key + "_sd"] = m, sd
        table.append(row)
    return table


def display(table: list[dict]) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The table's rows as formatted cells and its columns (key, header, format)."""
    mods = sorted(k[5:] for k in table[0] if k.startswith("dice_") and not k.endswith("_sd")
                  and k[5:] not in ("all", "lesion"))
    shown = [{"row": r["row"], **{k: fmt(r, k) for k in ["dice_all", "dice_lesion", *[f"dice_{m}" for m in mods],
                                                          "iou_all"]},
              "false": f"{r['false_lesions']:.1f} / {r['lesion_free']:.0f}", "entropy": f"{r['entropy']:.3f}"}
             for r in table]
    cols = [("row", "row", "s"), ("dice_all", "Dice all", "s"), ("dice_lesion", "Dice lesion imgs", "s"),
            *[(f"dice_{m}", f"Dice {m}", "s") for m in mods], ("iou_all", "IoU all", "s"),
            ("false", "false-lesion imgs", "s"), ("entropy", "entropy", "s")]
    return shown, cols


def print_rows(table: list[dict]) -> None:
    print_table(*display(table))


def markdown_rows(table: list[dict]) -> str:
    shown, cols = display(table)
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|---" + "|---:" * (len(cols) - 1) + "|"]
    lines += ["| " + " | ".join(str(r[k]) for k, _, _ in cols) + " |" for r in shown]
    return "\n".join(lines) + "\n"


def fmt(row: dict, key: str) -> str:
    return f"{row[key]:.1f} ± {row[key + '_sd']:.1f}"


def write_results(name: str, per_run: list[dict], runs: list[int], what: str, timings: dict, args,
                  device: torch.device, title: str = "Held-out") -> dict:
    """Mean ± sd over the runs (seeds or splits) per phase-B budget: printed, JSON and Markdown."""
    results = {f"per_{what[:-1]}": dict(zip(runs, per_run)), "timings": timings,
               "tables": {e: aggregate(per_run, e) for e in args.dnet_epochs}}
    for e in args.dnet_epochs:
        print(f"\n{title}, mean ± sd over {what} {runs}; phase B {e} epochs x {args.iterations} iterations")
        print_rows(results["tables"][e])
    path = write_json(name, meta(device, settings={k: str(v) for k, v in vars(args).items()}), results, args.json)
    path.with_suffix(".md").write_text("".join(
        f"{title}, phase B {e} epochs x {args.iterations} iterations, {what} {runs}, mean ± sd\n\n"
        + markdown_rows(results["tables"][e]) + "\n" for e in args.dnet_epochs))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-cases", type=int, default=80, help="training images per seed")
    ap.add_argument("--num-test", type=int, default=40, help="held-out images per seed")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--empty-fraction", type=float, default=0.15, help="share of lesion-free images")
    ap.add_argument("--contrast", type=float, default=HARDEN[0], help="image contrast factor (1: the demo's images)")
    ap.add_argument("--noise", type=float, default=HARDEN[1], help="pixel noise sd added to the images (0: none)")
    ap.add_argument("--epochs-cfenet", type=int, default=40, help="nnUNetTrainer epochs (= CFENet)")
    ap.add_argument("--dnet-epochs", "--epochs-dnet", type=int, nargs="+", default=[20],
                    help="phase-B epochs; several values train one UniSegDiff each on the same CFENet")
    ap.add_argument("--iterations", type=int, default=40, help="iterations per epoch (both trainers)")
    ap.add_argument("--val-iterations", type=int, default=5)
    ap.add_argument("--width", type=float, default=DEFAULT_WIDTH, help="DNet width (fraction of the plan's features)")
    ap.add_argument("--token-budget", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3, help="DNet learning rate")
    ap.add_argument("--dataset-id", type=int, default=880, help="first dataset ID (one per seed)")
    ap.add_argument("--work", type=Path, default=RESULTS / "accuracy_work")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in training and scoring (default 1 on the CPU: on 2 shared cores small "
                         "steps run several times faster single-threaded; 0 keeps nnU-Net's choice)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true",
                    help="keep what --work holds from an earlier run with the same settings (datasets, finished "
                         "trainings) and train only what is missing, e.g. more --dnet-epochs on the same CFENets")
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, "accuracy", seeds=[0], num_cases=10, num_test=2, size=32, epochs_cfenet=1, dnet_epochs=[1],
                iterations=2, val_iterations=1, reuse=False, work=Path(tempfile.mkdtemp(prefix="accuracy_smoke_")))
    device = torch.device(args.device)
    if args.threads != 0 and (args.threads or device.type == "cpu"):
        torch.set_num_threads(args.threads or 1)
    if args.work.exists() and not args.reuse:
        shutil.rmtree(args.work)
    write_trainers(args.work / "trainers", args)
    os.environ.update(nnunet_env(args.work, args.work / "trainers"))  # the in-process predictor finds them too
    per_seed, timings = [], {}
    for seed in args.seeds:
        print(f"seed {seed}: dataset, nnUNetTrainer, UniSegDiff x {len(args.dnet_epochs)}, predictions", flush=True)
        paths = train_seed(seed, args, args.work)
        timings[seed] = paths["seconds"]
        per_seed.append(score_seed(paths, args, device))
        first = per_seed[-1][args.dnet_epochs[0]]
        print(f"seed {seed}: chosen pipeline {first['chosen_pipeline']}, pixel agreement {first['pixel_agreement']}",
              flush=True)
        print_rows(aggregate(per_seed[-1:], args.dnet_epochs[0]))
    write_results("accuracy", per_seed, args.seeds, "seeds", timings, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
