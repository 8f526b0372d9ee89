"""PNG figures a person looks at rather than reads."""
from __future__ import annotations

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_unisegdiff.diffusion.settings import DiffusionSettings  # noqa: E402

STAGE_KEYS = (("train_loss_rs", "RS"), ("train_loss_pm", "PM"), ("train_loss_dr", "DR"))


def plot_stage_losses(logs: dict, phase_b_start: int, path: str,
                      diffusion: DiffusionSettings = DiffusionSettings()) -> None:
    """Phase-B training loss per stage next to nnU-Net's train/val loss, one point per epoch; the
    legend names each stage's timesteps from the trainer's diffusion settings."""
    with plt.style.context("default"):  # nnU-Net's progress plot leaves seaborn's huge fonts behind
        _plot_stage_losses(logs, phase_b_start, path, diffusion.stage_ranges())


def _plot_stage_losses(logs: dict, phase_b_start: int, path: str, ranges: dict[str, str]) -> None:
    fig, ax = plt.subplots(figsize=(10, 5))
    for key, label in (("train_losses", "train loss"), ("val_losses", "val loss")):
        ax.plot(np.arange(len(logs[key])), logs[key], label=label, lw=2, alpha=0.5)
    for key, stage in STAGE_KEYS:
        values = logs.get(key, [])
        ax.plot(np.arange(len(values)), values, marker="o", ms=3, label=f"phase B, {stage} ({ranges[stage]})")
    ax.axvline(phase_b_start - 0.5, color="k", ls="--", lw=1)
    ax.text(phase_b_start - 0.5, ax.get_ylim()[1], " phase B: DNet", va="top")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("UniSegDiff training loss (phase B split by stage)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
