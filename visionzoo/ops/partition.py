"""Padding and window partitioning of token maps: the one layer every op and block uses.

Maps are ``[B, H, W, ...]`` (``layout="nhwc"``: channels-last token maps, possibly with trailing
``heads, D`` dims) or ``[B, C, H, W]`` (``layout="nchw"``). :func:`pad_to_multiple` and
:func:`pad_to_size` pad with zeros at the bottom and right (``pad_to_multiple`` returns the real
``(H, W)`` so the caller, or the op, can mask the padding and crop it off); :func:`pad_map` pads any
side (e.g. a halo all around, or a shifted window's top/left) and :func:`crop` takes a window at any
``start``. Nothing is copied when there is nothing to pad or crop.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["to_2tuple", "padded_size", "pad_map", "pad_to_multiple", "pad_to_size", "crop", "to_windows",
           "from_windows"]


def to_2tuple(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as ``(h, w)``: an int for both axes or a pair of positive ints (the error names ``name``)."""
    vals = (value, value) if isinstance(value, int) else tuple(value)
    if len(vals) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals) or min(vals) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return vals


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


def pad_map(x: torch.Tensor, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0,
            layout: str = "nhwc") -> torch.Tensor:
    """Zero-pad the map of ``x`` by ``top``/``bottom`` rows and ``left``/``right`` columns (each >= 0;
    one copy, none when all are 0)."""
    for name, n in (("top", top), ("bottom", bottom), ("left", left), ("right", right)):
        if n < 0:
            raise ValueError(f"pad_map: {name} must be >= 0, got {n}")
    dh, dw = _hw_dims(x, layout)
    if not (top or bottom or left or right):
        return x  # F.pad copies even when there is nothing to pad
    return F.pad(x, [0, 0] * (x.dim() - 1 - dw) + [left, right, top, bottom])  # F.pad lists the last dim first


def pad_to_size(x: torch.Tensor, size: Sequence[int], layout: str = "nhwc") -> torch.Tensor:
    """Zero-pad the map of ``x`` at the bottom/right to ``size = (Hp, Wp)`` (each >= the map's)."""
    dh, dw = _hw_dims(x, layout)
    ph, pw = size[0] - x.shape[dh], size[1] - x.shape[dw]
    if ph < 0 or pw < 0:
        raise ValueError(f"pad_to_size: size {tuple(size)} is smaller than the map {tuple(x.shape[dh:dw + 1])}")
    return pad_map(x, 0, ph, 0, pw, layout)


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


def crop(x: torch.Tensor, size: Sequence[int], layout: str = "nhwc", start: Sequence[int] = (0, 0)) -> torch.Tensor:
    """The ``size = (H, W)`` window of the map at row/column ``start`` (default the top-left; a view,
    ``x`` itself when nothing is cropped)."""
    dh, dw = _hw_dims(x, layout)
    if (x.shape[dh], x.shape[dw]) == tuple(size) and tuple(start) == (0, 0):
        return x
    if start[0] < 0 or start[1] < 0 or start[0] + size[0] > x.shape[dh] or start[1] + size[1] > x.shape[dw]:
        raise ValueError(f"crop: window {tuple(size)} at start {tuple(start)} is outside the map "
                         f"{(x.shape[dh], x.shape[dw])}")
    return x.narrow(dh, start[0], size[0]).narrow(dw, start[1], size[1])


def to_windows(x: torch.Tensor, window: int | Sequence[int]) -> torch.Tensor:
    """``[B, nh*wh, nw*ww, *rest]`` -> ``[B, nh*nw, wh*ww, *rest]`` (row-major windows, row-major
    tokens inside each; a copy). The map must be whole windows: pad it first."""
    wh, ww = to_2tuple(window, "window")
    B, H, W, *rest = x.shape
    if H % wh or W % ww:
        raise ValueError(f"to_windows: map {H}x{W} is not whole {wh}x{ww} windows (pad_to_multiple first)")
    nh, nw = H // wh, W // ww
    x = x.reshape(B, nh, wh, nw, ww, *rest).transpose(2, 3)
    return x.reshape(B, nh * nw, wh * ww, *rest)


def from_windows(x: torch.Tensor, window: int | Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`to_windows`: ``[B, nh*nw, wh*ww, *rest]`` -> ``[B, H, W, *rest]`` with
    ``size = (H, W)`` the (padded, whole-window) map size."""
    wh, ww = to_2tuple(window, "window")
    B, _, _, *rest = x.shape
    nh, nw = size[0] // wh, size[1] // ww
    x = x.reshape(B, nh, nw, wh, ww, *rest).transpose(2, 3)
    return x.reshape(B, nh * wh, nw * ww, *rest)
