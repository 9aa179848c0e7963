"""CPU path of halo attention: one ``scaled_dot_product_attention`` call over all blocks.

Blocks become the batch: queries ``[B * blocks, heads, bq^2, D]`` (the block partition of
:func:`visionzoo.ops.partition.to_windows`, heads-first as a view) against their windows' keys
``[B * blocks, heads, win^2, D]`` (one unfold copy). The relative-position bias depends on the
query, so it cannot be a precomputed mask; instead it rides inside the dot product:
each query gets ``2 * win`` extra channels (its ``eh``/``ew`` entries for every window row and
column) and each key the matching one-hot channels (its row and its column), so
``[q * scale, u] . [k, onehot] = scale q.k + bias``. SDPA then runs its fused (flash) kernel with
scale 1, forward and backward, and autograd carries the bias gradients back to ``eh``/``ew``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..partition import from_windows, to_windows
from .reference import window_index

__all__ = ["halo_cpu"]


def _blocks(t: torch.Tensor, bq: int) -> torch.Tensor:
    """``[B, nh*bq, nw*bq, heads, D]`` -> ``[B*nh*nw, heads, bq*bq, D]`` (one copy; heads-first is a view)."""
    return to_windows(t, bq).flatten(0, 1).transpose(1, 2)


def _windows(t: torch.Tensor, block: int, win: int) -> torch.Tensor:
    """Padded ``[B, nh*b + 2h, nw*b + 2h, heads, D]`` -> ``[B*nh*nw, heads, win*win, D]``."""
    B, _, _, heads, D = t.shape
    w = t.unfold(1, win, block).unfold(2, win, block)  # [B, nh, nw, heads, D, win, win]
    nh, nw = w.shape[1], w.shape[2]
    return w.permute(0, 1, 2, 3, 5, 6, 4).reshape(B * nh * nw, heads, win * win, D)


def _bias_channels(eh, ew, bq, win):
    """Per-query channels ``[B*blocks, heads, bq^2, 2 win]`` (this query's bias of every window row,
    then column) and the keys' one-hot channels ``[win^2, 2 win]``."""
    _, hq, wq, _, _ = eh.shape
    _, rh = window_index(hq // bq, bq, bq, win, eh.device)  # rel index depends only on y % bq
    _, rw = window_index(wq // bq, bq, bq, win, eh.device)
    uh = torch.gather(eh, -1, rh[None, :, None, None, :].expand(*eh.shape[:-1], win))
    uw = torch.gather(ew, -1, rw[None, None, :, None, :].expand(*ew.shape[:-1], win))
    u = _blocks(torch.cat([uh, uw], -1), bq)
    a = torch.arange(win, device=eh.device)
    onehot = torch.cat([F.one_hot(a.repeat_interleave(win), win), F.one_hot(a.repeat(win), win)], -1)
    return u, onehot.to(eh.dtype)


def halo_cpu(qp, kp, vp, eh, ew, bq, block, halo, scale):
    """Padded inputs (see :mod:`.reference`) -> ``[B, nh*bq, nw*bq, heads, Dv]``."""
    B, hq, wq = qp.shape[:3]
    win = block + 2 * halo
    q, k, v = _blocks(qp, bq), _windows(kp, block, win), _windows(vp, block, win)
    if eh is None:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        u, onehot = _bias_channels(eh, ew, bq, win)
        q = torch.cat([q * scale, u], -1)
        k = torch.cat([k, onehot.expand(*k.shape[:2], *onehot.shape)], -1)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return from_windows(out.transpose(1, 2).unflatten(0, (B, -1)), bq, (hq, wq))
