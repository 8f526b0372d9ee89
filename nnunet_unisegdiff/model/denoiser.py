"""DNet bound to one batch's CFENet condition features: the `denoise(x_t, t)` the sampler, the staged loss,
validation and the analysis tools call.

Samplers stack copies of the image batch along the batch axis (copy-major: all images of copy 0, then of
copy 1, ...), e.g. the PM branches (2B) and the DR draws (2 * draws * B). The condition features must be
repeated the same way; this adapter does it once per copy count and refuses an x_t whose batch is not a
whole multiple of the images', which would silently pair masks with other images' features.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["Denoiser"]


class Denoiser:
    def __init__(self, dnet: nn.Module, cond: Sequence[Tensor]) -> None:
        """cond: CF_0..CF_{S-1} of B images, each (B, F_s, *spatial_s)."""
        self.dnet = dnet
        self.batch = cond[0].shape[0]
        self._cond_by_copies: dict[int, list[Tensor]] = {1: list(cond)}

    def __call__(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """x_t: (copies * B, C, *spatial), t: (copies * B,) told timesteps -> (eps_hat, x0_logits), both
        shaped like x_t."""
        copies, rest = divmod(x_t.shape[0], self.batch)
        if rest or not copies:
            raise ValueError(f"x_t has batch {x_t.shape[0]}, not a whole multiple of the {self.batch} images "
                             "whose condition features DNet is given (copies of the image batch, copy-major)")
        if copies not in self._cond_by_copies:
            self._cond_by_copies[copies] = [f.repeat(copies, *[1] * (f.ndim - 1))
                                            for f in self._cond_by_copies[1]]
        return self.dnet(x_t, t, self._cond_by_copies[copies])
