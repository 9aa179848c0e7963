"""Triton backend of :func:`visionzoo.ops.linear_attn.linear_attn`: launchers and ``torch.library`` ops.

Kernels: :mod:`.triton_kernels`. Ops (``torch.library.custom_op`` with fake kernels and autograd, so
``torch.compile`` traces them as opaque nodes and ``opcheck`` passes):

* ``visionzoo::linear_attn_fwd(q, k, v, inv_s, pos?, heads, p, eps) -> (out, stats_q, stats_k, kvb)``:
  ``inv_s = 1 / softplus(scale)`` ``[C]`` fp32 (computed by the caller in PyTorch, so autograd carries
  the scale's gradient through softplus), ``p <= 0`` means no focusing; ``stats_*`` ``[B, L, 3]`` and
  ``kvb`` ``[B * heads, d, dv + 1]`` are fp32 and saved for the backward (not differentiable);
* ``visionzoo::linear_attn_bwd(dout, q, k, v, inv_s, pos?, stats_q, stats_k, kvb, heads, p, eps)
  -> (dq, dk, dv, dinv_s, dpos)``; an absent ``pos``'s gradient is an empty fp32 ``[0]`` tensor.

Not :func:`visionzoo.ops._triton.register_attention_op`: its ``(out, lse)`` convention does not fit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _env
from .._triton import _empty, _pow2, _precision
from . import triton_kernels as _k

__all__ = ["linear_attn_triton", "linear_attn_forward", "linear_attn_backward"]

BLOCK = 64  # tokens per tile: 64 x 64 fp32 feature tiles, 64 x 64 accumulators on 4 warps
INTERPRETER_BLOCK = 16  # the tests' short sequences still span several tiles and splits


def _block() -> int:
    return INTERPRETER_BLOCK if _env.triton_interpret() else BLOCK


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _splits(n_tiles: int, programs: int, device: torch.device) -> tuple[int, int]:
    """``(splits, tiles per split)`` so that ``programs x splits`` fills the GPU (~2 programs per SM)."""
    slots = 2 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    splits = max(1, min(n_tiles, -(-slots // programs)))
    per = -(-n_tiles // splits)
    return -(-n_tiles // per), per


def _stats(x, pos, inv_s, p):
    B, L, C = x.shape
    stats = _empty((B, L, 3), torch.float32, x.device)
    bt = 16 if C <= 256 else 4
    _k._la_stats_kernel[(-(-L // bt), B)](
        x, x if pos is None else pos, inv_s, stats, L, C, x.stride(0), x.stride(1), *_pos_strides(pos), p,
        HAS_POS=pos is not None, BLOCK_T=bt, BLOCK_C=_pow2(C), num_warps=4)
    return stats


#: warps per kernel: the backward tile kernels hold the [d, dv] block, a gradient accumulator and four
#: token x channel tiles at once (64 x 64 fp32 each): 8 warps keep them in registers on sm_90a (4 spilled
#: 472 B in the dq kernel); see tests/ops/test_linear_attn_triton.py::test_builds_for_sm90
WARPS = {"kv": 4, "out": 4, "dq": 8, "dk": 8}


def _geometry(q, v, heads, kernel):
    d, dv = q.shape[-1] // heads, v.shape[-1] // heads
    return d, dv, dict(BLOCK_D=max(16, _pow2(d)), BLOCK_DV=max(16, _pow2(dv)), num_warps=WARPS[kernel])


def _pos_strides(pos):
    """``(batch stride, token stride)`` of ``pos`` (batch stride 0 when it is shared: ``[1, n, C]``)."""
    if pos is None:
        return 0, 0
    return (0 if pos.shape[0] == 1 else pos.stride(0)), pos.stride(1)


def _prepare(p, *tensors):
    """Channel-contiguous tensors (None stays None), whether ``p`` focuses, the dot precision, the tile."""
    return [None if t is None else _rows(t) for t in tensors], p > 0, _precision(tensors[0].dtype), _block()


def linear_attn_forward(q, k, v, inv_s, pos, heads: int, p: float, eps: float):
    (q, k, v, pos), focus, prec, bl = _prepare(p, q, k, v, pos)
    B, N, n = q.shape[0], q.shape[1], k.shape[1]
    d, dv, blocks = _geometry(q, v, heads, "kv")
    if focus:
        stats_q, stats_k = _stats(q, None, inv_s, p), _stats(k, pos, inv_s, p)
    else:
        stats_q, stats_k = (torch.zeros(B, 1, 3, dtype=torch.float32, device=q.device) for _ in range(2))
    splits, per = _splits(-(-n // bl), B * heads, q.device)
    part = _empty((B * heads, splits, d, dv + 1), torch.float32, q.device)
    _k._la_kv_kernel[(B * heads, splits)](
        k, k if pos is None else pos, v, inv_s, stats_k, part, heads, n, d, dv, per,
        k.stride(0), k.stride(1), *_pos_strides(pos), v.stride(0), v.stride(1), p,
        HAS_POS=pos is not None, FOCUS=focus, PRECISION=prec, BLOCK_N=bl, **blocks)
    kvb = part.sum(1).div_(n)
    out = _empty((B, N, heads * dv), v.dtype, q.device)
    _k._la_out_kernel[(-(-N // bl), B * heads)](
        q, inv_s, stats_q, kvb, out, heads, N, d, dv, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        p, eps, FOCUS=focus, PRECISION=prec, BLOCK_M=bl, **_geometry(q, v, heads, "out")[2])
    return out, stats_q, stats_k, kvb


def linear_attn_backward(dout, q, k, v, inv_s, pos, stats_q, stats_k, kvb, heads: int, p: float, eps: float):
    (q, k, v, dout, pos), focus, prec, bl = _prepare(p, q, k, v, dout, pos)
    (B, N, C), n = q.shape, k.shape[1]
    d, dv, blocks = _geometry(q, v, heads, "dq")
    f32 = dict(dtype=torch.float32, device=q.device)
    gq = _empty((B, N, C), **f32)
    # fp32: tf32x3's operand splits need the registers (tiles of 64 spilled 168 B on sm_90a)
    bm = max(16, bl // 2) if q.dtype == torch.float32 else bl
    splits, per = _splits(-(-N // bm), B * heads, q.device)
    part = _empty((B * heads, splits, d, dv + 1), **f32)
    _k._la_dq_kernel[(B * heads, splits)](
        q, dout, inv_s, stats_q, kvb, gq, part, heads, N, d, dv, C, per, q.stride(0), q.stride(1),
        dout.stride(0), dout.stride(1), p, eps, FOCUS=focus, PRECISION=prec, BLOCK_M=bm, **blocks)
    dkvb = part.sum(1)
    gk = _empty((B, n, C), **f32)
    dvo = _empty(v.shape, v.dtype, v.device)
    _k._la_dk_kernel[(-(-n // bl), B * heads)](
        k, k if pos is None else pos, v, inv_s, stats_k, dkvb, gk, dvo, heads, n, d, dv, C,
        k.stride(0), k.stride(1), *_pos_strides(pos), v.stride(0), v.stride(1), dvo.stride(0), dvo.stride(1), p,
        1.0 / n,
        HAS_POS=pos is not None, FOCUS=focus, PRECISION=prec, BLOCK_N=bl, **_geometry(q, v, heads, "dk")[2])
    if not focus:
        dq, dk, dinv = gq, gk, torch.zeros(C, **f32)
    else:
        dq, sq = _feature_backward(q, None, inv_s, stats_q, gq, p)
        dk, sk = _feature_backward(k, pos, inv_s, stats_k, gk, p)
        # y = (relu(x) + 1e-6) inv_s: dL/dinv_s = sum_tokens dL/dy * y / inv_s
        dinv = (sq + sk) / inv_s
    if pos is None:
        dpos = torch.empty(0, **f32)
    else:  # a custom op may not return one tensor twice
        dpos = dk.sum(0, keepdim=True).to(pos.dtype) if pos.shape[0] == 1 else dk.to(pos.dtype, copy=True)
    return dq.to(q.dtype), dk.to(k.dtype), dvo, dinv, dpos


def _feature_backward(x, pos, inv_s, stats, g, p):
    B, L, C = x.shape
    bt = 16 if C <= 256 else 4
    grid = (-(-L // bt), B)
    dx = _empty((B, L, C), torch.float32, x.device)
    spart = _empty((grid[0] * B, C), torch.float32, x.device)
    _k._la_feat_bwd_kernel[grid](
        x, x if pos is None else pos, inv_s, stats, g, dx, spart, L, C, x.stride(0), x.stride(1),
        *_pos_strides(pos), p, HAS_POS=pos is not None, BLOCK_T=bt, BLOCK_C=_pow2(C), num_warps=4)
    return dx, spart.sum(0)


@torch.library.custom_op("visionzoo::linear_attn_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inv_s: torch.Tensor, pos: torch.Tensor | None,
            heads: int, p: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_attn_forward(q, k, v, inv_s, pos, heads, p, eps)


@_fwd_op.register_fake
def _(q, k, v, inv_s, pos, heads, p, eps):
    B, N, C = q.shape
    n, Cv = v.shape[1:]
    rows = (lambda L: L) if p > 0 else (lambda L: 1)
    return (q.new_empty((B, N, Cv), dtype=v.dtype), q.new_empty((B, rows(N), 3), dtype=torch.float32),
            q.new_empty((B, rows(n), 3), dtype=torch.float32),
            q.new_empty((B * heads, C // heads, Cv // heads + 1), dtype=torch.float32))


@torch.library.custom_op("visionzoo::linear_attn_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inv_s: torch.Tensor,
            pos: torch.Tensor | None, stats_q: torch.Tensor, stats_k: torch.Tensor, kvb: torch.Tensor, heads: int,
            p: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_attn_backward(dout, q, k, v, inv_s, pos, stats_q, stats_k, kvb, heads, p, eps)


@_bwd_op.register_fake
def _(dout, q, k, v, inv_s, pos, stats_q, stats_k, kvb, heads, p, eps):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format), inv_s.new_empty(inv_s.shape),
            q.new_empty((0,), dtype=torch.float32) if pos is None else torch.empty_like(pos))


def _setup_context(ctx, inputs, output):
    q, k, v, inv_s, pos, heads, p, eps = inputs
    _, stats_q, stats_k, kvb = output
    ctx.mark_non_differentiable(stats_q, stats_k, kvb)
    ctx.save_for_backward(q, k, v, inv_s, pos, stats_q, stats_k, kvb)
    ctx.attrs = (heads, p, eps)


def _backward(ctx, dout, *_):
    q, k, v, inv_s, pos, stats_q, stats_k, kvb = ctx.saved_tensors
    dq, dk, dv, dinv, dpos = _bwd_op(dout, q, k, v, inv_s, pos, stats_q, stats_k, kvb, *ctx.attrs)
    return dq, dk, dv, dinv, None if pos is None else dpos, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def linear_attn_triton(q, k, v, num_heads: int, p: float | None, scale, pos, eps: float) -> torch.Tensor:
    """``q [B, N, C]``, ``k [B, n, C]``, ``v [B, n, Cv]`` -> ``[B, N, Cv]`` (see :mod:`.reference`)."""
    C = q.shape[-1]
    if scale is None:
        inv_s = torch.ones(C, dtype=torch.float32, device=q.device)
    else:
        inv_s = 1.0 / F.softplus(scale.float())
    return torch.ops.visionzoo.linear_attn_fwd(q, k, v, inv_s, pos, int(num_heads), -1.0 if p is None else float(p),
                                               float(eps))[0]
