"""Staged inference (paper section 2.2, Fig. 1 C), and the DDIM / one-step plans it is compared to.

Staged plan for B images, with DNet calls batched (docs/method.md):
  RS  X999 ~ N(0, I); one x0 call (told 999); DDIM jump to X599                     1 call,  batch B
  PM  two DDIM trajectories X599 -> X299, interval 30, one using the x0 decoder and
      one the eps decoder, run as one batch                                       10 calls, batch 2B
  DR  per branch `draws` re-noised copies of X299, each to X0 with one call (told 0)  1 call,  batch 2*draws*B

Two defaults differ from the paper's reading (`nnUNetTrainerUniSegDiffPaper` restores it): each DR
draw is the x0 decoder's output of the DR call, not the eps decoder's (`dr_head`), and PM's clean
estimates are clamped to the mask range (`clamp_x0`). Measured in `benchmarks/accuracy.py`: the eps
decoder's one-step draws from X299 carry scattered false pixels that STAPLE turns into a false lesion
on lesion-free images; the x0 decoder's output of the same call does not.
The sampler knows nothing of networks: it gets `denoise(x_t, t_told) -> (eps_hat, x0_logits)`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from nnunet_unisegdiff.diffusion.schedule import alpha_bar, ddim_step, split_prediction
from nnunet_unisegdiff.diffusion.settings import DiffusionSettings

Denoise = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
# DR re-noising, one signature for the RENOISE table: (x_t, x0_hat, copies, ab, generator) -> the DR
# inputs. x_t, x0_hat: PM's last state and clean estimate (B, C, *spatial); ab: alpha-bar at the DR
# timestep (0-dim); result (copies * B, C, *spatial), copy-major. A strategy names what it ignores `_`.
Renoise = Callable[[Tensor, Tensor, int, Tensor, torch.Generator | None], Tensor]


def renoise_fresh(_x_t: Tensor, x0_hat: Tensor, copies: int, ab: Tensor,
                  generator: torch.Generator | None) -> Tensor:
    """Default: `copies` fresh draws of q(x_t | x0_hat) around the branch's clean estimate (clamped
    to the mask range). A deterministic jump from one X299 would give the same mask every time."""
    x0 = x0_hat.clamp(-1, 1).repeat(copies, *[1] * (x0_hat.ndim - 1))
    eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    ab = ab.to(x0.dtype)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def renoise_none(x_t: Tensor, _x0_hat: Tensor, copies: int, _ab: Tensor,
                 _generator: torch.Generator | None) -> Tensor:
    """Paper taken literally: every draw starts from the same X299 (draws are then identical)."""
    return x_t.repeat(copies, *[1] * (x_t.ndim - 1))


RENOISE: dict[str, Renoise] = {"fresh": renoise_fresh, "none": renoise_none}


class SampleResult(NamedTuple):
    masks: Tensor  # (B, N, *spatial) long: argmax of each draw's final x0 estimate
    probs: Tensor  # (B, N, C, *spatial) float: each draw's x0 estimate mapped to [0, 1]
    calls: int     # sequential DNet calls made


@dataclass(frozen=True)
class SamplerConfig:
    plan: Literal["staged", "ddim", "one-step"] = "staged"
    draws_per_branch: int = 10       # staged: per branch; ddim / one-step: parallel samples
    interval: int = 30               # PM DDIM interval
    diffusion: DiffusionSettings = DiffusionSettings()  # T and the thresholds, shared with training
    renoise: str = "fresh"
    clamp_x0: bool = True            # clamp PM's clean estimates to the mask range [-1, 1] (paper: no)
    dr_head: Literal["eps", "x0"] = "x0"  # decoder whose output of the DR call is each draw's mask (paper: eps)
    ddim_steps: int = 100            # ddim plan only
    ddim_prediction: Literal["eps", "x0"] = "eps"
    eta: float = 0.0                 # ddim plan; eta 1 with 1000 steps is DDPM

    def __post_init__(self) -> None:
        if self.renoise not in RENOISE:
            raise ValueError(f"renoise must be one of {sorted(RENOISE)}, got {self.renoise!r}")
        if self.plan not in ("staged", "ddim", "one-step"):
            raise ValueError(f"unknown sampling plan {self.plan!r}")
        if self.dr_head not in ("eps", "x0"):
            raise ValueError(f"dr_head must be 'eps' or 'x0', got {self.dr_head!r}")

    @property
    def high(self) -> int:  # RS jumps to high - 1
        return self.diffusion.high

    @property
    def low(self) -> int:  # PM ends at low - 1
        return self.diffusion.low

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps


def _x0_from_logits(logits: Tensor) -> Tensor:
    """Clean-mask estimate in diffusion space: one-hot scaled to [-1, 1]."""
    return 2 * logits.float().softmax(1) - 1


class StagedSampler:
    def __init__(self, config: SamplerConfig = SamplerConfig()) -> None:
        self.config = config
        self.alphas_cumprod = config.diffusion.alphas_cumprod()

    def pm_timesteps(self) -> list[int]:
        """Told (and true) timesteps of the PM calls: 599, 569, ..., 329 for the paper's setting."""
        c = self.config
        return list(range(c.high - 1, c.low - 1, -c.interval))

    def sample(self, denoise: Denoise, shape: tuple[int, ...], device: torch.device | str,
               generator: torch.Generator | None = None) -> SampleResult:
        """shape: (B, C, *spatial) of the noisy mask."""
        ac = self.alphas_cumprod.to(device)
        n_start = 1 if self.config.plan == "staged" else self.config.draws_per_branch
        x_T = torch.randn((n_start * shape[0], *shape[1:]), device=device, generator=generator)
        plan = {"staged": self._staged, "ddim": self._ddim, "one-step": self._one_step}[self.config.plan]
        x0, calls = plan(denoise, x_T, ac, generator)  # x0: (N * B, C, *spatial), draw-major
        x0 = x0.reshape(-1, *shape).transpose(0, 1)  # (B, N, C, *spatial)
        return SampleResult(x0.argmax(2), ((x0 + 1) / 2).clamp(0, 1), calls)

    def _told(self, t: int, n: int, device) -> Tensor:
        return torch.full((n,), t, device=device, dtype=torch.long)

    def _staged(self, denoise: Denoise, x_T: Tensor, ac: Tensor, generator) -> tuple[Tensor, int]:
        c, b, dev = self.config, x_T.shape[0], x_T.device
        top = c.num_timesteps - 1
        # RS: one x0 call from pure noise, DDIM jump to X_{high-1}
        _, logits = denoise(x_T, self._told(top, b, dev))
        x = ddim_step(x_T, self._told(top, b, dev), self._told(c.high - 1, b, dev),
                      _x0_from_logits(logits), "x0", ac)
        # PM: x0 branch and eps branch side by side, batch 2B
        x = torch.cat((x, x))
        x0_hat = x
        for t in self.pm_timesteps():
            t_prev = max(t - c.interval, c.low - 1)
            told = self._told(t, 2 * b, dev)
            eps_hat, logits = denoise(x, told)
            x0_a, _ = split_prediction(x[:b], told[:b], _x0_from_logits(logits[:b]), "x0", ac)
            x0_b, _ = split_prediction(x[b:], told[b:], eps_hat[b:], "eps", ac)
            x0_hat = torch.cat((x0_a, x0_b))
            if c.clamp_x0:
                x0_hat = x0_hat.clamp(-1, 1)
            x = ddim_step(x, told, self._told(t_prev, 2 * b, dev), x0_hat, "x0", ac)
        # DR: `draws` re-noised copies per branch, each to X0 with one call told timestep 0
        ab_dr = alpha_bar(ac, torch.tensor(c.low - 1))
        x = RENOISE[c.renoise](x, x0_hat, c.draws_per_branch, ab_dr, generator)  # (draws*2B, ...)
        x0 = self._dr_call(denoise, x, ac)
        # draw-major order (draw, branch, b) -> (branch, draw, b): x0-branch draws first
        x0 = x0.reshape(c.draws_per_branch, 2, b, *x.shape[1:]).transpose(0, 1).reshape(x.shape)
        return x0, 1 + len(self.pm_timesteps()) + 1

    def _dr_call(self, denoise: Denoise, x: Tensor, ac: Tensor) -> Tensor:
        """The DR call on X_{low-1} (told 0): each input's clean estimate from the `dr_head` decoder."""
        n, dev = x.shape[0], x.device
        eps_hat, logits = denoise(x, self._told(0, n, dev))
        if self.config.dr_head == "x0":
            return _x0_from_logits(logits)
        return split_prediction(x, self._told(self.config.low - 1, n, dev), eps_hat, "eps", ac)[0]

    def short_plan(self, denoise: Denoise, x_T: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """RS, then one DR call on a fresh re-noising of the RS estimate: 2 calls through both kinds of
        call the staged plan's draws come from (PM skipped), a cheap validation signal for phase B.
        x_T: (B, C, *spatial) pure noise -> clean estimate (B, C, *spatial) in [-1, 1]."""
        b, dev = x_T.shape[0], x_T.device
        ac = self.alphas_cumprod.to(dev)
        _, logits = denoise(x_T, self._told(self.config.num_timesteps - 1, b, dev))
        x = renoise_fresh(x_T, _x0_from_logits(logits), 1, alpha_bar(ac, torch.tensor(self.config.low - 1)), generator)
        return self._dr_call(denoise, x, ac)

    def _ddim(self, denoise: Denoise, x_T: Tensor, ac: Tensor, generator) -> tuple[Tensor, int]:
        c, x = self.config, x_T  # x_T: (draws * B, C, *spatial), independent noise per draw
        n, dev = x.shape[0], x.device
        stride = c.num_timesteps // c.ddim_steps
        timesteps = list(range(c.num_timesteps - 1, -1, -stride))[:c.ddim_steps]
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            told = self._told(t, n, dev)
            eps_hat, logits = denoise(x, told)
            pred = eps_hat if c.ddim_prediction == "eps" else _x0_from_logits(logits)
            noise = torch.randn(x.shape, device=dev, generator=generator) if c.eta > 0 else None
            x = ddim_step(x, told, self._told(t_prev, n, dev), pred, c.ddim_prediction, ac, c.eta, noise)
        return x, len(timesteps)

    def _one_step(self, denoise: Denoise, x_T: Tensor, ac: Tensor, generator) -> tuple[Tensor, int]:
        _, logits = denoise(x_T, self._told(self.config.num_timesteps - 1, x_T.shape[0], x_T.device))
        return _x0_from_logits(logits), 1
