"""(Dilated) neighborhood attention module: NAT / DiNAT's token mixer on ``[B, H, W, C]`` maps.

The module only projects, reshapes and prints its geometry; the attention itself is
:func:`visionzoo.ops.neighborhood.na2d`, dispatched by ``backend`` (``None``: the usual resolution
order of :mod:`visionzoo.ops._backend`). Parameters follow the NATTEN <= 0.17 layout every official
NAT / DiNAT checkpoint carries: ``qkv`` (Linear C -> 3C), ``rpb`` ``[heads, 2k-1, 2k-1]``, ``proj``.

Dilation and input size. ``dilation`` is what the layer was configured (and trained) with. At
forward time each axis uses ``d_eff = max(1, min(dilation, n // kernel_size))`` for a map of ``n``
pixels on that axis. Wherever the official code runs (``n >= kernel_size * dilation``) this is the
configured dilation, so outputs are unchanged; on smaller maps (small images, late stages at low
resolution) the dilation shrinks to the largest one whose dilation groups still hold a full
window (DiNAT's own rule ``d = n // k``), and maps smaller than the kernel attend to the whole map
(``na2d`` clamps the window). The official code raises there instead.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..ops.neighborhood import na2d
from ..ops.neighborhood.reference import na2d_reference
from . import fused_eval

__all__ = ["NeighborhoodAttn2d", "effective_dilation"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    vals = (value, value) if isinstance(value, int) else tuple(value)
    if len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
        raise ValueError(f"NeighborhoodAttn2d: {name} must be a positive int or a pair of them, got {value!r}")
    return vals


def effective_dilation(size: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Per-axis dilation used on a map of ``size``: ``max(1, min(dilation, n // kernel_size))``.

    Symbolic sizes (``torch.export`` / ``torch.compile`` with dynamic H, W) give a symbolic dilation
    (``torch.sym_min`` / ``sym_max``: no guard on the size), which ``na2d`` takes as it is. Under
    ``torch.jit.trace`` sizes are traced tensors: the trace keeps this map's dilation."""
    size = [int(n) if isinstance(n, torch.Tensor) else n for n in size]
    return tuple(d if d == 1 else torch.sym_max(1, torch.sym_min(d, n // k))
                 for n, k, d in zip(size, kernel_size, dilation))


@register_notrace_module  # a leaf for timm's FX feature extraction: its size-dependent dilation is Python
class NeighborhoodAttn2d(nn.Module):
    """Multi-head (dilated) neighborhood attention with relative position bias.

    Args:
        dim: channels ``C`` (divisible by ``num_heads``).
        num_heads: attention heads.
        kernel_size: window size, int or ``(kh, kw)``.
        dilation: configured dilation, int or ``(dh, dw)``; clamped per forward to the map size
            (module docstring).
        qkv_bias: bias on the qkv projection.
        qk_scale: logit scale, default ``head_dim ** -0.5``.
        attn_drop: must be 0: the fused op has no attention-probability dropout (every official
            configuration uses 0).
        proj_drop: dropout after the output projection.
        rpb: learn a relative position bias ``[heads, 2kh-1, 2kw-1]``.
        backend: ``na2d`` backend (``None`` resolves per call).

    Shapes: ``[B, H, W, C] -> [B, H, W, C]``, any ``H, W >= 1``.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int | Sequence[int], dilation: int | Sequence[int] = 1,
                 qkv_bias: bool = True, qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rpb: bool = True, backend: str | None = None, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"NeighborhoodAttn2d: dim ({dim}) must be divisible by num_heads ({num_heads})")
        if attn_drop:
            raise ValueError(f"NeighborhoodAttn2d: attn_drop={attn_drop} is not supported (na2d applies no dropout to "
                             "attention probabilities); use proj_drop / drop_path instead")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.dilation = _pair(dilation, "dilation")
        self.scale = qk_scale or self.head_dim ** -0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        if rpb:
            kh, kw = self.kernel_size
            self.rpb = nn.Parameter(torch.empty(num_heads, 2 * kh - 1, 2 * kw - 1, **dd))
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.rpb is not None:
            nn.init.trunc_normal_(self.rpb, std=0.02)

    def dilation_for(self, height: int, width: int) -> tuple[int, int]:
        """The dilation used on a ``height x width`` map (see the module docstring)."""
        return effective_dilation((height, width), self.kernel_size, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # a static branch: TorchScript compiles the op's reference, not its front door
            return self._forward_scripted(x)
        B, H, W, C = x.shape
        q, k, v = fused_eval.linear(self, self.qkv, x).reshape(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        x = na2d(q, k, v, self.kernel_size, self.dilation_for(H, W), rpb=self.rpb, scale=self.scale,
                 backend=self.backend)
        return self.proj_drop(fused_eval.linear(self, self.proj, x.reshape(B, H, W, C)))

    def _forward_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` under ``torch.jit.script``: plain projections, the same per-axis dilation in ints,
        and ``na2d``'s reference (what the front door computes without padding: windows shifted inward)."""
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        dil = [max(1, min(dh, H // kh)), max(1, min(dw, W // kw))]
        rpb = self.rpb
        if rpb is not None:
            rpb = rpb.to(q.dtype)
        x = na2d_reference(q, k, v, [kh, kw], dil, [1, 1], rpb, self.scale)
        return self.proj_drop(self.proj(x.reshape(B, H, W, C)))

    def extra_repr(self) -> str:
        one = lambda t: t[0] if t[0] == t[1] else t  # noqa: E731
        ks, dil = one(self.kernel_size), one(self.dilation)
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={ks}, dilation={dil} "
                f"(at forward, per axis: max(1, min({dil}, size // {ks}))), rpb={self.rpb is not None}, "
                f"backend={self.backend or 'auto'}")
