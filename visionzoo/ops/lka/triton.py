"""Triton backend of :func:`visionzoo.ops.lka.lka`: launchers and ``torch.library`` ops.

Kernels: :mod:`.triton_kernels`. Ops (``torch.library.custom_op`` with fake kernels and autograd, so
``torch.compile`` traces them as opaque nodes and ``opcheck`` passes):

* ``visionzoo::lka_fwd(x, w0, b0?, w1, b1?, dilation) -> y``;
* ``visionzoo::lka_bwd(dy, x, w0, b0?, w1, b1?, dilation) -> (dx, dw0, db0, dw1, db1)``, an absent
  bias's gradient an empty fp32 ``[0]`` tensor (a custom op cannot return None).

Not :func:`visionzoo.ops._triton.register_attention_op`: its convention is attention's (``q, k, v`` in,
``(out, lse)`` out, ``lse`` saved); LKA has neither. The backward recomputes the intermediate (see the
kernel header), so autograd saves only the inputs.
"""
from __future__ import annotations

import torch

from ... import _env
from .._triton import _empty, _pow2
from . import triton_kernels as _k

__all__ = ["lka_triton", "lka_forward", "lka_backward"]

BC = 4  # channels per program: NCHW rows stay coalesced along W whatever BC is; small keeps the slot in L2


# Register budgets for the sm_90a builds (tests/ops/test_lka_triton.py::test_builds_for_sm90 checks them
# at VAN's geometry). The fused kernel's phase 1 holds one chunk of ``a`` (``BC x RR x RC`` fp32) while it
# runs ``KA^2`` unrolled taps; 1024 values on 8 warps (4 per thread) leave room for the input gradient's
# 49-tap dilated first convolution (2048 spilled 452 B in fp16/bf16). The weight-gradient kernel keeps
# ``dy``, ``da`` and a tap's ``a`` and ``dy`` shifted on the whole ``BC x TILE^2`` tile at once: 16 warps
# for 32 x 32 tiles (8 spilled 464-500 B in fp16). Under TRITON_INTERPRET (the CPU test suite) registers do
# not exist and every interpreted loop iteration costs: chunks of 2048 halve phase 1's iterations (the
# tests' maps still mostly end in a partial chunk, so the masked tail is covered either way).
CHUNK = 1024
INTERPRETER_CHUNK = 2048
WARPS = {"fused": (4, 8), "wgrad": (4, 16)}  # (tiles of <= 256 pixels, larger tiles)


def _plan(x, pad_b, kernel="fused"):
    """Tile side (a power of two, at most 32, at least the map when smaller), slot geometry and the
    persistent grid (a few programs per SM on CUDA; under the interpreter a handful)."""
    B, C, H, W = x.shape
    tile = min(32, max(4, _pow2(max(H, W))))
    rows = tile + 2 * pad_b
    rc = _pow2(rows)
    chunk = INTERPRETER_CHUNK if _env.triton_interpret() else CHUNK
    rr = max(1, chunk // (rc * BC))  # region rows per chunk of a held in registers
    ncb = -(-C // BC)
    tiles_h, tiles_w = -(-H // tile), -(-W // tile)
    n_tiles = B * ncb * tiles_h * tiles_w
    if x.is_cuda:
        slots = 2 * torch.cuda.get_device_properties(x.device).multi_processor_count
    else:
        slots = 4
    nprog = min(n_tiles, slots)
    scratch = torch.empty(nprog * BC * rows * rc, dtype=torch.float32, device=x.device)
    warps = WARPS[kernel][0 if tile * tile <= 256 else 1]
    return dict(ncb=ncb, tiles_h=tiles_h, tiles_w=tiles_w, n_tiles=n_tiles, nprog=nprog, scratch=scratch,
                consts=dict(BC=BC, TILE=tile, RC=rc, RR=rr, num_warps=warps))


def _fused(x, wa, ba, da, wb, bb, db):
    """``conv_B(conv_A(x))`` ('same' depthwise, intermediate zero outside the map) into a new NCHW tensor."""
    x = x.contiguous()
    B, C, H, W = x.shape
    ka, kb = wa.shape[-1], wb.shape[-1]
    pa, pb = da * (ka // 2), db * (kb // 2)
    y = _empty(x.shape, x.dtype, x.device)
    plan = _plan(x, pb)
    wa, wb = wa.contiguous(), wb.contiguous()
    _k._lka_fused_kernel[(plan["nprog"],)](
        x, wa, x if ba is None else ba.contiguous(), wb, x if bb is None else bb.contiguous(), y, plan["scratch"],
        H, W, C, plan["ncb"], plan["tiles_h"], plan["tiles_w"], plan["n_tiles"], *x.stride()[:3],
        KA=ka, DA=da, PA=pa, HAS_BA=ba is not None, KB=kb, DB=db, PB=pb, HAS_BB=bb is not None, **plan["consts"])
    return y


def lka_forward(x, w0, b0, w1, b1, dilation):
    return _fused(x, w0, b0, 1, w1, b1, dilation)


def lka_backward(dy, x, w0, b0, w1, b1, dilation):
    dy, x = dy.contiguous(), x.contiguous()
    B, C, H, W = x.shape
    k0, k1 = w0.shape[-1], w1.shape[-1]
    dx = _fused(dy, w1.flip(-1, -2), None, dilation, w0.flip(-1, -2), None, 1)
    f32 = dict(dtype=torch.float32, device=x.device)
    dw0, dw1 = torch.zeros(C, k0 * k0, **f32), torch.zeros(C, k1 * k1, **f32)
    db0, db1 = torch.zeros(C, **f32), torch.zeros(C, **f32)
    plan = _plan(x, dilation * (k1 // 2), "wgrad")
    _k._lka_wgrad_kernel[(plan["nprog"],)](
        x, w0.contiguous(), x if b0 is None else b0.contiguous(), w1.contiguous(), dy, plan["scratch"],
        dw0, db0, dw1, db1, H, W, C, plan["ncb"], plan["tiles_h"], plan["tiles_w"], plan["n_tiles"],
        *x.stride()[:3], K0=k0, P0=k0 // 2, HAS_B0=b0 is not None, K1=k1, D1=dilation, P1=dilation * (k1 // 2),
        **plan["consts"])
    return (dx, dw0.view_as(w0).to(w0.dtype), torch.empty(0, **f32) if b0 is None else db0.to(b0.dtype),
            dw1.view_as(w1).to(w1.dtype), torch.empty(0, **f32) if b1 is None else db1.to(b1.dtype))


@torch.library.custom_op("visionzoo::lka_fwd", mutates_args=())
def _lka_fwd_op(x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor,
                b1: torch.Tensor | None, dilation: int) -> torch.Tensor:
    return lka_forward(x, w0, b0, w1, b1, dilation)


@_lka_fwd_op.register_fake
def _(x, w0, b0, w1, b1, dilation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("visionzoo::lka_bwd", mutates_args=())
def _lka_bwd_op(dy: torch.Tensor, x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor,
                b1: torch.Tensor | None, dilation: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return lka_backward(dy, x, w0, b0, w1, b1, dilation)


@_lka_bwd_op.register_fake
def _(dy, x, w0, b0, w1, b1, dilation):
    def grad(t):
        return x.new_empty((0,), dtype=torch.float32) if t is None else torch.empty_like(t)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w0), grad(b0),
            torch.empty_like(w1), grad(b1))


def _setup_context(ctx, inputs, output):
    x, w0, b0, w1, b1, dilation = inputs
    ctx.save_for_backward(x, w0, b0, w1, b1)
    ctx.dilation = dilation


def _backward(ctx, dy):
    x, w0, b0, w1, b1 = ctx.saved_tensors
    dx, dw0, db0, dw1, db1 = _lka_bwd_op(dy, x, w0, b0, w1, b1, ctx.dilation)
    return dx, dw0, None if b0 is None else db0, dw1, None if b1 is None else db1, None


_lka_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def lka_triton(x: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor,
               b1: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """``x [B, C, H, W]`` -> ``[B, C, H, W]`` (NCHW contiguous; see :mod:`.reference`)."""
    return torch.ops.visionzoo.lka_fwd(x, w0, b0, w1, b1, int(dilation))
