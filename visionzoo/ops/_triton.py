"""Helpers shared by every Triton attention op (neighborhood, halo, routing).

Imported only by the ops' ``triton.py`` / ``triton_kernels.py`` modules, which the backend
registry loads lazily: importing :mod:`visionzoo.ops` never imports this file (nor Triton).

* jit helpers for the kernels: :func:`_mma` (a dot with the precision policy) and
  :func:`_online_softmax_step` (one flash-attention-2 update, base-2 logits);
* launcher helpers: :data:`_LOG2E`, :func:`_empty` (every kernel output buffer), :func:`_pow2`,
  :func:`_precision`;
* :func:`register_attention_op`: the ``torch.library`` registration of a fused attention op
  (forward and backward custom ops with fake kernels, autograd wired between them).
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from .. import _env

__all__ = ["register_attention_op"]

#: log2(e): the kernels use base-2 exponentials, so launchers pass ``scale * _LOG2E``
_LOG2E = 1.4426950408889634
#: the same constant for use inside ``@triton.jit`` code (globals there must be constexpr)
_LOG2E_JIT = tl.constexpr(_LOG2E)

#: tests set this to True (see ``visionzoo.ops._testing.nan_filled_outputs``) so that every output
#: buffer starts as NaN and an element a kernel forgets to write fails the comparison
NAN_FILL = False


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every kernel output is allocated here (NaN-filled under :data:`NAN_FILL`)."""
    if NAN_FILL:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _pow2(n) -> int:
    """The next power of two >= ``n`` (>= 1)."""
    return triton.next_power_of_2(max(int(n), 1))


def _precision(dtype) -> str:
    """The ``PRECISION`` constexpr of :func:`_mma` for operands of ``dtype``."""
    if dtype == torch.float32:
        return "tf32x3"  # three TF32 MMAs: about fp32 accuracy at tensor-core speed
    if dtype == torch.bfloat16 and _env.triton_interpret():
        return "upcast"  # see _mma
    return "tf32"  # unused for fp16/bf16 operands


@triton.jit
def _mma(a, b, PRECISION: tl.constexpr):
    """``a @ b`` with fp32 accumulation. ``"upcast"`` serves the interpreter only: it stores bf16 as
    uint16 and its ``tl.dot`` multiplies the bit patterns (triton-lang/triton#11584, "not supported
    yet" in 3.8). fp32 operands give the same result, as bf16 products are exact in fp32. The
    kernels do no other bf16 arithmetic (only loads, casts and stores), which the interpreter handles."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _online_softmax_step(s, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One flash-attention-2 update with base-2 logits ``s`` (``-inf`` = masked) and values ``v``:
    returns the new running max, normaliser and accumulator. Rows with no key yet keep max
    ``-inf`` and are rescaled by 0, not NaN."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    return m_new, l_i * alpha + tl.sum(p, 1), acc * alpha[:, None] + _mma(p.to(v.dtype), v, PRECISION)


def register_attention_op(name: str, tensors: str, attrs: str, n_grads: int,
                          forward: Callable, backward: Callable) -> Callable:
    """Register ``visionzoo::{name}_fwd`` and ``visionzoo::{name}_bwd`` and wire autograd between them.

    The convention (which the schemas spell out):

    * ``{name}_fwd(<tensors>, <attrs>) -> (out, lse)``: the first three tensors are ``q, k, v``;
      ``out`` is q's shape with v's last dim, ``lse`` q's shape without the last dim, fp32 (not
      differentiable).
    * ``{name}_bwd(dout, <tensors>, out, lse, <attrs>) -> (one gradient per the first n_grads tensors)``;
      the gradient of an optional tensor passed as None is an empty fp32 ``[0]`` tensor (a custom
      op cannot return None) and reaches autograd as None.

    Both are ``torch.library.custom_op``s with fake kernels, so ``torch.compile(fullgraph=True)``
    traces them as opaque nodes and ``torch.library.opcheck`` passes; the backward saves the tensor
    inputs, ``out`` and ``lse``. Not ``triton_op``: under ``TRITON_INTERPRET=1`` ``wrap_triton`` hands
    back the plain interpreted kernel, so fake and functional tracing would run the interpreter on
    fake tensors, and the tested registration would differ from the shipped one.

    Args:
        name: op name without namespace, e.g. ``"halo"``.
        tensors: schema of the tensor arguments, e.g. ``"Tensor q, Tensor k, Tensor v, Tensor? eh"``.
        attrs: schema of the other arguments, e.g. ``"int block, float scale"``.
        n_grads: how many of the leading tensor arguments are differentiable.
        forward: ``forward(*tensors, *attrs) -> (out, lse)``.
        backward: ``backward(dout, *tensors, out, lse, *attrs) -> tuple of n_grads tensors``.

    Returns:
        the forward op, callable as ``op(*tensors, *attrs) -> (out, lse)``.
    """
    n_tensors = len(tensors.split(","))
    grads = ", ".join(["Tensor"] * n_grads)

    def fwd_impl(*args):
        return forward(*args)

    def fwd_fake(*args):
        q, v = args[0], args[2]
        return q.new_empty((*q.shape[:-1], v.shape[-1])), q.new_empty(q.shape[:-1], dtype=torch.float32)

    def bwd_impl(*args):
        return tuple(backward(*args))

    def bwd_fake(*args):
        q = args[1]
        return tuple(q.new_empty((0,), dtype=torch.float32) if t is None else t.new_empty(t.shape)
                     for t in args[1:1 + n_grads])

    fwd = torch.library.custom_op(f"visionzoo::{name}_fwd", fwd_impl, mutates_args=(),
                                  schema=f"({tensors}, {attrs}) -> (Tensor, Tensor)")
    fwd.register_fake(fwd_fake)
    bwd = torch.library.custom_op(f"visionzoo::{name}_bwd", bwd_impl, mutates_args=(),
                                  schema=f"(Tensor dout, {tensors}, Tensor out, Tensor lse, {attrs}) -> ({grads})")
    bwd.register_fake(bwd_fake)

    def setup_context(ctx, inputs, output):
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(*inputs[:n_tensors], out, lse)
        ctx.attrs = inputs[n_tensors:]

    def autograd_backward(ctx, dout, _dlse):
        *ins, out, lse = ctx.saved_tensors
        grads = bwd(dout, *ins, out, lse, *ctx.attrs)
        if n_grads == 1:
            grads = (grads,)
        grads = [None if t is None else g for t, g in zip(ins, grads)]
        return (*grads, *[None] * (len(ins) + len(ctx.attrs) - n_grads))

    fwd.register_autograd(autograd_backward, setup_context=setup_context)
    return fwd
