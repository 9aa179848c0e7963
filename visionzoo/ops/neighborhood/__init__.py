"""(Dilated, strided) neighborhood attention: ``na1d`` and ``na2d``.

Every query attends to the ``kernel_size`` nearest keys of its dilation group, with the window
shifted inward at the borders exactly as NATTEN places it, an optional relative position bias in
the NATTEN <= 0.17 layout (what the official NAT/DiNAT checkpoints carry), and Generalized
Neighborhood Attention strides (``stride == kernel_size`` is blocked window attention; with
``dilation == n // kernel_size`` it is MaxViT's grid attention). Maps smaller than
``kernel_size * dilation`` are allowed: the window is clamped to the dilation group.
See :mod:`.reference` for the exact definition.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import _backend
from .._checks import check_qkv, triton_attention_can_run

__all__ = ["na1d", "na2d"]

_backend.register_op(
    "na2d",
    impls={
        "reference": "visionzoo.ops.neighborhood.reference:na2d_reference",
        "cpu": "visionzoo.ops.neighborhood.cpu:na2d_cpu",
        "triton": "visionzoo.ops.neighborhood.triton:na2d_triton",
    },
    checks={"triton": triton_attention_can_run},
)


def _pair(value: int | Sequence[int], name: str, ndim: int) -> tuple[int, ...]:
    vals = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(vals) != ndim or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise ValueError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    if any(x < 1 for x in vals):
        raise ValueError(f"{name} must be >= 1 on every axis, got {value!r}")
    return vals


def _check(q, k, v, rpb, kernel_size, stride, ndim):
    check_qkv(q, k, v, ndim + 3, "[B, H, W, heads, D]" if ndim == 2 else "[B, L, heads, D]")
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q, k must have equal shapes and v the same except D: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    for s, kk in zip(stride, kernel_size):
        if s > kk:
            raise ValueError(f"stride {stride} must not exceed kernel_size {kernel_size} on any axis")
    if rpb is not None:
        want = (q.shape[-2],) + tuple(2 * kk - 1 for kk in kernel_size)
        if tuple(rpb.shape) != want:
            raise ValueError(f"rpb must be [heads, 2k-1, ...] = {list(want)}, got {list(rpb.shape)}")
        if rpb.device != q.device:
            raise ValueError(f"rpb must be on q's device {q.device}, got {rpb.device}")


def _axis_padding_ok(n: int, n_valid: int, kernel: int, dilation: int, stride: int) -> bool:
    """Every window of the axis holds a real key (plain ints, the formulas of :mod:`.reference`)."""
    for i in range(n):
        g, p = i % dilation, i // dilation
        n_g = (n - g + dilation - 1) // dilation
        leader = min((p // stride) * stride + stride // 2, n_g - 1)
        start = min(max(leader - kernel // 2, 0), n_g - min(kernel, n_g))
        if start * dilation + g >= n_valid:  # the window's first key is its smallest coordinate
            return False
    return True


def _valid(valid, size, kernel_size, dilation, stride) -> tuple[int, ...] | None:
    """Checked ``valid`` size, or None when it covers the whole map (nothing to mask)."""
    if valid is None:
        return None
    vd = _pair(valid, "valid", len(size))
    if any(x > n for x, n in zip(vd, size)):
        raise ValueError(f"valid {tuple(vd)} must not exceed the map size {tuple(size)}")
    for ax, (n, nv, kk, d, s) in enumerate(zip(size, vd, kernel_size, dilation, stride)):
        if not _axis_padding_ok(n, nv, kk, d, s):
            raise ValueError(
                f"valid {tuple(vd)}: on axis {ax} some windows (kernel {kk}, dilation {d}, stride {s}) of the "
                f"{n}-long padded map hold only padding; pad by less (e.g. to the next multiple of the window)")
    return None if tuple(vd) == tuple(size) else vd


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int | Sequence[int],
         dilation: int | Sequence[int] = 1, stride: int | Sequence[int] = 1, rpb: torch.Tensor | None = None,
         scale: float | None = None, backend: str | None = None,
         valid: int | Sequence[int] | None = None) -> torch.Tensor:
    """2-D neighborhood attention.

    Args:
        q, k: ``[B, H, W, heads, D]``.
        v: ``[B, H, W, heads, Dv]``.
        kernel_size: window size, int or ``(kh, kw)``.
        dilation: int or ``(dh, dw)``.
        stride: int or ``(sh, sw)``, each ``<= kernel_size``.
        rpb: optional relative position bias ``[heads, 2kh-1, 2kw-1]``.
        scale: logit scale, default ``D ** -0.5``.
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).
        valid: ``(Hv, Wv)`` real size of a map zero-padded at the bottom/right (MaxViT pads to a
            multiple of its window): keys at row ``>= Hv`` or column ``>= Wv`` get no attention
            weight. Windows are still placed on the padded ``H x W`` map, so blocked (``stride ==
            kernel_size``) and grid attention keep their partition. Every query's window must hold
            at least one real key. Default: the whole map is real.

    Returns:
        ``[B, H, W, heads, Dv]``.
    """
    ks, dil, st = (_pair(kernel_size, "kernel_size", 2), _pair(dilation, "dilation", 2), _pair(stride, "stride", 2))
    _check(q, k, v, rpb, ks, st, 2)
    vd = _valid(valid, q.shape[1:3], ks, dil, st)
    if rpb is not None and rpb.dtype != q.dtype:
        rpb = rpb.to(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    fn, _ = _backend.resolve("na2d", q, k, v, backend=backend, kernel_size=ks, dilation=dil, stride=st)
    if vd is None:
        return fn(q, k, v, ks, dil, st, rpb, scale)
    return fn(q, k, v, ks, dil, st, rpb, scale, vd)


def na1d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int | Sequence[int],
         dilation: int | Sequence[int] = 1, stride: int | Sequence[int] = 1, rpb: torch.Tensor | None = None,
         scale: float | None = None, backend: str | None = None, valid: int | Sequence[int] | None = None
         ) -> torch.Tensor:
    """1-D neighborhood attention on ``[B, L, heads, D]``; ``rpb`` is ``[heads, 2k-1]``; ``valid`` is
    the real length of a right-padded sequence (see :func:`na2d`).

    Runs as :func:`na2d` on a ``1 x L`` map, so every backend of ``na2d`` serves it.
    """
    ks, dil, st = (_pair(kernel_size, "kernel_size", 1), _pair(dilation, "dilation", 1), _pair(stride, "stride", 1))
    _check(q, k, v, rpb, ks, st, 1)
    rpb2 = None if rpb is None else rpb.unsqueeze(1)
    out = na2d(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), (1,) + ks, (1,) + dil, (1,) + st,
               rpb2, scale, backend, None if valid is None else (1,) + _pair(valid, "valid", 1))
    return out.squeeze(1)
