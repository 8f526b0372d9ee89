"""Noise schedule and the one generic DDIM step every sampler in this package is built from.

Masks live in diffusion space as one-hot channels scaled to [-1, 1] (docs/method.md). The schedule is
DDPM's linear betas; the model never sees it, only the timestep it is told (see `staged.py`).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["eps", "x0"]


def linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> Tensor:
    """alpha-bar_t for t = 0..T-1 (float64: the products lose precision in float32 near t = T)."""
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def _bcast(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) in `like`'s dtype, for broadcasting over (B, C, *spatial)."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def alpha_bar(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """alpha-bar at integer timesteps t (any shape); t < 0 means 'clean', alpha-bar = 1."""
    t = t.to(device=alphas_cumprod.device, dtype=torch.long)
    return torch.where(t >= 0, alphas_cumprod[t.clamp(min=0)], torch.ones_like(alphas_cumprod[0]))


def q_sample(x0: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps; x0, eps: (B, C, *spatial), t: (B,)."""
    ab = _bcast(alpha_bar(alphas_cumprod, t), x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps


def split_prediction(x_t: Tensor, t: Tensor, pred: Tensor, kind: Prediction,
                     alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from either parameterisation; each follows from the other and x_t."""
    ab = _bcast(alpha_bar(alphas_cumprod, t), x_t)
    if kind == "eps":
        return (x_t - (1.0 - ab).sqrt() * pred) / ab.sqrt(), pred
    if kind == "x0":
        return pred, (x_t - ab.sqrt() * pred) / (1.0 - ab).sqrt()
    raise ValueError(f"prediction kind must be 'eps' or 'x0', got {kind!r}")


def ddim_step(x_t: Tensor, t: Tensor, t_prev: Tensor, pred: Tensor, kind: Prediction,
              alphas_cumprod: Tensor, eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM step x_t -> x_{t_prev} for any t > t_prev (t_prev = -1 lands on x0_hat).

    eta = 0 is deterministic DDIM; eta = 1 with stride 1 is DDPM's ancestral step (needs `noise`).
    x_t, pred: (B, C, *spatial); t, t_prev: (B,) integer.
    """
    x0_hat, eps_hat = split_prediction(x_t, t, pred, kind, alphas_cumprod)
    ab_t = _bcast(alpha_bar(alphas_cumprod, t), x_t)
    ab_prev = _bcast(alpha_bar(alphas_cumprod, t_prev), x_t)
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp(min=0).sqrt()
    x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps_hat
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs `noise`")
        x_prev = x_prev + sigma * noise
    return x_prev
