"""Triton kernels for fused bi-level routing attention (launchers and custom ops: ``triton.py``).

One program per (query region x query tile, batch x head): its ``BLOCK_Q`` queries stay in
registers while, for each of the ``topk`` routed regions (index read from ``idx``), that region's
keys/values stream through in ``BLOCK_K`` chunks, **read in place** from the ``[B, H, W, heads, D]``
maps by address arithmetic: no ``topk``-fold gathered copy exists (the official code's memory
blow-up). ``S = Q K^T`` on tensor cores, padded keys masked in registers, online softmax in fp32,
base 2 (flash-attention 2).

Backward: a query-centric kernel recomputes ``P`` from the saved log-sum-exp and stores dQ; a key
region is routed to by a data-dependent set of query regions, so dK/dV are accumulated with fp32
atomics (deterministic alternatives would need the inverse routing lists).

Constraints: last dim contiguous; D, Dv padded to powers of two >= 16 with masks. Numerically
tested only under ``TRITON_INTERPRET=1``. Known limits: atomics make dK/dV summation order
non-deterministic; no autotuning.
"""
import triton
import triton.language as tl

from .._triton import _mma, _online_softmax_step


@triton.jit
def _region_queries(pid, NW, QT, RH, RW, BLOCK_Q: tl.constexpr):
    """Program ``pid`` -> its region's first row/column, its queries' rows/columns and validity."""
    r, qt = pid // QT, pid % QT
    t = qt * BLOCK_Q + tl.arange(0, BLOCK_Q)
    y = (r // NW) * RH + t // RW
    x = (r % NW) * RW + t % RW
    return r, y, x, t < RH * RW


@triton.jit
def _region_keys(IDX, j, t0, NW, RH, RW, HV, WV, BLOCK_K: tl.constexpr):
    """Rows/columns of keys ``[t0, t0 + BLOCK_K)`` of the ``j``-th routed region, and which are real."""
    kr = tl.load(IDX + j)
    t = t0 + tl.arange(0, BLOCK_K)
    ky = (kr // NW) * RH + t // RW
    kx = (kr % NW) * RW + t % RW
    return ky, kx, (t < RH * RW) & (ky < HV) & (kx < WV)


@triton.jit
def _bra_fwd_kernel(Q, K, V, IDX, OUT, LSE,
                    sq_b, sq_y, sq_x, sq_n, sk_b, sk_y, sk_x, sk_n, sv_b, sv_y, sv_x, sv_n,
                    so_b, so_y, so_x, so_n, sl_b, sl_y, sl_x,
                    NW, QT, RH, RW, TOPK, HV, WV, heads, D, DV, qk_scale,
                    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    PRECISION: tl.constexpr):
    r, y, x, q_ok = _region_queries(tl.program_id(0), NW, QT, RH, RW, BLOCK_Q)
    bh = tl.program_id(1)
    b, n = bh // heads, bh % heads
    d, dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    IDX += (b * NW * NW + r) * TOPK
    K += b * sk_b + n * sk_n
    V += b * sv_b + n * sv_n
    q = tl.load(Q + b * sq_b + n * sq_n + y[:, None] * sq_y + x[:, None] * sq_x + d[None, :],
                mask=q_ok[:, None] & (d[None, :] < D), other=0.0)
    m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], tl.float32)
    for j in range(TOPK):
        for t0 in range(0, RH * RW, BLOCK_K):
            ky, kx, k_ok = _region_keys(IDX, j, t0, NW, RH, RW, HV, WV, BLOCK_K)
            kt = tl.load(K + ky[None, :] * sk_y + kx[None, :] * sk_x + d[:, None],
                         mask=k_ok[None, :] & (d[:, None] < D), other=0.0)
            v = tl.load(V + ky[:, None] * sv_y + kx[:, None] * sv_x + dv[None, :],
                        mask=k_ok[:, None] & (dv[None, :] < DV), other=0.0)
            s = tl.where(k_ok[None, :], _mma(q, kt, PRECISION) * qk_scale, float("-inf"))
            m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc, PRECISION)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    tl.store(OUT + b * so_b + n * so_n + y[:, None] * so_y + x[:, None] * so_x + dv[None, :],
             (acc / l_safe[:, None]).to(OUT.dtype.element_ty), mask=q_ok[:, None] & (dv[None, :] < DV))
    tl.store(LSE + b * sl_b + n + y * sl_y + x * sl_x, m_i + tl.log2(l_safe), mask=q_ok)


@triton.jit
def _bra_bwd_kernel(Q, K, V, IDX, DOUT, LSE, DELTA, DQ, DK, DV_,
                    sq_b, sq_y, sq_x, sq_n, sk_b, sk_y, sk_x, sk_n, sv_b, sv_y, sv_x, sv_n,
                    so_b, so_y, so_x, so_n, sl_b, sl_y, sl_x,
                    NW, QT, RH, RW, TOPK, HV, WV, heads, D, DV, qk_scale, scale,
                    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                    PRECISION: tl.constexpr):
    """dQ (stored; ``DQ`` has q's strides) and dK/dV (fp32 atomics into buffers with k's/v's strides)."""
    r, y, x, q_ok = _region_queries(tl.program_id(0), NW, QT, RH, RW, BLOCK_Q)
    bh = tl.program_id(1)
    b, n = bh // heads, bh % heads
    d, dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    IDX += (b * NW * NW + r) * TOPK
    q_off = b * sq_b + n * sq_n + y[:, None] * sq_y + x[:, None] * sq_x
    q_mask = q_ok[:, None] & (d[None, :] < D)
    q = tl.load(Q + q_off + d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DOUT + b * so_b + n * so_n + y[:, None] * so_y + x[:, None] * so_x + dv[None, :],
                 mask=q_ok[:, None] & (dv[None, :] < DV), other=0.0)
    lse_off = b * sl_b + n + y * sl_y + x * sl_x
    lse = tl.load(LSE + lse_off, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + lse_off, mask=q_ok, other=0.0)
    k_base, v_base = b * sk_b + n * sk_n, b * sv_b + n * sv_n
    dq = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for j in range(TOPK):
        for t0 in range(0, RH * RW, BLOCK_K):
            ky, kx, k_ok = _region_keys(IDX, j, t0, NW, RH, RW, HV, WV, BLOCK_K)
            k_off = k_base + ky[:, None] * sk_y + kx[:, None] * sk_x
            v_off = v_base + ky[:, None] * sv_y + kx[:, None] * sv_x
            k_mask = k_ok[:, None] & (d[None, :] < D)
            v_mask = k_ok[:, None] & (dv[None, :] < DV)
            k = tl.load(K + k_off + d[None, :], mask=k_mask, other=0.0)
            v = tl.load(V + v_off + dv[None, :], mask=v_mask, other=0.0)
            ok = q_ok[:, None] & k_ok[None, :]
            p = tl.where(ok, tl.exp2(_mma(q, tl.trans(k), PRECISION) * qk_scale - lse[:, None]), 0.0)
            ds = p * (_mma(do, tl.trans(v), PRECISION) - delta[:, None])
            dq += _mma(ds.to(k.dtype), k, PRECISION)
            tl.atomic_add(DK + k_off + d[None, :], _mma(tl.trans(ds).to(q.dtype), q, PRECISION) * scale, mask=k_mask)
            tl.atomic_add(DV_ + v_off + dv[None, :], _mma(tl.trans(p).to(do.dtype), do, PRECISION), mask=v_mask)
    tl.store(DQ + q_off + d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)
