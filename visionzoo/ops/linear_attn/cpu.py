"""CPU path of focused linear attention: few passes over the token maps, GEMM-shaped heads, a
hand-derived backward that saves two fp32 maps per side.

Measured (``benchmarks/bench_linear_attn.py``, FLatten-PVT-T stage shapes, batch 8, one thread on a busy
2-core host; ``benchmarks/results/linear_attn.json``): forward ~1.4-2x the official formulation written
plainly, forward+backward ~2.5x; fwd+bwd is ~3.5-4x our own forward (the plain formulation's ~5-7x):
the backward runs four GEMMs per head to the forward's two and ~2x its elementwise passes.

Chunks. Without autograd the passes run over token chunks of about :data:`CHUNK_BYTES` (all images at
once: a chunk's ~8 passes and its GEMM then stay in L2; ~2x at 56 x 56 tokens); the backward runs over
the same chunks. With autograd the forward computes whole maps (they are saved anyway).

Forward (``y = (ReLU(x) + 1e-6) / softplus(scale)``, ``r = ||y||``, ``t = (L y / r)^p``, ``T = ||t||``;
then ``phi = (r / T) t``; the constant ``L`` (:func:`_level`) keeps ``t`` out of the subnormal range):

* ``y`` is one ``addcmul`` and one in-place ``clamp_min`` (``(x + 1e-6) * inv_s`` clamped below at
  ``1e-6 * inv_s`` is ``(ReLU(x) + 1e-6) * inv_s``, as ``inv_s > 0``), ``t`` two more passes: the
  official code makes ~8 passes per side (ReLU, +, /, norm, pow, norm, /, *), each allocating.
* ``L y / r <= L``, so ``t <= 1e15`` cannot overflow; ``phi`` is never formed. Keys: ``phi_k = c_k t_k``
  with ``c_k = r_k / T_k``, so one GEMM per head ``t_k^T [c_k v | c_k] / n`` gives ``K^T V`` and the key
  mean together (``KVb``, ``[d, dv + 1]``, fp32). Queries: the output is invariant to the scale of
  ``phi(q_i)`` except through eps, so ``t_q @ KVb`` gives numerator and denominator in one GEMM and
  ``out = num / (den + eps T_q / r_q)``.
* Heads are strided column blocks of the ``[B, L, C]`` maps: a loop of ``bmm`` over heads reads them in
  place (no ``[B, heads, L, d]`` copies).

Backward (``D = [dout | -(out . dout)]`` per head, ``den = c_q (t_q . kbar) + eps``): ``dphi_q = (D / den)
KVb^T``, ``dKVb = phi_q^T (D / den)``, ``dphi_k = [v | 1] dKVb^T / n``, ``dv = phi_k dKV / n`` (four GEMMs
per head), and through the feature map, with ``a = dphi . t / T``::

    dL/dy = (p r / T) (t / y) (dphi - (a / T) t) + (a / r) y,   dx = dL/dy inv_s [x > 0],
    dscale = -sigmoid(scale) inv_s sum_tokens dL/dy y

where the per-token factor ``p r / T`` rides on the GEMMs (``c_q`` already scales the query side's; the
key side's is folded into ``[v | 1]``) and the ReLU mask is ATen's fused ``threshold_backward``: ~10
passes per side. Saved for backward: ``y`` and ``t`` of each side (fp32), ``k + pos``, per-token norms,
``KVb``, the output and the per-head denominators.

Under ``torch.compile`` / ``torch.export`` this path runs as the custom op ``visionzoo::linear_attn_cpu``; under
``torch.jit`` the reference runs instead (the rule lives in :mod:`visionzoo.ops._backend`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import FEATURE_EPS

__all__ = ["linear_attn_cpu"]


def _inv_scale(scale, C, dt, device):
    """``1 / softplus(scale)`` as ``[C]`` in ``dt`` (ones without a scale)."""
    if scale is None:
        return torch.ones(C, dtype=dt, device=device)
    return 1.0 / F.softplus(scale.to(dt))


def _level(p: float) -> float:
    """``L``: ``u = L y / ||y||`` puts the largest power ``t = u^p`` near ``1e15``. The ReLU'd channels sit
    ~1e-6 below the active ones, so with ``L = 1`` their powers' squares (in ``||t||`` and the GEMMs'
    products) fall into fp32's subnormal range, which the CPU handles ~10x slower; ``1e15`` keeps them
    normal for ``p <= 6`` while ``C * t^2`` stays far below fp32's maximum."""
    return min(1e15 ** (1.0 / p), 1e20)


def _features(x, inv_s, p, keep_y):
    """``x [B, L, C]`` -> ``(y, t, r, T)``: ``y`` (None unless ``keep_y``), ``t = (L y / r)^p``, norms
    ``r = ||y||, T = ||t||`` as ``[B, L, 1]``; ``phi = r t / T``."""
    y = torch.addcmul(inv_s * FEATURE_EPS, x, inv_s)
    y.clamp_min_(inv_s * FEATURE_EPS)
    r = torch.linalg.vector_norm(y, dim=-1, keepdim=True)
    t = (y.mul(_level(p) / r) if keep_y else y.mul_(_level(p) / r)).pow_(p)
    return (y if keep_y else None), t, r, torch.linalg.vector_norm(t, dim=-1, keepdim=True)


def _features_backward(g, factor, x, y, t, r, T, p):
    """``g = dL/dphi * p r / (T factor)`` -> ``(dL/dx / (factor inv_s), sum_tokens dL/dy * y / factor)``
    (the second is the scale gradient's sum). Callers fold ``p r / T`` into ``g`` where it is free and
    keep the constant ``factor`` out of the passes. ``g`` is overwritten. See the module docstring::

        dL/dy = (p r / T) (t / y) (g - (a / T) t) + (a / r) y,   a = dL/dphi . t / T
    """
    a2 = torch.einsum("blc,blc->bl", g, t).unsqueeze(-1)  # a p r / factor (einsum: one pass, no product map)
    a = a2 * (factor / p) / r  # dL/dphi . t / T = a2 T / (p r / factor) / T
    e = g.addcmul_(t, a2 / (T * T), value=-1).mul_(t).div_(y).addcmul_(y, a / (r * factor))
    w = (e * y).sum((0, 1))
    return torch.ops.aten.threshold_backward(e, x, 0.0), w


def _head_views(t, heads):
    """``[B, L, heads * d]`` -> list of ``[B, L, d]`` strided views."""
    return t.unflatten(-1, (heads, -1)).unbind(-2)


#: inference runs the passes over token chunks of about this many fp32 bytes (all images at once), so a
#: chunk's ~8 elementwise passes and its GEMM reuse L2 instead of streaming whole maps from memory
CHUNK_BYTES = 1 << 20


def _spans(L: int, row_bytes: int, whole: bool) -> list[tuple[int, int]]:
    step = L if whole else max(64, CHUNK_BYTES // row_bytes)
    return [(i, min(L, i + step)) for i in range(0, L, step)]


def _key_side(k, v, pos, heads, p, inv_s, keep, kvb):
    """Adds ``t_k^T [c_k v | c_k]`` of these keys into ``kvb [heads, B, d, dv + 1]``; returns what the
    backward keeps (full key range only)."""
    B, n, Cv = v.shape
    dt, dv = inv_s.dtype, Cv // heads
    kp = k if pos is None else k + pos
    if p is None:
        yk, tk, ck, rk, Tk = None, kp.to(dt), torch.ones(B, n, 1, dtype=dt, device=k.device), None, None
    else:
        yk, tk, rk, Tk = _features(kp, inv_s, p, keep)
        ck = rk / Tk
    vc = torch.empty(B, n, heads, dv + 1, dtype=dt, device=v.device)
    torch.mul(v.unflatten(-1, (heads, dv)), ck.unsqueeze(-1), out=vc[..., :dv])
    vc[..., dv] = ck
    for i, tkh in enumerate(_head_views(tk, heads)):
        kvb[i].baddbmm_(tkh.transpose(1, 2), vc[:, :, i])
    return None if p is None else kp, yk, tk, rk, Tk, ck


def _query_side(q, heads, p, inv_s, eps, keep, kvb, out, den):
    """``out`` and ``den`` (views of these queries' rows) from ``kvb [B, heads, d, dv + 1]``."""
    B, N, _ = q.shape
    dt, dv = inv_s.dtype, out.shape[-1]
    if p is None:
        yq, tq, rq, Tq = None, q.to(dt), None, None
        eps_q = torch.full((B, N, 1), eps, dtype=dt, device=q.device)
    else:
        yq, tq, rq, Tq = _features(q, inv_s, p, keep)
        eps_q = Tq / rq * eps
    for i, tqh in enumerate(_head_views(tq, heads)):
        nd = torch.bmm(tqh, kvb[:, i])
        torch.add(nd[..., dv], eps_q[..., 0], out=den[..., i])
        torch.div(nd[..., :dv], den[..., i, None], out=out[:, :, i])
    return yq, tq, rq, Tq


def _forward(q, k, v, heads, p, inv_s, pos, eps, keep):
    dt = inv_s.dtype
    B, N, C = q.shape
    n, Cv = v.shape[1], v.shape[2]
    dv = Cv // heads
    kvb = torch.zeros(heads, B, C // heads, dv + 1, dtype=dt, device=q.device)
    for j0, j1 in _spans(n, 4 * B * max(C, Cv), keep):
        kept = _key_side(k[:, j0:j1], v[:, j0:j1], None if pos is None else pos[:, j0:j1], heads, p, inv_s, keep,
                         kvb)
    kvb = kvb.div_(n).transpose(0, 1)  # [B, heads, d, dv + 1]
    out = torch.empty(B, N, heads, dv, dtype=dt, device=q.device)
    den = torch.empty(B, N, heads, dtype=dt, device=q.device)
    for i0, i1 in _spans(N, 4 * B * max(C, Cv), keep):
        q_kept = _query_side(q[:, i0:i1], heads, p, inv_s, eps, keep, kvb, out[:, i0:i1], den[:, i0:i1])
    out = out.view(B, N, Cv)
    if not keep:
        return out.to(v.dtype), None
    return out.to(v.dtype), (*q_kept, *kept, kvb, out, den)


def _cat_heads(parts):
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def _backward(dout, q, v, heads, p, inv_s, pos, saved):
    """Gradients over token chunks (as the inference forward): the queries' chunks give ``dq`` and add
    into ``dKVb``, then the keys' chunks give ``dk`` and ``dv``."""
    yq, tq, rq, Tq, kp, yk, tk, rk, Tk, ck, kvb, out, den = saved
    dt = inv_s.dtype
    B, N, C = q.shape
    n, Cv = v.shape[1], v.shape[2]
    dv = Cv // heads
    row = 4 * B * max(C, Cv)
    dq, dk = torch.empty(B, N, C, dtype=dt, device=q.device), torch.empty(B, n, C, dtype=dt, device=q.device)
    dvv = torch.empty(B, n, heads, dv, dtype=dt, device=q.device)
    dkvb = torch.zeros(heads, B, C // heads, dv + 1, dtype=dt, device=q.device)
    w = torch.zeros(C, dtype=dt, device=q.device)
    for i0, i1 in _spans(N, row, False):
        g_out = dout[:, i0:i1].to(dt).unflatten(-1, (heads, dv))
        de = den[:, i0:i1]
        # dd = D / den' (den' = den / c_q, the t-scaled denominator the forward kept)
        dd = torch.empty(B, i1 - i0, heads, dv + 1, dtype=dt, device=q.device)
        torch.div(g_out, de.unsqueeze(-1), out=dd[..., :dv])
        dd[..., dv] = (out[:, i0:i1].unflatten(-1, (heads, dv)) * g_out).sum(-1).div_(de).neg_()
        gq = _cat_heads([torch.bmm(dd[:, :, i], kvb[:, i].transpose(1, 2)) for i in range(heads)])  # c_q dL/dphi_q
        for i, tqh in enumerate(_head_views(tq[:, i0:i1], heads)):
            dkvb[i].baddbmm_(tqh.transpose(1, 2), dd[:, :, i])
        if p is None:
            dq[:, i0:i1] = gq
            continue
        # c_q dL/dphi_q = (p r_q / T_q) dL/dphi_q / p, so the factor is p
        e, wc = _features_backward(gq, p, q[:, i0:i1], yq[:, i0:i1], tq[:, i0:i1], rq[:, i0:i1], Tq[:, i0:i1], p)
        torch.mul(e, inv_s * p, out=dq[:, i0:i1])
        w.add_(wc, alpha=p)
    dkvb.div_(n)  # dL/dKVb / n
    for j0, j1 in _spans(n, row, False):
        ckc = ck[:, j0:j1]
        # [v | 1] with the feature backward's per-token factor p r_k / T_k folded in (c_k = r_k / T_k)
        alpha = torch.ones_like(ckc) if p is None else ckc * p
        vc = torch.empty(B, j1 - j0, heads, dv + 1, dtype=dt, device=v.device)
        torch.mul(v[:, j0:j1].unflatten(-1, (heads, dv)), alpha.unsqueeze(-1), out=vc[..., :dv])
        vc[..., dv] = alpha
        gk = _cat_heads([torch.bmm(vc[:, :, i], dkvb[i].transpose(1, 2)) for i in range(heads)])  # alpha dL/dphi_k
        for i, tkh in enumerate(_head_views(tk[:, j0:j1], heads)):
            torch.mul(torch.bmm(tkh, dkvb[i][..., :dv]), ckc, out=dvv[:, j0:j1, i])
        if p is None:
            dk[:, j0:j1] = gk
            continue
        e, wc = _features_backward(gk, 1.0, kp[:, j0:j1], yk[:, j0:j1], tk[:, j0:j1], rk[:, j0:j1], Tk[:, j0:j1], p)
        torch.mul(e, inv_s, out=dk[:, j0:j1])
        w.add_(wc)
    dscale = None if p is None else -w * inv_s
    return dq, dk, dvv.view(B, n, Cv), dscale, None if pos is None else _reduce_like(dk, pos)


def _reduce_like(g, t):
    return g.sum(0, keepdim=True) if t.shape[0] == 1 and g.shape[0] > 1 else g


class _LinearAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, pos, heads, p, eps):
        dt = torch.promote_types(q.dtype, torch.float32)
        inv_s = _inv_scale(scale, q.shape[-1], dt, q.device)
        out, saved = _forward(q, k, v, heads, p, inv_s, pos, eps, keep=True)
        ctx.save_for_backward(q, v, scale, pos, inv_s, *saved)
        ctx.heads, ctx.p, ctx.k_dtype = heads, p, k.dtype
        return out

    @staticmethod
    def backward(ctx, dout):
        q, v, scale, pos, inv_s, *saved = ctx.saved_tensors
        dq, dk, dv, dscale, dpos = _backward(dout, q, v, ctx.heads, ctx.p, inv_s, pos, saved)
        if dscale is not None and scale is not None:
            dscale = (dscale * torch.sigmoid(scale.to(dscale.dtype))).to(scale.dtype)
        else:
            dscale = None
        return (dq.to(q.dtype), dk.to(ctx.k_dtype), dv.to(v.dtype), dscale,
                None if dpos is None else dpos.to(pos.dtype), None, None, None)


def linear_attn_cpu(q, k, v, num_heads: int, p: float | None, scale, pos, eps: float) -> torch.Tensor:
    """``q [B, N, C]``, ``k [B, n, C]``, ``v [B, n, Cv]`` -> ``[B, N, Cv]`` (see :mod:`.reference`)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, scale, pos)):
        return _LinearAttn.apply(q, k, v, scale, pos, num_heads, p, eps)
    dt = torch.promote_types(q.dtype, torch.float32)
    return _forward(q, k, v, num_heads, p, _inv_scale(scale, q.shape[-1], dt, q.device), pos, eps, keep=False)[0]
