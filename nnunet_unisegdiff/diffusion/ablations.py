"""The training objectives the paper's Table 4 compares the staged one to: plain eps- and x0-prediction
diffusion at uniform t, and the one-step (SDSeg-style) objective at t = T-1. Each tells DNet the true
timestep and weights one loss; `OBJECTIVES` names all four, staged included, by `kind`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from nnunet_unisegdiff.diffusion.staged import Objective, StagedObjective, StagedTargets


@dataclass(frozen=True)
class _FixedWeightsObjective(Objective):
    """DNet told the drawn t, one (alpha, beta) pair for every stage."""
    loss_weights: ClassVar[tuple[float, float]]  # (alpha: eps loss, beta: mask loss)

    @property
    def weights(self) -> tuple[tuple[float, float], ...]:
        """(alpha, beta) per stage RS, PM, DR, as `StagedObjective.weights`."""
        return (self.loss_weights,) * 3

    def targets(self, t: Tensor) -> StagedTargets:
        alpha, beta = (torch.full(t.shape, w, device=t.device, dtype=torch.float32) for w in self.loss_weights)
        return StagedTargets(t, t, alpha, beta, self.stage_of(t))


@dataclass(frozen=True)
class UniformEpsObjective(_FixedWeightsObjective):
    """Plain eps-prediction diffusion: the noise loss only."""
    kind: ClassVar[str] = "uniform-eps"
    loss_weights: ClassVar[tuple[float, float]] = (1.0, 0.0)


@dataclass(frozen=True)
class UniformX0Objective(_FixedWeightsObjective):
    """Plain x0-prediction diffusion: the mask loss only."""
    kind: ClassVar[str] = "uniform-x0"
    loss_weights: ClassVar[tuple[float, float]] = (0.0, 1.0)


@dataclass(frozen=True)
class OneStepObjective(_FixedWeightsObjective):
    """x0 from pure noise: the mask loss at t = T-1 only, all DNet is ever asked at inference."""
    kind: ClassVar[str] = "one-step"
    loss_weights: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def draw(self, batch_size: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> Tensor:
        return torch.full((batch_size,), self.num_timesteps - 1, device=device, dtype=torch.long)


OBJECTIVES: dict[str, type[Objective]] = {o.kind: o for o in (StagedObjective, UniformEpsObjective,
                                                              UniformX0Objective, OneStepObjective)}
