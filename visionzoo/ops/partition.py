"""Padding and window partitioning of token maps: the one layer every op and block uses.

Maps are ``[B, H, W, ...]`` (``layout="nhwc"``: channels-last token maps, possibly with trailing
``heads, D`` dims) or ``[B, C, H, W]`` (``layout="nchw"``). :func:`pad_to_multiple` and
:func:`pad_to_size` pad with zeros at the bottom and right (``pad_to_multiple`` returns the real
``(H, W)`` so the caller, or the op, can mask the padding and crop it off); :func:`pad_map` pads any
side (e.g. a halo all around, or a shifted window's top/left) and :func:`crop` takes a window at any
``start``. Nothing is copied when there is nothing to pad or crop.

Tracing: the helpers that branch on sizes are ``torch.fx`` leaves (:func:`~visionzoo.ops._backend.fx_leaf`);
under ``torch.compile`` / ``torch.export`` with symbolic sizes they branch only on sizes that are known
(a symbolic pad or crop always pads / narrows, a no-op for a zero amount), so no guard specializes a
dynamic dimension, and their range checks become ``torch._check`` runtime assertions.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ._backend import fx_leaf
from ._sizes import is_static

__all__ = ["to_2tuple", "padded_size", "pad_map", "pad_to_multiple", "pad_to_size", "crop", "to_windows",
           "from_windows"]


def to_2tuple(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as ``(h, w)``: an int for both axes or a pair of positive ints (the error names ``name``)."""
    vals = (value, value) if _is_size(value) or isinstance(value, bool) else tuple(value)
    if len(vals) != 2 or not all(_is_size(x) for x in vals) or (is_static(*vals) and min(vals) < 1):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return vals


def _is_size(x) -> bool:
    """An int, or a size of a trace: a ``SymInt``, or (``torch.jit.trace``) a 0-dim integer tensor."""
    if isinstance(x, torch.Tensor):
        return torch.jit.is_tracing() and x.dim() == 0 and not x.is_floating_point()
    return isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool)


def padded_size(size: Sequence[int], multiple: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` rounded up to a multiple of ``multiple`` per axis."""
    mh, mw = to_2tuple(multiple, "multiple")
    return -(-size[0] // mh) * mh, -(-size[1] // mw) * mw


def _hw_dims(x: torch.Tensor, layout: str) -> tuple[int, int]:
    if layout == "nhwc":
        return 1, 2
    if layout == "nchw":
        return x.dim() - 2, x.dim() - 1
    raise ValueError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")



def _require(ok, message: str) -> None:
    """``ValueError(message)`` if ``ok`` is False; a symbolic condition becomes a ``torch._check``."""
    if isinstance(ok, torch.SymBool):
        torch._check(ok, lambda: message)
    elif not bool(ok):
        raise ValueError(message)


@fx_leaf
def pad_map(x: torch.Tensor, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0,
            layout: str = "nhwc") -> torch.Tensor:
    """Zero-pad the map of ``x`` by ``top``/``bottom`` rows and ``left``/``right`` columns (each >= 0;
    one copy, none when all are 0)."""
    for name, n in (("top", top), ("bottom", bottom), ("left", left), ("right", right)):
        _require(n >= 0, f"pad_map: {name} must be >= 0, got {n}")
    dh, dw = _hw_dims(x, layout)
    if is_static(top, bottom, left, right) and not (top or bottom or left or right):
        return x  # F.pad copies even when there is nothing to pad
    return F.pad(x, [0, 0] * (x.dim() - 1 - dw) + [left, right, top, bottom])  # F.pad lists the last dim first


@fx_leaf
def pad_to_size(x: torch.Tensor, size: Sequence[int], layout: str = "nhwc") -> torch.Tensor:
    """Zero-pad the map of ``x`` at the bottom/right to ``size = (Hp, Wp)`` (each >= the map's)."""
    dh, dw = _hw_dims(x, layout)
    ph, pw = size[0] - x.shape[dh], size[1] - x.shape[dw]
    _require(ph >= 0, f"pad_to_size: size {tuple(size)} is smaller than the map {tuple(x.shape[dh:dw + 1])}")
    _require(pw >= 0, f"pad_to_size: size {tuple(size)} is smaller than the map {tuple(x.shape[dh:dw + 1])}")
    return pad_map(x, 0, ph, 0, pw, layout)


@fx_leaf
def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int], layout: str = "nhwc"
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the map at the bottom/right to a multiple of ``multiple``.

    Returns:
        ``(padded, (H, W))``: the padded tensor and the real map size (the valid region is
        ``[:H, :W]``).
    """
    dh, dw = _hw_dims(x, layout)
    size = (x.shape[dh], x.shape[dw])
    return pad_to_size(x, padded_size(size, multiple), layout), size


@fx_leaf
def crop(x: torch.Tensor, size: Sequence[int], layout: str = "nhwc", start: Sequence[int] = (0, 0)) -> torch.Tensor:
    """The ``size = (H, W)`` window of the map at row/column ``start`` (default the top-left; a view,
    ``x`` itself when nothing is cropped)."""
    dh, dw = _hw_dims(x, layout)
    if is_static(x.shape[dh], x.shape[dw], *size, *start) and (x.shape[dh], x.shape[dw]) == tuple(size) \
            and tuple(start) == (0, 0):
        return x
    for s, n, full in zip(start, size, (x.shape[dh], x.shape[dw])):
        _require(s >= 0, f"crop: window {tuple(size)} at start {tuple(start)} is outside the map "
                         f"{(x.shape[dh], x.shape[dw])}")
        _require(s + n <= full, f"crop: window {tuple(size)} at start {tuple(start)} is outside the map "
                                f"{(x.shape[dh], x.shape[dw])}")
    return x.narrow(dh, start[0], size[0]).narrow(dw, start[1], size[1])


@fx_leaf
def to_windows(x: torch.Tensor, window: int | Sequence[int]) -> torch.Tensor:
    """``[B, nh*wh, nw*ww, *rest]`` -> ``[B, nh*nw, wh*ww, *rest]`` (row-major windows, row-major
    tokens inside each; a copy). The map must be whole windows: pad it first."""
    wh, ww = to_2tuple(window, "window")
    B, H, W, *rest = x.shape
    for n, w in ((H, wh), (W, ww)):
        _require(n % w == 0, f"to_windows: map {H}x{W} is not whole {wh}x{ww} windows (pad_to_multiple first)")
    nh, nw = H // wh, W // ww
    x = x.reshape(B, nh, wh, nw, ww, *rest).transpose(2, 3)
    return x.reshape(B, nh * nw, wh * ww, *rest)


@fx_leaf
def from_windows(x: torch.Tensor, window: int | Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`to_windows`: ``[B, nh*nw, wh*ww, *rest]`` -> ``[B, H, W, *rest]`` with
    ``size = (H, W)`` the (padded, whole-window) map size."""
    wh, ww = to_2tuple(window, "window")
    B, _, _, *rest = x.shape
    nh, nw = size[0] // wh, size[1] // ww
    x = x.reshape(B, nh, nw, wh, ww, *rest).transpose(2, 3)
    return x.reshape(B, nh * wh, nw * ww, *rest)
