"""ViTDet's simple feature pyramid (Li et al., 2022, "Exploring Plain Vision Transformer Backbones for Object
Detection", arXiv:2203.16527, §3): four maps at strides 4, 8, 16, 32 from one stride-16 map.

Scale 4: ``ConvTranspose 2x2 s2 -> LayerNorm2d -> GELU -> ConvTranspose 2x2 s2`` (``dim -> dim/2 -> dim/4``);
scale 2: one ``ConvTranspose 2x2 s2`` (``dim -> dim/2``); scale 1: the map itself; scale 1/2: ``MaxPool 2x2 s2``.
The per-level ``1x1 / 3x3`` projections of ViTDet's neck are left to the detector's FPN. A level can be dropped
(``Identity`` at its slot) when a feature extractor does not use it.
"""

from __future__ import annotations

from typing import Callable

import torch
from timm.layers import LayerNorm2d
from timm.models._features import feature_take_indices
from torch import nn

from .. import convert

__all__ = ["SCALES", "SimplePyramid", "SimplePyramidMixin", "pyramid_filter"]

#: output scale of each level relative to the input map
SCALES = (4.0, 2.0, 1.0, 0.5)


class SimplePyramid(nn.Module):
    """``[B, dim, H, W]`` -> ``[B, dim/4, 4H, 4W]``, ``[B, dim/2, 2H, 2W]``, ``[B, dim, H, W]``,
    ``[B, dim, ceil(H/2), ceil(W/2)]`` (``levels`` order; ``forward`` returns the ``indices`` asked for)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        if dim % 4:
            raise ValueError(f"SimplePyramid: dim must be a multiple of 4, got {dim}")
        dd = {"device": device, "dtype": dtype}
        self.channels = (dim // 4, dim // 2, dim, dim)
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(dim, dim // 2, 2, 2, **dd),
                    LayerNorm2d(dim // 2, **dd),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2, **dd),
                ),
                nn.ConvTranspose2d(dim, dim // 2, 2, 2, **dd),
                nn.Identity(),
                nn.MaxPool2d(2, 2, ceil_mode=True),
            ]
        )

    def forward(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        return [self.levels[i](x) for i in indices]

    def drop_levels(self, keep: list[int]) -> None:
        """Replace the levels not in ``keep`` by ``Identity`` (their parameters would get no gradient)."""
        for i in range(len(self.levels)):
            if i not in keep:
                self.levels[i] = nn.Identity()


class SimplePyramidMixin:
    """``feature_pyramid="simple"`` for an isotropic :class:`~visionzoo.models._base.Backbone` (first in the
    bases; the subclass calls :meth:`_add_pyramid` at the end of ``__init__``): ``feature_info`` and
    ``forward_intermediates`` then give the :class:`SimplePyramid` levels (strides 4, 8, 16, 32 for a stride-16
    trunk) built from the last level's map; the classifier path is unchanged and does not use the pyramid."""

    def _add_pyramid(self, feature_pyramid: str | None, device=None, dtype=None) -> None:
        if feature_pyramid not in (None, "simple"):
            raise ValueError(f"feature_pyramid must be None or 'simple', got {feature_pyramid!r}")
        self.pyramid = None
        if feature_pyramid == "simple":
            dim, stride = self.feature_info[-1]["num_chs"], self.feature_info[-1]["reduction"]
            self.pyramid = SimplePyramid(dim, device=device, dtype=dtype)
            self.feature_info = [dict(num_chs=c, reduction=int(stride / s), module=f"pyramid.levels.{i}", index=i,
                                      stage=len(self.stages) - 1) for i, (c, s) in enumerate(zip(self.pyramid.channels,
                                                                                                  SCALES))]

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        if self.pyramid is None:
            return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        take, _ = feature_take_indices(len(SCALES), indices)
        final, (last,) = super().forward_intermediates(x, [len(self.stages) - 1], norm, False, output_fmt)
        levels = self.pyramid(last, take)
        return levels if intermediates_only else (final, levels)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        if self.pyramid is None:
            return super().prune_intermediate_layers(indices, prune_norm, prune_head)
        take, _ = feature_take_indices(len(SCALES), indices)
        info = self.feature_info
        super().prune_intermediate_layers(len(self.stages) - 1, prune_norm, prune_head)  # every level needs all layers
        self.feature_info, self.num_features = info, info[-1]["num_chs"]
        self.pyramid.drop_levels(take)
        return take


def pyramid_filter(filter_fn: Callable) -> Callable:
    """A family's ``checkpoint_filter_fn`` for models with an optional simple pyramid: a classifier checkpoint
    (no ``pyramid.*`` keys) leaves the pyramid as initialised (ViTDet's pyramid is new in detection too) instead
    of failing on its missing keys."""

    def checkpoint_filter_fn(state_dict, model):
        pyramid = getattr(model, "pyramid", None)
        state_dict = convert.unwrap_state_dict(state_dict)
        if pyramid is None or any(k.startswith("pyramid.") for k in state_dict):
            return filter_fn(state_dict, model)
        model.pyramid = None  # convert against the trunk's keys
        try:
            out = filter_fn(state_dict, model)
        finally:
            model.pyramid = pyramid
        return {**out, **{f"pyramid.{k}": v for k, v in pyramid.state_dict().items()}}

    checkpoint_filter_fn.__doc__ = f"{filter_fn.__doc__ or ''}\n\n{pyramid_filter.__doc__}"
    return checkpoint_filter_fn
