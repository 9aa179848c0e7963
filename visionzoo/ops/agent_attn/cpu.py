"""CPU path of agent attention: two ``scaled_dot_product_attention`` calls forward, a hand-written backward.

Forward: ``V_A = sdpa(agents, k, v, attn_mask=bias_kv)`` then ``out = sdpa(q, agents, V_A,
attn_mask=bias_q)``. The additive biases go in as float masks, so ATen's fused CPU attention kernel
(flash-style, blocked over keys) runs both stages without materialising either probability matrix,
and a batch-1 bias broadcasts inside the kernel (no ``.repeat(b, ...)`` as in the official code).

Backward (autograd recording, eager): a custom ``autograd.Function`` that recomputes each stage's
probabilities once (``[B, h, n, M]`` and ``[B, h, N, n]``, the only matrices it holds, overwritten in
place) and forms every gradient with GEMMs: with ``P = softmax(S)``, ``S = x y^T s + bias`` and
``O = P z``: ``dz = P^T dO``, ``dS = P * (dO z^T - rowsum(dO * O))``, ``dx = s dS y``, ``dy = s dS^T x``,
``dbias = dS`` summed over the broadcast batch. SDPA's own backward with a mask that requires grad
runs its math fallback (it materialises and keeps the logits, probabilities and their gradients:
more memory and passes; see ``benchmarks/bench_agent_attn.py``).

Under ``torch.compile`` / export / tracing / scripting the two SDPA calls run with plain autograd, so
compilers see ordinary ATen ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["agent_attn_cpu"]


def _probs(x, y, bias, scale):
    """``softmax(x y^T scale + bias)`` in place on one fresh buffer."""
    s = torch.matmul(x, y.transpose(-2, -1)).mul_(scale)
    if bias is not None:
        s.add_(bias)
    s.sub_(s.amax(-1, keepdim=True)).exp_()
    return s.div_(s.sum(-1, keepdim=True))


def _stage_backward(dout, out, x, y, z, bias, scale):
    """Gradients ``(dx, dy, dz, dbias)`` of ``out = softmax(x y^T scale + bias) z``."""
    p = _probs(x, y, bias, scale)
    dz = torch.matmul(p.transpose(-2, -1), dout)
    ds = torch.matmul(dout, z.transpose(-2, -1))  # dP
    ds.sub_((dout * out).sum(-1, keepdim=True)).mul_(p)
    dbias = None
    if bias is not None:
        dbias = ds.sum(0, keepdim=True) if bias.shape[0] == 1 and ds.shape[0] != 1 else ds
    return torch.matmul(ds, y).mul_(scale), torch.matmul(ds.transpose(-2, -1), x).mul_(scale), dz, dbias


def _forward(q, k, v, agents, bias_kv, bias_q, scale):
    agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=bias_kv, scale=scale)
    return agent_v, F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=bias_q, scale=scale)


class _AgentAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, agents, bias_kv, bias_q, scale):
        agent_v, out = _forward(q, k, v, agents, bias_kv, bias_q, scale)
        ctx.save_for_backward(q, k, v, agents, bias_kv, bias_q, agent_v, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, agents, bias_kv, bias_q, agent_v, out = ctx.saved_tensors
        s = ctx.scale
        dout = dout.contiguous()
        dq, da2, dva, dbq = _stage_backward(dout, out, q, agents, agent_v, bias_q, s)
        da1, dk, dv, dbkv = _stage_backward(dva, agent_v, agents, k, v, bias_kv, s)
        return dq, dk, dv, da1.add_(da2), dbkv, dbq, None


def _tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def agent_attn_cpu(q, k, v, agents, bias_kv, bias_q, scale):
    """Same arguments and result as :func:`.reference.agent_attn_reference`."""
    if _tracing() or not torch.is_grad_enabled():
        return _forward(q, k, v, agents, bias_kv, bias_q, scale)[1]
    return _AgentAttn.apply(q, k, v, agents, bias_kv, bias_q, scale)
