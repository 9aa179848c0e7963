"""Padding and window partitioning of token maps: the one layer every op and block uses.

Maps are ``[B, H, W, ...]`` (``layout="nhwc"``: channels-last token maps, possibly with trailing
``heads, D`` dims) or ``[B, C, H, W]`` (``layout="nchw"``). Padding is always zeros at the bottom
and right, and every pad returns the real ``(H, W)`` so the caller (or the op) can mask the padding
and crop it off. Nothing is copied when there is nothing to pad or crop.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["to_2tuple", "padded_size", "pad_to_multiple", "pad_to_size", "crop", "to_windows", "from_windows"]


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


def pad_to_size(x: torch.Tensor, size: Sequence[int], layout: str = "nhwc") -> torch.Tensor:
    """Zero-pad the map of ``x`` at the bottom/right to ``size = (Hp, Wp)`` (each >= the map's)."""
    dh, dw = _hw_dims(x, layout)
    ph, pw = size[0] - x.shape[dh], size[1] - x.shape[dw]
    if ph < 0 or pw < 0:
        raise ValueError(f"pad_to_size: size {tuple(size)} is smaller than the map {tuple(x.shape[dh:dw + 1])}")
    if ph == 0 and pw == 0:
        return x  # F.pad copies even when there is nothing to pad
    pad = [0, 0] * (x.dim() - 1 - dw) + [0, pw, 0, ph]  # F.pad lists the last dim first
    return F.pad(x, pad)


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


def crop(x: torch.Tensor, size: Sequence[int], layout: str = "nhwc") -> torch.Tensor:
    """The top-left ``size = (H, W)`` of the map (a view; ``x`` itself when nothing is cropped)."""
    dh, dw = _hw_dims(x, layout)
    if (x.shape[dh], x.shape[dw]) == tuple(size):
        return x
    return x.narrow(dh, 0, size[0]).narrow(dw, 0, size[1])


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
