"""MaxViT's block and grid attention (Tu et al., ECCV 2022) as neighborhood attention.

Both partitions are special cases of :func:`visionzoo.ops.neighborhood.na2d` (Generalized
Neighborhood Attention), so there is no second copy of attention code:

* block attention, windows of ``P x P`` tokens: ``kernel_size=P, stride=P``;
* grid attention, a ``P x P`` grid of windows whose tokens are ``ceil(n / P)`` apart:
  ``kernel_size=P, stride=P, dilation=ceil(n / P)`` (each dilation group is exactly one grid window).

Maps that are not multiples of ``P`` are zero-padded at the bottom/right by ``na2d(pad=True)``, which
masks the padding keys and crops the output, so padded tokens never change the real ones. The relative
position bias ``[heads, 2P-1, 2P-1]`` is indexed by key-minus-query offset, which is both the
TF MaxViT (timm ``RelPosBiasTf``) and the old-NATTEN layout; a checkpoint with another ``P`` is
resized on load (:func:`resize_rel_pos_table`). qkv is the usual ``[3, heads, head_dim]``
channel layout (timm ``head_first=False``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module, resize_rel_pos_bias_table

from ..ops.neighborhood import na2d
from ..ops.neighborhood.reference import na2d_padded
from . import fused_eval

__all__ = ["PartitionAttn2d", "resize_rel_pos_table"]


@register_notrace_module  # an FX leaf: padding and dilation depend on the map size
class PartitionAttn2d(nn.Module):
    """Multi-head block (``partition='block'``) or grid (``'grid'``) attention on ``[B, H, W, C]``.

    Args:
        dim: channels (``dim // head_dim`` heads).
        head_dim: channels per head.
        partition: ``'block'`` or ``'grid'``.
        partition_size: window side ``P`` (block) or grid side (grid).
        backend: ``na2d`` backend (``None``: resolved per call).
    """

    def __init__(self, dim: int, head_dim: int, partition: str, partition_size: int, proj_drop: float = 0.0,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if partition not in ("block", "grid"):
            raise ValueError(f"PartitionAttn2d: partition must be 'block' or 'grid', got {partition!r}")
        if dim % head_dim:
            raise ValueError(f"PartitionAttn2d: dim ({dim}) must be divisible by head_dim ({head_dim})")
        self.num_heads, self.head_dim = dim // head_dim, head_dim
        self.partition, self.partition_size, self.backend = partition, partition_size, backend
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        self.rel_pos = _RelPosTable(self.num_heads, partition_size, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain reference path only
            return self._forward_scripted(x)
        B, H, W, C = x.shape
        p = self.partition_size
        q, k, v = fused_eval.linear(self, self.qkv, x).view(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        dilation = 1 if self.partition == "block" else (-(-H // p), -(-W // p))
        if torch.jit.is_tracing() and dilation != 1:  # sizes are traced tensors: the trace keeps this size's grid
            dilation = (int(dilation[0]), int(dilation[1]))
        out = na2d(q, k, v, p, dilation, stride=p, rpb=self.rel_pos.table, scale=self.head_dim ** -0.5,
                   backend=self.backend, pad=True)
        return self.proj_drop(fused_eval.linear(self, self.proj, out.reshape(B, H, W, C)))

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` under ``torch.jit.script``: plain projections and ``na2d``'s reference with the
        front door's ``pad=True`` (:func:`~visionzoo.ops.neighborhood.reference.na2d_padded`)."""
        B, H, W, C = x.shape
        p = self.partition_size
        q, k, v = self.qkv(x).view(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        dilation = [1, 1] if self.partition == "block" else [(H + p - 1) // p, (W + p - 1) // p]
        out = na2d_padded(q, k, v, [p, p], dilation, [p, p], self.rel_pos.table, self.head_dim ** -0.5)
        return self.proj_drop(self.proj(out.reshape(B, H, W, C)))

    def extra_repr(self) -> str:
        return f"{self.partition}, size={self.partition_size}, heads={self.num_heads}, backend={self.backend or 'auto'}"


class _RelPosTable(nn.Module):
    """The bias table alone (key ``relative_position_bias_table``, as in timm's ``rel_pos`` module)."""

    def __init__(self, num_heads: int, size: int, device=None, dtype=None):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.empty(num_heads, 2 * size - 1, 2 * size - 1,
                                                                     device=device, dtype=dtype))
        nn.init.normal_(self.relative_position_bias_table, std=0.02)

    @property
    def table(self) -> torch.Tensor:
        return self.relative_position_bias_table


def resize_rel_pos_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """A ``[heads, 2P-1, 2P-1]`` table resized to ``2 * size - 1`` per side (bicubic, as timm does)."""
    n = 2 * size - 1
    if tuple(table.shape[-2:]) == (n, n):
        return table
    return resize_rel_pos_bias_table(table, new_window_size=(size, size), new_bias_shape=(table.shape[0], n, n))
