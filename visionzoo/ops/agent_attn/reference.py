"""Agent attention as two explicit softmax attentions: the spec every other path is tested against.

``V_A = softmax(agents @ k^T * scale + bias_kv) @ v``, then
``out = softmax(q @ agents^T * scale + bias_q) @ V_A``, the softmaxes over the last axis (keys, then
agents), in the inputs' dtype. Both probability matrices (``[B, heads, n, M]`` and ``[B, heads, N, n]``)
are materialised; autograd differentiates everything.
"""
from __future__ import annotations

import torch

__all__ = ["agent_attn_reference"]


def agent_attn_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agents: torch.Tensor,
                         bias_kv: torch.Tensor | None, bias_q: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``q [B, h, N, D]``, ``k [B, h, M, D]``, ``v [B, h, M, Dv]``, ``agents [B, h, n, D]``, ``bias_kv
    [1|B, h, n, M]`` or None, ``bias_q [1|B, h, N, n]`` or None -> ``[B, h, N, Dv]``."""
    s1 = agents @ k.transpose(-2, -1) * scale
    if bias_kv is not None:
        s1 = s1 + bias_kv
    agent_v = s1.softmax(-1) @ v
    s2 = q @ agents.transpose(-2, -1) * scale
    if bias_q is not None:
        s2 = s2 + bias_q
    return s2.softmax(-1) @ agent_v
