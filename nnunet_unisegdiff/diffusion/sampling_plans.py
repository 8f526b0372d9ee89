"""The sampling plans a trained DNet can be sampled with, one frozen type per plan holding only the
fields that plan reads: the staged plan (paper section 2.2) and the DDIM and one-step plans of the
paper's Table 4 ablations. `StagedSampler` runs a plan picked by its type; `kind` names it in the
settings record a checkpoint carries (model/settings.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from nnunet_unisegdiff.diffusion.renoise import RENOISE
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings


def _require_count(plan: object, name: str) -> None:
    value = getattr(plan, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(plan).__name__}.{name} must be a positive integer, got {value!r}")


def _require_choice(plan: object, name: str, choices: tuple) -> None:
    value = getattr(plan, name)
    if value not in choices:
        raise ValueError(f"{type(plan).__name__}.{name} must be one of {choices}, got {value!r}")


def _require_diffusion(plan: object) -> None:
    if not isinstance(plan.diffusion, DiffusionSettings):
        raise TypeError(f"{type(plan).__name__}.diffusion must be a DiffusionSettings, got {plan.diffusion!r}")


@dataclass(frozen=True)
class StagedPlan:
    """RS -> PM (an x0 and an eps branch) -> DR: 12 DNet calls, 2 x `draws_per_branch` masks.

    Two defaults differ from the paper's reading (`PAPER_SAMPLER` in model/pipelines.py restores it):
    DR draws come from the x0 decoder (`dr_head`) and PM's clean estimates are clamped (`clamp_x0`)."""
    kind: ClassVar[str] = "staged"
    draws_per_branch: int = 10     # DR draws per PM branch
    interval: int = 30             # PM DDIM interval
    renoise: str = "fresh"         # how each DR draw starts from PM's last state (diffusion/renoise.py)
    clamp_x0: bool = True          # clamp PM's clean estimates to the mask range [-1, 1] (paper: no)
    dr_head: Literal["eps", "x0"] = "x0"  # decoder whose output of the DR call is each draw's mask (paper: eps)
    diffusion: DiffusionSettings = DiffusionSettings()  # T and the thresholds, shared with training

    def __post_init__(self) -> None:
        _require_diffusion(self)
        _require_count(self, "draws_per_branch")
        _require_count(self, "interval")
        _require_choice(self, "renoise", tuple(RENOISE))
        _require_choice(self, "clamp_x0", (False, True))
        _require_choice(self, "dr_head", ("eps", "x0"))

    def pm_timesteps(self) -> list[int]:
        """Told (and true) timesteps of the PM calls: 599, 569, ..., 329 for the paper's setting."""
        d = self.diffusion
        return list(range(d.high - 1, d.low - 1, -self.interval))


@dataclass(frozen=True)
class DDIMPlan:
    """`samples` independent DDIM trajectories of `steps` calls from pure noise (eta 1 with T steps is
    DDPM): how the uniform-eps and uniform-x0 ablations are sampled."""
    kind: ClassVar[str] = "ddim"
    samples: int = 20              # parallel trajectories, one mask each (the staged plan's 20 masks)
    steps: int = 100
    prediction: Literal["eps", "x0"] = "eps"  # decoder each step's clean estimate comes from
    eta: float = 0.0
    diffusion: DiffusionSettings = DiffusionSettings()

    def __post_init__(self) -> None:
        _require_diffusion(self)
        _require_count(self, "samples")
        _require_count(self, "steps")
        if self.steps > self.diffusion.num_timesteps:
            raise ValueError(f"DDIMPlan.steps must be at most T = {self.diffusion.num_timesteps}, got {self.steps}")
        _require_choice(self, "prediction", ("eps", "x0"))
        if not self.eta >= 0:
            raise ValueError(f"DDIMPlan.eta must be >= 0 (0: DDIM, 1: DDPM), got {self.eta!r}")


@dataclass(frozen=True)
class OneStepPlan:
    """x0 from pure noise in one call (SDSeg-style), `samples` times in one batch: the one-step ablation,
    and with one sample the `rs` inference pipeline."""
    kind: ClassVar[str] = "one-step"
    samples: int = 20
    diffusion: DiffusionSettings = DiffusionSettings()

    def __post_init__(self) -> None:
        _require_diffusion(self)
        _require_count(self, "samples")


SamplingPlan = StagedPlan | DDIMPlan | OneStepPlan
PLANS: dict[str, type[SamplingPlan]] = {p.kind: p for p in (StagedPlan, DDIMPlan, OneStepPlan)}
