"""TensorFlow 'SAME' padding that exports with dynamic H, W (MaxViT's TF-ported convolutions and pools).

TF 'SAME' pads a map of ``n`` pixels for a kernel spanning ``k_eff = (k - 1) * d + 1`` at stride ``s``
by ``total = max((ceil(n / s) - 1) * s + k_eff - n, 0)``, ``total // 2`` before and the rest after, so
the output has ``ceil(n / s)`` pixels. timm's ``pad_same`` computes that through ``math.ceil(n / s)``
and ``max``: under ``torch.export`` with symbolic sizes each stride-2 layer then carries a float
ceiling and a guard, and MaxViT's five of them nest into size expressions that sympy took over 15 min
to simplify in the first attention layer's reshapes.

Here, under symbolic sizes, the map is padded by the most any size needs on each side (static ints,
plus one spare pixel after), and then cut by ``narrow`` to ``(ceil(n / s) - 1) * s + k_eff`` pixels
(``ceil`` as the integer ``(n + s - 1) // s``) from where the exact 'SAME' padding would begin: the same
pixels, an output of ``(n + s - 1) // s`` whose nested expressions sympy simplifies at once. With concrete sizes (eager,
``jit.trace``, TorchScript, static compile) it is timm's ``pad_same``, bit for bit.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import pad_same as _pad_same_static
from timm.layers import register_notrace_function

from ..ops._sizes import is_static

__all__ = ["pad_same", "Conv2dSame", "AvgPool2dSame"]


def _total(n, k_eff: int, s: int):
    """'SAME' padding of ``n`` pixels: ``(ceil(n / s) - 1) * s + k_eff - n`` = ``k_eff - s + (-n) mod s``, >= 0."""
    total = k_eff - s + (-n) % s
    return total if k_eff >= s else torch.sym_max(total, 0)


@register_notrace_function  # Python on the shape: a leaf for timm's / torchvision's FX tracers
def pad_same(x: torch.Tensor, kernel_size: List[int], stride: List[int], dilation: List[int] = (1, 1),
             value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims of ``x`` as TF 'SAME' does for a ``kernel_size`` / ``stride`` / ``dilation`` op."""
    if not torch.jit.is_scripting():  # a static branch: TorchScript sees concrete sizes only
        if not is_static(*x.shape[-2:]):
            return _pad_same_symbolic(x, kernel_size, stride, dilation, value)
    return _pad_same_static(x, kernel_size, stride, dilation, value)


torch.fx.wrap("pad_same")  # and for plain torch.fx.symbolic_trace (Conv2dSame / AvgPool2dSame call it here)


def _pad_same_symbolic(x: torch.Tensor, kernel_size, stride, dilation, value: float) -> torch.Tensor:
    """Static pad by the most any size needs, then ``narrow`` to the exact 'SAME' span (module docstring)."""
    spans = []
    for n, k, s, d in zip(x.shape[-2:], kernel_size, stride, dilation):
        k_eff = (k - 1) * d + 1
        totals = [_total(r, k_eff, s) for r in range(s)]  # by n mod s: the padding's only dependence on n
        spans.append((n, k_eff, s, max(t // 2 for t in totals), max(t - t // 2 for t in totals)))
    (_, _, _, top, bottom), (_, _, _, left, right) = spans
    # one spare pixel after: the cut is then never the whole padded axis, whatever n's residue, so the
    # export's contiguity checks on the cut view hold for every size instead of specialising on n mod s
    x = F.pad(x, (left, right + 1, top, bottom + 1), value=value)
    for axis, (n, k_eff, s, before, _) in zip((-2, -1), spans):
        x = x.narrow(axis, before - _total(n, k_eff, s) // 2, ((n + s - 1) // s - 1) * s + k_eff)
    return x


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' padding (timm's ``Conv2dSame``: same parameters and keys)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, dilation=1, groups: int = 1,
                 bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias,
                         device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class AvgPool2dSame(nn.AvgPool2d):
    """Average pool with TF 'SAME' zero padding counted in the mean (timm's ``AvgPool2dSame``)."""

    def __init__(self, kernel_size: int, stride: int | None = None):
        super().__init__((kernel_size, kernel_size), (stride or kernel_size,) * 2, 0, count_include_pad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride)
        return F.avg_pool2d(x, self.kernel_size, self.stride, 0, self.ceil_mode, self.count_include_pad)
