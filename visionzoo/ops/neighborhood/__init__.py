"""(Dilated, strided) neighborhood attention: ``na1d`` and ``na2d``.

Every query attends to the ``kernel_size`` nearest keys of its dilation group, with the window
shifted inward at the borders exactly as NATTEN places it, an optional relative position bias in
the NATTEN <= 0.17 layout (what the official NAT/DiNAT checkpoints carry), and Generalized
Neighborhood Attention strides (``stride == kernel_size`` is blocked window attention; with
``dilation == n // kernel_size`` it is MaxViT's grid attention). Maps smaller than
``kernel_size * dilation`` are allowed: the window is clamped to the dilation group.
Swin's shifted windows are ``na2d(q, k, v, P, stride=P, shift=s)``, and ``pad=True`` places whole,
disjoint windows on any map size (zero padding at the bottom/right, masked, cropped off): the front
door pads, masks and crops for every backend, so callers never pad for attention themselves.
See :mod:`.reference` for the exact definition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import functools

import torch

from .. import _backend
from .._checks import check_qkv, triton_attention_can_run
from .._sizes import is_static
from ..partition import crop, pad_map

__all__ = ["na1d", "na2d", "swin_rpb_to_na", "na_rpb_to_swin"]

_backend.register_op(
    "na2d",
    impls={
        "reference": "visionzoo.ops.neighborhood.reference:na2d_reference",
        "cpu": "visionzoo.ops.neighborhood.cpu:na2d_cpu",
        "triton": "visionzoo.ops.neighborhood.triton:na2d_triton",
    },
    checks={"triton": triton_attention_can_run},
    # SymInt geometry: under torch.export / torch.compile with dynamic H, W a dilation clamped to the map (NAT)
    # or derived from it (MaxViT's grid), and a window spanning it (CSWin's last stage), are symbolic
    schema="(Tensor q, Tensor k, Tensor v, SymInt[] kernel_size, SymInt[] dilation, SymInt[] stride, Tensor? rpb, "
           "float scale, SymInt[]? valid)",
    diff=(0, 1, 2, 6),
    fake=lambda q, k, v, *_: v.new_empty(v.shape),
)


def _is_int(x) -> bool:
    """A plain int or a symbolic one (a ``SymInt`` of ``torch.export`` / ``torch.compile`` with dynamic dims)."""
    return isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool)


def _pair(value: int | Sequence[int], name: str, ndim: int) -> tuple[int, ...]:
    vals = (value,) * ndim if _is_int(value) else tuple(value)
    if len(vals) != ndim or not all(_is_int(x) for x in vals):
        raise ValueError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}")
    for x in vals:
        if isinstance(x, torch.SymInt):  # proved from the value ranges, else a runtime assertion of the program
            torch._check(x >= 1, lambda: f"{name} must be >= 1 on every axis, got {value!r}")
        elif x < 1:
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


def _shift(shift, kernel_size, dilation, stride) -> tuple[int, ...]:
    """Checked ``shift``: in ``[0, kernel)``; non-zero only where ``stride == kernel`` and dilation is 1."""
    ndim = len(kernel_size)
    sh = (shift,) * ndim if isinstance(shift, int) else tuple(shift)
    if len(sh) != ndim or not all(isinstance(x, int) and not isinstance(x, bool) for x in sh):
        raise ValueError(f"shift must be an int or a sequence of {ndim} ints, got {shift!r}")
    for s, kk, d, st in zip(sh, kernel_size, dilation, stride):
        if not 0 <= s < kk:
            raise ValueError(f"shift {shift!r} must be in [0, kernel_size) on every axis (kernel_size "
                             f"{tuple(kernel_size)})")
        if s and (st != kk or d != 1):
            raise ValueError(f"shift {shift!r} needs stride == kernel_size and dilation 1 on each shifted axis "
                             f"(Swin's windows), got kernel_size {tuple(kernel_size)}, stride {tuple(stride)}, "
                             f"dilation {tuple(dilation)}")
    return sh


@functools.lru_cache(maxsize=1024)
def _axis_padding_ok(n: int, lo: int, hi: int, kernel: int, dilation: int, stride: int) -> bool:
    """Every window of the axis holds a real key, one in ``[lo, hi)`` (plain ints, the formulas of
    :mod:`.reference`)."""
    for i in range(n):
        g, p = i % dilation, i // dilation
        n_g = (n - g + dilation - 1) // dilation
        leader = min((p // stride) * stride + stride // 2, n_g - 1)
        start = min(max(leader - kernel // 2, 0), n_g - min(kernel, n_g))
        if not any(lo <= (start + j) * dilation + g < hi for j in range(min(kernel, n_g))):
            return False
    return True


@dataclass(frozen=True)
class _Layout:
    """Where the caller's map sits in the map the backends see: ``before`` rows / columns of zero padding
    at the top / left, ``size`` the padded size, ``region`` ``(H0, W0, H1, W1)`` the real keys (None: all)."""
    before: tuple[int, ...]
    size: tuple[int, ...]
    region: tuple[int, ...] | None


def _layout(size, valid, shift, pad, kernel_size, dilation, stride) -> _Layout:
    """Checked ``valid`` region and the padding that ``shift`` / ``pad`` ask for (see :func:`na2d`)."""
    real = size
    if valid is not None:
        real = _pair(valid, "valid", len(size))
        if any(x > n for x, n in zip(real, size)):
            raise ValueError(f"valid {tuple(real)} must not exceed the map size {tuple(size)}")
    before, padded = (0,) * len(size), tuple(size)
    if pad or any(shift):
        before = tuple((kk - s) % kk for s, kk in zip(shift, kernel_size))
        padded = tuple(-(-(b + n) // (st * d)) * st * d for b, n, st, d in zip(before, size, stride, dilation))
    if valid is None and not (pad or any(shift)):
        return _Layout(before, padded, None)  # the map as it is
    lo, hi = before, tuple(b + x for b, x in zip(before, real))
    static = is_static(*padded, *hi)
    if static and lo == (0,) * len(size) and hi == padded:
        return _Layout(before, padded, None)  # nothing to mask (symbolic sizes: always masked, same result)
    for ax, (n, a, b, kk, d, st) in enumerate(zip(padded, lo, hi, kernel_size, dilation, stride)):
        message = (f"valid {tuple(real)}: on axis {ax} some windows (kernel {kk}, dilation {d}, stride {st}) of the "
                   f"{n}-long padded map hold only padding; pad by less (e.g. to the next multiple of the window), "
                   f"or use a dilation no larger than the map")
        if static and is_static(a, kk, d, st):
            if not _axis_padding_ok(n, a, b, kk, d, st):
                raise ValueError(message)
        elif valid is None and st == kk:  # symbolic sizes: CSWin's whole-map windows are the same SymInt
            # dilation 1: padded by less than a window on each side, so every window holds a real key. A symbolic
            # dilation (MaxViT's grid, ceil(n / P): one window per group, whose first key is real) is not checked:
            # proving it on a network's size expressions takes minutes of symbolic algebra per layer
            if is_static(d) and d != 1:
                _check_whole_windows(n, a, b, kk, d, message)
        else:
            raise ValueError(f"na2d: a padded map with stride {tuple(stride)} < kernel_size {tuple(kernel_size)} "
                             f"(or an explicit valid region) needs static sizes, got the symbolic size {n} on axis "
                             f"{ax}; export with static H, W (or pad with whole windows: stride == kernel_size)")
    return _Layout(before, padded, lo + hi)


def _check_whole_windows(n, lo, hi, kernel, dilation, message: str) -> None:
    """:func:`_axis_padding_ok` for whole windows (``stride == kernel``) and symbolic sizes, in closed form.

    The padded axis is ``m = n / (kernel * dilation)`` windows per dilation group; a window's keys are the
    progression ``(w * kernel + j) * dilation + g``, ``j < kernel``. With ``lo == 0`` every window holds a real
    key iff the latest window start, ``(m - 1) * kernel * dilation + dilation - 1``, is below ``hi``; with
    ``lo > 0`` (shifted windows, dilation 1) also the earliest window end, ``(kernel - 1) * dilation``, must
    reach ``lo``. Checked with ``torch._check``: proved from the value ranges, else a runtime assertion of the
    exported program (or a guard of the compiled graph), never a specialization of the size."""
    m = n // (kernel * dilation)
    _require((m - 1) * kernel * dilation + dilation - 1 < hi, message)
    _require((kernel - 1) * dilation >= lo, message)


def _require(ok, message: str) -> None:
    if isinstance(ok, torch.SymBool):
        torch._check(ok, lambda: message)
    elif not ok:
        raise ValueError(message)


def _pad(x: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``[B, H, W, ...]`` zero-padded into ``layout`` (one copy; none when nothing is padded)."""
    (top, left), (hp, wp) = layout.before, layout.size
    return pad_map(x, top, hp - top - x.shape[1], left, wp - left - x.shape[2])


@_backend.fx_leaf
def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int | Sequence[int],
         dilation: int | Sequence[int] = 1, stride: int | Sequence[int] = 1, rpb: torch.Tensor | None = None,
         scale: float | None = None, backend: str | None = None,
         valid: int | Sequence[int] | None = None, shift: int | Sequence[int] = 0, pad: bool = False
         ) -> torch.Tensor:
    """2-D neighborhood attention.

    Args:
        q, k: ``[B, H, W, heads, D]``.
        v: ``[B, H, W, heads, Dv]``.
        kernel_size: window size, int or ``(kh, kw)``.
        dilation: int or ``(dh, dw)``.
        stride: int or ``(sh, sw)``, each ``<= kernel_size``.
        rpb: optional relative position bias ``[heads, 2kh-1, 2kw-1]``, indexed by key minus query
            ``+ (k - 1)`` (NATTEN <= 0.17, TF MaxViT; Swin's tables: :func:`swin_rpb_to_na`).
        scale: logit scale, default ``D ** -0.5``.
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).
        valid: ``(Hv, Wv)`` real size of a map the caller zero-padded at the bottom/right: keys at row
            ``>= Hv`` or column ``>= Wv`` get no attention weight; windows are still placed on the
            padded ``H x W`` map. Every query's window must hold at least one real key. Default: the
            whole map is real. (``pad=True`` does this padding for the caller.)
        shift: Swin's shifted windows, int or ``(sh, sw)``, each in ``[0, kernel_size)``; non-zero only
            with ``stride == kernel_size`` and dilation 1 on that axis. With ``shift = s`` and window
            ``P`` an axis of length ``n`` is cut into cells at ``s + j * P``, clipped to ``[0, n)``:
            ``[0, s), [s, s + P), ..., [last, n)``, and every token attends to exactly its own cell
            (Swin's ``roll(-s)`` + window partition + region mask, on maps that are multiples of
            ``P``; any ``n`` works). The bias index stays key minus query in map coordinates.
            Implies ``pad=True``.
        pad: zero-pad the map at the bottom/right to a multiple of ``stride * dilation`` per axis (whole
            windows: blocked attention ``stride=P``; grid attention ``kernel_size=P, stride=P,
            dilation=ceil(n / P)``), mask the padding keys, and crop the output back to ``H x W``.
            With ``shift`` the map is also padded ``P - s`` at the top/left. The default (False)
            keeps NATTEN's semantics: a window at the border is shifted inward, not clipped.

    Returns:
        ``[B, H, W, heads, Dv]``.
    """
    ks, dil, st = (_pair(kernel_size, "kernel_size", 2), _pair(dilation, "dilation", 2), _pair(stride, "stride", 2))
    _check(q, k, v, rpb, ks, st, 2)
    sh = _shift(shift, ks, dil, st)
    size = tuple(q.shape[1:3])
    layout = _layout(size, valid, sh, bool(pad), ks, dil, st)
    if rpb is not None and rpb.dtype != q.dtype:
        rpb = rpb.to(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    fn, _ = _backend.resolve("na2d", q, k, v, backend=backend, kernel_size=ks, dilation=dil, stride=st)
    same = not (pad or any(sh)) or (is_static(*layout.size, *size) and layout.size == size)  # nothing to pad
    if not same:
        q, k, v = _pad(q, layout), _pad(k, layout), _pad(v, layout)
    out = fn(q, k, v, ks, dil, st, rpb, scale) if layout.region is None else fn(
        q, k, v, ks, dil, st, rpb, scale, layout.region)
    if same:
        return out
    if is_static(*layout.size, *size):
        return crop(out, size, start=layout.before)
    # symbolic sizes: a gathered copy. A slice's view computes its contiguity, comparing the padded and the
    # real size: a guard that specializes them (the program then refuses every size whose padding differs)
    for ax, (b, n) in enumerate(zip(layout.before, size)):
        out = out.index_select(1 + ax, torch.arange(b, b + n, device=out.device))
    return out


@_backend.fx_leaf
def na1d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int | Sequence[int],
         dilation: int | Sequence[int] = 1, stride: int | Sequence[int] = 1, rpb: torch.Tensor | None = None,
         scale: float | None = None, backend: str | None = None, valid: int | Sequence[int] | None = None,
         shift: int | Sequence[int] = 0, pad: bool = False) -> torch.Tensor:
    """1-D neighborhood attention on ``[B, L, heads, D]``; ``rpb`` is ``[heads, 2k-1]``; ``valid`` is
    the real length of a right-padded sequence; ``shift`` and ``pad`` as in :func:`na2d`.

    Runs as :func:`na2d` on a ``1 x L`` map, so every backend of ``na2d`` serves it.
    """
    ks, dil, st = (_pair(kernel_size, "kernel_size", 1), _pair(dilation, "dilation", 1), _pair(stride, "stride", 1))
    _check(q, k, v, rpb, ks, st, 1)
    sh = _shift(shift, ks, dil, st)
    rpb2 = None if rpb is None else rpb.unsqueeze(1)
    out = na2d(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), (1,) + ks, (1,) + dil, (1,) + st,
               rpb2, scale, backend, None if valid is None else (1,) + _pair(valid, "valid", 1), (0,) + sh, pad)
    return out.squeeze(1)


def _swin_window(window, n_table: int) -> tuple[int, int]:
    wh, ww = _pair(window, "window", 2)
    if (2 * wh - 1) * (2 * ww - 1) != n_table:
        raise ValueError(f"a Swin table for window {(wh, ww)} has (2*{wh}-1)*(2*{ww}-1) = "
                         f"{(2 * wh - 1) * (2 * ww - 1)} rows, got {n_table}")
    return wh, ww


def swin_rpb_to_na(table: torch.Tensor, window: int | Sequence[int]) -> torch.Tensor:
    """Swin's ``relative_position_bias_table`` ``[(2wh-1)(2ww-1), heads]`` (official and timm; indexed by
    query minus key) as ``na2d``'s ``rpb`` ``[heads, 2wh-1, 2ww-1]`` (key minus query): a reshape and a
    flip of both offset axes (a copy)."""
    if table.dim() != 2:
        raise ValueError(f"table must be [(2wh-1)*(2ww-1), heads], got shape {tuple(table.shape)}")
    wh, ww = _swin_window(window, table.shape[0])
    return table.t().reshape(table.shape[1], 2 * wh - 1, 2 * ww - 1).flip(1, 2)


def na_rpb_to_swin(rpb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`swin_rpb_to_na`: ``[heads, 2wh-1, 2ww-1]`` -> ``[(2wh-1)(2ww-1), heads]``."""
    if rpb.dim() != 3 or rpb.shape[1] % 2 == 0 or rpb.shape[2] % 2 == 0:
        raise ValueError(f"rpb must be [heads, 2wh-1, 2ww-1], got shape {tuple(rpb.shape)}")
    return rpb.flip(1, 2).reshape(rpb.shape[0], -1).t().contiguous()
