"""Agent attention (Han et al., *Agent Attention*, ECCV 2024) on ``[B, H, W, C]`` maps.

:class:`AgentAttn` computes the official ``AgentAttention`` (Agent-PVT with ``sr_ratio`` 1, and
Agent-Swin's global agent stages): ``q, k, v = qkv(x)``; ``n`` agents are ``q`` average-pooled to
``sqrt(n) x sqrt(n)`` (``AdaptiveAvgPool2d``); :func:`visionzoo.ops.agent_attn` with the two position
biases; plus a depthwise 3x3 convolution of ``v`` (``dwc``); then ``proj``. The logit scale is
``head_dim ** -0.5`` (the official code ignores ``qk_scale``).

Position biases (official shapes, for the build-time map ``map_size = (h, w)``):

* ``an_bias`` / ``na_bias`` ``[heads, n, 7, 7]``: bilinearly resized (``align_corners=False``) to the
  runtime map, always (as the official code does at its one size);
* ``ah_bias [1, heads, n, h, 1]`` + ``aw_bias [1, heads, n, 1, w]`` (agents -> keys) and
  ``ha_bias [1, heads, h, 1, n]`` + ``wa_bias [1, heads, 1, w, n]`` (queries -> agents), broadcast to
  the ``h x w`` map.

``bias_kv = resize(an_bias) + ah + aw`` (``[heads, n, H W]``) and ``bias_q = resize(na_bias)^T + ha + wa``
(``[heads, H W, n]``). They are cached per (map size, device, dtype) and rebuilt whenever a bias
parameter changed (``_version``); with autograd recording they are rebuilt on every call, so
training never sees a stale bias and the biases get their gradients.

Other map sizes. The official blocks run only at the build-time square map (their reshapes fail
elsewhere). Here any ``H, W >= 1`` runs: the factorised biases are linearly interpolated
(``align_corners=False``) along their spatial axis to ``H`` rows / ``W`` columns (identity at the
build size), the 7x7 tables are resized to ``H x W`` as always, and the agents are pooled from the
non-square map with ``AdaptiveAvgPool2d`` (its overlapping cells when ``H`` or ``W`` is not a multiple
of ``sqrt(n)``; maps smaller than ``sqrt(n)`` repeat pixels). At the build size the result is the
official one.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops.agent_attn import agent_attn
from ..ops.agent_attn.reference import agent_attn_reference

__all__ = ["AgentAttn", "resize_axis"]

_BIASES = ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")


def resize_axis(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` linearly interpolated (``align_corners=False``) along ``dim`` to ``size``."""
    if t.shape[dim] == size:
        return t
    moved = t.movedim(dim, -1)
    out = F.interpolate(moved.reshape(-1, 1, moved.shape[-1]), size=size, mode="linear", align_corners=False)
    return out.reshape(list(moved.shape[:-1]) + [size]).movedim(-1, dim)


@register_notrace_module  # an FX leaf: the bias cache and the op's checks are Python on the map size
class AgentAttn(nn.Module):
    """Agent attention with the official position biases and ``dwc(v)`` on ``[B, H, W, C]`` maps.

    Args:
        dim: channels ``C`` (divisible by ``num_heads``).
        num_heads: attention heads.
        map_size: ``(h, w)``, the build-time map that sizes ``ah/aw/ha/wa_bias`` (official: the square
            window / patch grid).
        agent_num: agents ``n``, a perfect square (official: 49; Agent-PVT stages 1-3 use 4, 9, 16...).
        qkv_bias: bias on the ``qkv`` projection.
        attn_drop: must be 0 (the op applies no dropout to the probabilities; every official config
            uses 0).
        proj_drop: dropout after ``proj``.
        backend: :func:`~visionzoo.ops.agent_attn` backend (``None``: resolved per call).

    Shapes: ``[B, H, W, C] -> [B, H, W, C]``, any ``H, W >= 1``.
    """

    #: the position-bias parameters (truncated-normal init; the bias cache is stamped with them)
    bias_names: tuple[str, ...] = _BIASES

    def __init__(self, dim: int, num_heads: int, *, map_size: tuple[int, int], agent_num: int = 49,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str | None = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"AgentAttn: dim ({dim}) must be divisible by num_heads ({num_heads})")
        pool = math.isqrt(agent_num) if isinstance(agent_num, int) and agent_num > 0 else 0
        if pool * pool != agent_num:
            raise ValueError(f"AgentAttn: agent_num must be a perfect square (agents pool to sqrt(n) x sqrt(n)), "
                             f"got {agent_num!r}")
        h, w = map_size
        if min(h, w) < 1:
            raise ValueError(f"AgentAttn: map_size must be two ints >= 1, got {map_size!r}")
        if attn_drop:
            raise ValueError(f"AgentAttn: attn_drop={attn_drop} is not supported (agent_attn applies no dropout to "
                             "attention probabilities; every official configuration uses 0)")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.map_size, self.agent_num, self.pool_size = (int(h), int(w)), agent_num, pool
        self.scale = self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        n = agent_num
        self.an_bias = nn.Parameter(torch.empty(num_heads, n, 7, 7, **dd))
        self.na_bias = nn.Parameter(torch.empty(num_heads, n, 7, 7, **dd))
        self.ah_bias = nn.Parameter(torch.empty(1, num_heads, n, h, 1, **dd))
        self.aw_bias = nn.Parameter(torch.empty(1, num_heads, n, 1, w, **dd))
        self.ha_bias = nn.Parameter(torch.empty(1, num_heads, h, 1, n, **dd))
        self.wa_bias = nn.Parameter(torch.empty(1, num_heads, 1, w, n, **dd))
        self._bias_cache: dict = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name in self.bias_names:
            nn.init.trunc_normal_(getattr(self, name), std=0.02)

    def build_biases(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bias_kv [heads, n, H W], bias_q [heads, H W, n])`` for an ``H x W`` map, in the parameters'
        dtype, differentiable (see the module docstring); ``bias_q`` is a transposed view of an
        ``[heads, n, H W]`` tensor."""
        return self.patch_biases(height, width)

    def patch_biases(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`build_biases` of this class (subclasses extend it through this method: TorchScript has no
        ``super()``)."""
        heads, n, size = self.num_heads, self.agent_num, [height, width]
        an = F.interpolate(self.an_bias, size=size, mode="bilinear", align_corners=False)
        na = F.interpolate(self.na_bias, size=size, mode="bilinear", align_corners=False)
        ah, aw = resize_axis(self.ah_bias, 3, height), resize_axis(self.aw_bias, 4, width)
        ha, wa = resize_axis(self.ha_bias, 2, height), resize_axis(self.wa_bias, 3, width)
        bias_kv = (an + (ah + aw)[0]).reshape(heads, n, height * width)
        # built agents-major and returned transposed: the cpu backend reads it as [heads, n, H W]
        bias_q = na.reshape(heads, n, height * width) + (ha + wa)[0].reshape(heads, -1, n).transpose(1, 2)
        return bias_kv, bias_q.transpose(1, 2)

    def biases(self, height: int, width: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`build_biases` in ``dtype``, cached per (map, device, dtype) while no bias parameter
        changes; rebuilt on every call when autograd records or under compilation."""
        params = [getattr(self, name) for name in self.bias_names]
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            return tuple(b.to(dtype) for b in self.build_biases(height, width))
        # inference-mode tensors cannot be saved for backward elsewhere: they get entries of their own
        key = (height, width, params[0].device, dtype, torch.is_inference_mode_enabled())
        stamp = tuple((p.data_ptr(), p._version) for p in params)
        hit = self._bias_cache.get(key)
        if hit is None or hit[0] != stamp:
            with torch.no_grad():
                hit = (stamp, tuple(b.to(dtype) for b in self.build_biases(height, width)))
            self._bias_cache[key] = hit
        return hit[1]

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The attention from ``q, k, v`` (``[B, H, W, C]``, as ``qkv`` splits them) to the input of
        ``proj``: agents pooled from ``q``, :func:`~visionzoo.ops.agent_attn` with the biases, ``+ dwc(v)``."""
        B, H, W, C = q.shape
        heads, hd = self.num_heads, self.head_dim
        agents = F.adaptive_avg_pool2d(q.permute(0, 3, 1, 2), self.pool_size)  # [B, C, p, p]
        agents = agents.reshape(B, heads, hd, self.agent_num).transpose(-1, -2)
        qh, kh, vh = (t.reshape(B, H * W, heads, hd).transpose(1, 2) for t in (q, k, v))  # [B, heads, H W, hd]
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the op's reference, no bias cache
            bias_kv, bias_q = self.build_biases(H, W)
            out = agent_attn_reference(qh, kh, vh, agents, bias_kv.to(q.dtype), bias_q.to(q.dtype), self.scale)
        else:
            bias_kv, bias_q = self.biases(H, W, q.dtype)
            out = agent_attn(qh, kh, vh, agents, bias_kv, bias_q, scale=self.scale, backend=self.backend)
        # not in place: with one head the reshape is a view of the op's output, which the Triton op saves
        return out.transpose(1, 2).reshape(B, H, W, C) + self.dwc(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, x.shape[-1])).unbind(-2)
        out = self.mix(q, k, v)
        return self.proj_drop(self.proj(out))

    def _apply(self, fn, recurse=True):
        self._bias_cache = {}  # .to() / .half() / .cuda() replace the parameters: drop what was built from them
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, map_size={self.map_size}, "
                f"backend={self.backend or 'auto'}")
