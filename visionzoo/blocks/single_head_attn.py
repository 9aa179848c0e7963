"""Single-head self-attention over a partial channel slice (SHViT, Yun & Ro, CVPR 2024).

The first ``pdim`` channels are GroupNorm(1)-normalised, projected by one 1x1 Conv-BN to a query
and key of ``qk_dim`` channels and a value of ``pdim`` channels, and attend globally with a single
head (``scale = qk_dim ** -0.5``); the other ``dim - pdim`` channels pass untouched. The two parts
are concatenated and mixed by ReLU -> 1x1 Conv-BN (gamma initialised to 0). Keys follow the
official code: ``pre_norm``, ``qkv.{c,bn}``, ``proj.1.{c,bn}``.

Attention is two batched matmuls and a softmax (query/key and value widths differ, which no fused
SDPA kernel on CPU takes); any map size works, as attention is global.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import GroupNorm1

from .conv_bn import ConvBN

__all__ = ["SingleHeadAttn"]


class SingleHeadAttn(nn.Module):
    """``[B, dim, H, W] -> [B, dim, H, W]``.

    Args:
        dim: channels.
        qk_dim: query/key width.
        pdim: channels that take part in attention (``<= dim``).
    """

    def __init__(self, dim: int, qk_dim: int, pdim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not 0 < pdim <= dim:
            raise ValueError(f"SingleHeadAttn: pdim must be in [1, dim={dim}], got {pdim}")
        self.dim, self.qk_dim, self.pdim = dim, qk_dim, pdim
        self.scale = qk_dim ** -0.5
        self.pre_norm = GroupNorm1(pdim, **dd)
        self.qkv = ConvBN(pdim, 2 * qk_dim + pdim, **dd)
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(dim, dim, bn_weight_init=0.0, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        x1, x2 = torch.split(x, [self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = self.qkv(self.pre_norm(x1)).flatten(2).split([self.qk_dim, self.qk_dim, self.pdim], dim=1)
        attn = (q.transpose(1, 2) @ k).mul_(self.scale).softmax(dim=-1)  # [B, N, N], one head
        x1 = (v @ attn.transpose(1, 2)).view(B, self.pdim, H, W)
        return self.proj(torch.cat([x1, x2], dim=1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, qk_dim={self.qk_dim}, pdim={self.pdim}"
