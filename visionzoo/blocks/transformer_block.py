"""Pre-norm transformer block on channels-last maps, around any token mixer.

``x = x + drop_path(ls1(attn(norm1(x))))``, then ``x = x + drop_path(ls2(mlp(norm2(x))))``, on
``[B, H, W, C]``, optionally after a conditional position embedding ``x = x + dwconv(x)``
(BiFormer's ``pos_embed``). The MLP is pluggable (``mlp_layer``, :mod:`~visionzoo.blocks.mlp`). The
token mixer is passed in built (:func:`~visionzoo.blocks._create.create_token_mixer`), so one block
serves every family whose layer is "norm, mixer, residual, norm, MLP, residual" (NAT, DiNAT, DiNAT_s,
isotropic NAT / ViT-RPB, BiFormer, VAN, LITv2); without a mixer (``attn=None``, LITv2's ConvFFN
blocks) it is the MLP residual alone, with no ``norm1``. ``ls1`` / ``ls2`` are per-channel
layer scales (CaiT / NAT ``gamma1`` / ``gamma2``) or Identity. Inference (eval, autograd off, fp32
CPU) runs the MLP and its residual as two oneDNN GEMMs (:func:`~visionzoo.blocks.fused_eval.mlp_add`)
when the MLP is timm's ``Mlp``, as GEMM / depthwise conv with fused GELU / GEMM with the residual sum
for a ``DWConvMlp`` (a BatchNorm pre-norm folded in), and a mixer with ``forward_bn_residual`` (VAN)
folds a BatchNorm pre-norm and the layer scale into its own projections.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerScale, Mlp, register_notrace_module

from . import fused_eval

__all__ = ["TransformerBlock"]


@register_notrace_module  # an FX leaf: its oneDNN inference path is chosen per call, as in eager
class TransformerBlock(nn.Module):
    """Pre-norm residual block ``[B, H, W, C] -> [B, H, W, C]``.

    Args:
        dim: channels.
        attn: the token mixer, ``[B, H, W, C] -> [B, H, W, C]`` (already built), or ``None`` for none.
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``.
        proj_drop: dropout inside the MLP (after the activation and after ``fc2``).
        drop_path: stochastic depth rate of both residual branches.
        layer_scale: initial value of the per-channel layer scales, or ``None`` for none.
        norm_layer: norm constructor ``norm_layer(dim, device=, dtype=)``.
        act_layer: MLP activation.
        mlp_layer: MLP constructor ``mlp_layer(dim, hidden, act_layer=, drop=, device=, dtype=)``.
        pos_kernel: kernel of the depthwise-conv position embedding added first (0: none).
    """

    def __init__(self, dim: int, attn: nn.Module | None, mlp_ratio: float = 4.0, proj_drop: float = 0.0,
                 drop_path: float = 0.0, layer_scale: float | None = None,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 mlp_layer: Callable[..., nn.Module] = Mlp, pos_kernel: int = 0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd) if attn is not None else None
        self.attn = attn
        self.ls1 = LayerScale(dim, layer_scale, **dd) if layer_scale is not None and attn is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)
        self.ls2 = LayerScale(dim, layer_scale, **dd) if layer_scale is not None else nn.Identity()
        self.pos_embed = nn.Conv2d(dim, dim, pos_kernel, padding=pos_kernel // 2, groups=dim, **dd) \
            if pos_kernel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.attn is not None:
            x = self._attn_residual(x)
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            if fused_eval.mlp_applies(self, self.mlp, x):  # inference: two oneDNN GEMMs, layer scale folded
                return fused_eval.mlp_add(self, self.mlp, self.norm2(x), x, getattr(self.ls2, "gamma", None))
            if fused_eval.dwconv_mlp_applies(self, self.mlp, x):  # a BatchNorm pre-norm folds into fc1
                bn = self.norm2 if fused_eval.bn_foldable(self.norm2) and isinstance(self.norm2, nn.BatchNorm2d) \
                    else None
                return fused_eval.dwconv_mlp_add(self, self.mlp, x if bn is not None else self.norm2(x), x,
                                                 getattr(self.ls2, "gamma", None), pre_bn=bn)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def _attn_residual(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            # inference: VAN folds BN and layer scale into its GEMMs
            if hasattr(self.attn, "forward_bn_residual") and isinstance(self.norm1, nn.BatchNorm2d) \
                    and fused_eval.applies(self, x) and fused_eval.bn_foldable(self.norm1):
                return self.attn.forward_bn_residual(x, self.norm1, getattr(self.ls1, "gamma", None))
        return x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
