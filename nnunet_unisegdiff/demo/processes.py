"""The demo's child processes: nnU-Net's environment for them, the device, their CPU time, and a
command run with its progress bar."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from nnunet_unisegdiff.commands import run_logged
from nnunet_unisegdiff.demo.layout import Layout
from nnunet_unisegdiff.demo.progress import StepProgress
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
from nnunet_unisegdiff.training.trainer import CFENET_CHECKPOINT_ENV

try:
    import resource  # CPU time of the child processes (Unix)
except ImportError:  # pragma: no cover
    resource = None


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def child_env(layout: Layout, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of every nnU-Net command: the folders, our trainers on nnUNet_extTrainer, and
    speed settings for small CPU runs where the user has not chosen otherwise."""
    env = dict(os.environ if environ is None else environ)
    env.update({var: str(path) for var, path in layout.nnunet.items()})
    ext = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p and Path(p) != TRAINER_DIR]
    env["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINER_DIR), *ext])
    env.setdefault("nnUNet_def_n_proc", str(min(2, os.cpu_count() or 1)))  # process pools cost more than they give here
    env.setdefault("nnUNet_compile", "0")  # compiling takes longer than the demo trains
    env[CFENET_CHECKPOINT_ENV] = "none"  # nothing found by chance; UniSegDiff's train step names the baseline
    env["PYTHONUNBUFFERED"] = "1"
    return env


def child_cpu_seconds() -> float:
    if resource is None:
        return float("nan")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_with_progress(cmd: Sequence[str], env: Mapping[str, str], log_file: Path, progress: StepProgress,
                      on_line: Callable[[str], None]) -> None:
    """`run_logged`, closing the step's progress bar however the command ends."""
    try:
        run_logged(cmd, env, log_file, on_line)
    finally:
        progress.close()
