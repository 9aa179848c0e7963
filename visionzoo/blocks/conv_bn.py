"""Conv-BN and BN-Linear units that fold into one layer for deployment (SHViT, LeViT-style nets).

``ConvBN`` is a bias-free ``Conv2d`` followed by ``BatchNorm2d`` (keys ``c.*``, ``bn.*``, the layout
of the official SHViT / EfficientViT code and of timm). In eval mode it runs as one convolution
with the BN folded in on the fly (weights unchanged, same result up to rounding; :func:`bn_folded_conv`,
also used by the fused inference paths). ``fuse()`` returns the single ``Conv2d`` with the BN folded
in; ``ResidualBN`` additionally folds its identity shortcut into a depthwise 3x3 ``ConvBN`` (centre
tap + 1), and :func:`fuse_modules` applies every ``fuse()`` of a model in place.
Folding is exact in real arithmetic; in float32 outputs move by rounding only (~1e-6 relative).
Only :func:`bn_foldable` norms fold (known BatchNorm types); any other norm put in ``bn`` (e.g. by
transformers' ``replace_batch_norm``) runs as itself.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d, SyncBatchNormAct
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["ConvBN", "ResidualBN", "bn_foldable", "bn_folded_conv", "bn_scale_shift", "fuse_modules",
           "register_foldable_bn"]


#: norms whose eval forward is exactly ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``
#: (the ``*Act`` ones then apply their ``act``): exact types, a subclass may override ``forward``
_FOLDABLE_BN = {nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, BatchNormAct2d, SyncBatchNormAct,
                FrozenBatchNormAct2d, FrozenBatchNorm2d}


def register_foldable_bn(cls: type) -> type:
    """Class decorator: ``cls`` (a BatchNorm subclass whose forward only moves axes around the
    BatchNorm's affine map) folds like a BatchNorm (:func:`bn_foldable`)."""
    _FOLDABLE_BN.add(cls)
    return cls


def bn_foldable(bn: nn.Module | None) -> bool:
    """``bn`` (``None``: absent) folds into a neighbouring linear map: a known BatchNorm type
    (``_FOLDABLE_BN``) in eval mode that normalises with its running statistics."""
    if bn is None:
        return True
    return (type(bn) in _FOLDABLE_BN and not bn.training and getattr(bn, "running_var", None) is not None
            and getattr(bn, "running_mean", None) is not None)


def bn_scale_shift(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def bn_folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, pre_bn: nn.BatchNorm2d | None = None):
    """Weight and bias of ``bn(conv(pre_bn(x)))`` as one convolution (``pre_bn`` only before a 1x1
    unpadded conv, where the input affine map commutes with the zero padding)."""
    scale, shift = bn_scale_shift(bn)
    w, b = conv.weight, conv.bias
    if pre_bn is not None:
        s0, t0 = bn_scale_shift(pre_bn)
        b_pre = F.linear(t0, w.flatten(1), b)  # W t0 (+ b)
        w, b = w * s0.view(1, -1, 1, 1), b_pre
    b = shift if b is None else b * scale + shift
    return (w * scale.view(-1, 1, 1, 1)).contiguous(), b.contiguous()


class ConvBN(nn.Sequential):
    """``Conv2d(bias=False)`` + ``BatchNorm2d``; ``bn_weight_init`` sets the BN gamma (0 zero-inits a
    residual branch)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.add_module("c", nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False, **dd))
        self.add_module("bn", nn.BatchNorm2d(out_chs, **dd))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules only
            return self.bn(self.c(x))
        if self.training or not bn_foldable(self.bn):
            return self.bn(self.c(x))
        # eval: the BN folded into the conv on the fly, one pass over the activations instead of two
        c = self.c
        return F.conv2d(x, *bn_folded_conv(c, self.bn), c.stride, c.padding, c.dilation, c.groups)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        c = self.c
        weight, bias = bn_folded_conv(c, self.bn)
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                         bias=True, device=c.weight.device, dtype=c.weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        return conv


class ResidualBN(nn.Module):
    """``x + m(x)``; ``fuse()`` folds the shortcut into a depthwise odd-kernel stride-1 ``ConvBN``."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        m = self.m
        if not isinstance(m, ConvBN):
            return self
        c = m.c
        if c.groups != c.in_channels or c.in_channels != c.out_channels or c.stride != (1, 1):
            return self
        conv = m.fuse()
        kh, kw = conv.kernel_size
        conv.weight[:, 0, kh // 2, kw // 2] += 1.0  # identity = a centred unit tap per channel
        return conv


def fuse_modules(module: nn.Module) -> nn.Module:
    """Replace, depth first, every child that has ``fuse()`` by its fused form; returns ``module``."""
    for name, child in module.named_children():
        fused = child.fuse() if hasattr(child, "fuse") else child
        if fused is not child:
            setattr(module, name, fused)
        fuse_modules(fused)
    return module

