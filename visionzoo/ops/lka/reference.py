"""LKA's spatial part as the official VAN code computes it: the spec every other path is tested against.

Two depthwise convolutions (``groups = C``), each with zero padding that keeps the map size:
``a = conv2d(x, w0, b0, padding=k0 // 2)`` then ``y = conv2d(a, w1, b1, padding=dilation * (k1 // 2),
dilation=dilation)``. The zero padding of the second convolution applies to ``a`` (so the border
values of ``a`` include ``b0``, and ``a`` is zero outside the map, not ``b0``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["lka_reference"]


def lka_reference(x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor,
                  b1: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """``x [B, C, H, W]``, ``w0 [C, 1, k0, k0]``, ``w1 [C, 1, k1, k1]``, biases ``[C]`` or None -> ``[B, C, H, W]``."""
    c = x.shape[1]
    a = F.conv2d(x, w0, b0, padding=w0.shape[-1] // 2, groups=c)
    return F.conv2d(a, w1, b1, padding=dilation * (w1.shape[-1] // 2), dilation=dilation, groups=c)
