"""CPU path of bi-level routing attention.

Two exact formulations, chosen per call by how much of the map a query sees:

* **gather + SDPA** (sparse routing, e.g. BiFormer stages 1-2): the routed regions' K/V are
  gathered with one ``index_select`` over the region-major maps (its backward is a parallel
  ``index_add``, not ``torch.gather``'s scatter over an expanded view), then one fused SDPA call
  with the query regions as the batch.
* **masked dense SDPA** (the routed set covers a large share of the map, e.g. stage 3 with 16 of 49
  regions): the ``[n^2, n^2]`` region mask broadcast to every region's tokens gives the token
  mask; one dense SDPA call on the map as it is (no region-major copies).

Padding (``valid`` smaller than the map) adds the padded keys to the mask in both.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..partition import from_windows, to_windows
from .reference import key_valid

__all__ = ["bra_cpu", "DENSE_SHARE"]

#: use masked dense SDPA when a query's routed keys are at least this share of all keys
DENSE_SHARE = 0.25


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """``[N, L, heads, D]`` -> ``[N, heads, L, D]`` (a view)."""
    return t.transpose(1, 2)


def _gather_sdpa(qr, kr, vr, idx, scale, ok):
    B, R, T, heads, D = qr.shape
    topk = idx.shape[-1]
    flat = (idx + torch.arange(B, device=idx.device)[:, None, None] * R).reshape(-1)
    k_sel = kr.reshape(B * R, T * heads * D).index_select(0, flat).view(B * R, topk * T, heads, D)
    v_sel = vr.reshape(B * R, -1).index_select(0, flat).view(B * R, topk * T, heads, vr.shape[-1])
    mask = None
    if ok is not None:  # padded keys: additive -inf (every routed set keeps a real key)
        keep = ok[idx].reshape(B * R, 1, 1, topk * T)
        mask = torch.zeros(keep.shape, dtype=qr.dtype, device=qr.device).masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(_heads_first(qr.reshape(B * R, T, heads, D)), _heads_first(k_sel),
                                         _heads_first(v_sel), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(B, R, T, heads, -1)


class _RebuiltMaskSDPA(torch.autograd.Function):
    """ATen's CPU flash attention whose ``[B, 1, N, N]`` mask is rebuilt for the backward from the
    routing (``make_mask``) instead of being kept alive from forward to backward: at BiFormer's
    stage 3 it is the largest tensor autograd would otherwise hold per block."""

    @staticmethod
    def forward(ctx, q, k, v, make_mask, scale):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=make_mask(), scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.make_mask, ctx.scale = make_mask, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, False, attn_mask=ctx.make_mask(), scale=ctx.scale)
        return dq, dk, dv, None, None


@functools.lru_cache(maxsize=64)
def _token_regions(hp: int, wp: int, n_win: int, valid: tuple[int, int], device):
    """Region of every token of the padded map in row-major order ``[hp * wp]``, and which tokens
    are padding (``None`` without padding)."""
    ys, xs = torch.arange(hp, device=device), torch.arange(wp, device=device)
    region = ((ys // (hp // n_win))[:, None] * n_win + (xs // (wp // n_win))[None, :]).reshape(-1)
    padding = None
    if valid != (hp, wp):
        padding = ((ys >= valid[0])[:, None] | (xs >= valid[1])[None, :]).reshape(-1)
    return region, padding


def _masked_dense(qp, kp, vp, idx, n_win, scale, valid):
    """Dense SDPA over the padded map in its own (row-major) token order; the additive token mask
    is the region mask broadcast to the tokens of each region (no region-major copies of q, k, v)."""
    B, hp, wp, heads, D = qp.shape
    R, N = n_win * n_win, hp * wp
    dev, dtype = qp.device, qp.dtype
    region, padding = _token_regions(hp, wp, n_win, tuple(valid), dev)

    def make_mask():
        bias = torch.full((B, R, R), float("-inf"), dtype=dtype, device=dev).scatter_(2, idx, 0.0)
        # token (y, x) lies in region (y // rh, x // rw): gather the key columns (a small [B, R, N]
        # tensor), then the query rows (whole-row copies); ~5x faster than one broadcast copy
        cols = bias.view(B * R, R).index_select(1, region).view(B, R, N)
        if padding is not None:
            cols.masked_fill_(padding, float("-inf"))
        return cols.index_select(1, region).unsqueeze(1)

    q, k, v = (t.reshape(B, N, heads, -1).transpose(1, 2) for t in (qp, kp, vp))
    # ATen's flash kernel needs D == Dv (SDPA's own dispatch falls back to its math path otherwise)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)) and q.shape[-1] == v.shape[-1]:
        out = _RebuiltMaskSDPA.apply(q, k, v, make_mask, scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=make_mask(), scale=scale)
    return out.transpose(1, 2).reshape(B, hp, wp, heads, -1)


def bra_cpu(qp, kp, vp, idx, n_win, scale, valid):
    """Padded inputs (see :mod:`.reference`) -> ``[B, n*rh, n*rw, heads, Dv]``."""
    hp, wp = qp.shape[1:3]
    rh, rw = hp // n_win, wp // n_win
    R = n_win * n_win
    if idx.shape[-1] >= DENSE_SHARE * R:
        return _masked_dense(qp, kp, vp, idx, n_win, scale, valid)
    ok = None if tuple(valid) == (hp, wp) else key_valid(n_win, rh, rw, valid, qp.device)
    qr, kr, vr = (to_windows(t, (rh, rw)) for t in (qp, kp, vp))
    return from_windows(_gather_sdpa(qr, kr, vr, idx, scale, ok), (rh, rw), (hp, wp))
