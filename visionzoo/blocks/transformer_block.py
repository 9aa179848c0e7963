"""Pre-norm transformer block on channels-last maps, around any token mixer.

``x = x + drop_path(ls1(attn(norm1(x))))``, then ``x = x + drop_path(ls2(mlp(norm2(x))))``, on
``[B, H, W, C]``. The token mixer is passed in built (neighborhood attention, global attention...),
so one block serves every family whose layer is "norm, mixer, residual, norm, MLP, residual"
(NAT, DiNAT, DiNAT_s, isotropic NAT / ViT-RPB, BiFormer). ``ls1`` / ``ls2`` are per-channel layer scales
(CaiT / NAT ``gamma1`` / ``gamma2``) or Identity. Inference (eval, autograd off, fp32 CPU) runs the
MLP and its residual as two oneDNN GEMMs (:func:`~visionzoo.blocks.fused_eval.mlp_add`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, Mlp

from . import fused_eval

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """Pre-norm residual block ``[B, H, W, C] -> [B, H, W, C]``.

    Args:
        dim: channels.
        attn: the token mixer, ``[B, H, W, C] -> [B, H, W, C]`` (already built).
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``.
        proj_drop: dropout inside the MLP (after the activation and after ``fc2``).
        drop_path: stochastic depth rate of both residual branches.
        layer_scale: initial value of the per-channel layer scales, or ``None`` for none.
        norm_layer: norm constructor ``norm_layer(dim, device=, dtype=)``.
        act_layer: MLP activation.
    """

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, proj_drop: float = 0.0,
                 drop_path: float = 0.0, layer_scale: float | None = None,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = attn
        self.ls1 = LayerScale(dim, layer_scale, **dd) if layer_scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, layer_scale, **dd) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        if fused_eval.mlp_applies(self, self.mlp, x):  # inference: two oneDNN GEMMs, layer scale folded
            return fused_eval.mlp_add(self, self.mlp, self.norm2(x), x, getattr(self.ls2, "gamma", None))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
