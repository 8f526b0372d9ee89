"""Condition injection (paper section 2.3): how CFENet's features CF_i enter DNet's encoder.

Every DNet stage fuses CF_i locally with `FeatureFusion` (concat + conv): attention alone has no
positional encoding and would lose which condition belongs to which pixel. On top of it, DCA
(Dual Cross-Attention: two cascaded cross-attention blocks, first with the condition tokens as
queries over the denoising tokens, then the other way round) adds global context at the stages
within a token budget, since attention is quadratic in tokens. Both are generic over 2D/3D: tokens
are the flattened spatial positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention with a residual: q + Attn(q, kv)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q_tokens: Tensor, kv_tokens: Tensor) -> Tensor:  # (B, N, D) each
        b, n, d = q_tokens.shape
        h = self.num_heads
        q = self.to_q(self.norm_q(q_tokens)).view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        k, v = self.to_kv(self.norm_kv(kv_tokens)).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return q_tokens + self.out(attended)


class DualCrossAttention(nn.Module):
    """DCA: condition attends to denoising features, then denoising features attend to the result."""

    def __init__(self, channels: int, cond_channels: int, conv_op: type[nn.Module],
                 head_channels: int = 64) -> None:
        super().__init__()
        self.proj_cond = conv_op(cond_channels, channels, 1)
        heads = max(1, channels // head_channels) if channels % head_channels == 0 else 1
        self.cond_queries = CrossAttention(channels, heads)
        self.denoise_queries = CrossAttention(channels, heads)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:  # h: (B, C, *spatial), cond: (B, Cc, *spatial)
        shape = h.shape
        h_tok = h.flatten(2).transpose(1, 2)  # (B, N, C)
        c_tok = self.proj_cond(cond).flatten(2).transpose(1, 2)
        c_tok = self.cond_queries(c_tok, h_tok)
        h_tok = self.denoise_queries(h_tok, c_tok)
        return h_tok.transpose(1, 2).reshape(shape)


class FeatureFusion(nn.Module):
    """Light fusion for high-resolution stages: h + nonlin(norm(conv1x1([h, proj(cond)])))."""

    def __init__(self, channels: int, cond_channels: int, conv_op: type[nn.Module],
                 norm_op: type[nn.Module] | None, norm_op_kwargs: dict | None,
                 nonlin: type[nn.Module] | None, nonlin_kwargs: dict | None) -> None:
        super().__init__()
        self.proj_cond = conv_op(cond_channels, channels, 1)
        self.mix = conv_op(2 * channels, channels, 1)
        self.norm = norm_op(channels, **(norm_op_kwargs or {})) if norm_op else nn.Identity()
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin else nn.Identity()

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        return h + self.nonlin(self.norm(self.mix(torch.cat((h, self.proj_cond(cond)), 1))))
