"""Bi-level routing attention (BiFormer): ``bra`` and its routing step ``bra_routing``.

The map is cut into ``n_win x n_win`` regions. Region-level queries and keys are the means of the
token queries and keys over each region (all heads' channels together); every query region is
routed to the ``topk`` key regions of highest affinity ``mean(q) . mean(k)`` (a hard, detached
top-k, as the paper's ``diff_routing=False``); every token then attends to the tokens of the union
of its region's routed regions (multi-head, scaled by ``scale``).

Any map size: a map that is not a multiple of ``n_win`` is zero-padded at the bottom/right to the
next multiple, and the padding is **masked**: region means average only real tokens, regions with
no real token are never routed to, and padded keys get no attention weight; outputs at padded
positions are cropped. On a divisible map this is exactly the official ``bra_legacy`` computation.

Backends get the padded maps, the routing indices and the real size; they differ only in how they
attend: a gather of the routed K/V (``reference``), gather + SDPA or masked dense SDPA (``cpu``),
or fused kernels that read the routed regions in place by index (``triton``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from .. import _backend
from .._checks import check_qkv, triton_attention_can_run
from .._sizes import is_static
from ..partition import crop, pad_to_size, padded_size

__all__ = ["bra", "bra_routing", "region_geometry"]


_backend.register_op(
    "bra",
    impls={
        "reference": "visionzoo.ops.routing.reference:bra_reference",
        "cpu": "visionzoo.ops.routing.cpu:bra_cpu",
        "triton": "visionzoo.ops.routing.triton:bra_triton",
    },
    checks={"triton": triton_attention_can_run},
    schema="(Tensor qp, Tensor kp, Tensor vp, Tensor idx, int n_win, float scale, SymInt[] valid)",
    diff=(0, 1, 2),
    fake=lambda q, k, v, *_: q.new_empty((*q.shape[:-1], v.shape[-1])),
)


def region_geometry(size: tuple[int, int], n_win: int) -> tuple[int, int]:
    """Region size ``(rh, rw)`` of an ``H x W`` map cut into ``n_win x n_win`` regions (after padding
    to the next multiple of ``n_win``)."""
    return tuple(-(-n // n_win) for n in size)


def _check(q, k, v, n_win, topk):
    check_qkv(q, k, v, 5, "[B, H, W, heads, D]")
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q, k must have equal shapes and v the same except D: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    for name, val in (("n_win", n_win), ("topk", topk)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")


@torch.no_grad()
def _route(qp: torch.Tensor, kp: torch.Tensor, n_win: int, topk: int, valid: tuple[int, int],
           ordered: bool = False) -> torch.Tensor:
    """Routing indices ``[B, n_win^2, min(topk, n_win^2)]`` (int64) from zero-padded maps; by
    affinity when ``ordered`` (attention only needs the set)."""
    hp, wp = qp.shape[1:3]
    rh, rw = hp // n_win, wp // n_win
    k = min(topk, n_win * n_win)
    if not is_static(hp, wp, *valid):
        return _route_symbolic(qp, kp, n_win, k, valid, ordered)

    uniform = tuple(valid) == (hp, wp)
    # the cache holds real tensors only: never one made while tracing (a fake or symbolic tensor)
    counts_fn = _region_counts if _backend.tracing() is None and not is_fake(qp) else _region_counts.__wrapped__
    counts = None if uniform else counts_fn(n_win, rh, rw, tuple(valid), qp.device).to(qp.dtype)

    def means(t):  # region sums by a channels-last sum-pool (a strided reshape-sum is ~50x slower)
        s = F.avg_pool2d(t.flatten(3).permute(0, 3, 1, 2), (rh, rw), divisor_override=1).flatten(2).transpose(1, 2)
        # equal counts (no padding) scale every logit alike: the top-k is the same without dividing
        return s if uniform else s / counts[None, :, None].clamp(min=1)

    logits = means(qp) @ means(kp).transpose(1, 2)
    if not uniform:  # regions of padding only are never routed to
        logits = logits.masked_fill(counts[None, None, :] == 0, float("-inf"))
    return torch.topk(logits, k, dim=-1, sorted=ordered).indices


def _route_symbolic(qp, kp, n_win: int, k: int, valid, ordered: bool) -> torch.Tensor:
    """:func:`_route` for symbolic sizes (``torch.export`` / ``torch.compile`` with dynamic H, W): the region
    size is no pooling kernel (a static argument the trace would specialize) but a reshape of the padded map
    into ``n_win x n_win`` regions, summed; whether the map is padded is a tensor, not a Python branch. The
    same logits as the eager path: divided by the region counts where padded, by 1 (exactly) where not."""
    B, hp, wp = qp.shape[:3]
    rh, rw = hp // n_win, wp // n_win
    # real rows / columns of every region row / column in closed form (a view of a symbolic-size mask into
    # regions would guard on its contiguity, i.e. on the region size)
    r = torch.arange(n_win, device=qp.device)
    rows, cols = ((n - r * s).clamp(0, s) for n, s in zip(valid, (rh, rw)))
    counts = (rows[:, None] * cols[None, :]).reshape(-1).to(qp.dtype)
    divisor = torch.where((counts == rh * rw).all(), torch.ones_like(counts), counts.clamp(min=1))

    # region of every token (row-major); a reshape into regions would guard on the region size being 1
    region = ((torch.arange(hp, device=qp.device) // rh)[:, None] * n_win
              + (torch.arange(wp, device=qp.device) // rw)[None, :]).reshape(-1)

    def means(t):
        t = t.flatten(3).flatten(1, 2)
        s = t.new_zeros((B, n_win * n_win, t.shape[-1])).index_add_(1, region, t)
        return s / divisor[None, :, None]

    logits = (means(qp) @ means(kp).transpose(1, 2)).masked_fill(counts[None, None, :] == 0, float("-inf"))
    return torch.topk(logits, k, dim=-1, sorted=ordered).indices



@functools.lru_cache(maxsize=64)
def _region_counts(n_win: int, rh: int, rw: int, valid: tuple[int, int], device) -> torch.Tensor:
    """Real (unpadded) tokens of every region, ``[n_win^2]`` int64."""
    rows = torch.arange(n_win * rh, device=device) < valid[0]
    cols = torch.arange(n_win * rw, device=device) < valid[1]
    return (rows.view(n_win, rh).sum(1)[:, None] * cols.view(n_win, rw).sum(1)[None, :]).reshape(-1)


@_backend.fx_leaf
def bra_routing(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int) -> torch.Tensor:
    """The routed regions of :func:`bra`: ``[B, n_win^2, min(topk, n_win^2)]`` key-region indices
    (row-major region order) for every query region, highest affinity first."""
    _check(q, k, k, n_win, topk)
    size = padded_size(q.shape[1:3], n_win)
    return _route(pad_to_size(q, size), pad_to_size(k, size), n_win, topk, tuple(q.shape[1:3]), ordered=True)


@_backend.fx_leaf
def bra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: int, topk: int, scale: float | None = None,
        backend: str | None = None) -> torch.Tensor:
    """Bi-level routing attention (see the module docstring).

    Args:
        q, k: ``[B, H, W, heads, D]``; v: ``[B, H, W, heads, Dv]``; any ``H, W >= 1``.
        n_win: regions per side (the official 7).
        topk: routed key regions per query region (clamped to ``n_win^2``).
        scale: logit scale, default ``D ** -0.5`` (BiFormer passes ``(heads * D) ** -0.5``).
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).

    Returns:
        ``[B, H, W, heads, Dv]``.
    """
    _check(q, k, v, n_win, topk)
    H, W = q.shape[1:3]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    size = padded_size((H, W), n_win)
    qp, kp, vp = (pad_to_size(t, size) for t in (q, k, v))
    idx = _route(qp.detach(), kp.detach(), n_win, topk, (H, W))
    fn, _ = _backend.resolve("bra", qp, kp, vp, backend=backend, n_win=n_win)
    out = fn(qp, kp, vp, idx, n_win, scale, (H, W))
    if is_static(*size, H, W):
        return crop(out, (H, W))
    # symbolic sizes: a gathered copy (a slice's contiguity check would compare the padded and the real size:
    # a guard that specializes them, and the program would refuse every size padded differently)
    return out.index_select(1, torch.arange(H, device=out.device)).index_select(2, torch.arange(W, device=out.device))
