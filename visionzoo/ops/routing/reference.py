"""Naive bi-level routing attention: the spec every fast path is tested against.

Inputs are padded by :func:`visionzoo.ops.routing.bra`: maps ``[B, n*rh, n*rw, heads, D]``, routing
indices ``idx [B, n^2, topk]`` and the real size ``valid = (Hv, Wv)``. Region ``r = (r // n, r % n)``
holds the tokens ``(ry*rh + a, rx*rw + c)``: the ``rh x rw`` windows of
:func:`visionzoo.ops.partition.to_windows`. Every query of region ``r`` attends to the tokens of
regions ``idx[b, r, :]`` with row ``< Hv`` and column ``< Wv``. The routed K/V are gathered
explicitly (``topk``-fold memory, the official ``bra_legacy`` formulation).

:func:`bra_padded` is the front door :func:`~visionzoo.ops.routing.bra` on this reference (padding,
routing, masking, crop) in TorchScript-compatible torch: scripted models (``torch.jit.script``) run it,
since the front door's argument handling and backend dispatch do not script.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._sizes import is_static
from ..partition import from_windows, to_windows

__all__ = ["bra_padded", "bra_reference", "bra_route", "key_valid"]


def key_valid(n_win: int, rh: int, rw: int, valid: list[int], device: torch.device | None = None) -> torch.Tensor:
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
    symbolic = not is_static(hp, wp, *valid)
    if symbolic:
        tokens = _region_tokens(n_win, rh, rw, wp, qp.device)
        qr, kr, vr = (t.flatten(1, 2)[:, tokens] for t in (qp, kp, vp))
        ok = (tokens // wp < valid[0]) & (tokens % wp < valid[1])
    else:
        qr, kr, vr = (to_windows(t, (rh, rw)) for t in (qp, kp, vp))
        ok = key_valid(n_win, rh, rw, valid, qp.device)
    out = _attend_routed(qr, kr, vr, idx, ok, scale)
    if symbolic:
        return out.flatten(1, 2)[:, _map_slots(n_win, rh, rw, hp, wp, qp.device)]
    return from_windows(out, (rh, rw), (hp, wp))


def _attend_routed(qr: torch.Tensor, kr: torch.Tensor, vr: torch.Tensor, idx: torch.Tensor, ok: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Region-major ``qr, kr, vr [B, R, T, heads, D]``: every query of region ``r`` attends to the real
    (``ok [R, T]``) tokens of regions ``idx[b, r, :]``, gathered explicitly -> ``[B, R, T, heads, Dv]``."""
    b = torch.arange(qr.shape[0], device=qr.device)[:, None, None]
    k_sel, v_sel = kr[b, idx], vr[b, idx]  # [B, R, topk, T, heads, D]
    logits = torch.einsum("brthd,brkshd->brhtks", qr * scale, k_sel)
    logits = logits.masked_fill(~ok[idx][:, :, None, None], float("-inf"))  # ok[idx]: [B, R, topk, T]
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum("brhtks,brkshd->brthd", attn, v_sel)


def bra_route(qp: torch.Tensor, kp: torch.Tensor, n_win: int, topk: int, valid: list[int]) -> torch.Tensor:
    """The front door's routing (``visionzoo.ops.routing._route`` on real sizes: the same ops in the same
    order, so the same logits and the same routed sets) on zero-padded maps, TorchScript-compatible:
    region means over real tokens only, regions of padding only never routed to -> ``[B, n^2, k]`` (an
    unordered top-k, ``k = min(topk, n^2)``). No gradient flows through the indices."""
    hp, wp = qp.shape[1], qp.shape[2]
    rh, rw = hp // n_win, wp // n_win
    qm, km = (F.avg_pool2d(t.flatten(3).permute(0, 3, 1, 2), [rh, rw], divisor_override=1).flatten(2).transpose(1, 2)
              for t in (qp.detach(), kp.detach()))  # region sums
    if valid[0] == hp and valid[1] == wp:  # equal counts scale every logit alike: the top-k is the same
        logits = qm @ km.transpose(1, 2)
    else:
        counts = key_valid(n_win, rh, rw, valid, qp.device).sum(1).to(qp.dtype)
        div = counts[None, :, None].clamp(min=1)
        logits = (qm / div) @ (km / div).transpose(1, 2)
        logits = logits.masked_fill(counts[None, None, :] == 0, float("-inf"))
    return torch.topk(logits, min(topk, n_win * n_win), dim=-1, sorted=False).indices


def _regions(t: torch.Tensor, n_win: int) -> torch.Tensor:
    """``[B, n*rh, n*rw, heads, D]`` -> region-major ``[B, n^2, rh*rw, heads, D]``: ``to_windows`` for
    :func:`bra_padded`, which TorchScript compiles (``to_windows`` takes ``Sequence`` windows and star-unpacks
    the shape, which it cannot)."""
    B, hp, wp, heads, D = t.shape
    rh, rw = hp // n_win, wp // n_win
    t = t.reshape(B, n_win, rh, n_win, rw, heads, D).transpose(2, 3)
    return t.reshape(B, n_win * n_win, rh * rw, heads, D)


def bra_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, topk: int,
               scale: float) -> torch.Tensor:
    """:func:`~visionzoo.ops.routing.bra` on this reference, in TorchScript-compatible torch: the maps
    zero-padded at the bottom/right to whole regions, routed by :func:`bra_route` (padding masked out of
    the region means and the routing), padded keys masked, the output cropped to ``[B, H, W, heads, Dv]``.
    Arguments already validated; ``scale`` given."""
    B, H, W, heads, _ = q.shape
    hp, wp = (H + n_win - 1) // n_win * n_win, (W + n_win - 1) // n_win * n_win
    if hp != H or wp != W:
        pad = [0, 0, 0, 0, 0, wp - W, 0, hp - H]  # F.pad lists the last dim (D) first
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    rh, rw = hp // n_win, wp // n_win
    idx = bra_route(q, k, n_win, topk, [H, W])
    ok = key_valid(n_win, rh, rw, [H, W], q.device)
    out = _attend_routed(_regions(q, n_win), _regions(k, n_win), _regions(v, n_win), idx, ok, scale)
    out = out.reshape(B, n_win, n_win, rh, rw, heads, v.shape[-1]).transpose(2, 3)  # from_windows
    return out.reshape(B, hp, wp, heads, v.shape[-1])[:, :H, :W]
