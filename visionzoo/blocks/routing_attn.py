"""Bi-level routing attention (BiFormer) and the global attention of BiFormer's last stage.

Both map channels-last ``[B, H, W, C] -> [B, H, W, C]`` with the official parameter names.

* :class:`BiLevelRoutingAttn` (official ``BiLevelRoutingAttention`` with ``kv_downsample_mode=
  'identity'``, ``param_attention='qkvo'``, hard non-differentiable routing): one
  ``Linear(dim, 2 qk_dim + dim)`` (``qkv.qkv``) gives q, k, v; :func:`visionzoo.ops.routing.bra`
  attends with the official scale ``qk_dim ** -0.5`` (the full qk width, not the head width);
  LePE (a depthwise ``side_dwconv`` conv on V over the whole map) is added; then ``wo``.
* :class:`GlobalAttnLePE` (official ``AttentionLePE``): plain multi-head attention with 8 heads
  (hard-coded in the official code), no qkv bias, LePE on the block input, then ``proj``.

Any map size: ``bra`` pads to whole regions and masks the padding; LePE runs on the real map.

``torch.jit.script``: the forwards have static ``torch.jit.is_scripting()`` branches (TorchScript compiles
only those; eager, ``torch.compile`` and export run the code below them unchanged): plain ``nn.Linear``
projections instead of :mod:`.fused_eval` (whose helpers take modules as arguments) and, for the
routing, :func:`~visionzoo.ops.routing.reference.bra_padded` (the front door's padding, routing and
masking on the reference) instead of ``bra``'s front door.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.routing import bra
from ..ops.routing.reference import bra_padded
from . import fused_eval

__all__ = ["BiLevelRoutingAttn", "GlobalAttnLePE", "QKVLinear"]


class QKVLinear(nn.Module):
    """``Linear(dim, 2 qk_dim + dim)`` split into q ``[.., qk_dim]``, k ``[.., qk_dim]``, v ``[.., dim]``."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.dim, self.qk_dim = dim, qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor):
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain Linear
            return self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        return fused_eval.linear(self, self.qkv, x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)


def _lepe_conv(dim: int, kernel: int, dd: dict) -> nn.Conv2d | None:
    """LePE: a depthwise ``kernel x kernel`` conv (None for kernel 0, the official 'no LePE')."""
    return nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, **dd) if kernel else None


def _lepe(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Depthwise conv of a channels-last map (NCHW views of the same memory: no copies)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@register_notrace_module  # a leaf for timm's FX feature extraction: padding and routing are Python
class BiLevelRoutingAttn(nn.Module):
    """Bi-level routing attention on ``[B, H, W, dim]`` (see the module docstring).

    Args:
        dim: channels (value width). qk_dim: query/key width (default ``dim``).
        num_heads: heads (``qk_dim`` and ``dim`` divisible by it). n_win: regions per side.
        topk: routed regions per region. side_dwconv: LePE kernel (0: none).
        qk_scale: logit scale (default ``qk_dim ** -0.5``, the official quirk).
    """

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, qk_dim: int | None = None, topk: int = 4,
                 side_dwconv: int = 5, qk_scale: float | None = None, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        qk_dim = qk_dim or dim
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"BiLevelRoutingAttn: qk_dim {qk_dim} and dim {dim} must be divisible by "
                             f"num_heads {num_heads}")
        self.num_heads, self.n_win, self.topk = num_heads, n_win, topk
        self.scale = qk_scale or qk_dim ** -0.5
        self.backend = backend
        self.lepe = _lepe_conv(dim, side_dwconv, dd)
        self.qkv = QKVLinear(dim, qk_dim, **dd)
        self.wo = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the op's reference, not its front door
            return self._forward_scripted(x)
        B, H, W, C = x.shape
        q, k, v = self.qkv(x)
        m = self.num_heads
        out = bra(q.unflatten(-1, (m, -1)), k.unflatten(-1, (m, -1)), v.unflatten(-1, (m, -1)), self.n_win, self.topk,
                  scale=self.scale, backend=self.backend).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + _lepe(self.lepe, v)
        return fused_eval.linear(self, self.wo, out)

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` under ``torch.jit.script``: plain projections, ``bra_padded`` (the same padding,
        routing and masking as ``bra``) and LePE's conv called in place (TorchScript takes no module
        arguments)."""
        B, H, W, C = x.shape
        q, k, v = self.qkv(x)
        m = self.num_heads
        d = q.shape[-1] // m
        out = bra_padded(q.reshape(B, H, W, m, d), k.reshape(B, H, W, m, d), v.reshape(B, H, W, m, C // m),
                         self.n_win, self.topk, self.scale).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.wo(out)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, scale={self.scale:.4g}"


class GlobalAttnLePE(nn.Module):
    """Global multi-head attention with LePE on the input (official ``AttentionLePE``), ``[B, H, W, dim]``."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 side_dwconv: int = 5, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"GlobalAttnLePE: dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.lepe = _lepe_conv(dim, side_dwconv, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        heads = self.num_heads  # explicit sizes, no -1: a batch of 0 has nothing to infer from
        if torch.jit.is_scripting():  # static branches: TorchScript compiles the plain modules
            qkv = self.qkv(x)
        else:
            qkv = fused_eval.linear(self, self.qkv, x)
        qkv = qkv.reshape(B, H * W, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if torch.jit.is_scripting():
            if self.lepe is not None:
                out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return self.proj(out)
        if self.lepe is not None:
            out = out + _lepe(self.lepe, x)
        return fused_eval.linear(self, self.proj, out)
