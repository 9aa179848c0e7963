"""CPU path of bi-level routing attention.

Two exact formulations, chosen per call by how much of the map a query sees:

* **gather + SDPA** (sparse routing, e.g. BiFormer stages 1-2): the routed regions' K/V are
  gathered with one ``index_select`` over the region-major maps (its backward is a parallel
  ``index_add``, not ``torch.gather``'s scatter over an expanded view), then one fused SDPA call
  with the query regions as the batch.
* **masked dense SDPA** (the routed set covers a large share of the map, e.g. stage 3 with 16 of 49
  regions): tokens in region-major order make the token mask a block mask, built by expanding the
  ``[n^2, n^2]`` region mask (no gather), then one dense SDPA call.

Padding (``valid`` smaller than the map) adds the padded keys to the mask in both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import from_regions, key_valid, to_regions

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


def _masked_dense(qr, kr, vr, idx, scale, ok):
    B, R, T, heads, D = qr.shape
    routed = torch.zeros(B, R, R, dtype=torch.bool, device=qr.device).scatter_(2, idx, True)
    keep = routed[:, :, None, :, None].expand(B, R, T, R, T)
    if ok is not None:
        keep = keep & ok[None, None, None]
    mask = torch.zeros(keep.shape, dtype=qr.dtype, device=qr.device).masked_fill(~keep, float("-inf"))
    mask = mask.reshape(B, 1, R * T, R * T)
    q, k, v = (_heads_first(t.reshape(B, R * T, heads, -1)) for t in (qr, kr, vr))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(B, R, T, heads, -1)


def bra_cpu(qp, kp, vp, idx, n_win, scale, valid):
    """Padded inputs (see :mod:`.reference`) -> ``[B, n*rh, n*rw, heads, Dv]``."""
    hp, wp = qp.shape[1:3]
    rh, rw = hp // n_win, wp // n_win
    R = n_win * n_win
    ok = None if tuple(valid) == (hp, wp) else key_valid(n_win, rh, rw, valid, qp.device)
    qr, kr, vr = (to_regions(t, n_win) for t in (qp, kp, vp))
    dense = idx.shape[-1] >= DENSE_SHARE * R
    out = (_masked_dense if dense else _gather_sdpa)(qr, kr, vr, idx, scale, ok)
    return from_regions(out, n_win, rh, rw)
