"""Naive bi-level routing attention: the spec every fast path is tested against.

Inputs are padded by :func:`visionzoo.ops.routing.bra`: maps ``[B, n*rh, n*rw, heads, D]``, routing
indices ``idx [B, n^2, topk]`` and the real size ``valid = (Hv, Wv)``. Region ``r = (r // n, r % n)``
holds the tokens ``(ry*rh + a, rx*rw + c)``: the ``rh x rw`` windows of
:func:`visionzoo.ops.partition.to_windows`. Every query of region ``r`` attends to the tokens of
regions ``idx[b, r, :]`` with row ``< Hv`` and column ``< Wv``. The routed K/V are gathered
explicitly (``topk``-fold memory, the official ``bra_legacy`` formulation).
"""
from __future__ import annotations

import torch

from ..partition import from_windows, to_windows

__all__ = ["bra_reference", "key_valid"]


def key_valid(n_win: int, rh: int, rw: int, valid: tuple[int, int], device=None) -> torch.Tensor:
    """``[n^2, rh*rw]`` bool: which token of each region is real."""
    rows = torch.arange(n_win * rh, device=device) < valid[0]
    cols = torch.arange(n_win * rw, device=device) < valid[1]
    ok = rows.view(n_win, 1, rh, 1) & cols.view(1, n_win, 1, rw)
    return ok.reshape(n_win * n_win, rh * rw)


def bra_reference(qp, kp, vp, idx, n_win, scale, valid):
    """Padded inputs (see the module docstring) -> ``[B, n*rh, n*rw, heads, Dv]``."""
    B, hp, wp = qp.shape[:3]
    rh, rw = hp // n_win, wp // n_win
    qr, kr, vr = (to_windows(t, (rh, rw)) for t in (qp, kp, vp))
    b = torch.arange(B, device=qp.device)[:, None, None]
    k_sel, v_sel = kr[b, idx], vr[b, idx]  # [B, R, topk, T, heads, D]
    logits = torch.einsum("brthd,brkshd->brhtks", qr * scale, k_sel)
    ok = key_valid(n_win, rh, rw, valid, qp.device)[idx]  # [B, R, topk, T]
    logits = logits.masked_fill(~ok[:, :, None, None], float("-inf"))
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    out = torch.einsum("brhtks,brkshd->brthd", attn, v_sel)
    return from_windows(out, (rh, rw), (hp, wp))
