"""VAN's large-kernel attention (Guo et al., *Visual Attention Network*, 2022) on ``[B, H, W, C]`` maps.

:class:`LargeKernelAttn` is the official ``AttentionModule`` (LKA): a depthwise ``5 x 5`` conv, a
depthwise ``7 x 7`` conv with dilation 3 (both in :func:`visionzoo.ops.lka`), a 1x1 conv, and the
product ``u * attn`` with its input ``u`` (a gate; no softmax or sigmoid). :class:`VanAttn` is the
official ``SpatialAttention`` around it: ``proj_2(LKA(GELU(proj_1(x)))) + x``, with its own inner
shortcut, so a :class:`~visionzoo.blocks.TransformerBlock` holding it computes VAN's
``x + ls1 * (attn(BN(x)))`` exactly.

The official 1x1 convolutions are ``nn.Linear`` here (weights ``[O, I]`` instead of ``[O, I, 1, 1]``:
the VAN converter reshapes them), which is the same map on channels-last tokens. The depthwise
weights keep the official ``[C, 1, k, k]`` layout. The whole map is zero-padded by the convolutions,
so any ``H, W >= 1`` works.

Inference (eval, autograd off, fp32 CPU): ``proj_1`` runs as one oneDNN GEMM with GELU as a post-op
and ``proj_2`` with the shortcut added in the GEMM (:mod:`~visionzoo.blocks.fused_eval`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..ops.lka import lka
from . import fused_eval
from .conv_bn import bn_scale_shift

__all__ = ["LargeKernelAttn", "VanAttn"]


@register_notrace_module  # an FX leaf: the op checks its arguments' shapes in Python
class LargeKernelAttn(nn.Module):
    """``u * conv1(dw_dilated(dw(u)))`` on ``[B, H, W, C]`` (keys ``conv0``, ``conv_spatial``, ``conv1``).

    Args:
        dim: channels.
        kernel_size: side of the first depthwise kernel (VAN: 5).
        dilated_kernel_size: side of the second, dilated depthwise kernel (VAN: 7).
        dilation: its dilation (VAN: 3).
        backend: :func:`~visionzoo.ops.lka` backend (``None``: resolved per call).
    """

    def __init__(self, dim: int, kernel_size: int = 5, dilated_kernel_size: int = 7, dilation: int = 3,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv0 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.conv_spatial = nn.Conv2d(dim, dim, dilated_kernel_size, padding=dilation * (dilated_kernel_size // 2),
                                      dilation=dilation, groups=dim, **dd)
        self.conv1 = nn.Linear(dim, dim, **dd)
        self.dilation, self.backend = dilation, backend

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript runs the plain convs (lka's reference), not the op
            a = self.conv_spatial(self.conv0(u.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
            return u * self.conv1(a)
        a = lka(u.permute(0, 3, 1, 2), self.conv0.weight, self.conv0.bias, self.conv_spatial.weight,
                self.conv_spatial.bias, dilation=self.dilation, backend=self.backend).permute(0, 2, 3, 1)
        return u * fused_eval.linear(self, self.conv1, a)

    def extra_repr(self) -> str:
        k0, k1 = self.conv0.kernel_size[0], self.conv_spatial.kernel_size[0]
        return f"kernels={k0}x{k0} then {k1}x{k1} dilation {self.dilation}, backend={self.backend or 'auto'}"


@register_notrace_module  # an FX leaf: its oneDNN inference path is chosen per call, as in eager
class VanAttn(nn.Module):
    """VAN's spatial attention ``proj_2(lka(gelu(proj_1(x)))) + x`` on ``[B, H, W, C]``.

    Args:
        dim: channels.
        num_heads: unused (VAN has no heads); the token-mixer table passes it to every mixer.
        proj_drop: dropout after ``proj_2`` (the official code has none there; default 0).
        backend: :func:`~visionzoo.ops.lka` backend.
    """

    def __init__(self, dim: int, num_heads: int = 1, dilation: int = 3, proj_drop: float = 0.0,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj_1 = nn.Linear(dim, dim, **dd)
        self.act = nn.GELU()
        self.lka = LargeKernelAttn(dim, dilation=dilation, backend=backend, **dd)
        self.proj_2 = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            if fused_eval.applies(self, x):  # inference: GELU and the shortcut fused into the GEMMs
                u = fused_eval.linear_act(x, self.proj_1.weight, self.proj_1.bias, fused_eval.fused_act(self.act))
                return fused_eval.linear_add(self.lka(u), self.proj_2.weight, self.proj_2.bias, x)
        return self.proj_drop(self.proj_2(self.lka(self.act(self.proj_1(x))))) + x

    def forward_bn_residual(self, x: torch.Tensor, bn: nn.BatchNorm2d, gamma: torch.Tensor | None) -> torch.Tensor:
        """Inference form of VAN's residual ``x + gamma * self(bn(x))`` (eval ``bn = x * s + t``): ``bn``
        folds into ``proj_1`` (GELU as its post-op) and, through the inner shortcut, into the residual
        ``x * (1 + gamma s)`` and ``proj_2``'s bias: ``+ (gamma W2) a + gamma (b2 + t)``, summed in the GEMM."""
        g = torch.ones_like(bn.weight) if gamma is None else gamma
        w1, b1 = fused_eval.pre_bn_folded_linear(self, "_fold_proj_1", self.proj_1, bn)

        def fold2():
            scale, shift = bn_scale_shift(bn)
            return (self.proj_2.weight * g[:, None]).contiguous(), g * (self.proj_2.bias + shift), 1 + g * scale
        w2, b2, keep = fused_eval.folded(self, "_fold_proj_2", (self.proj_2.weight, self.proj_2.bias, g, bn.weight,
                                                                bn.bias, bn.running_mean, bn.running_var), fold2)
        u = fused_eval.linear_act(x, w1, b1, fused_eval.fused_act(self.act))
        return fused_eval.linear_add(self.lka(u), w2, b2, x * keep)
