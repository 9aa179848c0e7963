"""Halo attention (HaloNet's blocked local self-attention): ``halo_attn``.

The query map is cut into ``block x block`` blocks; every query of a block attends to the same
``win x win`` keys, ``win = block + 2 * halo``: its block grown by ``halo`` on every side. Keys
outside the map are **zero vectors that take part in the softmax** (the map is zero-padded, as in
the paper's TF code and timm's port), so results equal timm's ``HaloAttn`` wherever timm runs.
Maps that are not a multiple of ``block`` are zero-padded the same way at the bottom/right and the
output is cropped: on a divisible map nothing changes, and on any other map a real query sees
exactly the zero keys a border query sees. Strided attention (``stride`` 2) subsamples the queries
of each block (``block // stride`` per side) while the key windows stay on the full map.

Relative position logits are factorised as in the paper: ``q . rel_h[a - i + win - 1] +
q . rel_w[b - j + win - 1]`` for query ``(i, j)`` inside its (subsampled) block and key ``(a, b)``
inside the window; they are not scaled by ``scale`` (timm's default).

Backends compute block-local attention with that additive bias, given zero-padded inputs and the
per-query tables ``eh = q @ rel_h.T`` and ``ew = q @ rel_w.T``; padding, the tables and the crop
are done here once for all of them, so autograd carries the gradients of ``rel_h``/``rel_w``.
"""
from __future__ import annotations

import torch

from .. import _backend
from .._checks import check_qkv, triton_attention_can_run
from .._sizes import is_static
from ..partition import crop, pad_map, pad_to_size, padded_size

__all__ = ["halo_attn", "halo_geometry"]


_backend.register_op(
    "halo_attn",
    impls={
        "reference": "visionzoo.ops.halo.reference:halo_reference",
        "cpu": "visionzoo.ops.halo.cpu:halo_cpu",
        "triton": "visionzoo.ops.halo.triton:halo_triton",
    },
    checks={"triton": triton_attention_can_run},
    schema="(Tensor qp, Tensor kp, Tensor vp, Tensor? eh, Tensor? ew, int bq, int block, int halo, float scale)",
    diff=(0, 1, 2, 3, 4),
    fake=lambda q, k, v, *_: q.new_empty((*q.shape[:-1], v.shape[-1])),
)


def halo_geometry(size: tuple[int, int], block_size: int, stride: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(padded map size, query map size)`` for a ``size`` key map: the padded map is the next
    multiple of ``block_size``; queries number ``ceil(n / stride)`` per axis (a strided 1x1 conv's)."""
    return padded_size(size, block_size), tuple(-(-n // stride) for n in size)


def _check(q, k, v, block_size, halo_size, stride, rel_h, rel_w):
    check_qkv(q, k, v, 5, "[B, H, W, heads, D]")
    for name, val, low in (("block_size", block_size, 1), ("halo_size", halo_size, 0), ("stride", stride, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < low:
            raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
    if block_size % stride:
        raise ValueError(f"block_size {block_size} must be a multiple of stride {stride} (the strided "
                         "variant keeps block_size // stride queries per block side)")
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must agree except in D: k {tuple(k.shape)}, v {tuple(v.shape)}")
    _, want_q = halo_geometry(tuple(k.shape[1:3]), block_size, stride)
    if tuple(q.shape[1:3]) != want_q or q.shape[0] != k.shape[0] or q.shape[3:] != k.shape[3:]:
        raise ValueError(f"q must be [B, ceil(H/stride), ceil(W/stride), heads, D] = "
                         f"{[k.shape[0], *want_q, *k.shape[3:]]} for k {tuple(k.shape)} and stride {stride}, "
                         f"got {tuple(q.shape)}")
    if (rel_h is None) != (rel_w is None):
        raise ValueError("rel_h and rel_w must be given together (or neither)")
    win = block_size + 2 * halo_size
    for name, t in (("rel_h", rel_h), ("rel_w", rel_w)):
        if t is not None and tuple(t.shape) != (2 * win - 1, q.shape[-1]):
            raise ValueError(f"{name} must be [2 * (block + 2 * halo) - 1, D] = [{2 * win - 1}, {q.shape[-1]}], "
                             f"got {list(t.shape)}")


@_backend.fx_leaf
def halo_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, halo_size: int,
              rel_h: torch.Tensor | None = None, rel_w: torch.Tensor | None = None, stride: int = 1,
              scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Halo attention (see the module docstring for the exact definition).

    Args:
        q: ``[B, ceil(H / stride), ceil(W / stride), heads, D]``.
        k: ``[B, H, W, heads, D]``; ``v``: ``[B, H, W, heads, Dv]``. Any ``H, W`` >= 1.
        block_size: query block side on the key map ``b``; a multiple of ``stride``.
        halo_size: ``h``; every block sees ``(b + 2h)^2`` keys.
        rel_h, rel_w: relative position tables ``[2 (b + 2h) - 1, D]`` shared by all heads, or None.
        stride: 1, or the query subsampling of strided halo attention.
        scale: logit scale of ``q . k``, default ``D ** -0.5``.
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).

    Returns:
        ``[B, ceil(H / stride), ceil(W / stride), heads, Dv]``.
    """
    _check(q, k, v, block_size, halo_size, stride, rel_h, rel_w)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    (hp, wp), (hq, wq) = halo_geometry(tuple(k.shape[1:3]), block_size, stride)
    bq = block_size // stride
    h = halo_size
    # keys: the halo on every side, plus the block padding at the bottom/right
    kp, vp = (pad_map(t, h, h + hp - k.shape[1], h, h + wp - k.shape[2]) for t in (k, v))
    qp = pad_to_size(q, (hp // stride, wp // stride))
    eh = ew = None
    if rel_h is not None:
        eh = torch.matmul(qp, rel_h.to(q.dtype).t())
        ew = torch.matmul(qp, rel_w.to(q.dtype).t())
    fn, _ = _backend.resolve("halo_attn", qp, kp, vp, backend=backend, block=bq, halo=h)
    out = fn(qp, kp, vp, eh, ew, bq, block_size, halo_size, scale)
    if is_static(hp, wp, hq, wq):
        return crop(out, (hq, wq))
    # symbolic sizes (torch.export with dynamic H, W): a gathered copy. A slice's view compares the padded and the
    # real size in its contiguity check: a guard that specializes them (the program refused other paddings)
    return out.index_select(1, torch.arange(hq, device=out.device)).index_select(2, torch.arange(wq, device=out.device))
