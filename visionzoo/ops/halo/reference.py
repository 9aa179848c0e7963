"""Naive halo attention: the spec every fast path is tested against.

Inputs are already zero-padded by :func:`visionzoo.ops.halo.halo_attn`: ``qp [B, nh*bq, nw*bq, heads,
D]``, ``kp``/``vp [B, nh*b + 2h, nw*b + 2h, heads, D]``. Query ``(y, x)`` sits in block
``(y // bq, x // bq)`` at ``(i, j) = (y % bq, x % bq)``; its keys are ``kp[by*b + a, bx*b + c]`` for
``a, c < win = b + 2h``; its logit for key ``(a, c)`` is ``scale q.k + eh[y, x, a - i + win - 1] +
ew[y, x, c - j + win - 1]``. Every window key is gathered explicitly (win^2-fold memory).
"""
from __future__ import annotations

import torch

__all__ = ["halo_reference", "window_index"]


def window_index(n_blocks: int, bq: int, block: int, win: int, device=None):
    """One axis: key index ``[n_blocks * bq, win]`` of each query's window slots and the
    relative-table index ``[n_blocks * bq, win]`` of each slot."""
    y = torch.arange(n_blocks * bq, device=device)
    a = torch.arange(win, device=device)
    keys = (y // bq * block)[:, None] + a[None, :]
    rel = a[None, :] - (y % bq)[:, None] + win - 1
    return keys, rel


def halo_reference(qp, kp, vp, eh, ew, bq, block, halo, scale):
    """Padded inputs (see the module docstring) -> ``[B, nh*bq, nw*bq, heads, Dv]``."""
    _, hq, wq, _, _ = qp.shape
    win = block + 2 * halo
    kh, rh = window_index(hq // bq, bq, block, win, qp.device)
    kw, rw = window_index(wq // bq, bq, block, win, qp.device)
    rows, cols = kh[:, None, :, None], kw[None, :, None, :]  # [hq, 1, win, 1], [1, wq, 1, win]
    k_win, v_win = kp[:, rows, cols], vp[:, rows, cols]  # [B, hq, wq, win, win, heads, D]
    logits = torch.einsum("byxhd,byxachd->byxhac", qp * scale, k_win)
    if eh is not None:
        bias_h = torch.gather(eh, -1, rh[None, :, None, None, :].expand(*eh.shape[:-1], win))
        bias_w = torch.gather(ew, -1, rw[None, None, :, None, :].expand(*ew.shape[:-1], win))
        logits = logits + bias_h[..., :, None] + bias_w[..., None, :]
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum("byxhac,byxachd->byxhd", attn, v_win)
