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


def _region_tokens(n_win: int, rh: int, rw: int, wp: int, device=None) -> torch.Tensor:
    """``[n^2, rh*rw]``: the row-major index (in the padded map of width ``wp``) of every token of every
    region, in :func:`~visionzoo.ops.partition.to_windows`'s order; built by broadcasting alone."""
    region, slot = torch.arange(n_win * n_win, device=device), torch.arange(rh * rw, device=device)
    rows = (region // n_win * rh)[:, None] + (slot // rw)[None, :]
    cols = (region % n_win * rw)[:, None] + (slot % rw)[None, :]
    return rows * wp + cols


def _map_slots(n_win: int, rh: int, rw: int, hp: int, wp: int, device=None) -> torch.Tensor:
    """``[hp, wp]``: where every token of the padded map sits in the region-major ``[n^2 * rh*rw]`` order
    (the inverse of :func:`_region_tokens`)."""
    y, x = torch.arange(hp, device=device)[:, None], torch.arange(wp, device=device)[None, :]
    return (y // rh * n_win + x // rw) * (rh * rw) + y % rh * rw + x % rw


def bra_reference(qp, kp, vp, idx, n_win, scale, valid):
    """Padded inputs (see the module docstring) -> ``[B, n*rh, n*rw, heads, Dv]``.

    Symbolic sizes (``torch.export`` with dynamic H, W, and the ONNX exporter's decomposition of such a
    program): the regions are gathered by index instead of reshaped (a reshape into regions guards on the
    region size, which would specialize the program); the same tokens, so the same result."""
    B, hp, wp = qp.shape[:3]
    rh, rw = hp // n_win, wp // n_win
    symbolic = not all(isinstance(n, int) for n in (hp, wp, *valid))
    if symbolic:
        tokens = _region_tokens(n_win, rh, rw, wp, qp.device)
        qr, kr, vr = (t.flatten(1, 2)[:, tokens] for t in (qp, kp, vp))
        ok = (tokens // wp < valid[0]) & (tokens % wp < valid[1])
    else:
        qr, kr, vr = (to_windows(t, (rh, rw)) for t in (qp, kp, vp))
        ok = key_valid(n_win, rh, rw, valid, qp.device)
    b = torch.arange(B, device=qp.device)[:, None, None]
    k_sel, v_sel = kr[b, idx], vr[b, idx]  # [B, R, topk, T, heads, D]
    logits = torch.einsum("brthd,brkshd->brhtks", qr * scale, k_sel)
    logits = logits.masked_fill(~ok[idx][:, :, None, None], float("-inf"))  # ok[idx]: [B, R, topk, T]
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    out = torch.einsum("brhtks,brkshd->brthd", attn, v_sel)
    if symbolic:
        return out.flatten(1, 2)[:, _map_slots(n_win, rh, rw, hp, wp, qp.device)]
    return from_windows(out, (rh, rw), (hp, wp))
