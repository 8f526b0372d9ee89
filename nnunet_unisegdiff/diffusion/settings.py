"""The diffusion settings training and inference must share: T, the noise schedule and the stage
thresholds (paper section 2.2; Table 5 picks high 600 / low 300).

The training objective (what DNet is trained on: staged.py, ablations.py) and the sampling plan (how it
is sampled: sampling_plans.py) each hold one `DiffusionSettings` and read T, high and low from it; the
trainer refuses a pair whose settings differ, so DNet is never sampled in stages it was not trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from nnunet_unisegdiff.diffusion.schedule import linear_alphas_cumprod


@dataclass(frozen=True)
class DiffusionSettings:
    num_timesteps: int = 1000  # T
    high: int = 600            # RS: drawn t >= high; inference jumps from X_{T-1} to X_{high-1}
    low: int = 300             # DR: drawn t < low; the PM trajectories end at X_{low-1}
    beta_start: float = 1e-4   # DDPM's linear betas
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high < self.num_timesteps:
            raise ValueError(f"need 0 < low < high < T, got low={self.low}, high={self.high}, "
                             f"T={self.num_timesteps}")

    def alphas_cumprod(self) -> Tensor:
        """alpha-bar_t for t = 0..T-1 (float64)."""
        return linear_alphas_cumprod(self.num_timesteps, self.beta_start, self.beta_end)

    def stage_ranges(self) -> dict[str, str]:
        """The drawn timesteps of each stage, as text: {"RS": "t > 599", ...}."""
        return {"RS": f"t > {self.high - 1}", "PM": f"{self.low - 1} < t <= {self.high - 1}",
                "DR": f"t <= {self.low - 1}"}
