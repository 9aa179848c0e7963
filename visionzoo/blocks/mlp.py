"""The MLPs of a transformer block (``TransformerBlock(mlp_layer=...)``), one signature:
``mlp_layer(dim, hidden, act_layer=, drop=, device=, dtype=)``.

* ``mlp``: timm ``Mlp`` on tokens (ViT, NAT, BiFormer, Swin); the only one with a fused inference
  path (:func:`~visionzoo.blocks.fused_eval.mlp_add`).
* ``dwconv_mlp``: :class:`DWConvMlp`, Linear -> depthwise 3x3 conv -> GELU -> Linear on the tokens of
  a ``[B, H, W, C]`` map (PVTv2, LITv2, VAN's position-aware MLP).
* ``conv_mlp``: timm ``ConvMlp``, 1x1 conv -> act -> 1x1 conv on an NCHW map.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import ConvMlp, Mlp

__all__ = ["DWConvMlp", "MLP_LAYERS", "get_mlp_layer"]


class DWConvMlp(nn.Module):
    """``fc2(drop(act(dwconv(fc1(x)))))`` on ``[B, H, W, C]`` (keys ``fc1``, ``dwconv``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, kernel_size: int = 3,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden, **dd)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, **dd)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, out_features or in_features, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(self.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop2(self.fc2(self.drop1(self.act(x))))


MLP_LAYERS: dict[str, type[nn.Module]] = {"mlp": Mlp, "dwconv_mlp": DWConvMlp, "conv_mlp": ConvMlp}


def get_mlp_layer(kind: str) -> type[nn.Module]:
    if kind not in MLP_LAYERS:
        raise ValueError(f"unknown mlp_layer {kind!r}; expected one of {sorted(MLP_LAYERS)}")
    return MLP_LAYERS[kind]
