"""Triton backend of :func:`visionzoo.ops.agent_attn.agent_attn`: launchers and ``torch.library`` ops.

Kernels: :mod:`.triton_kernels`. Ops (``torch.library.custom_op`` with fake kernels and autograd, so
``torch.compile`` traces them as opaque nodes and ``opcheck`` passes):

* ``visionzoo::agent_attn_fwd(q, k, v, agents, bias_kv?, bias_q?, scale) -> (out, agent_v, lse)``:
  ``agent_v [B, h, n, Dv]`` (fp32) and the agents' base-2 log-sum-exp ``lse [B, h, n]`` (fp32) are what
  the backward needs (not differentiable);
* ``visionzoo::agent_attn_bwd(dout, q, k, v, agents, bias_kv?, bias_q?, out, agent_v, lse, scale) ->
  (dq, dk, dv, dagents, dbias_kv, dbias_q)``, an absent bias's gradient an empty fp32 ``[0]`` tensor.

Not :func:`visionzoo.ops._triton.register_attention_op`: that convention saves one ``lse`` of q's
shape; agent attention's backward needs stage 1's result and log-sum-exp instead.
"""
from __future__ import annotations

import torch

from ... import _env
from .._triton import _LOG2E, _empty, _pow2, _precision
from . import triton_kernels as _k

__all__ = ["agent_attn_triton", "agent_attn_forward", "agent_attn_backward"]

BLOCK = 64  # keys per stage-1 step / queries per stage-2 program
INTERPRETER_BLOCK = 16  # small, so that the tests' short sequences still span several tiles and splits


def _rows(t):
    """``t`` with a unit last stride (strided views of a fused qkv projection are kept as they are)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _bias(t):
    """``(4-D tensor or None, strides (batch, head, row, column))`` of a ``[h, r, c]`` or ``[1|B, h, r, c]``
    bias, read in place whatever its layout (batch stride 0 when one bias serves the batch)."""
    if t is None:
        return None, (0, 0, 0, 0)
    t = t if t.dim() == 4 else t.unsqueeze(0)
    return t, (0 if t.shape[0] == 1 else t.stride(0), *t.stride()[1:])


def _plan(q, v, agents):
    """Compile-time constants and the tile rows (keys per stage-1 step, queries per stage-2 program).
    Sized so that the sm_90a builds do not spill (``test_builds_for_sm90``): the stage-2 backward holds
    ``P``, ``dP`` and ``dS`` (``rows x NA`` each) with the q/dO tiles, so 64 agents take half the rows
    (a quarter in fp32, whose tf32x3 dots hold split operands) and fp32 or wide heads take 8 warps."""
    n, D, Dv = agents.shape[2], q.shape[-1], v.shape[-1]
    na = max(16, _pow2(n))
    load = max(D, Dv) * (2 if q.dtype == torch.float32 else 1)
    block = BLOCK if na <= 32 else BLOCK // 2 if q.dtype != torch.float32 else BLOCK // 4
    if _env.triton_interpret():
        block = INTERPRETER_BLOCK
    return dict(NA=na, BD=max(16, _pow2(D)), BDV=max(16, _pow2(Dv)), PRECISION=_precision(q.dtype),
                num_warps=4 if load <= 64 and na <= 32 else 8), block


def _splits(k, bh, block):
    """Stage 1's key splits: about two programs per SM in all (four under the interpreter)."""
    tiles = -(-k.shape[2] // block)
    target = 2 * torch.cuda.get_device_properties(k.device).multi_processor_count if k.is_cuda else 4
    per_split = -(-tiles // max(1, min(tiles, -(-target // bh))))
    return -(-tiles // per_split), per_split


def agent_attn_forward(q, k, v, agents, bias_kv, bias_q, scale):
    q, k, v, agents = _rows(q), _rows(k), _rows(v), agents.contiguous()
    B, heads, N, D = q.shape
    M, n, Dv = k.shape[2], agents.shape[2], v.shape[-1]
    consts, block = _plan(q, v, agents)
    bkv, s_kv = _bias(bias_kv)
    bq, s_bq = _bias(bias_q)
    splits, per_split = _splits(k, B * heads, block)
    f32 = dict(dtype=torch.float32, device=q.device)
    pm = torch.empty(B * heads * splits * consts["NA"], **f32)
    pl = torch.empty_like(pm)
    pacc = torch.empty(B * heads * splits * consts["NA"] * consts["BDV"], **f32)
    qk_scale = scale * _LOG2E
    _k._stage1_partial_kernel[(B * heads, splits)](
        agents, k, v, q if bkv is None else bkv, pm, pl, pacc, M, n, heads, per_split, qk_scale,
        *k.stride()[:3], *v.stride()[:3], *s_kv, D, Dv, HAS_BIAS=bkv is not None, BM=block, **consts)
    agent_v = _empty((B, heads, n, Dv), torch.float32, q.device)
    lse = _empty((B, heads, n), torch.float32, q.device)
    _k._stage1_combine_kernel[(B * heads,)](pm, pl, pacc, agent_v, lse, splits, n, Dv, NA=consts["NA"],
                                            BDV=consts["BDV"], num_warps=4)
    out = _empty((B, heads, N, Dv), q.dtype, q.device)
    _k._stage2_fwd_kernel[(B * heads, -(-N // block))](
        agents, q, q if bq is None else bq, agent_v, out, N, n, heads, qk_scale, *q.stride()[:3], *s_bq,
        D, Dv, HAS_BIAS=bq is not None, BN=block, **consts)
    return out, agent_v, lse


def agent_attn_backward(dout, q, k, v, agents, bias_kv, bias_q, out, agent_v, lse, scale):
    q, k, v, agents = _rows(q), _rows(k), _rows(v), agents.contiguous()
    dout, out = dout.contiguous(), out.contiguous()
    B, heads, N, D = q.shape
    M, n, Dv = k.shape[2], agents.shape[2], v.shape[-1]
    consts, block = _plan(q, v, agents)
    bkv, s_kv = _bias(bias_kv)
    bq, s_bq = _bias(bias_q)
    f32 = dict(dtype=torch.float32, device=q.device)
    dq = _empty(q.shape, q.dtype, q.device)
    dk = _empty(k.shape, k.dtype, k.device)
    dv = _empty(v.shape, v.dtype, v.device)
    da = torch.zeros(agents.shape, **f32)
    dva = torch.zeros(agent_v.shape, **f32)
    dbq = torch.zeros(bq.shape if bq is not None else (0,), **f32)
    dbkv = torch.zeros(bkv.shape if bkv is not None else (0,), **f32)
    qk_scale = scale * _LOG2E
    _k._stage2_bwd_kernel[(B * heads, -(-N // block))](
        agents, q, q if bq is None else bq, agent_v, out, dout, dq, dbq if bq is not None else dq, da, dva,
        N, n, heads, scale, qk_scale, *q.stride()[:3], *s_bq,
        0 if bq is None or bq.shape[0] == 1 else heads * N * n, D, Dv,
        HAS_BIAS=bq is not None, BN=block, **consts)
    _k._stage1_bwd_kernel[(B * heads, -(-M // block))](
        agents, k, v, q if bkv is None else bkv, agent_v, lse, dva, dk, dv, dbkv if bkv is not None else dk, da,
        M, n, heads, scale, qk_scale, *k.stride()[:3], *v.stride()[:3], *s_kv,
        0 if bkv is None or bkv.shape[0] == 1 else heads * n * M, D, Dv,
        HAS_BIAS=bkv is not None, BM=block, **consts)

    def bias_grad(g, t):
        return torch.empty(0, **f32) if t is None else g.view(t.shape).to(t.dtype)
    return dq, dk, dv, da.to(agents.dtype), bias_grad(dbkv, bias_kv), bias_grad(dbq, bias_q)


@torch.library.custom_op("visionzoo::agent_attn_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agents: torch.Tensor, bias_kv: torch.Tensor | None,
            bias_q: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return agent_attn_forward(q, k, v, agents, bias_kv, bias_q, scale)


@_fwd_op.register_fake
def _(q, k, v, agents, bias_kv, bias_q, scale):
    B, heads, N, _ = q.shape
    n, Dv = agents.shape[2], v.shape[-1]
    return (q.new_empty((B, heads, N, Dv)), q.new_empty((B, heads, n, Dv), dtype=torch.float32),
            q.new_empty((B, heads, n), dtype=torch.float32))


@torch.library.custom_op("visionzoo::agent_attn_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agents: torch.Tensor,
            bias_kv: torch.Tensor | None, bias_q: torch.Tensor | None, out: torch.Tensor, agent_v: torch.Tensor,
            lse: torch.Tensor, scale: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return agent_attn_backward(dout, q, k, v, agents, bias_kv, bias_q, out, agent_v, lse, scale)


@_bwd_op.register_fake
def _(dout, q, k, v, agents, bias_kv, bias_q, out, agent_v, lse, scale):
    def grad(t):
        return q.new_empty((0,), dtype=torch.float32) if t is None else t.new_empty(t.shape)
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), agents.new_empty(agents.shape),
            grad(bias_kv), grad(bias_q))


def _setup_context(ctx, inputs, output):
    out, agent_v, lse = output
    ctx.mark_non_differentiable(agent_v, lse)
    ctx.save_for_backward(*inputs[:6], out, agent_v, lse)
    ctx.scale = inputs[6]


def _backward(ctx, dout, _dagent_v, _dlse):
    q, k, v, agents, bias_kv, bias_q, out, agent_v, lse = ctx.saved_tensors
    dq, dk, dv, da, dbkv, dbq = _bwd_op(dout, q, k, v, agents, bias_kv, bias_q, out, agent_v, lse, ctx.scale)
    return dq, dk, dv, da, None if bias_kv is None else dbkv, None if bias_q is None else dbq, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def agent_attn_triton(q, k, v, agents, bias_kv, bias_q, scale):
    """Same arguments and result as :func:`.reference.agent_attn_reference`."""
    return torch.ops.visionzoo.agent_attn_fwd(q, k, v, agents, bias_kv, bias_q, float(scale))[0]
