"""Staged training targets (paper section 2.2): which stage a drawn timestep falls in, which
timestep DNet is told, and how the noise and mask losses are weighted.

| stage | drawn t              | told | alpha : beta |
| RS    | t >= high (600)      | 999  | 1 : 3        |
| PM    | low <= t < high      | t    | 1 : 1        |
| DR    | t < low (300)        | 0    | 3 : 1        |

By default x_t is made at the *drawn* t and only the told timestep is clamped (docs/method.md): that is
what inference does when it hands X299 to DNet with the DR timestep. `noise_at_clamped_t=True`
selects the other reading of the paper. The ablation objectives of Table 4 (ablations.py) share the
`Objective` interface.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from nnunet_unisegdiff.diffusion.schedule import q_sample
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings


class Stage(IntEnum):
    RS = 0  # rapid segmentation
    PM = 1  # probabilistic modelling
    DR = 2  # denoising refinement


class StagedTargets(NamedTuple):
    t_noise: Tensor  # (B,) timestep x_t is noised at
    t_net: Tensor    # (B,) timestep DNet is told
    alpha: Tensor    # (B,) weight of the eps (noise) loss
    beta: Tensor     # (B,) weight of the x0 (Dice + CE) loss
    stage: Tensor    # (B,) Stage per sample


@dataclass(frozen=True)
class Objective:
    """What `phase_b_loss` and the trainer need of a training objective: the diffusion settings, a draw
    of timesteps and the targets of each. The staged objective is below, the ablations of the paper's
    Table 4 in ablations.py; `kind` names one in logs and benchmark tables."""
    kind: ClassVar[str]
    diffusion: DiffusionSettings = DiffusionSettings()  # T and the thresholds, shared with the sampler

    @property
    def high(self) -> int:
        return self.diffusion.high

    @property
    def low(self) -> int:
        return self.diffusion.low

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def stage_of(self, t: Tensor) -> Tensor:
        """Stage of each drawn timestep t (any shape)."""
        return torch.where(t >= self.high, Stage.RS, torch.where(t >= self.low, Stage.PM, Stage.DR))

    def draw(self, batch_size: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> Tensor:
        """t ~ U{0..T-1} per sample."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def targets(self, t: Tensor) -> StagedTargets:
        """Everything the loss needs for drawn timesteps t: (B,) long."""
        raise NotImplementedError(f"{type(self).__name__} does not say what DNet is trained on")


@dataclass(frozen=True)
class StagedObjective(Objective):
    """UniSegDiff's objective: the stage of the drawn t sets the told timestep and the loss weights."""
    kind: ClassVar[str] = "staged"
    weights: tuple[tuple[float, float], ...] = ((1.0, 3.0), (1.0, 1.0), (3.0, 1.0))  # (alpha, beta): RS, PM, DR
    noise_at_clamped_t: bool = False

    def __post_init__(self) -> None:
        if len(self.weights) != len(Stage) or any(len(w) != 2 for w in self.weights):
            raise ValueError(f"StagedObjective.weights must be one (alpha, beta) pair per stage RS, PM, DR, "
                             f"got {self.weights!r}")

    def told_timestep(self, t: Tensor, stage: Tensor) -> Tensor:
        """999 in RS, t in PM, 0 in DR."""
        top = torch.full_like(t, self.num_timesteps - 1)
        return torch.where(stage == Stage.RS, top, torch.where(stage == Stage.DR, torch.zeros_like(t), t))

    def targets(self, t: Tensor) -> StagedTargets:
        stage = self.stage_of(t)
        told = self.told_timestep(t, stage)
        w = torch.tensor(self.weights, device=t.device, dtype=torch.float32)[stage]  # (B, 2)
        return StagedTargets(told if self.noise_at_clamped_t else t, told, w[:, 0], w[:, 1], stage)


def labels_to_x0(labels: Tensor, num_classes: int) -> Tensor:
    """Label map (B, 1, *spatial) -> clean mask in diffusion space: one-hot scaled to [-1, 1]."""
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:]), device=labels.device)
    return 2 * onehot.scatter_(1, labels.long(), 1.0) - 1


def staged_loss(eps_hat: Tensor, x0_logits: Tensor, eps: Tensor, labels: Tensor, targets: StagedTargets,
                seg_loss: Callable[[Tensor, Tensor], Tensor]) -> tuple[Tensor, dict[Stage, float]]:
    """alpha * MSE(eps) + beta * seg_loss(x0 logits, labels), weighted per sample by its stage.

    seg_loss is nnU-Net's Dice + CE (it reduces over its batch), so it runs once per stage present.
    Returns the batch loss and each present stage's mean loss, for logging.
    """
    b = eps.shape[0]
    mse = (eps_hat.float() - eps).square().flatten(1).mean(1)  # (B,)
    total = eps.new_zeros(())
    per_stage: dict[Stage, float] = {}
    for stage in targets.stage.unique().tolist():
        idx = targets.stage == stage
        alpha, beta = targets.alpha[idx].mean(), targets.beta[idx].mean()
        # a zero weight still multiplies, so both decoders always get a gradient (DDP needs that)
        loss = alpha * mse[idx].mean() + beta * seg_loss(x0_logits[idx], labels[idx])
        total = total + loss * idx.sum() / b
        per_stage[Stage(stage)] = float(loss.detach())
    return total, per_stage


def phase_b_loss(denoise: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], labels: Tensor,
                 objective: Objective, seg_loss: Callable[[Tensor, Tensor], Tensor],
                 alphas_cumprod: Tensor, num_classes: int, generator: torch.Generator | None = None, *,
                 t: Tensor | None = None, eps: Tensor | None = None) -> tuple[Tensor, dict[Stage, float]]:
    """The staged-diffusion training loss of one batch: draw t (unless given), noise the clean mask
    with eps (drawn unless given), ask `denoise(x_t, t_told) -> (eps_hat, x0_logits)`, weight by stage.

    In training `denoise` must go through the (DDP-wrapped) composite's forward for DDP to
    synchronise gradients; `unisegdiff gradients` fixes t and eps to compare objectives."""
    x0 = labels_to_x0(labels, num_classes)  # (B, C, *spatial)
    t = objective.draw(x0.shape[0], x0.device, generator) if t is None else t
    targets = objective.targets(t)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator) if eps is None else eps
    x_t = q_sample(x0, eps, targets.t_noise, alphas_cumprod)
    eps_hat, x0_logits = denoise(x_t, targets.t_net)
    return staged_loss(eps_hat, x0_logits, eps, labels, targets, seg_loss)
