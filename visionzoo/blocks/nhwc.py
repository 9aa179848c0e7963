"""NCHW layers on logical channels-last token maps ``[B, H, W, C]``, and the stems / downsamplers
of the hierarchical transformers (:mod:`visionzoo.models._hierarchical`).

The permutes around the NCHW layers are free views; a patch conv is fed a map zero-padded at the
bottom/right to a multiple of its stride (:func:`visionzoo.ops.partition.pad_to_multiple`), so any
input size runs where an unpadded conv would drop the remainder.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..ops.partition import pad_to_multiple

__all__ = ["BatchNormNhwc", "NhwcSequential", "NhwcStem", "ConvTokenizer", "ConvDownsample", "LayerNorm"]

#: LayerNorm with the eps of the NAT family's official code (1e-5)
LayerNorm = partial(nn.LayerNorm, eps=1e-5)


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    return x if multiple == 1 else pad_to_multiple(x, multiple, layout="nchw")[0]


@register_notrace_module  # BatchNorm2d's batch-size check is Python control flow on the shape
class BatchNormNhwc(nn.BatchNorm2d):
    """BatchNorm2d on a channels-last ``[B, H, W, C]`` map (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_notrace_module  # a leaf for timm's FX feature extraction: the padding is shape-dependent Python
class NhwcSequential(nn.Sequential):
    """``nn.Sequential`` of NCHW layers run on a ``[B, H, W, C]`` map, the map first zero-padded to a
    multiple of ``pad_multiple`` (a patch conv's stride)."""

    def __init__(self, *modules: nn.Module, pad_multiple: int = 1):
        super().__init__(*modules)
        self.pad_multiple = pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_to(x.permute(0, 3, 1, 2), self.pad_multiple)).permute(0, 2, 3, 1)


@register_notrace_module
class NhwcStem(NhwcSequential):
    """NCHW image -> ``[B, H/r, W/r, C]`` through NCHW layers (run on a channels-last copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to(x.contiguous(memory_format=torch.channels_last), self.pad_multiple)
        return nn.Sequential.forward(self, x).permute(0, 2, 3, 1)


class ConvTokenizer(nn.Module):
    """NAT stem: 3x3 s2 conv (C/2) -> 3x3 s2 conv (C), both with bias, then LayerNorm; NCHW -> NHWC."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj = nn.Sequential(nn.Conv2d(in_chs, out_chs // 2, 3, 2, 1, **dd),
                                  nn.Conv2d(out_chs // 2, out_chs, 3, 2, 1, **dd))
        self.norm = LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """NAT downsampler on ``[B, H, W, C]``: 3x3 s2 conv without bias, then LayerNorm."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.reduction = nn.Conv2d(in_chs, out_chs, 3, 2, 1, bias=False, **dd)
        self.norm = LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
