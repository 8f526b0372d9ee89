"""DNet, the denoising network: one encoder over the noisy mask x_t with a timestep embedding and
CFENet's condition features at every stage, and two decoders (paper: "2.5 UNets" with CFENet).

Stages, kernel sizes, strides and operators come from the same nnU-Net plan as CFENet, so the
network follows whatever patch size and dimensionality nnU-Net plans; `width` scales the plan's
feature counts (1.0 is paper-sized, small fractions are for CPU tests and quick runs).
"""
from __future__ import annotations

import math
import pydoc
from collections.abc import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import Tensor, nn

from nnunet_unisegdiff.model.injection import DualCrossAttention, FeatureFusion


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the told timestep followed by a two-layer MLP."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.channels = channels + channels % 2
        self.mlp = nn.Sequential(nn.Linear(self.channels, out_channels), nn.SiLU(),
                                 nn.Linear(out_channels, out_channels))

    def forward(self, t: Tensor) -> Tensor:  # t: (B,) -> (B, out_channels)
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat((angles.sin(), angles.cos()), dim=1))


def _decoder(encoder: PlainConvEncoder, num_classes: int, n_conv: Sequence[int]) -> UNetDecoder:
    """nnU-Net's UNet decoder without deep supervision. Its unused deep-supervision heads are
    dropped: DDP (without find_unused_parameters) needs every trained parameter to get a gradient."""
    decoder = UNetDecoder(encoder, num_classes, list(n_conv), deep_supervision=False)
    decoder.seg_layers = nn.ModuleList([decoder.seg_layers[-1]])  # forward uses seg_layers[-1] only
    return decoder


class DNet(nn.Module):
    def __init__(self, num_classes: int, cond_channels: Sequence[int], features: Sequence[int],
                 conv_op: type[nn.Module], kernel_sizes: Sequence, strides: Sequence,
                 n_conv_per_stage: Sequence[int], n_conv_per_stage_decoder: Sequence[int],
                 stage_tokens: Sequence[int], token_budget: int = 1024, use_dca: bool = True,
                 conv_bias: bool = True, norm_op: type[nn.Module] | None = None,
                 norm_op_kwargs: dict | None = None, nonlin: type[nn.Module] | None = None,
                 nonlin_kwargs: dict | None = None) -> None:
        super().__init__()
        n_stages = len(features)
        self.encoder = PlainConvEncoder(num_classes, n_stages, list(features), conv_op, list(kernel_sizes),
                                        list(strides), list(n_conv_per_stage), conv_bias, norm_op,
                                        norm_op_kwargs, None, None, nonlin, nonlin_kwargs, return_skips=True)
        embed = 4 * features[0]
        self.time_embedding = TimestepEmbedding(features[0], embed)
        self.film = nn.ModuleList(nn.Linear(embed, 2 * f) for f in features)  # scale, shift per stage
        self.uses_dca = [use_dca and n <= token_budget for n in stage_tokens]
        # every stage fuses CF_i locally (keeps it aligned with x_t); DCA adds global context on top
        self.fusion = nn.ModuleList(FeatureFusion(f, c, conv_op, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
                                    for f, c in zip(features, cond_channels))
        self.attention = nn.ModuleDict({str(s): DualCrossAttention(f, c, conv_op)
                                        for s, (f, c, dca) in enumerate(zip(features, cond_channels, self.uses_dca))
                                        if dca})
        self.eps_decoder = _decoder(self.encoder, num_classes, n_conv_per_stage_decoder)
        self.x0_decoder = _decoder(self.encoder, num_classes, n_conv_per_stage_decoder)

    def forward(self, x_t: Tensor, t: Tensor, cond: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """x_t: (B, C, *spatial), t: (B,) told timesteps, cond: CF_0 (full res) .. CF_{S-1} (bottleneck).
        Returns (eps_hat, x0_logits), both (B, C, *spatial)."""
        emb = self.time_embedding(t)
        skips, h = [], x_t
        for s, (stage, film, fusion, cf) in enumerate(zip(self.encoder.stages, self.film, self.fusion, cond)):
            h = stage(h)
            scale, shift = film(emb).reshape(*emb.shape[:1], -1, *[1] * (h.ndim - 2)).chunk(2, dim=1)
            h = fusion(h * (1 + scale) + shift, cf)
            if str(s) in self.attention:
                h = self.attention[str(s)](h, cf)
            skips.append(h)
        return self.eps_decoder(skips), self.x0_decoder(skips)

    @classmethod
    def from_plan(cls, arch_kwargs: dict, arch_kwargs_req_import: Sequence[str], patch_size: Sequence[int],
                  num_classes: int, width: float = 1.0, token_budget: int = 1024,
                  use_dca: bool = True) -> DNet:
        """Build from a configuration's `network_arch_init_kwargs` (PlainConvUNet or ResEnc plans)."""
        kw = dict(arch_kwargs)
        for key in arch_kwargs_req_import:
            if kw.get(key) is not None:
                kw[key] = pydoc.locate(kw[key])
        n_stages = kw["n_stages"]
        plan_features = _per_stage(kw["features_per_stage"], n_stages)
        strides = _per_stage(kw["strides"], n_stages)
        features = [max(4, int(round(f * width / 4)) * 4) for f in plan_features]
        n_conv = _per_stage(kw.get("n_conv_per_stage", 2), n_stages)
        n_conv_dec = _per_stage(kw.get("n_conv_per_stage_decoder", 2), n_stages - 1)
        return cls(num_classes=num_classes, cond_channels=plan_features, features=features,
                   conv_op=kw["conv_op"], kernel_sizes=_per_stage(kw["kernel_sizes"], n_stages), strides=strides,
                   n_conv_per_stage=n_conv, n_conv_per_stage_decoder=n_conv_dec,
                   stage_tokens=stage_token_counts(patch_size, strides), token_budget=token_budget,
                   use_dca=use_dca, conv_bias=kw.get("conv_bias", True), norm_op=kw.get("norm_op"),
                   norm_op_kwargs=kw.get("norm_op_kwargs"), nonlin=kw.get("nonlin"),
                   nonlin_kwargs=kw.get("nonlin_kwargs"))


def _per_stage(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def stage_token_counts(patch_size: Sequence[int], strides: Sequence) -> list[int]:
    """Number of spatial positions at each encoder stage for a patch."""
    size, counts = np.array(patch_size), []
    for s in strides:
        size = size // np.array(s if isinstance(s, (list, tuple)) else [s] * len(size))
        counts.append(int(np.prod(size)))
    return counts
