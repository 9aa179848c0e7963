"""Triton backend of :func:`visionzoo.ops.halo.halo_attn`: launchers and ``torch.library`` ops.

Kernels: :mod:`.triton_kernels`. Ops: ``visionzoo::halo_fwd(q, k, v, eh?, ew?, bq, block, halo,
scale) -> (out, lse)`` and ``visionzoo::halo_bwd(dout, q, k, v, eh?, ew?, out, lse, ...) -> (dq, dk, dv,
deh, dew)``, registered by :func:`visionzoo.ops._triton.register_attention_op`, so ``torch.compile``
traces them as opaque nodes and ``opcheck`` passes. Inputs are the zero-padded maps and bias tables
prepared by ``halo_attn``. fp32 / fp16 / bf16 with fp32 accumulation; head dims <= 256.
"""
from typing import Optional

import torch

from .._triton import _LOG2E, _empty, _pow2, _precision, register_attention_op
from . import triton_kernels as _k

__all__ = ["halo_triton", "halo_forward", "halo_backward"]


def _plan(q, k, v, bq, block, halo, has_bias, backward=False):
    """Grid, blocks per row and compile-time constants. Key chunks shrink with the query block and
    head width (and again for the backward, which holds dQ, P, dP and dS at once) so that the sm_90a
    builds of the 8 x 8-query kernels at head dim 64 in fp16/bf16 spill at most a few words
    (``test_builds_for_sm90``)."""
    B, hq, wq, heads, D = q.shape
    want = (B, hq // bq * block + 2 * halo, wq // bq * block + 2 * halo, heads)
    if hq % bq or wq % bq or tuple(k.shape[:4]) != want or tuple(v.shape[:4]) != want or k.shape[-1] != D:
        raise ValueError(f"halo kernels: q {tuple(q.shape)} must be whole blocks of {bq} and k/v padded to "
                         f"{want} (+ D), got k {tuple(k.shape)}, v {tuple(v.shape)}")
    Dv = v.shape[-1]
    block_q = max(16, _pow2(bq * bq))
    load = block_q * max(D, Dv) * (2 if q.dtype == torch.float32 else 1) * (2 if backward else 1)
    block_k = 64 if load <= 32 * 64 else 32 if load <= 64 * 64 else 16
    consts = dict(BQ=bq, BLOCK=block, WIN=block + 2 * halo, BLOCK_Q=block_q, BLOCK_K=block_k,
                  BLOCK_D=max(16, _pow2(D)), BLOCK_DV=max(16, _pow2(Dv)), HAS_BIAS=has_bias,
                  PRECISION=_precision(q.dtype), num_warps=4 if load <= 64 * 64 else 8, num_stages=2)
    grid = ((hq // bq) * (wq // bq), B * heads)
    return grid, wq // bq, consts


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()[:4]]


def _check_bias(q, eh, ew, block, halo):
    want = (*q.shape[:4], 2 * (block + 2 * halo) - 1)
    for name, t in (("eh", eh), ("ew", ew)):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"halo kernels: {name} must be {want}, got {tuple(t.shape)}")


def halo_forward(q, k, v, eh, ew, bq, block, halo, scale):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    _check_bias(q, eh, ew, block, halo)
    has_bias = eh is not None
    eh = eh.contiguous() if has_bias else q
    ew = ew.contiguous() if has_bias else q
    B, hq, wq, heads, _ = q.shape
    out = _empty((B, hq, wq, heads, v.shape[-1]), q.dtype, q.device)
    lse = _empty((B, hq, wq, heads), torch.float32, q.device)
    grid, nbw, consts = _plan(q, k, v, bq, block, halo, has_bias)
    _k._halo_fwd_kernel[grid](q, k, v, eh, ew, out, lse, *_strides(q, k, v, eh, out), *lse.stride()[:3],
                              nbw, heads, q.shape[-1], v.shape[-1], scale * _LOG2E, **consts)
    return out, lse


def halo_backward(dout, q, k, v, eh, ew, out, lse, bq, block, halo, scale):
    q, k, v, dout, out = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous(), out.contiguous()
    has_bias = eh is not None
    eh = eh.contiguous() if has_bias else q
    ew = ew.contiguous() if has_bias else q
    B, hq, wq, heads, D = q.shape
    delta = (dout.float() * out.float()).sum(-1)
    dq = _empty(q.shape, q.dtype, q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    deh = torch.zeros(eh.shape if has_bias else (0,), dtype=torch.float32, device=q.device)
    dew = torch.zeros_like(deh)
    grid, nbw, consts = _plan(q, k, v, bq, block, halo, has_bias, backward=True)
    _k._halo_bwd_kernel[grid](q, k, v, eh, ew, dout, lse, delta, dq, dk, dv, deh if has_bias else dq,
                              dew if has_bias else dq, *_strides(q, k, v, eh, dout), *lse.stride()[:3],
                              nbw, heads, D, v.shape[-1], scale * _LOG2E, scale, **consts)
    if has_bias:
        deh, dew = deh.to(eh.dtype), dew.to(ew.dtype)
    return dq, dk.to(k.dtype), dv.to(v.dtype), deh, dew


_halo_fwd_op = register_attention_op(
    "halo", "Tensor q, Tensor k, Tensor v, Tensor? eh, Tensor? ew", "int bq, int block, int halo, float scale",
    n_grads=5, forward=halo_forward, backward=halo_backward)


def halo_triton(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, eh: Optional[torch.Tensor],
                ew: Optional[torch.Tensor], bq: int, block: int, halo: int, scale: float) -> torch.Tensor:
    """Padded inputs (see :mod:`.reference`) -> ``[B, nh*bq, nw*bq, heads, Dv]``."""
    out, _ = torch.ops.visionzoo.halo_fwd(qp, kp, vp, eh, ew, bq, block, halo, float(scale))
    return out
