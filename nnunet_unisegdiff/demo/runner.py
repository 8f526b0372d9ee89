"""`unisegdiff demo`: UniSegDiff end to end next to nnU-Net's baseline, on embedded synthetic data,
through nnU-Net's own commands (`make demo` runs it).

Steps (each a real nnU-Net command in a child process, with `nnUNet_extTrainer` set to
`unisegdiff trainer-dir`):

1. a synthetic multi-modality lesion dataset (grey/endoscopy/ultrasound-like, 64x64 RGB) with
   held-out images and labels (`imagesTs`/`labelsTs`);
2. `nnUNetv2_plan_and_preprocess -c 2d`;
3. `nnUNetv2_train ... -tr nnUNetTrainerUniSegDiffDemo` (CFENet, then DNet) and `nnUNetv2_predict
   --save_probabilities` on the held-out images;
4. the same for `nnUNetTrainerDemoBaseline`, plain nnU-Net with the same epochs x iterations;
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
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

try:
    import resource  # CPU time of the child processes (Unix)
except ImportError:  # pragma: no cover
    resource = None

DATASET_ID = 598
DATASET_NAME = "UniSegDiffDemo"
TRAINER = "nnUNetTrainerUniSegDiffDemo"
BASELINE_TRAINER = "nnUNetTrainerDemoBaseline"
METHOD, BASELINE = "UniSegDiff", "nnU-Net baseline"
DEFAULT_ROOT = Path("unisegdiff_demo")
RUN_MARKER = "demo.json"           # written first into every run folder: only such folders are replaced
NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
RUN_PATTERN = re.compile(r"run_(\d{3,})")


class DemoError(RuntimeError):
    """A condition the user must resolve (existing results, a failed nnU-Net command)."""


# ----------------------------------------------------------------------------- layout
@dataclass
class Layout:
    run_dir: Path
    nnunet: dict[str, Path]          # nnUNet_raw / _preprocessed / _results -> folder
    user_set: dict[str, bool]        # whether the user's environment named that folder

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def predictions(self) -> Path:
        return self.run_dir / "predictions"

    @property
    def evaluation(self) -> Path:
        return self.run_dir / "evaluation"

    @property
    def report(self) -> Path:
        return self.run_dir / "report"


def run_number(path: Path) -> int | None:
    m = RUN_PATTERN.fullmatch(path.name)
    return int(m.group(1)) if m else None


def existing_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and run_number(p) is not None), key=run_number)


def choose_run_dir(root: Path, run_name: str | None = None, overwrite: bool = False) -> Path:
    """The run folder to use. Default: the next `run_NNN`. `run_name`: that folder, refused when it
    holds anything unless `overwrite`. `overwrite` without a name: the latest run is replaced.
    A folder is only ever replaced when it holds the demo's marker file."""
    root = Path(root)
    if run_name is None:
        runs = existing_runs(root)
        if not overwrite or not runs:
            n = (run_number(runs[-1]) + 1) if runs else 1
            return root / f"run_{n:03d}"
        target = runs[-1]
    else:
        if Path(run_name).name != run_name or run_name in ("", ".", ".."):
            raise DemoError(f"--run takes a folder name inside {root}, got {run_name!r}")
        target = root / run_name
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise DemoError(f"{target} already holds a demo run; pass --overwrite to replace it, or "
                            "leave out --run to start a new numbered run")
        if not (target / RUN_MARKER).is_file():
            raise DemoError(f"{target} is not a demo run folder (no {RUN_MARKER}); not replacing it")
    return target


def nnunet_folders(run_dir: Path, environ: Mapping[str, str]) -> tuple[dict[str, Path], dict[str, bool]]:
    """The user's nnU-Net folders where set, otherwise folders inside the run."""
    folders, user_set = {}, {}
    for var in NNUNET_VARS:
        value = environ.get(var, "").strip()
        user_set[var] = bool(value)
        folders[var] = Path(value).expanduser().resolve() if value else run_dir.resolve() / var
    return folders, user_set


def dataset_folders(folders: Mapping[str, Path], dataset_id: int) -> list[Path]:
    """Every `DatasetNNN_*` folder of this ID in the raw, preprocessed and results folders."""
    found = []
    for var in NNUNET_VARS:
        root = folders[var]
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_"))
    return found


def check_dataset_id(folders: Mapping[str, Path], dataset_id: int, overwrite: bool,
                     name: str = DATASET_NAME) -> None:
    """Refuse to clobber: another dataset with this ID is never touched; the demo's own dataset from
    an earlier run only with `overwrite`."""
    found = dataset_folders(folders, dataset_id)
    foreign = [p for p in found if p.name != f"Dataset{dataset_id:03d}_{name}"]
    if foreign:
        raise DemoError(f"{foreign[0]} holds another dataset with ID {dataset_id}; "
                        f"choose a free one with --dataset-id")
    if found and not overwrite:
        raise DemoError(f"{found[0]} exists from an earlier demo run; pass --overwrite to replace the demo's "
                        f"dataset and models there, or --dataset-id N for a free ID")


def prepare_layout(root: Path, run_name: str | None, overwrite: bool, dataset_id: int,
                   environ: Mapping[str, str] | None = None) -> Layout:
    """Choose the run folder, check nothing would be clobbered, then create it with its marker."""
    environ = os.environ if environ is None else environ
    run_dir = choose_run_dir(Path(root), run_name, overwrite)
    folders, user_set = nnunet_folders(run_dir, environ)
    shared = {var: p for var, p in folders.items() if user_set[var]}
    if shared:
        check_dataset_id(shared, dataset_id, overwrite)
    if run_dir.exists():  # only reached with --overwrite on a folder holding the marker
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"status": "started", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  "nnunet_folders": {k: str(v) for k, v in folders.items()}},
                                                 indent=1) + "\n")
    return Layout(run_dir=run_dir, nnunet=folders, user_set=user_set)


# ----------------------------------------------------------------------------- child processes
def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def child_env(layout: Layout, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of every nnU-Net command: the folders, our trainers on nnUNet_extTrainer, and
    speed settings for small CPU runs where the user has not chosen otherwise."""
    from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
    from nnunet_unisegdiff.training.trainer import CFENET_CHECKPOINT_ENV

    env = dict(os.environ if environ is None else environ)
    env.update({var: str(path) for var, path in layout.nnunet.items()})
    ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p and Path(p) != TRAINER_DIR]
    env["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINER_DIR), *ext])
    env.setdefault("nnUNet_def_n_proc", str(min(2, os.cpu_count() or 1)))  # process pools cost more than they give here
    env.setdefault("nnUNet_compile", "0")  # compiling takes longer than the demo trains
    env[CFENET_CHECKPOINT_ENV] = "none"  # both methods train from scratch with the same budget
    env["PYTHONUNBUFFERED"] = "1"
    return env


def nnunet_command(name: str) -> str:
    """An nnU-Net console script of this Python's environment (else from PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DemoError(f"{name} not found: is nnunetv2 installed in this environment?")
    return found


class StepProgress:
    """Progress inside one long step: a tqdm bar on a terminal, a line per update otherwise."""

    def __init__(self, total: int, desc: str, unit: str, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.n, self.info = total, desc, 0, ""
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=f"      {desc}", unit=unit, file=self.stream, leave=False,
                            bar_format="{desc}: {n}/{total} {unit} |{bar:20}| {elapsed} {postfix}")

    def update(self, n: int | None = None, info: str | None = None, desc: str | None = None) -> None:
        changed = False
        if n is not None and n != self.n:
            self.n, changed = min(n, self.total), True
        if info is not None and info != self.info:
            self.info, changed = info, True
        if desc is not None and desc != self.desc:
            self.desc, changed = desc, True
        if not changed:
            return
        if self.bar is not None:
            self.bar.set_description_str(f"      {self.desc}", refresh=False)
            self.bar.n = self.n
            self.bar.set_postfix_str(self.info, refresh=False)
            self.bar.refresh()
        elif n is not None:  # plain output: one line per step of the counter
            print(f"      {self.desc} {self.n}/{self.total} {self.info}".rstrip(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainParser:
    """Follows nnUNetv2_train's log: epochs, phase switch, pseudo Dice, final validation."""

    def __init__(self, progress: StepProgress, num_epochs: int) -> None:
        self.progress, self.num_epochs = progress, num_epochs
        self.validating, self.validated = False, 0
        self.last_dice: str | None = None
        self.mean_validation_dice: float | None = None

    def __call__(self, line: str) -> None:
        if m := re.search(r": Epoch (\d+)\s*$", line):
            self.progress.update(n=int(m.group(1)))
        elif m := re.search(r"Pseudo dice \[(.*)\]", line):
            values = re.findall(r"[-+]?\d*\.\d+|\d+", m.group(1).replace("np.float32", ""))
            self.last_dice = ", ".join(f"{float(v):.2f}" for v in values)
            self.progress.update(info=f"pseudo Dice {self.last_dice}")
        elif "Phase B from epoch" in line:
            self.progress.update(desc="epochs (phase B: DNet)")
        elif "Training done." in line:
            self.progress.update(n=self.num_epochs, info="final validation")
            self.validating = True
        elif self.validating and re.search(r": predicting \S+\s*$", line):
            self.validated += 1
            self.progress.update(info=f"final validation: {self.validated} cases")
        elif m := re.search(r"Mean Validation Dice:\s*([0-9.eE+-]+)", line):
            self.mean_validation_dice = float(m.group(1))


class PredictParser:
    def __init__(self, progress: StepProgress) -> None:
        self.progress, self.done = progress, 0

    def __call__(self, line: str) -> None:
        if re.match(r"done with \S+", line.strip()):
            self.done += 1
            self.progress.update(n=self.done)


def run_logged(cmd: Sequence[str], env: Mapping[str, str], log_file: Path,
               on_line: Callable[[str], None] | None = None) -> None:
    """Run a command, its output (stdout and stderr) into `log_file`, each line also to `on_line`.
    A failure raises DemoError with the end of the log."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    if rc != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-25:])
        raise DemoError(f"{Path(cmd[0]).name} failed (exit code {rc}); full log: {log_file}\n{tail}")


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
    seed: int = 12345
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


def child_cpu_seconds() -> float:
    if resource is None:
        return float("nan")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fmt_seconds(s: float) -> str:
    if s != s:  # NaN: not measured
        return "n/a"
    return f"{int(s // 60)} min {int(round(s % 60))} s" if s >= 60 else f"{s:.0f} s"


def trainer_epochs(name: str) -> int:
    """Total epochs of a trainer (for the progress bar): ours from their class, nnU-Net's
    `nnUNetTrainer_Xepochs` from the name; 0 if unknown."""
    from nnunet_unisegdiff.training import variants
    cls = getattr(variants, name, None)
    if cls is None:
        m = re.fullmatch(r"nnUNetTrainer_(\d+)epochs?", name)
        return int(m.group(1)) if m else (1000 if name == "nnUNetTrainer" else 0)
    if hasattr(cls, "num_epochs_cfenet"):
        return cls.num_epochs_cfenet + cls.num_epochs_dnet
    if name == BASELINE_TRAINER:
        demo = variants.nnUNetTrainerUniSegDiffDemo
        return demo.num_epochs_cfenet + demo.num_epochs_dnet
    return 0


def method_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


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
            self.say(f"      done in {_fmt_seconds(seconds)}")
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
        for name, trainer in ((METHOD, cfg.trainer), (BASELINE, cfg.baseline_trainer)):
            self.train(k, name, trainer)
            pred[name] = self.predict(k + 1, name, trainer, raw / "imagesTs")
            k += 2
        done = self.step(7, "Uncertainty, evaluation and report")
        summary = write_report(
            layout.report, pred, raw / "imagesTs", raw / "labelsTs", sources=raw / "sources.json",
            evaluation_dir=layout.evaluation, training_dirs=self.training_dirs(),
            grid_cases=cfg.grid_cases, uncertainty_of=METHOD)
        done()
        wall = time.monotonic() - t0
        cpu = child_cpu_seconds() - cpu0
        summary.update(self.run_info(wall, cpu))
        finish_report(layout.report, summary)
        (layout.run_dir / RUN_MARKER).write_text(json.dumps({"status": "finished", **summary["run"]}, indent=1) + "\n")
        self.print_summary(summary)
        return summary

    def make_dataset(self) -> Path:
        from nnunet_unisegdiff.conversion.synthetic import write_synthetic_dataset
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
        cmd = [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(self.config.dataset_id), "-c", "2d",
               "-np", n, "-npfp", n, "--verify_dataset_integrity"]
        done = self.step(2, "Plan and preprocess (nnU-Net's planner, 2d configuration)", cmd)
        log = self.state.layout.logs / "plan_and_preprocess.log"
        run_logged(cmd, self.state.env, log)
        done(log)

    def train(self, k: int, name: str, trainer: str) -> None:
        cmd = [nnunet_command("nnUNetv2_train"), str(self.config.dataset_id), "2d", "0", "-tr", trainer,
               "-device", self.state.device]
        done = self.step(k, f"Train {name}: fold 0 with {trainer}", cmd)
        env = dict(self.state.env)
        if self.state.device == "cpu":
            env.setdefault("nnUNet_n_proc_DA", "0")  # augmentation in the main process: faster on 2 cores
        epochs = trainer_epochs(trainer)
        progress = StepProgress(epochs or 1, "epochs" if trainer != TRAINER else "epochs (phase A: CFENet)", "ep")
        parser = TrainParser(progress, epochs)
        log = self.state.layout.logs / f"train_{method_slug(name)}.log"
        try:
            run_logged(cmd, env, log, parser)
        finally:
            progress.close()
        self.state.validation_dice[name] = parser.mean_validation_dice
        if parser.mean_validation_dice is not None:
            self.say(f"      nnU-Net's final validation (fold 0): mean Dice {parser.mean_validation_dice:.3f}")
        done(log)

    def predict(self, k: int, name: str, trainer: str, images: Path) -> Path:
        out = self.state.layout.predictions / method_slug(name)
        cmd = [nnunet_command("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d",
               str(self.config.dataset_id), "-c", "2d", "-tr", trainer, "-f", "0", "-device", self.state.device,
               "--save_probabilities", "-npp", "1", "-nps", "1"]
        done = self.step(k, f"Predict the held-out images with {name}", cmd)
        progress = StepProgress(len(list(images.glob("*_0000.*"))), "images", "img")
        log = self.state.layout.logs / f"predict_{method_slug(name)}.log"
        try:
            run_logged(cmd, self.state.env, log, PredictParser(progress))
        finally:
            progress.close()
        done(log)
        return out

    def training_dirs(self) -> dict[str, Path]:
        results = self.state.layout.nnunet["nnUNet_results"] / f"Dataset{self.config.dataset_id:03d}_{DATASET_NAME}"
        return {METHOD: results / f"{self.config.trainer}__nnUNetPlans__2d" / "fold_0",
                BASELINE: results / f"{self.config.baseline_trainer}__nnUNetPlans__2d" / "fold_0"}

    def run_info(self, wall: float, cpu: float) -> dict:
        s, cfg = self.state, self.config
        return {"run": {
            "run_dir": str(s.layout.run_dir), "device": s.device, "wall_seconds": round(wall, 1),
            "child_cpu_seconds": round(cpu, 1), "cpu_count": os.cpu_count(),
            "dataset": f"Dataset{cfg.dataset_id:03d}_{DATASET_NAME}", "num_cases": cfg.num_cases,
            "num_test": cfg.num_test, "size": cfg.size, "seed": cfg.seed,
            "trainers": {METHOD: cfg.trainer, BASELINE: cfg.baseline_trainer},
            "nnunet_folders": {k: str(v) for k, v in s.layout.nnunet.items()},
            "validation_dice_fold0": s.validation_dice,
            "steps": [asdict(r) for r in s.steps]}}

    def print_summary(self, summary: dict) -> None:
        run = summary["run"]
        self.say("")
        self.say(f"Finished in {_fmt_seconds(run['wall_seconds'])} on {run['device']} "
                 f"(nnU-Net's processes used {_fmt_seconds(run['child_cpu_seconds'])} of CPU time).")
        self.say(f"Held-out images: {run['num_test']}, scored against their labels (Dice, IoU in %):")
        self.say("")
        self.say(summary["table"].rstrip())
        self.say("")
        dice = summary["dice_all"]
        self.say("Dice over all held-out cases: " + ", ".join(
            f"{name} {'n/a' if d is None else f'{d:.1f}'}" for name, d in dice.items()))
        for line in lesion_lines(summary["by_lesion"]):
            self.say("  " + line)
        self.say(f"Report: {summary['report_dir']}/README.md  (figure: predictions.png, training curves, "
                 "metrics.csv)")
        self.say(f"Keep playing with the trained models: export " + " ".join(
            f"{var}={run['nnunet_folders'][var]}" for var in NNUNET_VARS)
            + f" nnUNet_extTrainer=$(unisegdiff trainer-dir)")


# ----------------------------------------------------------------------------- report
def pick_grid_cases(cases: Sequence[str], tasks: Mapping[str, str], non_empty: Mapping[str, bool],
                    n: int) -> list[str]:
    """Up to n cases: cases with a lesion, taking the tasks in turn (first appearance order), and in
    the last row one lesion-free case (where a method may see a lesion that is not there)."""
    lesion = [c for c in sorted(cases) if non_empty.get(c, False)]
    empty = [c for c in sorted(cases) if not non_empty.get(c, False)]
    by_task: dict[str, list[str]] = {}
    for case in lesion:
        by_task.setdefault(tasks.get(case, "all"), []).append(case)
    n_lesion = n - 1 if empty and n >= 2 else n
    picked: list[str] = []
    while len(picked) < n_lesion and any(by_task.values()):
        for queue in by_task.values():
            if queue and len(picked) < n_lesion:
                picked.append(queue.pop(0))
    rest = [c for c in lesion if c not in picked]
    picked += empty[:1] if n >= 2 else []
    return (picked + rest + empty[1:])[:n]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im)


def _case_dice(per_case: Sequence[Mapping], case: str) -> float | None:
    values = [row["Dice"] for row in per_case if row["case"] == case and row["Dice"] is not None
              and not (isinstance(row["Dice"], float) and np.isnan(row["Dice"]))]
    return float(np.mean(values)) if values else None


def plot_grid(path: Path, cases: Sequence[str], images_dir: Path, labels_dir: Path,
              pred_dirs: Mapping[str, Path], per_case: Mapping[str, Sequence[Mapping]],
              uncertainty: Mapping[str, np.ndarray], tasks: Mapping[str, str], uncertainty_of: str,
              dpi: int = 110) -> None:
    """Rows: cases. Columns: image, ground truth, each method's prediction (with its Dice), and the
    uncertainty map. Masks are drawn over the image; the ground-truth contour is repeated in green
    on every prediction."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = {"gt": (0.1, 0.8, 0.2)}
    palette = [(1.0, 0.8, 0.0), (0.2, 0.55, 1.0), (0.95, 0.3, 0.2), (0.7, 0.3, 0.8)]
    methods = list(pred_dirs)
    titles = ["image", "ground truth", *methods, f"{uncertainty_of} uncertainty"]
    fig, axes = plt.subplots(len(cases), len(titles), figsize=(2.1 * len(titles), 2.2 * len(cases) + 0.4),
                             squeeze=False)
    heat = None
    for r, case in enumerate(cases):
        image = _read_png(images_dir / f"{case}_0000.png")
        gt = _read_png(labels_dir / f"{case}.png") > 0
        panels = [("image", None, None), ("gt", gt, colours["gt"])]
        for i, m in enumerate(methods):
            panels.append((m, _read_png(pred_dirs[m] / f"{case}.png") > 0, palette[i % len(palette)]))
        for c, (kind, mask, colour) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            if mask is not None and mask.any():
                ax.imshow(mask, cmap=ListedColormap([colour]), alpha=0.45 * mask.astype(float), interpolation="nearest")
            if kind not in ("image", "gt") and gt.any():
                ax.contour(gt, levels=[0.5], colors=[colours["gt"]], linewidths=0.9)
            if kind in pred_dirs:
                d = _case_dice(per_case.get(kind, []), case)
                if not gt.any():
                    title = "no lesion: none found" if not mask.any() else "no lesion: false lesion"
                else:
                    title = "Dice n/a" if d is None else f"Dice {100 * d:.1f}"
                ax.set_title(title, fontsize=8)
        ax = axes[r, len(titles) - 1]
        if case in uncertainty:
            heat = ax.imshow(uncertainty[case], cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"mean entropy {uncertainty[case].mean():.3f}", fontsize=8)
        axes[r, 0].set_ylabel(f"{case}\n{tasks.get(case, '')}", fontsize=7)
    for c, title in enumerate(titles):
        axes[0, c].annotate(title, (0.5, 1.25), xycoords="axes fraction", ha="center", va="bottom",
                            fontsize=9, fontweight="bold")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.07, right=0.93, top=1 - 0.7 / fig.get_figheight(), bottom=0.02,
                        wspace=0.05, hspace=0.3)
    if heat is not None:
        cax = fig.add_axes([0.94, 0.2, 0.012, 0.6])
        fig.colorbar(heat, cax=cax).set_label("normalised entropy of the posterior", fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def lesion_summary(per_case: Sequence[Mapping]) -> dict:
    """Mean Dice (%) over the cases with a lesion, and how many lesion-free cases got a lesion."""
    lesion = [r["Dice"] for r in per_case if not r["gt_empty"] and r["Dice"] is not None
              and not np.isnan(r["Dice"])]
    empty = [r for r in per_case if r["gt_empty"]]
    return {"lesion_cases": len(lesion), "lesion_dice": float(100 * np.mean(lesion)) if lesion else None,
            "lesion_free_cases": len(empty), "false_lesions": sum(not r["pred_empty"] for r in empty)}


def lesion_lines(by_lesion: Mapping[str, Mapping]) -> list[str]:
    return [f"{name}: Dice {'n/a' if d['lesion_dice'] is None else format(d['lesion_dice'], '.1f')} on the "
            f"{d['lesion_cases']} images with a lesion; a lesion found in {d['false_lesions']} of the "
            f"{d['lesion_free_cases']} lesion-free images" for name, d in by_lesion.items()]


def write_report(report_dir: Path, pred_dirs: Mapping[str, Path], images_dir: Path, labels_dir: Path, *,
                 sources: Path | None = None, evaluation_dir: Path | None = None,
                 training_dirs: Mapping[str, Path] | None = None, grid_cases: int = 6,
                 uncertainty_of: str | None = None) -> dict:
    """Everything after the predictions: `unisegdiff uncertainty` for `uncertainty_of` (default the
    first method), `unisegdiff evaluate` of every method (into `evaluation_dir/<method>/`), and in
    `report_dir`: metrics.md/.csv/.json (one Table-3 row per method), predictions.png and copies of
    the training curves. Returns the summary (the report's README is written by `finish_report`)."""
    from nnunet_unisegdiff.evaluation import evaluate as evaluation
    from nnunet_unisegdiff.evaluation import report
    from nnunet_unisegdiff.evaluation import uncertainty

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    evaluation_dir = Path(evaluation_dir) if evaluation_dir else report_dir / "evaluation"
    methods = list(pred_dirs)
    uncertainty_of = uncertainty_of or methods[0]
    sources = sources if sources is not None and Path(sources).is_file() else None

    results, rows = {}, []
    for name in methods:
        result = evaluation.evaluate_folder(pred_dirs[name], labels_dir, sources=sources, name=name)
        evaluation.write_outputs(result, evaluation_dir / method_slug(name))
        results[name] = result
        rows += [{"method": name, **row} for row in result["summary"]]
    table = report.table3_markdown([(name, results[name]["summary"]) for name in methods])
    counts = "\n".join(f"{name}:\n\n" + report.counts_markdown(results[name]["summary"]) for name in methods)
    report.write_csv(report_dir / "metrics.csv", rows)
    (report_dir / "metrics.md").write_text(table)
    empty_rule = results[methods[0]]["meta"]["empty_rule_text"]

    unc_rows = uncertainty.write_uncertainty(pred_dirs[uncertainty_of], images_dir=images_dir)
    unc_maps = {p.name[:-len(".npz")]: uncertainty.entropy_map(uncertainty.load_probabilities(p))
                for p in sorted(Path(pred_dirs[uncertainty_of]).glob("*.npz"))}

    per_case = {name: results[name]["per_case"] for name in methods}
    tasks = {row["case"]: row["task"] for row in per_case[methods[0]]}
    non_empty = {row["case"]: not row["gt_empty"] for row in per_case[methods[0]]}
    cases = pick_grid_cases(list(tasks), tasks, non_empty, grid_cases)
    grid = report_dir / "predictions.png"
    plot_grid(grid, cases, Path(images_dir), Path(labels_dir), pred_dirs, per_case, unc_maps, tasks, uncertainty_of)

    curves = {}
    for name, folder in (training_dirs or {}).items():
        for plot in ("progress.png", "progress_stages.png"):
            if (Path(folder) / plot).is_file():
                target = report_dir / f"training_{method_slug(name)}_{plot}"
                shutil.copyfile(Path(folder) / plot, target)
                curves.setdefault(name, []).append(target.name)

    def all_row(name):
        return next((r for r in results[name]["summary"] if r["task"] == evaluation.ALL_TASK), {})

    dice_all = {name: (None if all_row(name).get("mDice") is None or np.isnan(all_row(name)["mDice"])
                       else float(all_row(name)["mDice"])) for name in methods}
    summary = {"methods": methods, "table": table, "counts": counts, "empty_rule": empty_rule,
               "by_lesion": {name: lesion_summary(per_case[name]) for name in methods},
               "dice_all": dice_all,
               "iou_all": {name: all_row(name).get("mIoU") for name in methods},
               "grid": grid.name, "grid_cases": cases, "curves": curves, "report_dir": str(report_dir),
               "evaluation_dirs": {name: str(evaluation_dir / method_slug(name)) for name in methods},
               "prediction_dirs": {name: str(p) for name, p in pred_dirs.items()},
               "uncertainty_dir": os.path.relpath(Path(pred_dirs[uncertainty_of]) / uncertainty.DEFAULT_SUBDIR,
                                                  report_dir),
               "most_uncertain": [r["case"] for r in sorted(unc_rows, key=lambda r: -r["mean_entropy"])[:3]]}
    finish_report(report_dir, summary)
    return summary


def finish_report(report_dir: Path, summary: dict) -> None:
    """report/README.md and summary.json from the summary (again once the run's timings are known)."""
    from nnunet_unisegdiff.evaluation import report

    report_dir = Path(report_dir)
    run = summary.get("run", {})
    lines = ["# UniSegDiff demo report", ""]
    if run:
        lines += [f"Synthetic lesion dataset `{run['dataset']}`: {run['num_cases']} training images (fold 0 of "
                  f"nnU-Net's 5-fold split), {run['num_test']} held-out images of {run['size']}x{run['size']} "
                  f"pixels. Trainers: " + ", ".join(f"{m} `{t}`" for m, t in run["trainers"].items())
                  + f" (same epochs x iterations). Device `{run['device']}`; wall time "
                  f"{_fmt_seconds(run['wall_seconds'])}.", ""]
    lines += ["## Held-out images: Dice and IoU (%)", "", summary["table"].rstrip(), "",
              *[f"- {line}" for line in lesion_lines(summary["by_lesion"])], "",
              f"Empty masks: {summary['empty_rule']}", "", summary["counts"].rstrip(), "",
              "Per case: `../evaluation/<method>/per_case.csv`.", "",
              "## Predictions", "",
              "Image, ground truth (green), each method's mask (ground-truth contour in green on top) with its "
              "Dice, and the uncertainty map: the entropy of UniSegDiff's STAPLE posterior over its 20 staged "
              "samples (black: the samples agree; yellow: they disagree). All cases: "
              f"`{summary['uncertainty_dir']}`.", "", f"![predictions]({summary['grid']})", ""]
    if summary.get("curves"):
        lines += ["## Training curves (nnU-Net's progress plots)", ""]
        for name, files in summary["curves"].items():
            lines += [f"{name}:", ""] + [f"![{name} {f}]({f})" for f in files] + [""]
    if run.get("steps"):
        lines += ["## Steps", "", "| step | time | command |", "|---|---:|---|"]
        for s in run["steps"]:
            cmd = Path(s["command"].split(" ")[0]).name + " " + " ".join(s["command"].split(" ")[1:]) \
                if s["command"] else ""
            lines.append(f"| {s['title']} | {_fmt_seconds(s['seconds'])} | `{cmd.strip()}` |" if cmd
                         else f"| {s['title']} | {_fmt_seconds(s['seconds'])} | |")
        lines.append("")
    (report_dir / "README.md").write_text("\n".join(lines))
    (report_dir / "summary.json").write_text(json.dumps(report.json_safe(summary), indent=1) + "\n")


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="UniSegDiff next to nnU-Net's baseline on synthetic data, through nnU-Net's commands",
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                   help=f"folder of the numbered runs (default ./{DEFAULT_ROOT})")
    p.add_argument("--run", dest="run_name", default=None, metavar="NAME",
                   help="run folder name inside --root (default: the next run_NNN)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --run folder (default: the latest run) and, in nnU-Net folders from your "
                        "environment, the demo's own dataset and models")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="nnU-Net's -device (auto: cuda when available)")
    p.add_argument("--dataset-id", type=int, default=DATASET_ID, help=f"nnU-Net dataset ID (default {DATASET_ID})")
    p.add_argument("--num-cases", type=int, default=48, help="training images (default 48)")
    p.add_argument("--num-test", type=int, default=12, help="held-out images (default 12)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the synthetic data")
    p.add_argument("--grid-cases", type=int, default=6, help="cases in the figure grid (default 6)")
    p.add_argument("--trainer", default=TRAINER,
                   help=f"UniSegDiff trainer (default {TRAINER}; e.g. nnUNetTrainerUniSegDiff_50epochs on a GPU)")
    p.add_argument("--baseline-trainer", default=BASELINE_TRAINER,
                   help=f"nnU-Net trainer to compare with (default {BASELINE_TRAINER}, the same budget)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    config = DemoConfig(root=args.root, run_name=args.run_name, overwrite=args.overwrite, device=args.device,
                        dataset_id=args.dataset_id, num_cases=args.num_cases, num_test=args.num_test, size=args.size,
                        seed=args.seed, grid_cases=args.grid_cases, trainer=args.trainer,
                        baseline_trainer=args.baseline_trainer)
    try:
        validate_config(config)
        Demo(config).run()
    except DemoError as e:
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
