"""`unisegdiff demo`: UniSegDiff end to end next to nnU-Net's baseline, on embedded synthetic data,
through nnU-Net's own commands (`make demo` runs it).

Steps (each a real nnU-Net command in a child process, with `nnUNet_extTrainer` set to
`unisegdiff trainer-dir`):

1. a synthetic multi-modality lesion dataset (grey/endoscopy/ultrasound-like, 64x64 RGB) with
   held-out images and labels (`imagesTs`/`labelsTs`);
2. `nnUNetv2_plan_and_preprocess -c 2d`;
3. `nnUNetv2_train ... -tr nnUNetTrainerDemoBaseline` (plain nnU-Net with the CFENet budget) and
   `nnUNetv2_predict --save_probabilities` on the held-out images;
4. the same for `nnUNetTrainerUniSegDiffDemo`, which reuses the baseline's trained model as its CFENet
   (`nnUNet_unisegdiff_cfenet`) and trains only DNet: its rows read "what DNet adds to this nnU-Net";
   test-time mirroring follows each model (nnU-Net's for the baseline and for a UniSegDiff fold that
   chose `cfenet`, none for a DNet pipeline);
5. `unisegdiff uncertainty` on UniSegDiff's posteriors, `unisegdiff evaluate` of both methods and a
   report folder: metrics table, a figure grid (image / ground truth / UniSegDiff / baseline /
   uncertainty) and nnU-Net's training curves.

Where things go: `./unisegdiff_demo/run_NNN/` (a new number per run, nothing earlier is touched)
holds the report, logs, predictions and, unless `nnUNet_raw`/`nnUNet_preprocessed`/`nnUNet_results`
are set, the nnU-Net folders themselves. When they are set they are used; the demo's dataset ID
(598) must then be free there, or be the demo's own from an earlier run and `--overwrite` given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nnunet_unisegdiff.commands import CommandError, console_script, run_logged
from nnunet_unisegdiff.conversion.synthetic import write_synthetic_dataset
from nnunet_unisegdiff.defaults import DEFAULT_SEED
from nnunet_unisegdiff.demo.layout import DATASET_NAME, NNUNET_VARS, RUN_MARKER, DemoError, Layout, prepare_layout
from nnunet_unisegdiff.demo.processes import child_cpu_seconds, child_env, pick_device, run_with_progress
from nnunet_unisegdiff.demo.progress import BASELINE_TRAINER, PredictParser, StepProgress, TrainParser, trainer_epochs
from nnunet_unisegdiff.demo.report import finish_report, fmt_seconds, lesion_lines, method_slug, write_report
from nnunet_unisegdiff.model.pipelines import exported_map
from nnunet_unisegdiff.training.override import recorded_settings
from nnunet_unisegdiff.training.trainer import CFENET_CHECKPOINT_ENV

DATASET_ID = 598
TRAINER = "nnUNetTrainerUniSegDiffDemo"
METHOD, BASELINE = "UniSegDiff", "nnU-Net baseline"
DEFAULT_ROOT = Path("unisegdiff_demo")


# ----------------------------------------------------------------------------- the run
@dataclass
class DemoConfig:
    root: Path = DEFAULT_ROOT
    run_name: str | None = None
    overwrite: bool = False
    device: str = "auto"
    dataset_id: int = DATASET_ID
    num_cases: int = 48
    num_test: int = 12
    size: int = 64
    seed: int = DEFAULT_SEED
    grid_cases: int = 6
    trainer: str = TRAINER
    baseline_trainer: str = BASELINE_TRAINER


@dataclass
class StepRecord:
    title: str
    seconds: float
    command: str = ""
    log: str = ""


@dataclass
class DemoState:
    config: DemoConfig
    layout: Layout
    device: str
    env: dict
    steps: list[StepRecord] = field(default_factory=list)
    validation_dice: dict[str, float | None] = field(default_factory=dict)


class Demo:
    def __init__(self, config: DemoConfig, stream=None) -> None:
        self.config = config
        self.out = stream or sys.stdout
        self.num_steps = 7
        self.state: DemoState | None = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, k: int, title: str, command: Sequence[str] | None = None):
        state = self.state
        self.say(f"[{k}/{self.num_steps}] {title}")
        if command:
            self.say("      $ " + " ".join(Path(command[0]).name if i == 0 else c for i, c in enumerate(command)))
        start = time.monotonic()

        def done(log: Path | None = None) -> None:
            seconds = time.monotonic() - start
            state.steps.append(StepRecord(title, seconds, " ".join(command or []), str(log or "")))
            self.say(f"      done in {fmt_seconds(seconds)}")
        return done

    # -- the steps -------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        t0 = time.monotonic()
        cpu0 = child_cpu_seconds()
        layout = prepare_layout(cfg.root, cfg.run_name, cfg.overwrite, cfg.dataset_id)
        device = pick_device(cfg.device)
        env = child_env(layout)
        self.state = DemoState(cfg, layout, device, env)
        self.say(f"UniSegDiff demo: run folder {layout.run_dir} (device {device})")
        for var in NNUNET_VARS:
            self.say(f"  {var} = {layout.nnunet[var]}" + ("  (from your environment)" if layout.user_set[var] else ""))

        raw = self.make_dataset()
        self.plan_and_preprocess()
        pred = {}
        k = 3
        for name, trainer in ((BASELINE, cfg.baseline_trainer), (METHOD, cfg.trainer)):
            self.train(k, name, trainer, cfenet_env(layout, cfg) if name == METHOD else {})
            pred[name] = self.predict(k + 1, name, trainer, raw / "imagesTs")
            k += 2
        done = self.step(7, "Uncertainty, evaluation and report")
        summary = write_report(
            layout.report, pred, raw / "imagesTs", raw / "labelsTs", sources=raw / "sources.json",
            evaluation_dir=layout.evaluation, training_dirs=training_dirs(layout, cfg),
            grid_cases=cfg.grid_cases, uncertainty_of=METHOD,
            exported=exported_map(recorded_settings(training_dirs(layout, cfg)[METHOD] / "checkpoint_final.pth")))
        done()
        wall = time.monotonic() - t0
        cpu = child_cpu_seconds() - cpu0
        summary.update(run_info(self.state, wall, cpu))
        finish_report(layout.report, summary)
        (layout.run_dir / RUN_MARKER).write_text(json.dumps({"status": "finished", **summary["run"]}, indent=1) + "\n")
        print_summary(summary, self.say)
        return summary

    def make_dataset(self) -> Path:
        cfg, layout = self.config, self.state.layout
        done = self.step(1, f"Synthetic dataset: {cfg.num_cases} training + {cfg.num_test} held-out "
                            f"{cfg.size}x{cfg.size} images (grey / endoscopy / ultrasound-like lesions)")
        raw = write_synthetic_dataset(layout.nnunet["nnUNet_raw"], dataset_id=cfg.dataset_id, name=DATASET_NAME,
                                      num_cases=cfg.num_cases, num_test=cfg.num_test, size=cfg.size, seed=cfg.seed,
                                      overwrite=cfg.overwrite, preprocessed_root=layout.nnunet["nnUNet_preprocessed"])
        self.say(f"      {raw}")
        done()
        return raw

    def plan_and_preprocess(self) -> None:
        n = self.state.env["nnUNet_def_n_proc"]
        cmd = [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(self.config.dataset_id), "-c", "2d",
               "-np", n, "-npfp", n, "--verify_dataset_integrity"]
        done = self.step(2, "Plan and preprocess (nnU-Net's planner, 2d configuration)", cmd)
        log = self.state.layout.logs / "plan_and_preprocess.log"
        run_logged(cmd, self.state.env, log)
        done(log)

    def train(self, k: int, name: str, trainer: str, extra_env: Mapping[str, str]) -> None:
        cmd = [console_script("nnUNetv2_train"), str(self.config.dataset_id), "2d", "0", "-tr", trainer,
               "-device", self.state.device]
        done = self.step(k, f"Train {name}: fold 0 with {trainer}", cmd)
        env = {**self.state.env, **extra_env}
        if self.state.device == "cpu":
            env.setdefault("nnUNet_n_proc_DA", "0")  # augmentation in the main process: faster on 2 cores
        epochs = trainer_epochs(trainer)
        progress = StepProgress(epochs or 1, "epochs" if trainer != TRAINER else "epochs (phase A: CFENet)", "ep")
        parser = TrainParser(progress, epochs)
        log = self.state.layout.logs / f"train_{method_slug(name)}.log"
        run_with_progress(cmd, env, log, progress, parser)
        self.state.validation_dice[name] = parser.mean_validation_dice
        if parser.mean_validation_dice is not None:
            self.say(f"      nnU-Net's final validation (fold 0): mean Dice {parser.mean_validation_dice:.3f}")
        done(log)

    def predict(self, k: int, name: str, trainer: str, images: Path) -> Path:
        out = self.state.layout.predictions / method_slug(name)
        cmd = [console_script("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d",
               str(self.config.dataset_id), "-c", "2d", "-tr", trainer, "-f", "0", "-device", self.state.device,
               "--save_probabilities", "-npp", "1", "-nps", "1"]
        done = self.step(k, f"Predict the held-out images with {name}", cmd)
        progress = StepProgress(len(list(images.glob("*_0000.*"))), "images", "img")
        log = self.state.layout.logs / f"predict_{method_slug(name)}.log"
        run_with_progress(cmd, self.state.env, log, progress, PredictParser(progress))
        done(log)
        return out


def cfenet_env(layout: Layout, cfg: DemoConfig) -> dict[str, str]:
    """UniSegDiff's CFENet is the baseline's trained model: phase A is skipped, only DNet trains."""
    return {CFENET_CHECKPOINT_ENV: str(training_dirs(layout, cfg)[BASELINE] / "checkpoint_final.pth")}


def training_dirs(layout: Layout, cfg: DemoConfig) -> dict[str, Path]:
    """fold_0 of each method's nnU-Net results folder (its progress plots go into the report)."""
    results = layout.nnunet["nnUNet_results"] / f"Dataset{cfg.dataset_id:03d}_{DATASET_NAME}"
    return {METHOD: results / f"{cfg.trainer}__nnUNetPlans__2d" / "fold_0",
            BASELINE: results / f"{cfg.baseline_trainer}__nnUNetPlans__2d" / "fold_0"}


def run_info(state: DemoState, wall: float, cpu: float) -> dict:
    """The run's settings, folders and step timings, for summary.json and the report."""
    cfg = state.config
    return {"run": {
        "run_dir": str(state.layout.run_dir), "device": state.device, "wall_seconds": round(wall, 1),
        "child_cpu_seconds": round(cpu, 1), "cpu_count": os.cpu_count(),
        "dataset": f"Dataset{cfg.dataset_id:03d}_{DATASET_NAME}", "num_cases": cfg.num_cases,
        "num_test": cfg.num_test, "size": cfg.size, "seed": cfg.seed,
        "trainers": {METHOD: cfg.trainer, BASELINE: cfg.baseline_trainer},
        "nnunet_folders": {k: str(v) for k, v in state.layout.nnunet.items()},
        "validation_dice_fold0": state.validation_dice,
        "steps": [asdict(r) for r in state.steps]}}


def print_summary(summary: dict, say: Callable[[str], None]) -> None:
    """The end of the demo's output: time, the table, Dice per method, where the report is."""
    run = summary["run"]
    say("")
    say(f"Finished in {fmt_seconds(run['wall_seconds'])} on {run['device']} "
        f"(nnU-Net's processes used {fmt_seconds(run['child_cpu_seconds'])} of CPU time).")
    say(f"Held-out images: {run['num_test']}, scored against their labels (Dice, IoU in %):")
    say("")
    say(summary["table"].rstrip())
    say("")
    say("Dice over all held-out cases: " + ", ".join(
        f"{name} {'n/a' if d is None else f'{d:.1f}'}" for name, d in summary["dice_all"].items()))
    for line in lesion_lines(summary["by_lesion"]):
        say("  " + line)
    say(f"Report: {summary['report_dir']}/README.md  (figure: predictions.png, training curves, metrics.csv)")
    say("Keep playing with the trained models: export " + " ".join(
        f"{var}={run['nnunet_folders'][var]}" for var in NNUNET_VARS) + " nnUNet_extTrainer=$(unisegdiff trainer-dir)")


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="UniSegDiff next to nnU-Net's baseline on synthetic data, through nnU-Net's commands",
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DemoConfig()  # the defaults, declared once
    p.add_argument("--root", type=Path, default=d.root, help=f"folder of the numbered runs (default ./{d.root})")
    p.add_argument("--run", dest="run_name", default=None, metavar="NAME",
                   help="run folder name inside --root (default: the next run_NNN)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --run folder (default: the latest run) and, in nnU-Net folders from your "
                        "environment, the demo's own dataset and models")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device,
                   help=f"nnU-Net's -device (default {d.device}: cuda when available)")
    p.add_argument("--dataset-id", type=int, default=d.dataset_id, help=f"nnU-Net dataset ID (default {d.dataset_id})")
    p.add_argument("--num-cases", type=int, default=d.num_cases, help=f"training images (default {d.num_cases})")
    p.add_argument("--num-test", type=int, default=d.num_test, help=f"held-out images (default {d.num_test})")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the synthetic data (default {d.seed})")
    p.add_argument("--grid-cases", type=int, default=d.grid_cases,
                   help=f"cases in the figure grid (default {d.grid_cases})")
    p.add_argument("--trainer", default=d.trainer,
                   help=f"UniSegDiff trainer (default {d.trainer}; e.g. nnUNetTrainerUniSegDiff_50epochs on a GPU)")
    p.add_argument("--baseline-trainer", default=d.baseline_trainer,
                   help=f"nnU-Net trainer to compare with and to reuse as UniSegDiff's CFENet "
                        f"(default {d.baseline_trainer})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
    try:
        validate_config(config)
        Demo(config).run()
    except (DemoError, CommandError) as e:
        print(f"unisegdiff demo: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unisegdiff demo: interrupted", file=sys.stderr)
        return 130
    return 0


def validate_config(config: DemoConfig) -> None:
    if config.num_cases < 10:
        raise DemoError("--num-cases: nnU-Net's 5-fold split needs at least 10 training images")
    if config.num_test < 1:
        raise DemoError("--num-test: at least one held-out image")
    if config.size < 32:
        raise DemoError("--size: at least 32 pixels")
    if not 0 < config.dataset_id < 1000:
        raise DemoError("--dataset-id: 1..999")
