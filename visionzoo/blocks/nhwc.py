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
import torch.nn.functional as F
from timm.layers import PatchEmbed, register_notrace_module
from timm.models.swin_transformer import PatchMerging

from ..ops.partition import pad_to_multiple
from ._script import parent_forward
from .conv_bn import register_foldable_bn

__all__ = ["BatchNormNhwc", "NhwcSequential", "NhwcStem", "PatchEmbedNhwc", "PatchMergingNhwc", "ConvTokenizer",
           "ConvDownsample", "ConvLN", "LayerNorm", "UnappliedLayerNorm"]

#: LayerNorm with the eps of the NAT family's official code (1e-5)
LayerNorm = partial(nn.LayerNorm, eps=1e-5)


def _pad_to(x: torch.Tensor, multiple: int, layout: str = "nchw") -> torch.Tensor:
    """``x`` (``layout`` ``'nchw'`` or ``'nhwc'``) zero-padded at the bottom/right to a multiple of ``multiple``.

    The padded size is ``multiple * ceil(n / multiple)``, written so that under symbolic sizes (export /
    compile with dynamic H, W) it mentions ``n`` once: timm's ``PatchEmbed`` / ``PatchMerging`` pad by
    ``n % m`` terms, so each stage's size held the previous one twice and the expressions doubled per
    stage (DiNAT-S's compile with ``dynamic=True`` spent over 23 min in sympy on them)."""
    if multiple == 1:
        return x
    if torch.jit.is_scripting():  # a static branch: TorchScript compiles plain F.pad, not the FX-leaf helper
        nhwc = layout == "nhwc"
        H, W = (x.shape[1], x.shape[2]) if nhwc else (x.shape[-2], x.shape[-1])
        ph, pw = (multiple - H % multiple) % multiple, (multiple - W % multiple) % multiple
        return F.pad(x, [0, 0, 0, pw, 0, ph] if nhwc else [0, pw, 0, ph])
    return pad_to_multiple(x, multiple, layout=layout)[0]


@register_foldable_bn  # the fused eval paths fold it (the same affine map, on other axes)
@register_notrace_module  # BatchNorm2d's batch-size check is Python control flow on the shape
class BatchNormNhwc(nn.BatchNorm2d):
    """BatchNorm2d on a channels-last ``[B, H, W, C]`` map (same parameters and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    _forward_nchw = parent_forward(nn.BatchNorm2d, "_forward_nchw")


@register_notrace_module  # a leaf for timm's FX feature extraction: the padding is shape-dependent Python
class NhwcSequential(nn.Sequential):
    """``nn.Sequential`` of NCHW layers run on a ``[B, H, W, C]`` map, the map first zero-padded to a
    multiple of ``pad_multiple`` (a patch conv's stride)."""

    def __init__(self, *modules: nn.Module, pad_multiple: int = 1):
        super().__init__(*modules)
        self.pad_multiple = pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._layers(_pad_to(x.permute(0, 3, 1, 2), self.pad_multiple)).permute(0, 2, 3, 1)

    _layers = parent_forward(nn.Sequential, "_layers")


@register_notrace_module
class NhwcStem(NhwcSequential):
    """NCHW image -> ``[B, H/r, W/r, C]`` through NCHW layers (run on a channels-last copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to(x.contiguous(memory_format=torch.channels_last), self.pad_multiple)
        return self._layers(x).permute(0, 2, 3, 1)


@register_notrace_module  # an FX leaf: a traced graph calls the module, which scripts (its padding helper does not)
class PatchEmbedNhwc(PatchEmbed):
    """timm's ``PatchEmbed`` (keys ``proj``, ``norm``; NHWC output) on an image zero-padded to a multiple of
    the patch by :func:`_pad_to` (timm's own ``dynamic_img_pad`` writes the padded size with ``n % p``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm_layer=None, device=None, dtype=None):
        super().__init__(None, patch_size, in_chans, embed_dim, norm_layer=norm_layer, flatten=False,
                         output_fmt="NHWC", strict_img_size=False, device=device, dtype=dtype)
        self.pad_multiple = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(_pad_to(x, self.pad_multiple))

    _embed = parent_forward(PatchEmbed, "_embed")


@register_notrace_module  # an FX leaf, as PatchEmbedNhwc
class PatchMergingNhwc(PatchMerging):
    """Swin's patch merging (timm's ``PatchMerging``: keys ``norm``, ``reduction``; the same 2x2 order) on a
    ``[B, H, W, C]`` map, odd maps zero-padded at the bottom/right by :func:`_pad_to`. The merge is written
    here rather than calling timm's forward, whose own ``F.pad`` (by 0 after ours) would copy the map again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to(x, 2, "nhwc")
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


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


@register_notrace_module  # a leaf for timm's FX feature extraction: the padding is shape-dependent Python
class ConvLN(nn.Module):
    """PVT's patch embeddings: a ``k x k`` stride-``s`` conv (``proj``) then LayerNorm (``norm``, eps 1e-5).

    ``image=True``: NCHW image in (the stem); else ``[B, H, W, C]`` in (a downsampler). Out
    ``[B, H', W', C']``. The input is zero-padded at the bottom/right to a multiple of ``pad_multiple``
    first (PVT v1's non-overlapping 2x2 patches on odd maps; the official layer drops the remainder).
    PVT v1: ``k = s`` (patch conv); PVTv2 ``OverlapPatchEmbed``: 7x7 s4 padding 3, 3x3 s2 padding 1.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int = 0,
                 image: bool = False, pad_multiple: int = 1, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.image, self.pad_multiple = image, pad_multiple
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, **dd)
        self.norm = LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.image else x.permute(0, 3, 1, 2)
        return self.norm(self.proj(_pad_to(x, self.pad_multiple)).permute(0, 2, 3, 1))


class UnappliedLayerNorm(nn.LayerNorm):
    """A LayerNorm whose parameters exist but which ``forward`` does not apply (identity).

    FLatten-PVT v1's official model owns a final ``norm`` that its ``forward_features`` never calls
    (commented out upstream); its checkpoints and parameter counts include it, so it is kept as state
    and the computation stays the official one. Its parameters are frozen (``requires_grad=False``):
    they never get a gradient, so optimizers skip them and DDP needs no ``find_unused_parameters``
    (which the official PVT models require).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
