"""Triton backend of :func:`visionzoo.ops.neighborhood.na2d`: launchers and ``torch.library`` ops.

Algorithm: fused, tiled neighborhood attention (flash-attention 2 style online softmax over the
union of a query tile's windows; key-centric dK/dV over the inverse neighbourhood); the
kernels and their header live in :mod:`.triton_kernels`.
Ops: ``visionzoo::na2d_fwd(q, k, v, rpb?, kernel_size, dilation, stride, scale, valid) -> (out, lse)``
(``valid = [H0, W0, H1, W1]``: keys outside that rectangle are zero padding, masked)
and ``visionzoo::na2d_bwd(...) -> (dq, dk, dv, drpb)``: ``torch.library.custom_op`` with
explicit fake kernels and ``register_autograd`` on the forward (the backward saves q, k, v, out,
lse and rpb), so ``torch.compile(fullgraph=True)`` traces them as opaque nodes and ``opcheck``
passes. Not ``triton_op``: under ``TRITON_INTERPRET=1`` ``wrap_triton`` hands back the plain
interpreted kernel, so fake and functional tracing would run the interpreter on fake tensors, and
the tested registration would differ from the shipped one.
Supports: any kernel size (tested odd 1..13 and even), dilation, GNA stride, maps smaller than
the window, RPB or none, non-square maps, head dims D and Dv <= 256 (D != Dv allowed; padded
to powers of two >= 16), fp32 / fp16 / bf16 inputs with fp32 accumulation.
Tested dtypes: fp32, fp16, bf16, numerically under ``TRITON_INTERPRET=1`` only (no GPU in this
project); the sm_90a build is checked offline.
Known limits: fixed tile shapes (no autotuning); fp32 dots use ``tf32x3``; d(rpb) is
accumulated with atomics (run-to-run bits may differ); no double backward; autocast is not
applied inside the op (pass one dtype).
"""
import math
from typing import Optional

import torch
import triton

from .._triton import _LOG2E, _empty, _pow2, _precision
from . import triton_kernels as _k
from .reference import as_region

__all__ = ["na2d_triton", "na2d_forward", "na2d_backward"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


def _tile(nh: int, nw: int, target: int) -> tuple[int, int]:
    """A near-square ``(th, tw)`` tile of about ``target`` positions (>= 16 for ``tl.dot``),
    no larger than the dilation group needs; 1-D maps get a ``1 x target`` row."""
    tw = min(_pow2(nw), 1 << (math.isqrt(target).bit_length() - 1))  # pow2 <= sqrt(target)
    th = min(_pow2(nh), target // tw)
    tw = max(tw, min(_pow2(nw), target // th), 16 // th)
    return th, tw


#: positions per tile, by register pressure level (fp32 operands double it, head dims > 64 double
#: it, > 128 double it again; capped at 4): forward (query, key), dq (query, key), dk/dv (own keys,
#: query step). Chosen so that sm_90a builds (ptxas -v, 8 warps) spill nothing in fp16/bf16; fp32
#: (tf32x3 splits every operand in two) spills some bytes, at D = 256 nearly 1 KB.
_TILES = {1: ((64, 64), (64, 32), (64, 32)), 2: ((64, 32), (32, 32), (32, 32)), 4: ((32, 32), (16, 16), (16, 16))}


def _plan(q, v, kernel_size, dilation, stride, has_rpb):
    """Dilation-group lengths, per-kernel tile shapes and the shared compile-time constants.

    Tiles are near-square (an 8 x 8 query tile's windows span ``(8 + k - 1)^2`` keys, a 1 x 64
    row's ``k (64 + k - 1)``). Nothing is autotuned yet.
    """
    D, Dv = q.shape[-1], v.shape[-1]
    nh, nw = -(-q.shape[1] // dilation[0]), -(-q.shape[2] // dilation[1])  # longest dilation group
    width = max(D, Dv)
    level = min(4, (2 if q.dtype == torch.float32 else 1) * (1 if width <= 64 else 2 if width <= 128 else 4))
    tiles = [tuple(_tile(nh, nw, n) for n in pair) for pair in _TILES[level]]
    consts = dict(KH=kernel_size[0], KW=kernel_size[1], DH=dilation[0], DW=dilation[1], SH=stride[0],
                  SW=stride[1], HAS_RPB=has_rpb, PRECISION=_precision(q.dtype), BLOCK_D=max(16, _pow2(D)),
                  BLOCK_DV=max(16, _pow2(Dv)), num_warps=8, num_stages=2)
    return (nh, nw), tiles, consts


def _grid(groups, dilation, tile, batch_heads):
    """Programs: every tile of every dilation group (shorter groups leave their last tile partly
    empty), times batch * heads."""
    tiles = triton.cdiv(groups[0], tile[0]), triton.cdiv(groups[1], tile[1])
    return (dilation[0] * tiles[0] * dilation[1] * tiles[1], batch_heads), tiles


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def na2d_forward(q, k, v, rpb, kernel_size, dilation, stride, scale, valid=None):
    """Launch the fused forward; returns ``out [B, H, W, heads, Dv]`` and ``lse [B, H, W, heads]`` (fp32).
    ``valid``: the real keys of a zero-padded map, ``(Hv, Wv)`` or ``(H0, W0, H1, W1)`` (padding keys
    masked), default the whole map."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    B, H, W, heads, D = q.shape
    Dv = v.shape[-1]
    groups, ((q_tile, k_tile), _, _), consts = _plan(q, v, kernel_size, dilation, stride, rpb is not None)
    real = as_region(valid) or (0, 0, H, W)
    out = _empty((B, H, W, heads, Dv), q.dtype, q.device)
    lse = _empty((B, H, W, heads), torch.float32, q.device)
    grid, tiles = _grid(groups, dilation, q_tile, B * heads)
    _k._na2d_fwd_kernel[grid](
        q, k, v, q if rpb is None else rpb.contiguous(), out, lse,
        *q.stride()[:4], *k.stride()[:4], *v.stride()[:4], H, W, heads, D, Dv, *real, scale * _LOG2E, *tiles,
        TQH=q_tile[0], TQW=q_tile[1], TKH=k_tile[0], TKW=k_tile[1], **consts)
    return out, lse


def na2d_backward(dout, q, k, v, out, lse, rpb, kernel_size, dilation, stride, scale, valid=None):
    """Launch delta, dQ (+ d(rpb)) and dK/dV kernels; returns ``dq, dk, dv, drpb`` (drpb empty without rpb)."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    dout, out = dout.contiguous(), out.contiguous()
    B, H, W, heads, D = q.shape
    Dv = v.shape[-1]
    kh, kw = kernel_size
    groups, (_, (q_tile, k_tile), (own_tile, step_tile)), consts = _plan(
        q, v, kernel_size, dilation, stride, rpb is not None)
    strides = (*q.stride()[:4], *k.stride()[:4], *v.stride()[:4])
    real = as_region(valid) or (0, 0, H, W)
    rpb_arg = q if rpb is None else rpb.contiguous()

    rows = B * H * W * heads
    delta = _empty((B, H, W, heads), torch.float32, q.device)
    block_r = max(16, min(128, 4096 // consts["BLOCK_DV"]))
    _k._na2d_bwd_delta_kernel[(triton.cdiv(rows, block_r),)](
        out, dout, delta, rows, Dv, BLOCK_R=block_r, BLOCK_DV=consts["BLOCK_DV"], num_warps=4)

    dq = _empty(q.shape, q.dtype, q.device)
    # one fp32 slab per batch element: an address then takes at most H * W atomic adds
    drpb = torch.zeros((B, heads, 2 * kh - 1, 2 * kw - 1) if rpb is not None else (0,),
                       dtype=torch.float32, device=q.device)
    grid, tiles = _grid(groups, dilation, q_tile, B * heads)
    _k._na2d_bwd_dq_kernel[grid](
        q, k, v, rpb_arg, dout, lse, delta, dq, drpb if rpb is not None else dq, *strides,
        H, W, heads, D, Dv, *real, scale * _LOG2E, scale, *tiles,
        TQH=q_tile[0], TQW=q_tile[1], TKH=k_tile[0], TKW=k_tile[1], **consts)

    # key-centric: a program owns a key tile and steps over its inverse neighbourhood's queries
    dk = _empty(k.shape, k.dtype, q.device)
    dv = _empty(v.shape, v.dtype, q.device)
    grid, tiles = _grid(groups, dilation, own_tile, B * heads)
    _k._na2d_bwd_dkdv_kernel[grid](
        q, k, v, rpb_arg, dout, lse, delta, dk, dv, *strides,
        H, W, heads, D, Dv, *real, scale * _LOG2E, scale, *tiles,
        TQH=step_tile[0], TQW=step_tile[1], TKH=own_tile[0], TKW=own_tile[1],
        PROBE_H=_pow2(own_tile[0] + 2 * (kh + stride[0] - 2)),
        PROBE_W=_pow2(own_tile[1] + 2 * (kw + stride[1] - 2)), **consts)
    if rpb is not None:
        drpb = drpb.sum(0).to(rpb.dtype)
    return dq, dk, dv, drpb


@torch.library.custom_op("visionzoo::na2d_fwd", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, Tensor? rpb, int[] kernel_size, int[] dilation, "
                                "int[] stride, float scale, int[] valid) -> (Tensor, Tensor)")
def _na2d_fwd_op(q, k, v, rpb, kernel_size, dilation, stride, scale, valid):
    return na2d_forward(q, k, v, rpb, kernel_size, dilation, stride, scale, valid)


@_na2d_fwd_op.register_fake
def _(q, k, v, rpb, kernel_size, dilation, stride, scale, valid):
    return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("visionzoo::na2d_bwd", mutates_args=(),
                         schema="(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? rpb, "
                                "int[] kernel_size, int[] dilation, int[] stride, float scale, int[] valid) "
                                "-> (Tensor, Tensor, Tensor, Tensor)")
def _na2d_bwd_op(dout, q, k, v, out, lse, rpb, kernel_size, dilation, stride, scale, valid):
    return na2d_backward(dout, q, k, v, out, lse, rpb, kernel_size, dilation, stride, scale, valid)


@_na2d_bwd_op.register_fake
def _(dout, q, k, v, out, lse, rpb, kernel_size, dilation, stride, scale, valid):
    drpb = q.new_empty((0,), dtype=torch.float32) if rpb is None else rpb.new_empty(rpb.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb


def _setup_context(ctx, inputs, output):
    q, k, v, rpb, kernel_size, dilation, stride, scale, valid = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, rpb)
    ctx.geometry = (kernel_size, dilation, stride, scale, valid)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, rpb = ctx.saved_tensors
    dq, dk, dv, drpb = torch.ops.visionzoo.na2d_bwd(dout, q, k, v, out, lse, rpb, *ctx.geometry)
    return dq, dk, dv, (drpb if rpb is not None else None), None, None, None, None, None


_na2d_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def na2d_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: tuple[int, int],
                dilation: tuple[int, int], stride: tuple[int, int], rpb: Optional[torch.Tensor],
                scale: float, valid: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """``[B, H, W, heads, D]`` q/k and ``[B, H, W, heads, Dv]`` v in, ``[B, H, W, heads, Dv]`` out;
    arguments already validated by :func:`~visionzoo.ops.neighborhood.na2d`."""
    if q.dtype not in _DTYPES:
        raise TypeError(f"na2d triton backend supports {_DTYPES}, got {q.dtype}")
    if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
        raise ValueError(f"na2d triton backend supports head dims <= {_MAX_HEAD_DIM}, got "
                         f"{q.shape[-1]} / {v.shape[-1]}")
    real = list(as_region(valid) or (0, 0, q.shape[1], q.shape[2]))
    out, _ = torch.ops.visionzoo.na2d_fwd(q, k, v, rpb, list(kernel_size), list(dilation), list(stride),
                                          float(scale), real)
    return out
