"""Focused linear attention (Han, Pan, Han, Song, Huang, *FLatten Transformer*, ICCV 2023).

The official ``FocusedLinearAttention`` (``models/flatten_pvt.py``, ``flatten_pvt_v2.py``,
``flatten_swin.py`` at its May-2024 normalised form) on ``[B, H, W, C]`` maps:

1. ``q, k, v`` from ``qkv`` (or, with PVT's spatial reduction ``sr_ratio > 1``, ``q`` from the map
   and ``k, v`` from ``kv(norm(sr(x)))``, ``sr`` a ``sr x sr`` stride-``sr`` convolution);
2. ``k += positional_encoding``, the focused feature map on q and k (learnable ``scale``,
   ``focusing_factor``) and linear attention per head: :func:`visionzoo.ops.linear_attn`;
3. ``+ dwc(v)``: the rank-restoring depthwise ``kernel_size`` convolution, ONE
   ``Conv2d(head_dim, head_dim, groups=head_dim)`` shared by all heads (run on a
   ``[B * heads, head_dim, H, W]`` view of v). With ``sr_ratio > 1`` v has ``n < N`` tokens and is
   first resized to ``N`` by 1-D linear interpolation along the flattened token axis (official);
4. ``proj`` and ``proj_drop``.

Resolution. ``positional_encoding`` is ``[1, h * w, C]`` for the build-time ``map_size = (h, w)``
(``[1, (h // sr) * (w // sr), C]`` with spatial reduction; the official shape, so checkpoints copy
it). On another map it is resampled as a 2-D ``[C, h, w]`` image (bilinear, ``align_corners=False``);
the official code only runs at its build size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.linear_attn import linear_attn
from ..ops.linear_attn.reference import linear_attn_reference

__all__ = ["FocusedLinearAttn"]


def _size(value, name: str) -> tuple[int, int]:
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"FocusedLinearAttn: {name} must be an int or (h, w) of ints >= 1, got {value!r}")
    return size


@register_notrace_module  # an FX leaf: the positional encoding is resampled by the runtime map size
class FocusedLinearAttn(nn.Module):
    """FLatten's focused linear attention ``[B, H, W, C] -> [B, H, W, C]``.

    Args:
        dim: channels ``C``, divisible by ``num_heads``.
        num_heads: heads.
        map_size: build-time map ``(h, w)`` (or one int), sizing ``positional_encoding``.
        focusing_factor: ``p`` of the focused feature map (official 3).
        kernel_size: side of the shared depthwise convolution on v (official 5).
        sr_ratio: PVT spatial reduction of the keys and values (1: none; keys ``qkv``, else ``q``, ``kv``,
            ``sr``, ``norm``).
        qkv_bias: biases of the q/k/v projections.
        attn_drop: must be 0 (the official module builds an attention dropout it never applies).
        proj_drop: dropout after ``proj``.
        backend: :func:`~visionzoo.ops.linear_attn` backend (None: resolved per call).
    """

    def __init__(self, dim: int, num_heads: int, *, map_size, focusing_factor: float = 3, kernel_size: int = 5,
                 sr_ratio: int = 1, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"FocusedLinearAttn: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"FocusedLinearAttn: kernel_size must be an odd int >= 1, got {kernel_size!r}")
        if not isinstance(sr_ratio, int) or isinstance(sr_ratio, bool) or sr_ratio < 1:
            raise ValueError(f"FocusedLinearAttn: sr_ratio must be an int >= 1, got {sr_ratio!r}")
        if not focusing_factor > 0:
            raise ValueError(f"FocusedLinearAttn: focusing_factor must be > 0, got {focusing_factor!r}")
        if attn_drop:
            raise ValueError(f"FocusedLinearAttn: attn_drop={attn_drop} is not supported (linear attention forms "
                             "no attention matrix to drop; the official module never applies its attn_drop)")
        h, w = self.map_size = _size(map_size, "map_size")
        if sr_ratio > 1 and (h < sr_ratio or w < sr_ratio):
            raise ValueError(f"FocusedLinearAttn: map_size {self.map_size} is smaller than sr_ratio {sr_ratio}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.focusing_factor, self.kernel_size, self.sr_ratio = focusing_factor, kernel_size, sr_ratio
        self.backend = backend
        if sr_ratio == 1:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, **dd)
            self.norm = nn.LayerNorm(dim, eps=1e-5, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        d = self.head_dim
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d, **dd)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim, **dd))
        self.positional_encoding = nn.Parameter(torch.zeros(1, (h // sr_ratio) * (w // sr_ratio), dim, **dd))

    def pos_for(self, height: int, width: int) -> torch.Tensor:
        """``positional_encoding`` for a key map of ``height x width`` tokens: ``[1, height * width, C]``."""
        h, w = self.map_size[0] // self.sr_ratio, self.map_size[1] // self.sr_ratio
        pos = self.positional_encoding
        if height == h and width == w:
            return pos
        grid = pos.reshape(1, h, w, self.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        N = H * W
        if hasattr(self, "qkv"):  # sr_ratio 1 (hasattr: TorchScript compiles only the branch of the existing modules)
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
            hk, wk = H, W
        else:
            if H < self.sr_ratio or W < self.sr_ratio:
                raise ValueError(f"FocusedLinearAttn: the map {H}x{W} is smaller than sr_ratio {self.sr_ratio}")
            q = self.q(x).reshape(B, N, C)
            xs = self.sr(x.permute(0, 3, 1, 2))
            hk, wk = xs.shape[2], xs.shape[3]
            k, v = self.kv(self.norm(xs.flatten(2).transpose(1, 2))).reshape(B, hk * wk, 2, C).unbind(2)
        return self.proj_drop(self.proj(self.attend(q, k, v, (H, W), (hk, wk))))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
               kv_size: tuple[int, int]) -> torch.Tensor:
        """The input of ``proj``, ``[B, H, W, C]``, from ``q`` (``[B, H W, C]``) and ``k, v`` (``[B, hk wk, C]``)
        on the ``size = (H, W)`` query map and the ``kv_size = (hk, wk)`` key map: linear attention + ``dwc(v)``."""
        return self.focused(q, k, v, size, kv_size)

    def focused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                kv_size: tuple[int, int]) -> torch.Tensor:
        """:meth:`attend` of this class (subclasses extend :meth:`attend` through it: TorchScript has no
        ``super()``)."""
        (H, W), (hk, wk) = size, kv_size
        B, N, C = q.shape
        heads, d = self.num_heads, self.head_dim
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the op's reference, not its front door
            out = linear_attn_reference(q, k, v, heads, float(self.focusing_factor), self.scale.reshape(-1),
                                        self.pos_for(hk, wk), 1e-6)  # linear_attn's default eps
        else:
            out = linear_attn(q, k, v, num_heads=heads, focusing_factor=self.focusing_factor, scale=self.scale,
                              pos=self.pos_for(hk, wk), backend=self.backend)
        # the shared depthwise conv sees each head as a [head_dim, H, W] image: [B * heads, d, n]
        v = v.reshape(B, hk * wk, heads, d).permute(0, 2, 3, 1).reshape(B * heads, d, hk * wk)
        if self.sr_ratio > 1:
            v = F.interpolate(v, size=N, mode="linear")
        v = self.dwc(v.reshape(B * heads, d, H, W)).reshape(B, C, H, W).permute(0, 2, 3, 1)
        return out.reshape(B, H, W, C) + v

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, map_size={self.map_size}, "
                f"focusing_factor={self.focusing_factor}, kernel_size={self.kernel_size}, sr_ratio={self.sr_ratio}, "
                f"backend={self.backend or 'auto'}")
