"""Focused linear attention written plainly: the spec every other path is tested against.

For every token ``x`` of q and of ``k + pos`` (all ``C`` channels)::

    y = (ReLU(x) + 1e-6) / softplus(scale)
    phi(x) = ||y|| * y^p / ||y^p||            (identity when p is None)

and per head (``q, k`` split into ``d``-channel heads, ``v`` into ``dv``-channel heads)::

    out_i = phi(q_i) @ (phi(k)^T v / n)  /  (phi(q_i) . mean_j phi(k_j) + eps)

Computed in fp32 (fp64 inputs in fp64) and returned in v's dtype. ``y^p / ||y^p||`` is evaluated as
``u^p / ||u^p||`` with ``u = y / max(y)`` (the same value, as the ratio is scale-invariant), so that
the power cannot overflow for large inputs or large ``p``; the maximum is detached, as the result
does not depend on it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import FEATURE_EPS

__all__ = ["linear_attn_reference", "focused_features"]


def focused_features(x: torch.Tensor, p: float, scale: torch.Tensor | None,
                     feature_eps: float = FEATURE_EPS) -> torch.Tensor:
    """``x [..., C]`` -> ``phi(x) [..., C]``, the focused feature map over the last dim (``feature_eps``: a
    parameter only so that TorchScript, which reads no global floats, compiles this)."""
    y = F.relu(x) + feature_eps
    if scale is not None:
        y = y / F.softplus(scale.to(x.dtype))
    u = y / y.amax(-1, keepdim=True).detach()
    t = u ** p
    return t * (torch.linalg.vector_norm(y, dim=-1, keepdim=True) / torch.linalg.vector_norm(t, dim=-1, keepdim=True))


def linear_attn_reference(q, k, v, num_heads: int, p: float | None, scale, pos, eps: float) -> torch.Tensor:
    """``q [B, N, C]``, ``k [B, n, C]``, ``v [B, n, Cv]`` -> ``[B, N, Cv]`` in v's dtype."""
    dt, out_dtype = torch.promote_types(q.dtype, torch.float32), v.dtype
    B, N, C = q.shape
    n, Cv = v.shape[1], v.shape[2]
    q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if pos is not None:
        k = k + pos.to(dt)
    if p is not None:
        q, k = focused_features(q, p, scale), focused_features(k, p, scale)
    h = num_heads
    q = q.reshape(B, N, h, C // h).transpose(1, 2)
    k = k.reshape(B, n, h, C // h).transpose(1, 2)
    v = v.reshape(B, n, h, Cv // h).transpose(1, 2)
    kv = k.transpose(-2, -1) @ v / n
    k_mean = k.mean(-2, keepdim=True)
    out = (q @ kv) / (q @ k_mean.transpose(-2, -1) + eps)
    return out.transpose(1, 2).reshape(B, N, Cv).to(out_dtype)
