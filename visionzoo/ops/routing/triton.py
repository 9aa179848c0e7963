"""Triton backend of :func:`visionzoo.ops.routing.bra`: launchers and ``torch.library`` ops.

Kernels: :mod:`.triton_kernels`. Ops: ``visionzoo::bra_fwd(q, k, v, idx, n_win, scale, valid) ->
(out, lse)`` and ``visionzoo::bra_bwd(dout, q, k, v, idx, out, lse, ...) -> (dq, dk, dv)``, registered by
:func:`visionzoo.ops._triton.register_attention_op` (the routing indices are an input, not
differentiated), so ``torch.compile`` traces them and ``opcheck`` passes. fp32 / fp16 / bf16 with
fp32 accumulation; head dims <= 256.
"""
from typing import Sequence

import torch
import triton

from .._triton import _LOG2E, _empty, _pow2, _precision, register_attention_op
from . import triton_kernels as _k

__all__ = ["bra_triton", "bra_forward", "bra_backward"]


def _plan(q, k, v, idx, n_win, backward=False):
    """Grid, region geometry and compile-time constants; key chunks shrink with the head width, the
    fp32 (tf32x3) operand split and the backward's extra live tiles, so sm_90a builds at BiFormer's
    shapes spill at most a few words (``test_builds_for_sm90``)."""
    B, hp, wp, heads, D = q.shape
    if hp % n_win or wp % n_win or k.shape != q.shape or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"bra kernels: maps must be whole regions of an n_win={n_win} grid with q/k equal, "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if idx.shape[:2] != (B, n_win * n_win) or idx.dtype != torch.int64:
        raise ValueError(f"bra kernels: idx must be int64 [B, n_win^2, topk], got {idx.dtype} {tuple(idx.shape)}")
    rh, rw = hp // n_win, wp // n_win
    Dv = v.shape[-1]
    block_q = max(16, min(64, _pow2(rh * rw)))
    width = max(D, Dv) * (2 if q.dtype == torch.float32 else 1) * (2 if backward else 1)
    block_k = 64 if width <= 32 else 32 if width <= 64 else 16
    block_k = max(16, min(block_k, _pow2(rh * rw)))
    qt = triton.cdiv(rh * rw, block_q)
    grid = (n_win * n_win * qt, B * heads)
    geometry = (n_win, qt, rh, rw, idx.shape[-1])
    # fp32 (tf32x3) stays on 4 warps: on an H200 (Triton 3.6), 8 warps gave a wrong dQ (errors up to 0.9) for
    # 8x12 regions at head dim 32 while dK / dV were right; 4 warps and 8 warps with ieee dots were exact
    num_warps = 4 if width <= 64 or q.dtype == torch.float32 else 8
    consts = dict(BLOCK_Q=block_q, BLOCK_K=block_k, BLOCK_D=max(16, _pow2(D)), BLOCK_DV=max(16, _pow2(Dv)),
                  PRECISION=_precision(q.dtype), num_warps=num_warps, num_stages=2)
    return grid, geometry, consts


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()[:4]]


def bra_forward(q, k, v, idx, n_win, scale, valid):
    q, k, v, idx = q.contiguous(), k.contiguous(), v.contiguous(), idx.contiguous()
    B, hp, wp, heads, D = q.shape
    out = _empty((B, hp, wp, heads, v.shape[-1]), q.dtype, q.device)
    lse = _empty((B, hp, wp, heads), torch.float32, q.device)
    grid, geometry, consts = _plan(q, k, v, idx, n_win)
    _k._bra_fwd_kernel[grid](q, k, v, idx, out, lse, *_strides(q, k, v, out), *lse.stride()[:3], *geometry,
                             *valid, heads, D, v.shape[-1], scale * _LOG2E, **consts)
    return out, lse


def bra_backward(dout, q, k, v, idx, out, lse, n_win, scale, valid):
    q, k, v, idx = q.contiguous(), k.contiguous(), v.contiguous(), idx.contiguous()
    dout, out = dout.contiguous(), out.contiguous()
    B, hp, wp, heads, D = q.shape
    delta = (dout.float() * out.float()).sum(-1)
    dq = _empty(q.shape, q.dtype, q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    grid, geometry, consts = _plan(q, k, v, idx, n_win, backward=True)
    _k._bra_bwd_kernel[grid](q, k, v, idx, dout, lse, delta, dq, dk, dv, *_strides(q, k, v, dout), *lse.stride()[:3],
                             *geometry, *valid, heads, D, v.shape[-1], scale * _LOG2E, scale, **consts)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


_bra_fwd_op = register_attention_op(
    "bra", "Tensor q, Tensor k, Tensor v, Tensor idx", "int n_win, float scale, int[] valid",
    n_grads=3, forward=bra_forward, backward=bra_backward)


def bra_triton(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, idx: torch.Tensor, n_win: int, scale: float,
               valid: Sequence[int]) -> torch.Tensor:
    """Padded inputs (see :mod:`.reference`) -> ``[B, n*rh, n*rw, heads, Dv]``."""
    out, _ = torch.ops.visionzoo.bra_fwd(qp, kp, vp, idx, n_win, float(scale), [int(s) for s in valid])
    return out
