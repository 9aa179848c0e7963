"""Triton kernels for agent attention (launchers and custom ops: ``triton.py``).

Algorithm. Per (image, head), with ``n <= 64`` agents padded to ``NA`` (a power of two >= 16):

* stage 1, ``V_A = softmax(A K^T s + B_kv) V``, is flash attention with only ``n`` queries over ``M``
  keys: one program per (image, head) would leave an H100 idle (Agent-PVT-T stage 1: 8 images x 1
  head = 8 programs for 3136 keys), so the keys are split across programs (flash-decoding):
  ``_stage1_partial_kernel`` runs the online softmax over its key range and writes its partial
  max, normaliser and accumulator (fp32, ``NA x Dv`` per split); ``_stage1_combine_kernel`` merges the
  splits into ``V_A`` (fp32) and the base-2 log-sum-exp of every agent row (for the backward);
* stage 2, ``out = softmax(Q A^T s + B_q) V_A``, has only ``n`` keys: a program loads ``A`` and ``V_A``
  once and processes a tile of ``BN`` queries, the whole softmax row (``n`` logits) in registers.

Neither probability matrix (``[n, M]``, ``[N, n]``) is written to global memory; the only
intermediates are the split partials (``splits x NA x Dv`` fp32 per (image, head)), ``V_A`` and the
log-sum-exp. Backward: ``_stage2_bwd_kernel`` (query tiles) recomputes ``P2``, writes ``dQ`` and
``dB_q`` and accumulates ``dA`` and ``dV_A`` (fp32 atomics: every query tile adds to the same
``n x D``); then ``_stage1_bwd_kernel`` (key tiles) recomputes ``P1`` from the saved log-sum-exp,
writes ``dK``, ``dV``, ``dB_kv`` and adds its share of ``dA``. The biases' gradients are the logits'
gradients ``dS`` (accumulated with atomics when one bias serves the whole batch).

Why fused. Per query, stage 2 reads ``q`` and writes ``out`` (``2 D`` elements) and does ``4 n D``
FLOPs: ~9 FLOP/B at ``n = 9``, ``D = 64`` in fp16, far under an H100's ~300 FLOP/B ridge, so it is
memory-bound whatever runs it. The unfused formulation also writes and reads the ``[N, n]`` logits
and probabilities (bias add, softmax: ~5 passes of ``N n`` elements, ``~0.7 x`` the q/out traffic at
``n = 9``, ``> 5 x`` at ``n = 49``), and stage 1's ``[n, M]`` matrices likewise; a dense-kernel SDPA
with an additive bias reads the ``[N, n]`` bias too and pads the ``n`` keys to its 64/128-key tile. The
fused kernels read each input once and write each output once (the bias tables are read once).

Constraints: q, k, v with unit last stride (the launcher copies otherwise; biases take any strides);
``n <= 64``; head dims <= 256.
Tested dtypes: fp32 (tf32x3 dots), fp16, bf16 (fp32 accumulation everywhere), under
``TRITON_INTERPRET=1`` and on one H200 (torch 2.11, Triton 3.6: ``tests/ops/test_agent_attn_triton.py``
passed, opcheck and compile included). Measured there (fp16, Agent-PVT-T stage 1 at batch 32: 32 x 3136
tokens, 1 head, D 64, 9 agents; CUDA time per call from the profiler): forward 29 us (stage-1 partials
12, combine 6, stage 2 10; dense SDPA over the 3136 tokens: 231 us), backward 63 us (stage 2 30, stage 1
33); max error vs the float64 reference 8e-5. At that size a call is bound by host time (custom-op
dispatch and five launches: ~0.15 ms forward, ~1.3 ms forward + backward wall-clock, about what the
eager reference takes), not by the kernels. Known limits: the fp32 atomics make ``dA``, ``dV_A`` and a
batch-shared bias gradient's summation order non-deterministic; no autotuning; host overhead per call.
"""
import triton
import triton.language as tl

from .._triton import _LOG2E_JIT, _mma, _online_softmax_step


@triton.jit
def _load_rows(PTR, rows, n_rows, cols, n_cols, stride_row):
    """``PTR[rows, cols]`` (rows of ``stride_row`` elements, unit column stride), zero outside."""
    return tl.load(PTR + rows[:, None] * stride_row + cols[None, :],
                   mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :], other=0.0)


@triton.jit
def _load_bias(PTR, rows, n_rows, s_r, cols, n_cols, s_c):
    """``PTR[rows, cols]`` of a bias with any strides, fp32, zero outside."""
    return tl.load(PTR + rows[:, None] * s_r + cols[None, :] * s_c,
                   mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :], other=0.0).to(tl.float32)


@triton.jit
def _program(HEADS, BLOCK: tl.constexpr):
    """This program's ``(image * HEADS + head, image, head, its BLOCK token rows)`` on a ``(B * HEADS, tiles)``
    grid."""
    bh = tl.program_id(0)
    return bh, bh // HEADS, bh % HEADS, tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _stage1_partial_kernel(A, K, V, BKV, PM, PL, PACC, M, n, HEADS, TILES_PER_SPLIT, qk_scale,
                           s_kb, s_kh, s_km, s_vb, s_vh, s_vm, s_bb, s_bh, s_br, s_bc, D, DV,
                           HAS_BIAS: tl.constexpr, NA: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                           BM: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax of the agents over keys ``[split * TILES_PER_SPLIT * BM, ...)``: partial max,
    normaliser (base 2) and accumulator into ``PM/PL [BH, SPLITS, NA]``, ``PACC [BH, SPLITS, NA, BDV]``."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    ra = tl.arange(0, NA)
    rd = tl.arange(0, BD)
    rdv = tl.arange(0, BDV)
    rm = tl.arange(0, BM)
    a = _load_rows(A + bh * n * D, ra, n, rd, D, D)
    m_i = tl.full([NA], float("-inf"), tl.float32)
    l_i = tl.zeros([NA], tl.float32)
    acc = tl.zeros([NA, BDV], tl.float32)
    start = split * TILES_PER_SPLIT * BM
    end = tl.minimum(start + TILES_PER_SPLIT * BM, M)
    for m0 in range(start, end, BM):
        km = m0 + rm
        k = _load_rows(K + b * s_kb + h * s_kh, km, M, rd, D, s_km)
        s = _mma(a, tl.trans(k), PRECISION) * qk_scale
        if HAS_BIAS:
            s += _load_bias(BKV + b * s_bb + h * s_bh, ra, n, s_br, km, M, s_bc) * _LOG2E_JIT
        s = tl.where((km < M)[None, :], s, float("-inf"))
        v = _load_rows(V + b * s_vb + h * s_vh, km, M, rdv, DV, s_vm)
        m_i, l_i, acc = _online_softmax_step(s, v, m_i, l_i, acc, PRECISION)
    slot = bh * tl.num_programs(1) + split
    tl.store(PM + slot * NA + ra, m_i)
    tl.store(PL + slot * NA + ra, l_i)
    tl.store(PACC + slot * NA * BDV + ra[:, None] * BDV + rdv[None, :], acc)


@triton.jit
def _stage1_combine_kernel(PM, PL, PACC, VA, LSE, SPLITS, n, DV, NA: tl.constexpr, BDV: tl.constexpr):
    """Merge the splits: ``VA [BH, n, DV]`` (fp32) and the agents' base-2 log-sum-exp ``LSE [BH, n]``."""
    bh = tl.program_id(0)
    ra = tl.arange(0, NA)
    rdv = tl.arange(0, BDV)
    m = tl.full([NA], float("-inf"), tl.float32)
    for s in range(SPLITS):
        m = tl.maximum(m, tl.load(PM + (bh * SPLITS + s) * NA + ra))
    l_sum = tl.zeros([NA], tl.float32)
    acc = tl.zeros([NA, BDV], tl.float32)
    for s in range(SPLITS):
        slot = bh * SPLITS + s
        alpha = tl.exp2(tl.load(PM + slot * NA + ra) - m)  # every split holds >= 1 key: finite maxima
        l_sum += alpha * tl.load(PL + slot * NA + ra)
        acc += alpha[:, None] * tl.load(PACC + slot * NA * BDV + ra[:, None] * BDV + rdv[None, :])
    ok = ra < n
    tl.store(VA + bh * n * DV + ra[:, None] * DV + rdv[None, :], acc / l_sum[:, None],
             mask=ok[:, None] & (rdv < DV)[None, :])
    tl.store(LSE + bh * n + ra, m + tl.log2(l_sum), mask=ok)


@triton.jit
def _stage2_probs(A, Q, BQ, bh, b, h, rn, ra, rd, N, n, D, qk_scale, s_qb, s_qh, s_qn, s_bb, s_bh, s_br, s_bc,
                  HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """``(P2 [BN, NA] fp32, the agents [NA, BD], the query tile [BN, BD])`` of one query tile."""
    a = _load_rows(A + bh * n * D, ra, n, rd, D, D)
    q = _load_rows(Q + b * s_qb + h * s_qh, rn, N, rd, D, s_qn)
    s = _mma(q, tl.trans(a), PRECISION) * qk_scale
    if HAS_BIAS:
        s += _load_bias(BQ + b * s_bb + h * s_bh, rn, N, s_br, ra, n, s_bc) * _LOG2E_JIT
    s = tl.where((ra < n)[None, :], s, float("-inf"))
    p = tl.exp2(s - tl.max(s, 1)[:, None])
    return p / tl.sum(p, 1)[:, None], a, q


@triton.jit
def _stage2_fwd_kernel(A, Q, BQ, VA, OUT, N, n, HEADS, qk_scale, s_qb, s_qh, s_qn, s_bb, s_bh, s_br, s_bc, D, DV,
                       HAS_BIAS: tl.constexpr, NA: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                       BN: tl.constexpr, PRECISION: tl.constexpr):
    """``OUT [BH, N, DV] = softmax(Q A^T s + B_q) V_A`` for one tile of ``BN`` queries."""
    bh, b, h, rn = _program(HEADS, BN)
    ra = tl.arange(0, NA)
    rdv = tl.arange(0, BDV)
    p, a, q = _stage2_probs(A, Q, BQ, bh, b, h, rn, ra, tl.arange(0, BD), N, n, D, qk_scale, s_qb, s_qh, s_qn,
                            s_bb, s_bh, s_br, s_bc, HAS_BIAS, PRECISION)
    va = _load_rows(VA + bh * n * DV, ra, n, rdv, DV, DV).to(q.dtype)
    o = _mma(p.to(q.dtype), va, PRECISION)
    tl.store(OUT + bh * N * DV + rn[:, None] * DV + rdv[None, :], o.to(OUT.dtype.element_ty),
             mask=(rn < N)[:, None] & (rdv < DV)[None, :])


@triton.jit
def _stage2_bwd_kernel(A, Q, BQ, VA, OUT, DO, DQ, DBQ, DA, DVA, N, n, HEADS, scale, qk_scale, s_qb, s_qh, s_qn,
                       s_bb, s_bh, s_br, s_bc, s_db, D, DV, HAS_BIAS: tl.constexpr, NA: tl.constexpr,
                       BD: tl.constexpr,
                       BDV: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr):
    """One query tile: ``dQ`` (stored), ``dB_q`` (fp32, added at batch stride ``s_db``), and its share of
    ``dA`` and ``dV_A`` (fp32 ``[BH, n, D]``, ``[BH, n, DV]``, atomics)."""
    bh, b, h, rn = _program(HEADS, BN)
    ra = tl.arange(0, NA)
    rd = tl.arange(0, BD)
    rdv = tl.arange(0, BDV)
    p, a, q = _stage2_probs(A, Q, BQ, bh, b, h, rn, ra, rd, N, n, D, qk_scale, s_qb, s_qh, s_qn,
                            s_bb, s_bh, s_br, s_bc, HAS_BIAS, PRECISION)
    va = _load_rows(VA + bh * n * DV, ra, n, rdv, DV, DV).to(q.dtype)
    do = _load_rows(DO + bh * N * DV, rn, N, rdv, DV, DV)
    o = _load_rows(OUT + bh * N * DV, rn, N, rdv, DV, DV)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    ds = p * (_mma(do, tl.trans(va), PRECISION) - delta[:, None])  # [BN, NA]; rows past N are 0 (do = 0)
    dq = _mma(ds.to(q.dtype), a, PRECISION) * scale
    n_ok = rn < N
    tl.store(DQ + bh * N * D + rn[:, None] * D + rd[None, :], dq.to(DQ.dtype.element_ty),
             mask=n_ok[:, None] & (rd < D)[None, :])
    a_ok = ra < n
    if HAS_BIAS:
        tl.atomic_add(DBQ + b * s_db + h * N * n + rn[:, None] * n + ra[None, :], ds,
                      mask=n_ok[:, None] & a_ok[None, :])
    da = _mma(tl.trans(ds.to(q.dtype)), q, PRECISION) * scale
    tl.atomic_add(DA + bh * n * D + ra[:, None] * D + rd[None, :], da, mask=a_ok[:, None] & (rd < D)[None, :])
    dva = _mma(tl.trans(p.to(do.dtype)), do, PRECISION)
    tl.atomic_add(DVA + bh * n * DV + ra[:, None] * DV + rdv[None, :], dva, mask=a_ok[:, None] & (rdv < DV)[None, :])


@triton.jit
def _stage1_bwd_kernel(A, K, V, BKV, VA, LSE, DVA, DK, DV_, DBKV, DA, M, n, HEADS, scale, qk_scale,
                       s_kb, s_kh, s_km, s_vb, s_vh, s_vm, s_bb, s_bh, s_br, s_bc, s_db, D, DV,
                       HAS_BIAS: tl.constexpr, NA: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                       BM: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile: ``dK``, ``dV`` (stored), ``dB_kv`` (fp32, added at batch stride ``s_db``) and its
    share of ``dA`` (fp32 atomics), from the complete ``dV_A`` and the saved log-sum-exp."""
    bh, b, h, km = _program(HEADS, BM)
    ra = tl.arange(0, NA)
    rd = tl.arange(0, BD)
    rdv = tl.arange(0, BDV)
    a_ok = ra < n
    m_ok = km < M
    a = _load_rows(A + bh * n * D, ra, n, rd, D, D)
    k = _load_rows(K + b * s_kb + h * s_kh, km, M, rd, D, s_km)
    v = _load_rows(V + b * s_vb + h * s_vh, km, M, rdv, DV, s_vm)
    dva = _load_rows(DVA + bh * n * DV, ra, n, rdv, DV, DV)
    delta = tl.sum(dva * _load_rows(VA + bh * n * DV, ra, n, rdv, DV, DV), 1)
    lse = tl.load(LSE + bh * n + ra, mask=a_ok, other=0.0)
    s = _mma(a, tl.trans(k), PRECISION) * qk_scale
    if HAS_BIAS:
        s += _load_bias(BKV + b * s_bb + h * s_bh, ra, n, s_br, km, M, s_bc) * _LOG2E_JIT
    p = tl.where(a_ok[:, None] & m_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)  # [NA, BM]
    dvac = dva.to(v.dtype)
    ds = p * (_mma(dvac, tl.trans(v), PRECISION) - delta[:, None])
    dv = _mma(tl.trans(p.to(v.dtype)), dvac, PRECISION)
    tl.store(DV_ + bh * M * DV + km[:, None] * DV + rdv[None, :], dv.to(DV_.dtype.element_ty),
             mask=m_ok[:, None] & (rdv < DV)[None, :])
    dsc = ds.to(k.dtype)
    dk = _mma(tl.trans(dsc), a, PRECISION) * scale
    tl.store(DK + bh * M * D + km[:, None] * D + rd[None, :], dk.to(DK.dtype.element_ty),
             mask=m_ok[:, None] & (rd < D)[None, :])
    if HAS_BIAS:
        tl.atomic_add(DBKV + b * s_db + h * n * M + ra[:, None] * M + km[None, :], ds,
                      mask=a_ok[:, None] & m_ok[None, :])
    da = _mma(dsc, k, PRECISION) * scale
    tl.atomic_add(DA + bh * n * D + ra[:, None] * D + rd[None, :], da, mask=a_ok[:, None] & (rd < D)[None, :])
