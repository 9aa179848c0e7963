"""Deformable convolution (DCNv1) on ``torchvision.ops.deform_conv2d``: LITv2's deformable token merging.

:class:`DeformConv2dPack` is the mmcv / DCNv1 "pack" layer the official code uses (keys ``weight``,
``bias``, ``conv_offset.*``): a plain conv ``conv_offset`` (same kernel, stride and padding, zero
init) predicts ``2 * kh * kw`` offset channels per output pixel, ordered ``(dy, dx)`` per kernel tap
``i * kw + j`` (tap-major, y first), which is the layout ``torchvision.ops.deform_conv2d`` reads;
sampling is bilinear with zeros outside the map. No compiled extension is needed.

LITv2's ``DTM`` (``DeformConv2dPack(C, 2C, k=2, s=2)`` -> BatchNorm -> GELU) is the ``dtm`` row of
:data:`visionzoo.models._hierarchical.DOWNSAMPLES`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv2dPack"]


class DeformConv2dPack(nn.Module):
    """Deformable convolution (v1) with its own offset predictor, NCHW in and out.

    Args:
        in_chs, out_chs: channels.
        kernel_size, stride, padding: of both the deformable conv and ``conv_offset``.
        deform_groups: offset groups (``2 * kh * kw`` offset channels each).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 deform_groups: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, kernel_size, kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(out_chs, **dd))
        self.conv_offset = nn.Conv2d(in_chs, deform_groups * 2 * kernel_size * kernel_size, kernel_size, stride,
                                     padding, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.device.type == "meta":
            return
        n = self.weight[0].numel()  # mmcv: uniform(-1/sqrt(n), 1/sqrt(n)), zero bias, zero offsets
        nn.init.uniform_(self.weight, -n ** -0.5, n ** -0.5)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)
        stride, padding = (self.stride, self.stride), (self.padding, self.padding)  # pairs: TorchScript's signature
        if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
            # torchvision's CPU kernel has float32 / float64 only: compute in float32, return x's dtype
            return deform_conv2d(x.float(), offset.float(), self.weight.float(), self.bias.float(),
                                 stride=stride, padding=padding).to(x.dtype)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=stride, padding=padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}"
