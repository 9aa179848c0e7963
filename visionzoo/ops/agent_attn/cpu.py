"""CPU path of agent attention: GEMMs with stage 2 laid out agents-major, and a hand-written backward.

Forward, per (image, head), with ``As = scale * agents`` (``n x D``, tiny)::

    P1  = softmax(As K^T + B_kv)             # [n, M], softmax over the keys (long rows)
    V_A = P1 V                               # [n, Dv]
    P2t = softmax(As Q^T + B_q^T, dim=-2)    # [n, N], softmax over the n agents of each column
    out = P2t^T V_A                          # [N, Dv] (the GEMM reads P2t transposed, no copy)

Stage 2 is computed as its transpose ``[n, N]``: the official ``[N, n]`` layout puts a softmax over
rows of ``n`` (9 at Agent-PVT-T stage 1) elements, which ATen runs an order of magnitude slower than
the same softmax over ``n`` rows of ``N`` contiguous elements (measured 11.6 ms vs 0.9 ms at
``8 x 3136 x 9``, one thread), and SDPA's fused CPU kernel (tried first) is no faster than plain GEMMs
for 9 queries or 9 keys (25 ms vs 13 ms for both stages). A ``B_q`` that is a transposed view of an
``[h, n, N]`` tensor (what :class:`~visionzoo.blocks.agent_attn.AgentAttn` passes) is read contiguously.

Backward (autograd recording, eager): a custom ``autograd.Function`` that keeps ``P1``, ``P2t`` and
``V_A`` from the forward (``2 n N + n Dv`` values per image and head: 1.8 MB at Agent-PVT-T stage 1,
batch 8) and forms every gradient with GEMMs: for ``O = softmax(S) Z``, ``S = X Y^T s + bias``:
``dZ = P^T dO``, ``dS = P * (dP - rowsum(dP * P))`` with ``dP = dO Z^T``, ``dX = dS (s Y)``,
``dY = dS^T (s X)``, ``dbias = dS`` (summed over a broadcast batch); ``rowsum(dP * P)`` equals
``rowsum(dO * O)`` and is taken over the shorter rows.

Under ``torch.compile`` / ``torch.export`` this path runs as the custom op ``visionzoo::agent_attn_cpu``; under
``torch.jit`` the reference runs instead (the rule lives in :mod:`visionzoo.ops._backend`).
"""
from __future__ import annotations

import torch

__all__ = ["agent_attn_cpu"]


def _forward(q, k, v, agents, bias_kv, bias_q, scale):
    """``(P1 [B, h, n, M], V_A [B, h, n, Dv], P2t [B, h, n, N], out [B, h, N, Dv])``."""
    a_s = agents * scale
    s1 = torch.matmul(a_s, k.transpose(-2, -1))
    if bias_kv is not None:
        s1 = s1 + bias_kv
    p1 = s1.softmax(-1)
    agent_v = torch.matmul(p1, v)
    s2 = torch.matmul(a_s, q.transpose(-2, -1))
    if bias_q is not None:
        s2 = s2 + bias_q.transpose(-2, -1)
    p2t = s2.softmax(-2)
    return p1, agent_v, p2t, torch.matmul(p2t.transpose(-2, -1), agent_v)


def _reduce_to(g, shape):
    """``g`` summed over the batch where a bias of ``shape`` broadcasts over it."""
    return g.sum(0, keepdim=True) if shape[0] == 1 and g.shape[0] != 1 else g


class _AgentAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, agents, bias_kv, bias_q, scale):
        p1, agent_v, p2t, out = _forward(q, k, v, agents, bias_kv, bias_q, scale)
        ctx.save_for_backward(q, k, v, agents, p1, agent_v, p2t)
        ctx.scale, ctx.bias_shapes = scale, (None if bias_kv is None else bias_kv.shape,
                                             None if bias_q is None else bias_q.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, agents, p1, agent_v, p2t = ctx.saved_tensors
        s = ctx.scale
        kv_shape, q_shape = ctx.bias_shapes
        # stage 2, agents-major: dS2t = P2t * (dP2t - colsum(dP2t * P2t)), dP2t = V_A dO^T
        dva = torch.matmul(p2t, dout)
        ds2 = torch.matmul(agent_v, dout.transpose(-2, -1))
        ds2.sub_((ds2 * p2t).sum(-2, keepdim=True)).mul_(p2t)
        dq = torch.matmul(ds2.transpose(-2, -1), agents * s)
        da = torch.matmul(ds2, q).mul_(s)
        # stage 1: dS1 = P1 * (dP1 - rowsum(dV_A * V_A)), dP1 = dV_A V^T
        dv = torch.matmul(p1.transpose(-2, -1), dva)
        ds1 = torch.matmul(dva, v.transpose(-2, -1))
        ds1.sub_((dva * agent_v).sum(-1, keepdim=True)).mul_(p1)
        dk = torch.matmul(ds1.transpose(-2, -1), agents * s)
        da.add_(torch.matmul(ds1, k), alpha=s)
        dbkv = None if kv_shape is None else _reduce_to(ds1, kv_shape)
        dbq = None if q_shape is None else _reduce_to(ds2, q_shape).transpose(-2, -1)
        return dq, dk, dv, da, dbkv, dbq, None


def agent_attn_cpu(q, k, v, agents, bias_kv, bias_q, scale):
    """Same arguments and result as :func:`.reference.agent_attn_reference`."""
    if not torch.is_grad_enabled():
        return _forward(q, k, v, agents, bias_kv, bias_q, scale)[3]
    return _AgentAttn.apply(q, k, v, agents, bias_kv, bias_q, scale)
