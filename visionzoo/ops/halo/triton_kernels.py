"""Triton kernels for fused halo attention (launchers and custom ops: ``triton.py``).

One program per (query block, batch x head): its ``bq^2`` queries (padded to a power of two) stay in
registers while the ``win^2`` keys of the block's haloed window stream through in ``BLOCK_K``
chunks, read in place from the zero-padded ``[B, H, W, heads, D]`` key/value maps by address
arithmetic (nothing win^2-fold is materialised). ``S = Q K^T`` runs on tensor cores; the relative
position bias is read from the per-query tables ``eh``/``ew`` at ``a - i + win - 1`` /
``c - j + win - 1`` and added in registers; online softmax in fp32, base 2 (flash-attention 2).

Backward: one query-centric kernel per block recomputes ``P`` from the saved log-sum-exp and
writes dQ directly. Key windows of neighbouring blocks overlap by the halo, so dK/dV (and the
bias tables' gradients, several window keys share one table entry) are accumulated with fp32
atomics: at most ``ceil(win / b)^2`` (4 for halo <= b/2) programs add into one key.

Constraints: last dim contiguous; D, Dv padded to powers of two >= 16 with masks; block, halo and
query-block sizes are compile-time constants. Numerically tested only under ``TRITON_INTERPRET=1``.
Known limits: atomics make dK/dV/d(bias) summation order non-deterministic; a block larger than
16 x 16 queries would want query tiling (not needed by any HaloNet: b <= 14); no autotuning.
"""
import triton
import triton.language as tl

from .._triton import _LOG2E_JIT as _LOG2E, _mma, _online_softmax_step


@triton.jit
def _block_queries(pid, NBW, BQ: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Block ``pid`` -> its row/column, each query's map row/column and in-block ``(i, j)``."""
    by, bx = pid // NBW, pid % NBW
    offs = tl.arange(0, BLOCK_Q)
    i, j = offs // BQ, offs % BQ
    return by, bx, by * BQ + i, bx * BQ + j, i, j, offs < BQ * BQ


@triton.jit
def _logits(q, kt, y, x, i, j, a, c, ok, EH, EW, se_y, se_x, qk_scale,
            WIN: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits of a query block against a chunk of window keys ``(a, c)``; ``-inf`` where not ``ok``.
    Returns the logits and the bias-table offsets (for their gradients)."""
    s = _mma(q, kt, PRECISION) * qk_scale
    row = y[:, None] * se_y + x[:, None] * se_x
    off_h = row + (a[None, :] - i[:, None] + WIN - 1)
    off_w = row + (c[None, :] - j[:, None] + WIN - 1)
    if HAS_BIAS:
        bias = tl.load(EH + off_h, mask=ok, other=0.0).to(tl.float32)
        bias += tl.load(EW + off_w, mask=ok, other=0.0).to(tl.float32)
        s += bias * _LOG2E
    return tl.where(ok, s, float("-inf")), off_h, off_w


@triton.jit
def _halo_fwd_kernel(Q, K, V, EH, EW, OUT, LSE,
                     sq_b, sq_y, sq_x, sq_n, sk_b, sk_y, sk_x, sk_n, sv_b, sv_y, sv_x, sv_n,
                     se_b, se_y, se_x, se_n, so_b, so_y, so_x, so_n, sl_b, sl_y, sl_x,
                     NBW, heads, D, DV, qk_scale,
                     BQ: tl.constexpr, BLOCK: tl.constexpr, WIN: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    by, bx, y, x, i, j, q_ok = _block_queries(tl.program_id(0), NBW, BQ, BLOCK_Q)
    bh = tl.program_id(1)
    b, n = bh // heads, bh % heads
    d, dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    Q += b * sq_b + n * sq_n
    K += b * sk_b + n * sk_n
    V += b * sv_b + n * sv_n
    EH += b * se_b + n * se_n
    EW += b * se_b + n * se_n
    q = tl.load(Q + y[:, None] * sq_y + x[:, None] * sq_x + d[None, :], mask=q_ok[:, None] & (d[None, :] < D),
                other=0.0)
    m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], tl.float32)
    for t0 in range(0, WIN * WIN, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K)
        a, c, k_ok = t // WIN, t % WIN, t < WIN * WIN
        ky, kx = by * BLOCK + a, bx * BLOCK + c
        kt = tl.load(K + ky[None, :] * sk_y + kx[None, :] * sk_x + d[:, None],
                     mask=k_ok[None, :] & (d[:, None] < D), other=0.0)
        v = tl.load(V + ky[:, None] * sv_y + kx[:, None] * sv_x + dv[None, :],
                    mask=k_ok[:, None] & (dv[None, :] < DV), other=0.0)
        ok = q_ok[:, None] & k_ok[None, :]
        s, _, _ = _logits(q, kt, y, x, i, j, a, c, ok, EH, EW, se_y, se_x, qk_scale, WIN, HAS_BIAS, PRECISION)
        s = tl.where(k_ok[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc, PRECISION)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(OUT + b * so_b + n * so_n + y[:, None] * so_y + x[:, None] * so_x + dv[None, :],
             out.to(OUT.dtype.element_ty), mask=q_ok[:, None] & (dv[None, :] < DV))
    tl.store(LSE + b * sl_b + n + y * sl_y + x * sl_x, m_i + tl.log2(l_safe), mask=q_ok)


@triton.jit
def _halo_bwd_kernel(Q, K, V, EH, EW, DOUT, LSE, DELTA, DQ, DK, DV_, DEH, DEW,
                     sq_b, sq_y, sq_x, sq_n, sk_b, sk_y, sk_x, sk_n, sv_b, sv_y, sv_x, sv_n,
                     se_b, se_y, se_x, se_n, so_b, so_y, so_x, so_n, sl_b, sl_y, sl_x,
                     NBW, heads, D, DV, qk_scale, scale,
                     BQ: tl.constexpr, BLOCK: tl.constexpr, WIN: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """dQ (stored), dK/dV and d(eh)/d(ew) (fp32 atomics). ``DOUT``/``DQ`` share q's layout but
    ``DOUT`` has ``DV`` channels (strides ``so_*``); ``DK``/``DV_`` are fp32 with k's/v's strides."""
    by, bx, y, x, i, j, q_ok = _block_queries(tl.program_id(0), NBW, BQ, BLOCK_Q)
    bh = tl.program_id(1)
    b, n = bh // heads, bh % heads
    d, dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    q_off = b * sq_b + n * sq_n + y[:, None] * sq_y + x[:, None] * sq_x
    q_mask = q_ok[:, None] & (d[None, :] < D)
    q = tl.load(Q + q_off + d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DOUT + b * so_b + n * so_n + y[:, None] * so_y + x[:, None] * so_x + dv[None, :],
                 mask=q_ok[:, None] & (dv[None, :] < DV), other=0.0)
    lse_off = b * sl_b + n + y * sl_y + x * sl_x
    lse = tl.load(LSE + lse_off, mask=q_ok, other=0.0)
    delta = tl.load(DELTA + lse_off, mask=q_ok, other=0.0)
    e_base = b * se_b + n * se_n
    k_base, v_base = b * sk_b + n * sk_n, b * sv_b + n * sv_n
    dq = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for t0 in range(0, WIN * WIN, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K)
        a, c, k_ok = t // WIN, t % WIN, t < WIN * WIN
        ky, kx = by * BLOCK + a, bx * BLOCK + c
        k_off = k_base + ky[:, None] * sk_y + kx[:, None] * sk_x
        v_off = v_base + ky[:, None] * sv_y + kx[:, None] * sv_x
        k_mask = k_ok[:, None] & (d[None, :] < D)
        v_mask = k_ok[:, None] & (dv[None, :] < DV)
        k = tl.load(K + k_off + d[None, :], mask=k_mask, other=0.0)
        v = tl.load(V + v_off + dv[None, :], mask=v_mask, other=0.0)
        ok = q_ok[:, None] & k_ok[None, :]
        s, off_h, off_w = _logits(q, tl.trans(k), y, x, i, j, a, c, ok, EH + e_base, EW + e_base, se_y, se_x,
                                  qk_scale, WIN, HAS_BIAS, PRECISION)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = _mma(do, tl.trans(v), PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _mma(ds.to(k.dtype), k, PRECISION)
        tl.atomic_add(DK + k_off + d[None, :], _mma(tl.trans(ds).to(q.dtype), q, PRECISION) * scale, mask=k_mask)
        tl.atomic_add(DV_ + v_off + dv[None, :], _mma(tl.trans(p).to(do.dtype), do, PRECISION), mask=v_mask)
        if HAS_BIAS:
            tl.atomic_add(DEH + e_base + off_h, ds, mask=ok)
            tl.atomic_add(DEW + e_base + off_w, ds, mask=ok)
    tl.store(DQ + q_off + d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)
