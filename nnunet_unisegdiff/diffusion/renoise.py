"""How the staged plan's DR call gets its inputs from PM's last state: each DR draw re-noises the
branch's clean estimate afresh, or (the paper taken literally) starts from the same X_{low-1}.

One signature for the RENOISE table: (x_t, x0_hat, copies, ab, generator) -> the DR inputs. x_t, x0_hat:
PM's last state and clean estimate (B, C, *spatial); ab: alpha-bar at the DR timestep (0-dim); result
(copies * B, C, *spatial), copy-major. A strategy names what it ignores `_`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

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
