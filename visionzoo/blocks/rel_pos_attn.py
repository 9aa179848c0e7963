"""Global multi-head self-attention with a 2-D relative position bias table (ViT-RPB).

The bias of query ``(yq, xq)`` to key ``(yk, xk)`` is ``rpb[head, yk - yq + L - 1, xk - xq + L - 1]``
for a table trained on ``L x L`` maps (``rpb`` is ``[heads, 2L-1, 2L-1]``): key minus query, the
same convention as neighborhood attention's RPB. Indeed this is neighborhood attention with the
kernel equal to the map. The official ``relative_position_index`` buffer ``[L*L, L*L]`` is kept
(checkpoints carry it) and used at the trained size.

Other sizes: maps up to ``L`` on an axis index the centre of the table exactly (every offset they
need was trained); an axis longer than ``L`` bicubically resizes the table to ``2n-1`` on that
axis first (as Swin / DiNAT do when they change window size). Attention runs through
``F.scaled_dot_product_attention`` with the bias as a float mask.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

__all__ = ["GlobalRelPosAttn2d", "relative_position_index"]


def relative_position_index(height: int, width: int, table: tuple[int, int],
                            device: Optional[torch.device] = None) -> torch.Tensor:
    """``[H*W, H*W]`` flat index into a ``table = (th, tw)`` bias grid, key minus query, centred."""
    ch, cw = (table[0] - 1) // 2, (table[1] - 1) // 2
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    dy = ys[None, :] - ys[:, None] + ch
    dx = xs[None, :] - xs[:, None] + cw
    return dy * table[1] + dx


@register_notrace_module  # an FX leaf: the bias table is resized in Python for the map size
class GlobalRelPosAttn2d(nn.Module):
    """ViT-RPB attention on ``[B, H, W, C]`` (any ``H, W``).

    Args:
        dim: channels ``C`` (divisible by ``num_heads``).
        num_heads: attention heads.
        table_size: ``L``, the map side the bias table was made for (``img_size // patch_size``).
        qkv_bias: bias on the qkv projection.
        qk_scale: logit scale, default ``head_dim ** -0.5``.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, table_size: int = 14, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"GlobalRelPosAttn2d: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if table_size < 1:
            raise ValueError(f"GlobalRelPosAttn2d: table_size must be >= 1, got {table_size}")
        self.dim, self.num_heads, self.head_dim, self.table_size = dim, num_heads, dim // num_heads, table_size
        self.scale = qk_scale or self.head_dim ** -0.5
        self.attn_drop = attn_drop
        n = 2 * table_size - 1
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.rpb = nn.Parameter(torch.empty(num_heads, n, n, **dd))
        self.register_buffer("relative_position_index",
                             relative_position_index(table_size, table_size, (n, n), device=device))
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.rpb, std=0.02)

    def bias(self, height: int, width: int) -> torch.Tensor:
        """``[heads, H*W, H*W]`` additive logit bias for a ``height x width`` map."""
        L = self.table_size
        table = self.rpb
        if (height, width) == (L, L):
            index = self.relative_position_index
        else:
            size = (max(2 * height - 1, 2 * L - 1), max(2 * width - 1, 2 * L - 1))
            if size[0] != table.shape[1] or size[1] != table.shape[2]:  # (not tuple(shape): TorchScript)
                table = F.interpolate(table[None].float(), size=size, mode="bicubic",
                                      align_corners=False)[0].to(table.dtype)
            index = relative_position_index(height, width, size, device=table.device)
        n = height * width
        return table.flatten(1)[:, index.reshape(-1)].reshape(self.num_heads, n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias(H, W).to(q.dtype)[None]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, H, W, C)))

    def extra_repr(self) -> str:
        L = self.table_size
        return (f"dim={self.dim}, num_heads={self.num_heads}, table={L}x{L} (exact for maps <= {L}, "
                f"bicubically resized beyond)")
