"""ViTDet's simple feature pyramid (Li et al., 2022, "Exploring Plain Vision Transformer Backbones for Object
Detection", arXiv:2203.16527, §3): four maps at strides 4, 8, 16, 32 from one stride-16 map.

Scale 4: ``ConvTranspose 2x2 s2 -> LayerNorm2d -> GELU -> ConvTranspose 2x2 s2`` (``dim -> dim/2 -> dim/4``);
scale 2: one ``ConvTranspose 2x2 s2`` (``dim -> dim/2``); scale 1: the map itself; scale 1/2: ``MaxPool 2x2 s2``.
The per-level ``1x1 / 3x3`` projections of ViTDet's neck are left to the detector's FPN. A level can be dropped
(``Identity`` at its slot) when a feature extractor does not use it.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["SCALES", "SimplePyramid"]

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
