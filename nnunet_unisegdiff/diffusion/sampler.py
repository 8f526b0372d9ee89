"""Staged inference (paper section 2.2, Fig. 1 C), and the DDIM / one-step plans it is compared to.

Staged plan for B images, with DNet calls batched (docs/method.md):
  RS  X999 ~ N(0, I); one x0 call (told 999); DDIM jump to X599                     1 call,  batch B
  PM  two DDIM trajectories X599 -> X299, interval 30, one using the x0 decoder and
      one the eps decoder, run as one batch                                       10 calls, batch 2B
  DR  per branch `draws` re-noised copies of X299, each to X0 with one call (told 0)  1 call,  batch 2*draws*B

Two defaults differ from the paper's reading (`nnUNetTrainerUniSegDiffPaper` restores it): each DR
draw is the x0 decoder's output of the DR call, not the eps decoder's (`dr_head`), and PM's clean
estimates are clamped to the mask range (`clamp_x0`): the eps decoder's one-step draws from X299 carry
scattered false pixels that STAPLE turns into a false lesion on lesion-free images, the x0 decoder's
output of the same call does not (docs/method.md, items 11 and 12).
The sampler knows nothing of networks: it gets `denoise(x_t, t_told) -> (eps_hat, x0_logits)`, and runs
the plan (diffusion/sampling_plans.py) its type names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from nnunet_unisegdiff.diffusion.renoise import RENOISE, renoise_fresh
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan, SamplingPlan, StagedPlan
from nnunet_unisegdiff.diffusion.schedule import alpha_bar, ddim_step, split_prediction

Denoise = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class SampleResult(NamedTuple):
    masks: Tensor  # (B, N, *spatial) long: argmax of each draw's final x0 estimate
    probs: Tensor  # (B, N, C, *spatial) float: each draw's x0 estimate mapped to [0, 1]
    calls: int     # sequential DNet calls made


def _x0_from_logits(logits: Tensor) -> Tensor:
    """Clean-mask estimate in diffusion space: one-hot scaled to [-1, 1]."""
    return 2 * logits.float().softmax(1) - 1


def _told(t: int, n: int, device) -> Tensor:
    return torch.full((n,), t, device=device, dtype=torch.long)


class StagedSampler:
    """Samples masks with a sampling plan; the plan's type says which of the three it runs."""

    def __init__(self, plan: SamplingPlan = StagedPlan()) -> None:
        if not isinstance(plan, SamplingPlan):
            raise TypeError(f"a sampling plan is a StagedPlan, DDIMPlan or OneStepPlan, got {plan!r}")
        self.plan = plan
        self.alphas_cumprod = plan.diffusion.alphas_cumprod()

    def sample(self, denoise: Denoise, shape: tuple[int, ...], device: torch.device | str,
               generator: torch.Generator | None = None) -> SampleResult:
        """shape: (B, C, *spatial) of the noisy mask."""
        ac, plan = self.alphas_cumprod.to(device), self.plan
        match plan:  # the staged plan starts from one noise per image, the others from one per sample
            case StagedPlan():
                copies, run = 1, _staged
            case DDIMPlan():
                copies, run = plan.samples, _ddim
            case OneStepPlan():
                copies, run = plan.samples, _one_step
        x_T = torch.randn((copies * shape[0], *shape[1:]), device=device, generator=generator)
        x0, calls = run(plan, denoise, x_T, ac, generator)  # x0: (N * B, C, *spatial), draw-major
        x0 = x0.reshape(-1, *shape).transpose(0, 1)  # (B, N, C, *spatial)
        return SampleResult(x0.argmax(2), ((x0 + 1) / 2).clamp(0, 1), calls)

    def short_plan(self, denoise: Denoise, x_T: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """RS, then one DR call on a fresh re-noising of the RS estimate: 2 calls through both kinds of
        call the staged plan's draws come from (PM skipped), a cheap validation signal for phase B.
        The DDIM and one-step plans have no DR call: theirs reads the x0 decoder, as the staged default.
        x_T: (B, C, *spatial) pure noise -> clean estimate (B, C, *spatial) in [-1, 1]."""
        d, b, dev = self.plan.diffusion, x_T.shape[0], x_T.device
        ac = self.alphas_cumprod.to(dev)
        _, logits = denoise(x_T, _told(d.num_timesteps - 1, b, dev))
        x = renoise_fresh(x_T, _x0_from_logits(logits), 1, alpha_bar(ac, torch.tensor(d.low - 1)), generator)
        head = self.plan.dr_head if isinstance(self.plan, StagedPlan) else "x0"
        return _dr_call(denoise, x, ac, head, d.low)


def _staged(plan: StagedPlan, denoise: Denoise, x_T: Tensor, ac: Tensor, generator) -> tuple[Tensor, int]:
    d, b, dev = plan.diffusion, x_T.shape[0], x_T.device
    top = d.num_timesteps - 1
    # RS: one x0 call from pure noise, DDIM jump to X_{high-1}
    _, logits = denoise(x_T, _told(top, b, dev))
    x = ddim_step(x_T, _told(top, b, dev), _told(d.high - 1, b, dev), _x0_from_logits(logits), "x0", ac)
    # PM: x0 branch and eps branch side by side, batch 2B
    x = torch.cat((x, x))
    x0_hat = x
    pm = plan.pm_timesteps()
    for t in pm:
        t_prev = max(t - plan.interval, d.low - 1)
        told = _told(t, 2 * b, dev)
        eps_hat, logits = denoise(x, told)
        x0_a, _ = split_prediction(x[:b], told[:b], _x0_from_logits(logits[:b]), "x0", ac)
        x0_b, _ = split_prediction(x[b:], told[b:], eps_hat[b:], "eps", ac)
        x0_hat = torch.cat((x0_a, x0_b))
        if plan.clamp_x0:
            x0_hat = x0_hat.clamp(-1, 1)
        x = ddim_step(x, told, _told(t_prev, 2 * b, dev), x0_hat, "x0", ac)
    # DR: `draws` re-noised copies per branch, each to X0 with one call told timestep 0
    ab_dr = alpha_bar(ac, torch.tensor(d.low - 1))
    x = RENOISE[plan.renoise](x, x0_hat, plan.draws_per_branch, ab_dr, generator)  # (draws*2B, ...)
    x0 = _dr_call(denoise, x, ac, plan.dr_head, d.low)
    # draw-major order (draw, branch, b) -> (branch, draw, b): x0-branch draws first
    x0 = x0.reshape(plan.draws_per_branch, 2, b, *x.shape[1:]).transpose(0, 1).reshape(x.shape)
    return x0, 1 + len(pm) + 1


def _dr_call(denoise: Denoise, x: Tensor, ac: Tensor, head: str, low: int) -> Tensor:
    """The DR call on X_{low-1} (told 0): each input's clean estimate from the `head` decoder."""
    n, dev = x.shape[0], x.device
    eps_hat, logits = denoise(x, _told(0, n, dev))
    if head == "x0":
        return _x0_from_logits(logits)
    return split_prediction(x, _told(low - 1, n, dev), eps_hat, "eps", ac)[0]


def _ddim(plan: DDIMPlan, denoise: Denoise, x_T: Tensor, ac: Tensor, generator) -> tuple[Tensor, int]:
    x, big_t = x_T, plan.diffusion.num_timesteps  # x_T: (samples * B, C, *spatial), independent noise per sample
    n, dev = x.shape[0], x.device
    stride = big_t // plan.steps
    timesteps = list(range(big_t - 1, -1, -stride))[:plan.steps]
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        told = _told(t, n, dev)
        eps_hat, logits = denoise(x, told)
        pred = eps_hat if plan.prediction == "eps" else _x0_from_logits(logits)
        noise = torch.randn(x.shape, device=dev, generator=generator) if plan.eta > 0 else None
        x = ddim_step(x, told, _told(t_prev, n, dev), pred, plan.prediction, ac, plan.eta, noise)
    return x, len(timesteps)


def _one_step(plan: OneStepPlan, denoise: Denoise, x_T: Tensor, ac: Tensor, generator) -> tuple[Tensor, int]:
    _, logits = denoise(x_T, _told(plan.diffusion.num_timesteps - 1, x_T.shape[0], x_T.device))
    return _x0_from_logits(logits), 1
