"""Swin's (shifted) window attention (W-MSA / SW-MSA) on ``[B, H, W, C]`` maps.

The attention is one :func:`visionzoo.ops.neighborhood.na2d` call with ``stride = kernel_size = P``
(non-overlapping windows) and ``shift`` (Swin's cyclic shift and region mask, expressed as cells of
the unrolled map), so every backend of ``na2d`` serves it. Parameters keep Swin's layout, which the
official FLatten-Swin / Agent-Swin checkpoints (and timm's Swin) carry: ``qkv`` (Linear C -> 3C),
``relative_position_bias_table`` ``[(2P - 1)^2, heads]``, ``proj``. The ``relative_position_index``
and ``attn_mask`` buffers of the official code are derived from ``P`` and the map, so they are not
state here (converters drop them).

Input size. The official block is built for one resolution: it sets the shift to 0 (and the window to
the map) when ``min(H, W) <= P`` and asserts the map is a multiple of ``P``. Here the shift rule is
applied to the map seen at forward time, so every size the official code runs gives its result; other
maps are zero-padded at the bottom/right to whole windows and the padding keys are masked (the
padded tokens get no attention weight; the official detection backbones pad the same way but let
the zero tokens take part). A map smaller than the window is one window. Exported with dynamic H, W
(``torch.export``), the shift rule is a ``cond`` in the program: it follows the rule at every input size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch._higher_order_ops.cond import cond_op

from ..ops.neighborhood import na2d, swin_rpb_to_na
from ..ops.neighborhood.reference import na2d_reference
from . import fused_eval

__all__ = ["SwinWindowAttn"]


@register_notrace_module  # a leaf for timm's FX feature extraction: the shift rule is Python on the map size
class SwinWindowAttn(nn.Module):
    """Multi-head self-attention inside ``P x P`` windows, optionally shifted by ``P // 2`` (Swin).

    Args:
        dim: channels ``C`` (divisible by ``num_heads``).
        num_heads: attention heads.
        window_size: ``P``.
        shift: shift the windows by ``P // 2`` (Swin's odd blocks); not applied on maps with
            ``min(H, W) <= P`` (the official rule).
        qkv_bias: bias on the qkv projection.
        qk_scale: logit scale, default ``head_dim ** -0.5``.
        attn_drop: must be 0 (``na2d`` applies no dropout to attention probabilities; every official
            configuration uses 0).
        proj_drop: dropout after the output projection.
        backend: ``na2d`` backend (``None`` resolves per call).

    Shapes: ``[B, H, W, C] -> [B, H, W, C]``, any ``H, W >= 1``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"SwinWindowAttn: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1:
            raise ValueError(f"SwinWindowAttn: window_size must be a positive int, got {window_size!r}")
        if attn_drop:
            raise ValueError(f"SwinWindowAttn: attn_drop={attn_drop} is not supported (na2d applies no dropout to "
                             "attention probabilities); use proj_drop / drop_path instead")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.window_size, self.shift = window_size, bool(shift)
        self.scale = qk_scale or self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * window_size - 1) ** 2, num_heads, **dd))
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def shift_for(self, height: int, width: int) -> int:
        """The shift used on a ``height x width`` map: ``P // 2`` if shifted and ``min(H, W) > P``, else 0."""
        return self.window_size // 2 if self.shift and min(height, width) > self.window_size else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the op's reference, not its front door
            return self._forward_scripted(x)
        B, H, W, C = x.shape
        P = self.window_size
        qkv = fused_eval.linear(self, self.qkv, x).reshape(B, H, W, 3, self.num_heads, self.head_dim)
        rpb = swin_rpb_to_na(self.relative_position_bias_table, P)
        if self.shift and not (isinstance(H, int) and isinstance(W, int)) and torch.compiler.is_exporting():
            x = self._attend_by_rule(qkv, rpb, H, W)
        else:
            x = self._attend(qkv, rpb, self.shift_for(H, W))
        return self.proj_drop(fused_eval.linear(self, self.proj, x.reshape(B, H, W, C)))

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """forward under torch.jit.script: plain projections and na2d's reference, which takes Swin's cells
        directly (shift 0: whole windows, the last one clipped: the front door's padding)."""
        B, H, W, C = x.shape
        P = self.window_size
        q, k, v = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        table = self.relative_position_bias_table  # swin_rpb_to_na without its argument checks
        rpb = table.t().reshape(self.num_heads, 2 * P - 1, 2 * P - 1).flip(1, 2).to(q.dtype)
        s = self.shift_for(H, W)
        cells: list[int | None] = [s, s]  # the annotation is required by TorchScript
        x = na2d_reference(q, k, v, [P, P], [1, 1], [P, P], rpb, self.scale, None, cells)
        return self.proj_drop(self.proj(x.reshape(B, H, W, C)))

    def _attend(self, qkv: torch.Tensor, rpb: torch.Tensor, shift: int) -> torch.Tensor:
        P = self.window_size
        q, k, v = qkv.unbind(3)
        return na2d(q, k, v, P, stride=P, shift=shift, rpb=rpb, scale=self.scale, pad=True, backend=self.backend)

    def _attend_by_rule(self, qkv: torch.Tensor, rpb: torch.Tensor, H, W) -> torch.Tensor:
        """Exporting with symbolic H, W: the shift rule as a ``cond`` on ``min(H, W) > P``, so the exported program
        keeps both branches and takes one per input size at run time (a Python branch is specialized to the
        example's size). Each branch is the eager call; a branch may not return a view (the crop of the padded
        map), hence the clones. The cond operator itself, not ``torch.cond``: under non-strict export
        ``torch.cond`` traces its branches with Dynamo, which takes their input sizes as static and specializes
        the padding to the example's size; the operator traces them with the export's symbolic sizes."""
        P = self.window_size
        return cond_op(torch.sym_min(H, W) > P, lambda t, r: self._attend(t, r, P // 2).clone(),
                       lambda t, r: self._attend(t, r, 0).clone(), (qkv, rpb))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift={self.window_size // 2 if self.shift else 0} (none on maps with min(H, W) <= "
                f"{self.window_size}), backend={self.backend or 'auto'}")
