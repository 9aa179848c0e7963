"""Agent attention (Han et al., *Agent Attention*, ECCV 2024): ``agent_attn``.

``n`` agent tokens (in the official blocks: the queries average-pooled to ``sqrt(n) x sqrt(n)``)
first attend to the keys, then every query attends to the agents::

    V_A = softmax(agents @ k^T * scale + bias_kv) @ v       # [B, heads, n, Dv]   (stage 1)
    out = softmax(q @ agents^T * scale + bias_q) @ V_A     # [B, heads, N, Dv]   (stage 2)

Both stages are plain softmax attention with an additive bias; with ``n << N`` the whole costs
``O(N n D)``, linear in the number of tokens. The biases are the official ``position_bias`` (agents ->
keys) and ``agent_bias`` (queries -> agents); blocks build them (interpolated position tables) and
pass them here. Every backend gives gradients for ``q, k, v, agents`` and both biases.
"""
from __future__ import annotations

import torch

from .. import _backend
from .._checks import check_qkv, triton_attention_can_run

__all__ = ["agent_attn"]

#: the most agents the Triton kernels take (a stage-1 program holds all of them)
TRITON_MAX_AGENTS = 64

_backend.register_op(
    "agent_attn",
    impls={
        "reference": "visionzoo.ops.agent_attn.reference:agent_attn_reference",
        "cpu": "visionzoo.ops.agent_attn.cpu:agent_attn_cpu",
        "triton": "visionzoo.ops.agent_attn.triton:agent_attn_triton",
    },
    checks={"triton": lambda *tensors, **geometry: _triton_can_run(*tensors, **geometry)},
    schema="(Tensor q, Tensor k, Tensor v, Tensor agents, Tensor? bias_kv, Tensor? bias_q, float scale)",
    diff=(0, 1, 2, 3, 4, 5),
    fake=lambda q, k, v, *_: q.new_empty((*q.shape[:-1], v.shape[-1])),
)


def _triton_can_run(q, k, v, *tensors, agents: int = 0, **_) -> str | None:
    why = triton_attention_can_run(q, k, v)
    if why is None and agents > TRITON_MAX_AGENTS:
        return f"the Triton agent-attention kernels take up to {TRITON_MAX_AGENTS} agents, got {agents}"
    return None


def _bias(name: str, t, q: torch.Tensor, rows: int, cols: int, what: str):
    """``t`` as a 4-D ``[1 or B, heads, rows, cols]`` tensor (or None), checked."""
    if t is None:
        return None
    B, heads = q.shape[:2]
    want = f"[heads, {what}] = [{heads}, {rows}, {cols}] or [B or 1, heads, {what}]"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be None or a tensor {want}, got {type(t).__name__}")
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or tuple(t.shape[1:]) != (heads, rows, cols) or t.shape[0] not in (1, B):
        raise ValueError(f"{name} must be {want} with B = {B}, got {tuple(t.shape)}")
    if t.dtype != q.dtype:
        raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    return t


def _check(q, k, v, agents):
    check_qkv(q, k, v, 4, "[B, heads, N, D]")
    if not isinstance(agents, torch.Tensor):
        raise TypeError(f"agents must be a tensor, got {type(agents).__name__}")
    B, heads, N, D = q.shape
    if k.shape[:2] != (B, heads) or k.shape[3] != D:
        raise ValueError(f"k must be [B, heads, M, D] = [{B}, {heads}, M, {D}] (q's B, heads, D), got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be [B, heads, M, Dv] with k's B, heads, M {tuple(k.shape[:3])}, got {tuple(v.shape)}")
    if agents.dim() != 4 or agents.shape[:2] != (B, heads) or agents.shape[3] != D or agents.shape[2] < 1:
        raise ValueError(f"agents must be [B, heads, n, D] = [{B}, {heads}, n, {D}] with n >= 1, "
                         f"got {tuple(agents.shape)}")
    if agents.dtype != q.dtype:
        raise TypeError(f"agents must have q's dtype {q.dtype}, got {agents.dtype}")
    if agents.device != q.device:
        raise ValueError(f"agents must be on q's device {q.device}, got {agents.device}")
    if min(N, k.shape[2], D, v.shape[3]) < 1:
        raise ValueError(f"q, k, v must have N, M, D, Dv >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")


@_backend.fx_leaf
def agent_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agents: torch.Tensor,
               bias_kv: torch.Tensor | None = None, bias_q: torch.Tensor | None = None, *,
               scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Agent attention (see the module docstring for the exact computation).

    Args:
        q: ``[B, heads, N, D]`` queries.
        k: ``[B, heads, M, D]`` keys; ``v``: ``[B, heads, M, Dv]`` (the official blocks: ``M = N``).
        agents: ``[B, heads, n, D]``; any ``n >= 1`` (the official blocks: 4, 9, 16, 49).
        bias_kv: the agents' bias (official ``position_bias``), ``[heads, n, M]`` or
            ``[B or 1, heads, n, M]``, or None.
        bias_q: the queries' bias (official ``agent_bias``), ``[heads, N, n]`` or ``[B or 1, heads, N, n]``,
            or None.
        scale: logit scale, default ``D ** -0.5`` (the official blocks ignore ``qk_scale``).
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).

    All tensors share q's dtype and device.

    Returns:
        ``[B, heads, N, Dv]`` in q's dtype.
    """
    _check(q, k, v, agents)
    n, N, M = agents.shape[2], q.shape[2], k.shape[2]
    bias_kv = _bias("bias_kv", bias_kv, q, n, M, "n, M")
    bias_q = _bias("bias_q", bias_q, q, N, n, "N, n")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    fn, _ = _backend.resolve("agent_attn", q, k, v, agents, backend=backend, agents=n)
    return fn(q, k, v, agents, bias_kv, bias_q, scale)
