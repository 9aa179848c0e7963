"""Naive neighborhood attention: the spec every fast path is tested against.

Per axis of length ``n`` with kernel ``k``, dilation ``d`` and stride ``s`` (query ``i``):

* dilation group ``g = i mod d`` of length ``n_g = ceil((n - g) / d)``; position in group ``p = i // d``;
* the window is clamped to the group: ``k_g = min(k, n_g)`` (maps smaller than ``k * d`` attend to
  the whole group instead of failing);
* stride groups share the window of their leader ``l = min((p // s) * s + s // 2, n_g - 1)``;
* window start ``w = clamp(l - k // 2, 0, n_g - k_g)``; neighbours ``(w + j) * d + g`` for ``j < k_g``;
* relative-position-bias index ``(w + j) - p + (k - 1)`` in ``[0, 2k - 2]`` (NATTEN <= 0.17 layout);
* with ``valid = (Hv, Wv)`` (a zero-padded map) keys at row ``>= Hv`` or column ``>= Wv`` are masked;
  windows are placed on the padded map all the same.

This file gathers every window explicitly (k-fold memory): obviously correct, not fast.
"""
from __future__ import annotations

import torch

__all__ = ["axis_tables", "na2d_reference"]


def axis_tables(n: int, kernel: int, dilation: int, stride: int, device=None):
    """Neighbour table of one axis.

    Returns:
        idx: ``[n, kernel]`` long, key index of each window slot (0 where the slot is unused).
        rel: ``[n, kernel]`` long, RPB index of each slot.
        valid: ``[n, kernel]`` bool, slot used (False only where the group is shorter than ``kernel``).
    """
    i = torch.arange(n, device=device)
    g = i % dilation
    p = i // dilation
    n_g = (n - g + dilation - 1) // dilation
    k_g = torch.clamp(n_g, max=kernel)
    leader = torch.minimum((p // stride) * stride + stride // 2, n_g - 1)
    start = torch.minimum(torch.clamp(leader - kernel // 2, min=0), n_g - k_g)
    j = torch.arange(kernel, device=device)
    pos = start[:, None] + j[None, :]
    valid = j[None, :] < k_g[:, None]
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    idx = pos * dilation + g[:, None]
    rel = pos - p[:, None] + (kernel - 1)
    return idx, rel, valid


def na2d_reference(q, k, v, kernel_size, dilation, stride, rpb, scale, valid=None):
    """``[B, H, W, heads, D]`` in, ``[B, H, W, heads, D]`` out; arguments already validated."""
    _, H, W, heads, _ = q.shape
    ih, rh, vh = axis_tables(H, kernel_size[0], dilation[0], stride[0], q.device)
    iw, rw, vw = axis_tables(W, kernel_size[1], dilation[1], stride[1], q.device)
    hh = ih[:, None, :, None]  # [H, 1, kh, 1]
    ww = iw[None, :, None, :]  # [1, W, 1, kw]
    k_nb = k[:, hh, ww]  # [B, H, W, kh, kw, heads, D]
    v_nb = v[:, hh, ww]
    logits = torch.einsum("bxyhd,bxyijhd->bxyhij", q * scale, k_nb)
    if rpb is not None:
        logits = logits + rpb[:, rh[:, None, :, None], rw[None, :, None, :]].permute(1, 2, 0, 3, 4)
    if valid is not None:
        vh, vw = vh & (ih < valid[0]), vw & (iw < valid[1])
    valid = vh[:, None, :, None] & vw[None, :, None, :]  # [H, W, kh, kw]
    logits = logits.masked_fill(~valid[:, :, None], float("-inf"))
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum("bxyhij,bxyijhd->bxyhd", attn, v_nb)
