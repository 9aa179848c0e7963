"""CPU path of LKA (placeholder until measured: the reference's two depthwise convolutions)."""
from __future__ import annotations

from .reference import lka_reference

__all__ = ["lka_cpu"]


def lka_cpu(x, w0, b0, w1, b1, dilation):
    """``x [B, C, H, W]`` -> ``[B, C, H, W]`` (see :mod:`.reference`)."""
    return lka_reference(x, w0, b0, w1, b1, dilation)
