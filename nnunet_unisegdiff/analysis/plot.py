"""The figure of `unisegdiff gradients`: gradient magnitude against timestep with the RS/PM/DR stages
shaded, absolute and relative to each objective's mean."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402


def plot_profile(profile: Mapping, path: str | Path, title: str = "") -> None:
    t = np.array(profile["timesteps"])
    objs = profile["objectives"]
    staged = objs.get("staged", {}).get("objective", {"low": 300, "high": 600})
    low, high = staged["low"], staged["high"]
    colours = {"eps": "tab:blue", "x0": "tab:orange", "staged": "tab:green"}
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        for ax, relative in zip(axes, (False, True)):
            for (lo, hi, text) in ((0, low, "DR"), (low, high, "PM"), (high, t.max() + 1, "RS")):
                ax.axvspan(lo - 0.5, hi - 0.5, color={"DR": "0.93", "PM": "0.97", "RS": "0.9"}[text], zorder=0)
                ax.text((lo + hi) / 2, 1.0, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=9, color="0.3")
            for name, data in objs.items():
                mean, std = np.array(data["mean_abs_grad"]), np.array(data["mean_abs_grad_std"])
                scale = mean.mean() if relative else 1.0
                ax.plot(t, mean / scale, marker="o", ms=3, color=colours.get(name), label=data["label"])
                ax.fill_between(t, (mean - std) / scale, (mean + std) / scale, color=colours.get(name), alpha=0.15)
            ax.set_xlabel("timestep t of the noisy mask x_t")
            ax.set_xlim(-5, t.max() + 5)
            ax.set_yscale("log")
            if relative:
                ax.set_ylabel("mean |grad| / its mean over t")
                ax.axhline(1, color="0.5", lw=0.8, ls=":")
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
                ax.tick_params(axis="y", which="minor", labelsize=7)
            else:
                ax.set_ylabel("mean |dL/dθ| over DNet parameters")
        axes[0].legend(fontsize=8, loc="best")
        fig.suptitle(title or "DNet's mean gradient magnitude against timestep (UniSegDiff paper, Fig. 1 top left)",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
