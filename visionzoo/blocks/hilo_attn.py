"""HiLo attention (Pan, Cai, Zhuang, *Fast Vision Transformers with HiLo Attention*, NeurIPS 2022).

The heads are split in two groups with their own projections, and the outputs concatenated as
``[Hi-Fi, Lo-Fi]`` along channels (no joint output projection):

* **Hi-Fi** (``h_heads = heads - l_heads``; keys ``h_qkv``, ``h_proj``): self-attention inside
  non-overlapping ``s x s`` windows, i.e. :func:`visionzoo.ops.na2d` with ``kernel_size = stride = s``.
* **Lo-Fi** (``l_heads = int(heads * alpha)``; keys ``l_q``, ``l_kv``, ``l_proj``): queries from every
  token, keys and values from the ``s x s`` average-pooled map (``F.scaled_dot_product_attention``).

``s = 1`` is plain multi-head self-attention: every head goes through the Lo-Fi path without pooling
(the official rule, whatever ``alpha``). ``alpha = 0`` keeps only Hi-Fi, ``alpha = 1`` only Lo-Fi.

Maps that ``s`` does not divide (the official classification code assumes ``H = W`` divisible by
``s``): the Hi-Fi windows are cut from a map zero-padded at the bottom/right whose padding keys are
masked (``na2d(pad=True)``), and the Lo-Fi pool averages the real pixels of the last, partial
windows (``ceil_mode``). Padding never contributes, so a token's output depends only on the real
map. The official *detection* backbone instead zero-pads the normed map and attends to the padded
tokens too (their keys are the projection biases, and the pooled Lo-Fi keys average zeros in); on
divisible maps both are identical to this.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.neighborhood import na2d
from ..ops.neighborhood.reference import na2d_padded
from . import fused_eval

__all__ = ["HiLoAttn"]


@register_notrace_module  # an FX leaf: the window padding depends on the map size
class HiLoAttn(nn.Module):
    """HiLo attention ``[B, H, W, C] -> [B, H, W, C]``.

    Args:
        dim: channels, divisible by ``num_heads``.
        num_heads: heads, split into ``l_heads = int(num_heads * alpha)`` Lo-Fi and the rest Hi-Fi.
        window_size: ``s``, the Hi-Fi window and Lo-Fi pooling size; 1 is plain MSA.
        alpha: fraction of Lo-Fi heads, in ``[0, 1]``.
        qkv_bias: biases of ``h_qkv``, ``l_q``, ``l_kv``.
        qk_scale: logit scale (default ``head_dim ** -0.5``).
        proj_drop: dropout after the output projections (the official code builds none).
        backend: ``na2d`` backend of the Hi-Fi windows (``None``: resolved per call).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 2, alpha: float = 0.9, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"HiLoAttn: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if window_size < 1:
            raise ValueError(f"HiLoAttn: window_size must be >= 1, got {window_size}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"HiLoAttn: alpha must be in [0, 1], got {alpha}")
        self.head_dim = dim // num_heads
        self.l_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.h_heads = num_heads - self.l_heads
        self.l_dim, self.h_dim = self.l_heads * self.head_dim, self.h_heads * self.head_dim
        self.ws, self.alpha, self.backend = window_size, alpha, backend
        self.scale = qk_scale or self.head_dim ** -0.5
        if self.h_heads:
            self.h_qkv = nn.Linear(dim, 3 * self.h_dim, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim, **dd)
        if self.l_heads:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, 2 * self.l_dim, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = fused_eval.linear(self, self.h_qkv, x).view(B, H, W, 3, self.h_heads, self.head_dim).unbind(3)
        out = na2d(q, k, v, self.ws, stride=self.ws, scale=self.scale, backend=self.backend, pad=True)
        return fused_eval.linear(self, self.h_proj, out.reshape(B, H, W, self.h_dim))

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        q = fused_eval.linear(self, self.l_q, x).view(B, H * W, self.l_heads, self.head_dim).transpose(1, 2)
        pooled = self.pooled(x)
        out = self.lofi_attend(q, fused_eval.linear(self, self.l_kv, pooled), pooled)
        return fused_eval.linear(self, self.l_proj, out.reshape(B, H, W, self.l_dim))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The Lo-Fi keys' map: ``s x s`` average pools; partial border windows average their real pixels only."""
        if self.ws > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws, ceil_mode=True).permute(0, 2, 3, 1)
        return x

    def lofi_attend(self, q: torch.Tensor, kv: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Lo-Fi attention of ``q`` (``[B, heads, H W, d]``) over the ``l_kv`` projection of the ``pooled`` map;
        ``[B, H W, heads, d]``."""
        B, h, w = pooled.shape[0], pooled.shape[1], pooled.shape[2]
        k, v = kv.reshape(B, h * w, 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the plain modules and na2d's reference
            return self.proj_drop(self._forward_scripted(x))
        if not self.l_heads:
            return self.proj_drop(self.hifi(x))
        if not self.h_heads:
            return self.proj_drop(self.lofi(x))
        return self.proj_drop(torch.cat([self.hifi(x), self.lofi(x)], dim=-1))

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` under ``torch.jit.script`` (before ``proj_drop``): plain projections, the Hi-Fi windows
        through :func:`~visionzoo.ops.neighborhood.reference.na2d_padded` (the front door's ``pad=True``);
        ``hasattr``: TorchScript compiles only the groups that exist."""
        B, H, W, _ = x.shape
        outs: list[torch.Tensor] = []
        if hasattr(self, "h_qkv"):
            q, k, v = self.h_qkv(x).view(B, H, W, 3, self.h_heads, self.head_dim).unbind(3)
            out = na2d_padded(q, k, v, [self.ws, self.ws], [1, 1], [self.ws, self.ws], None, self.scale)
            outs.append(self.h_proj(out.reshape(B, H, W, self.h_dim)))
        if hasattr(self, "l_q"):
            q = self.l_q(x).view(B, H * W, self.l_heads, self.head_dim).transpose(1, 2)
            pooled = self.pooled(x)
            outs.append(self.l_proj(self.lofi_attend(q, self.l_kv(pooled), pooled).reshape(B, H, W, self.l_dim)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        return (f"window_size={self.ws}, alpha={self.alpha}, hi_heads={self.h_heads}, lo_heads={self.l_heads}, "
                f"head_dim={self.head_dim}, backend={self.backend or 'auto'}")
