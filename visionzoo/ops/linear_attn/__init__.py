"""Non-causal (kernelised) linear attention with FLatten's focused feature map: ``linear_attn``.

Per head, with feature map ``phi`` applied to every token, ``n`` keys and ``eps``::

    out_i = phi(q_i) @ (sum_j phi(k_j)^T v_j / n)  /  (phi(q_i) . mean_j phi(k_j) + eps)

which is the official FLatten code after its May-2024 rescaling (``kv = (k^T n^-1/2) @ (v n^-1/2)``,
``z = 1 / (q . mean(k) + eps)``): the cost is ``O((N + n) C d)``, linear in the tokens.

The focused feature map (FLatten, ICCV 2023) of a token ``x`` (all ``C`` channels, before the split
into heads, as the official code computes it)::

    y = (ReLU(x) + 1e-6) / softplus(scale)          # per channel
    phi(x) = ||y|| * y^p / ||y^p||                  # p = focusing_factor, norms over the C channels

Numerics (every backend): everything is accumulated in fp32 (fp64 stays fp64), whatever the input
dtype, and no intermediate grows with the input magnitude beyond what fp32 holds: the backends
raise ``y / ||y||`` (at most 1) to the power ``p`` instead of ``y`` (the official code overflows in fp16
there, and again in ``k^T v`` and the normaliser), keep the key-side sums in fp32 and return the
output (a positively weighted average of values, so within ``v``'s range) in ``v``'s dtype.
Autocast is switched off inside the op: the caller's fp16/bf16 tensors are read as they are.
"""
from __future__ import annotations

import numbers

import torch

from .. import _backend
from .._checks import check_qkv, triton_attention_can_run

__all__ = ["linear_attn", "FEATURE_EPS"]

#: the constant added after the ReLU of the focused feature map (official code)
FEATURE_EPS = 1e-6

_backend.register_op(
    "linear_attn",
    impls={
        "reference": "visionzoo.ops.linear_attn.reference:linear_attn_reference",
        "cpu": "visionzoo.ops.linear_attn.cpu:linear_attn_cpu",
        "triton": "visionzoo.ops.linear_attn.triton:linear_attn_triton",
    },
    checks={"triton": lambda q, k, v, *rest, **geometry: triton_attention_can_run(q, k, v)},
    schema="(Tensor q, Tensor k, Tensor v, int num_heads, float? p, Tensor? scale, Tensor? pos, float eps)",
    diff=(0, 1, 2, 5, 6),
    fake=lambda q, k, v, *_: v.new_empty((*q.shape[:-1], v.shape[-1])),
)


def _check(q, k, v, num_heads, focusing_factor, scale, pos, eps) -> None:
    check_qkv(q, k, v, 3, "[B, N, C] tokens")
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
    (B, N, C), (Bk, n, Ck), (Bv, nv, Cv) = q.shape, k.shape, v.shape
    if not (B == Bk == Bv):
        raise ValueError(f"q, k, v must share the batch size, got {B}, {Bk}, {Bv}")
    if Ck != C:
        raise ValueError(f"k must have q's channels {C}, got {Ck}")
    if nv != n:
        raise ValueError(f"v must have k's number of tokens {n}, got {nv}")
    if N < 1 or n < 1:
        raise ValueError(f"q and k need at least one token, got N={N}, n={n}")
    if C % num_heads or Cv % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide the channels of q/k ({C}) and of v ({Cv})")
    if focusing_factor is not None:
        if not isinstance(focusing_factor, numbers.Real) or isinstance(focusing_factor, bool) \
                or not focusing_factor > 0 or focusing_factor == float("inf"):
            raise ValueError(f"focusing_factor must be None or a finite real > 0, got {focusing_factor!r}")
    elif scale is not None:
        raise ValueError("scale needs the focused feature map: pass focusing_factor (or no scale)")
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite real >= 0, got {eps!r}")
    for name, t, shapes in (("scale", scale, ((C,), (1, 1, C))), ("pos", pos, ((1, n, C), (B, n, C)))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) not in shapes:
            raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")


@_backend.fx_leaf
def linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_heads: int,
                focusing_factor: float | None = None, scale: torch.Tensor | None = None,
                pos: torch.Tensor | None = None, eps: float = 1e-6, backend: str | None = None) -> torch.Tensor:
    """Focused linear attention over token sequences (see the module docstring for the formulas).

    Args:
        q: ``[B, N, C]`` queries, ``C = num_heads * d``.
        k: ``[B, n, C]`` keys (``n`` may differ from ``N``, e.g. PVT's spatial reduction).
        v: ``[B, n, Cv]`` values, ``Cv = num_heads * dv``; q, k, v share one floating dtype and device.
        num_heads: heads; channel ``c`` of q/k (``c'`` of v) belongs to head ``c // d`` (``c' // dv``).
        focusing_factor: ``p`` of the focused feature map (any real > 0; FLatten: 3). ``None``: ``phi``
            is the identity (the caller passes non-negative features) and ``scale`` must be None.
        scale: ``[C]`` or ``[1, 1, C]`` raw learnable scale; the feature map divides by
            ``softplus(scale)`` (None: by 1). Any floating dtype (an fp32 parameter under autocast).
        pos: ``[1, n, C]`` or ``[B, n, C]``, added to ``k`` before the feature map (FLatten's
            ``positional_encoding``). Any floating dtype.
        eps: added to the normaliser ``phi(q_i) . mean_j phi(k_j)``.
        backend: ``reference`` | ``cpu`` | ``triton`` | None (see :mod:`visionzoo.ops._backend`).

    Returns:
        ``[B, N, Cv]`` in v's dtype. Differentiable in q, k, v, scale and pos on every backend.
    """
    _check(q, k, v, num_heads, focusing_factor, scale, pos, eps)
    p = None if focusing_factor is None else float(focusing_factor)
    if scale is not None:
        scale = scale.reshape(-1)
    fn, _ = _backend.resolve("linear_attn", q, k, v, backend=backend)
    if q.device.type == "meta":  # shape inference (e.g. the hub export): there is no autocast to switch off
        return fn(q, k, v, num_heads, p, scale, pos, float(eps))
    with torch.autocast(q.device.type, enabled=False):
        return fn(q, k, v, num_heads, p, scale, pos, float(eps))
