"""Naive halo attention: the spec every fast path is tested against.

Inputs are already zero-padded by :func:`visionzoo.ops.halo.halo_attn`: ``qp [B, nh*bq, nw*bq, heads,
D]``, ``kp``/``vp [B, nh*b + 2h, nw*b + 2h, heads, D]``. Query ``(y, x)`` sits in block
``(y // bq, x // bq)`` at ``(i, j) = (y % bq, x % bq)``; its keys are ``kp[by*b + a, bx*b + c]`` for
``a, c < win = b + 2h``; its logit for key ``(a, c)`` is ``scale q.k + eh[y, x, a - i + win - 1] +
ew[y, x, c - j + win - 1]``. Every window key is gathered explicitly (win^2-fold memory).

TorchScript-compatible (``torch.jit.script``), so scripted models run it: :func:`halo_padded` is the
front door's padding and crop in that form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["halo_padded", "halo_reference", "window_index"]


def window_index(n_blocks: int, bq: int, block: int, win: int,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis: key index ``[n_blocks * bq, win]`` of each query's window slots and the
    relative-table index ``[n_blocks * bq, win]`` of each slot."""
    y = torch.arange(n_blocks * bq, device=device)
    a = torch.arange(win, device=device)
    keys = (y // bq * block)[:, None] + a[None, :]
    rel = a[None, :] - (y % bq)[:, None] + win - 1
    return keys, rel


def halo_reference(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, eh: torch.Tensor | None,
                   ew: torch.Tensor | None, bq: int, block: int, halo: int, scale: float) -> torch.Tensor:
    """Padded inputs (see the module docstring) -> ``[B, nh*bq, nw*bq, heads, Dv]``."""
    _, hq, wq, _, _ = qp.shape
    win = block + 2 * halo
    kh, rh = window_index(hq // bq, bq, block, win, qp.device)
    kw, rw = window_index(wq // bq, bq, block, win, qp.device)
    rows, cols = kh[:, None, :, None], kw[None, :, None, :]  # [hq, 1, win, 1], [1, wq, 1, win]
    k_win, v_win = kp[:, rows, cols], vp[:, rows, cols]  # [B, hq, wq, win, win, heads, D]
    logits = torch.einsum("byxhd,byxachd->byxhac", qp * scale, k_win)
    if eh is not None and ew is not None:
        bias_h = torch.gather(eh, -1, rh[None, :, None, None, :].expand(list(eh.shape[:-1]) + [win]))
        bias_w = torch.gather(ew, -1, rw[None, None, :, None, :].expand(list(ew.shape[:-1]) + [win]))
        logits = logits + bias_h[..., :, None] + bias_w[..., None, :]
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    return torch.einsum("byxhac,byxachd->byxhd", attn, v_win)


def halo_padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, halo_size: int,
                rel_h: torch.Tensor | None, rel_w: torch.Tensor | None, stride: int, scale: float) -> torch.Tensor:
    """:func:`~visionzoo.ops.halo.halo_attn` on this reference, in TorchScript-compatible torch: keys and
    values zero-padded by the halo and to whole blocks, queries to whole (subsampled) blocks, the bias
    tables ``eh``/``ew`` formed, the output cropped. Arguments already validated; ``scale`` given."""
    H, W = k.shape[1], k.shape[2]
    hp, wp = (H + block_size - 1) // block_size * block_size, (W + block_size - 1) // block_size * block_size
    hq, wq = (H + stride - 1) // stride, (W + stride - 1) // stride
    h = halo_size
    pad = [0, 0, 0, 0, h, h + wp - W, h, h + hp - H]  # F.pad lists the last dim (D) first
    kp, vp = F.pad(k, pad), F.pad(v, pad)
    qp = F.pad(q, [0, 0, 0, 0, 0, wp // stride - q.shape[2], 0, hp // stride - q.shape[1]])
    eh: torch.Tensor | None = None
    ew: torch.Tensor | None = None
    if rel_h is not None and rel_w is not None:
        eh = torch.matmul(qp, rel_h.to(q.dtype).t())
        ew = torch.matmul(qp, rel_w.to(q.dtype).t())
    out = halo_reference(qp, kp, vp, eh, ew, block_size // stride, block_size, halo_size, scale)
    return out[:, :hq, :wq]
