"""Triton kernels of focused linear attention (launchers and custom ops: ``triton.py``).

Algorithm. Per token ``x`` (all ``C`` channels): ``y = (ReLU(x) + 1e-6) inv_s`` with ``inv_s =
1 / softplus(scale)``, ``r = ||y||``, ``m = max(y)``, ``S = ||(y / m)^p||``, and the unit direction
``w = (y / m)^p / S``; the features are ``phi = r w``. Per head (``d`` channels of q/k, ``dv`` of v)::

    KVb = [sum_j phi_k_j^T v_j | sum_j phi_k_j] / n            ([d, dv + 1], fp32)
    out_i = (w_i @ KV) / (w_i . kbar + eps / r_i)               (= phi_q KV / (phi_q . kbar + eps))

Forward, three kernels: ``_la_stats_kernel`` reads each token's whole row once and stores ``(r, m, S)``
(12 bytes per token; the norms span all heads, so they cannot come from a per-head tile);
``_la_kv_kernel`` streams key tiles per (batch, head, split of the keys), recomputes ``phi_k`` on the
tile from ``k (+ pos)`` and the stats and accumulates ``phi_k^T [v | 1]`` in fp32 registers (split
partials summed by the launcher: deterministic, no atomics); ``_la_out_kernel`` does one query tile per
program against the ``[d, dv + 1]`` block in registers. Nothing of ``phi`` is ever written.

Backward (``den_i = r_i (w_i . kbar) + eps``, ``c_i = -(out_i . dout_i)``): ``_la_dq_kernel`` recomputes
``out`` per query tile and stores ``dphi_q = (dout KV^T + c kbar) / den`` (fp32) while accumulating
``dKVb = [sum_i w_i^T dout_i / den'_i | sum_i w_i c_i / den'_i]`` (``den' = den / r``) per split;
``_la_dk_kernel`` stores ``dphi_k = ([v | 1] dKVb^T) / n`` and ``dv = phi_k dKV / n`` per key tile;
``_la_feat_bwd_kernel`` maps ``g = dphi`` back through the feature map on whole rows (``a = g . w``)::

    dL/dy = a y / r + p r (w / y) (g - a w),   dx = dL/dy inv_s [x > 0]

and writes per-program partial sums of ``dL/dy * y`` for the scale gradient.

Numerics: every intermediate is fp32 and bounded by the input magnitude, never by a power of it:
``(y / m)^p <= 1`` (computed as ``exp2(p log2(y / m))``), ``w`` is a unit vector, ``eps / r <= 1e6 eps``,
and the k-side sums grow like ``r |v|``, not like ``|x|^p``. fp16 / bf16 inputs are read and the
output written in their dtype; the products run on fp32 operands (TF32 tensor cores, ``tf32x3`` for
fp32 inputs), as ``KV`` itself does not fit fp16 for large activations.

Why it should be fast on an H100. The op is memory-bound: per token it reads q, k, v once for the
stats and once for the products (fp16: ``2 (2 C) + 2 C + Cv`` bytes ~ 7 C) and writes ``2 Cv``; the
products are ``4 d dv`` FLOP per token and head (64 x 64: 16 kFLOP on ~900 B at C = 64, i.e. ~18
FLOP/B, below the TF32 ridge of ~150 FLOP/B), so the kernels run at HBM speed: ~0.3 ns per token for
C = 64 in fp16 (3.35 TB/s) against the eager formulation's ~15 passes over ``[B, N, C]`` (each fp32,
with an ``[B, N, C]`` temporary per elementwise op), and against dense attention's ``O(N^2)``. The
split grid (``(batch x heads) x splits``) fills the 132 SMs even at batch 2 with one head.

Constraints: channel stride 1 (the launcher makes it so), ``d, dv <= 128`` (the ``[d, dv]`` block lives
in registers). Tested: fp32, fp16, bf16 under ``TRITON_INTERPRET=1``. Known limits: no autotuning; the
stats kernel holds a whole row of ``C <= 1024`` channels per token.
"""
import triton
import triton.language as tl

from .._triton import _mma

FEATURE_EPS = tl.constexpr(1e-6)


@triton.jit
def _features(x, inv_s, ok, P, FOCUS: tl.constexpr):
    """``y`` on a tile (masked lanes 1, so logs stay finite), or ``x`` itself without focusing."""
    if FOCUS:
        return tl.where(ok, (tl.maximum(x, 0.0) + FEATURE_EPS) * inv_s, 1.0)
    else:
        return tl.where(ok, x, 0.0)


@triton.jit
def _direction(y, m, s, ok, P):
    """``w = (y / m)^p / S`` (zero on masked lanes)."""
    return tl.where(ok, tl.exp2(P * tl.log2(y / m[:, None])) / s[:, None], 0.0)


@triton.jit
def _load_x(X, POS, b, rows, cols, ok, sxb, sxl, spb, spl, HAS_POS: tl.constexpr):
    x = tl.load(X + b * sxb + rows[:, None] * sxl + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_POS:
        x += tl.load(POS + b * spb + rows[:, None] * spl + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    return x


@triton.jit
def _load_stats(STATS, b, rows, row_ok, L):
    base = STATS + (b * L + rows) * 3
    r = tl.load(base, mask=row_ok, other=1.0)
    m = tl.load(base + 1, mask=row_ok, other=1.0)
    s = tl.load(base + 2, mask=row_ok, other=1.0)
    return r, m, s


@triton.jit
def _row_tile(X, POS, INV_S, L, C, sxb, sxl, spb, spl, P, HAS_POS: tl.constexpr, BLOCK_T: tl.constexpr,
              BLOCK_C: tl.constexpr):
    """The whole-row tile of a row kernel (grid ``(tiles of BLOCK_T tokens, B)``): indices, masks, ``x``
    (+ pos), ``inv_s`` and ``y``."""
    b = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < L
    ok = row_ok[:, None] & (cols < C)[None, :]
    x = _load_x(X, POS, b, rows, cols, ok, sxb, sxl, spb, spl, HAS_POS)
    inv_s = tl.load(INV_S + cols, mask=cols < C, other=1.0)
    return b, rows, cols, row_ok, ok, x, inv_s, _features(x, inv_s[None, :], ok, P, True)


@triton.jit
def _la_stats_kernel(X, POS, INV_S, STATS, L, C, sxb, sxl, spb, spl, P,
                     HAS_POS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """``STATS[b, l] = (||y||, max y, ||(y / max y)^p||)`` for ``BLOCK_T`` tokens per program."""
    b, rows, cols, row_ok, ok, x, inv_s, y = _row_tile(X, POS, INV_S, L, C, sxb, sxl, spb, spl, P, HAS_POS,
                                                       BLOCK_T, BLOCK_C)
    r = tl.sqrt(tl.sum(tl.where(ok, y * y, 0.0), 1))
    m = tl.where(row_ok, tl.max(tl.where(ok, y, 0.0), 1), 1.0)  # 1 on rows past the end: no 0 / 0
    t = tl.where(ok, tl.exp2(P * tl.log2(y / m[:, None])), 0.0)
    s = tl.sqrt(tl.sum(t * t, 1))
    base = STATS + (b * L + rows) * 3
    tl.store(base, r, mask=row_ok)
    tl.store(base + 1, m, mask=row_ok)
    tl.store(base + 2, s, mask=row_ok)


@triton.jit
def _phi_tile(X, POS, INV_S, STATS, b, h, rows, L, D, sxb, sxl, spb, spl, P,
              HAS_POS: tl.constexpr, FOCUS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``(w, r)`` of head ``h`` on a tile of tokens: ``phi = r w`` (without focusing ``w = x``, ``r = 1``)."""
    cd = tl.arange(0, BLOCK_D)
    row_ok = rows < L
    ok = row_ok[:, None] & (cd < D)[None, :]
    x = _load_x(X, POS, b, rows, h * D + cd, ok, sxb, sxl, spb, spl, HAS_POS)
    if FOCUS:
        inv_s = tl.load(INV_S + h * D + cd, mask=cd < D, other=1.0)
        r, m, s = _load_stats(STATS, b, rows, row_ok, L)
        w = _direction(_features(x, inv_s[None, :], ok, P, True), m, s, ok, P)
    else:
        w = tl.where(ok, x, 0.0)
        r = tl.where(row_ok, 1.0, 1.0)
    return w, r


@triton.jit
def _load_kvb(KVB, bh, D, DV, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``KV [BLOCK_D, BLOCK_DV]`` and ``kbar [BLOCK_D]`` of one (batch, head), zero-padded."""
    cd = tl.arange(0, BLOCK_D)
    ce = tl.arange(0, BLOCK_DV)
    base = KVB + bh * D * (DV + 1) + cd[:, None] * (DV + 1)
    kv = tl.load(base + ce[None, :], mask=(cd < D)[:, None] & (ce < DV)[None, :], other=0.0)
    kbar = tl.load(KVB + bh * D * (DV + 1) + cd * (DV + 1) + DV, mask=cd < D, other=0.0)
    return kv, kbar


@triton.jit
def _split_program(H, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``(bh, split, b, h, d-range, dv-range)`` of a program of a ``(B * heads, splits)`` grid."""
    bh = tl.program_id(0)
    b = bh // H
    return bh, tl.program_id(1), b, bh - b * H, tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)


@triton.jit
def _store_partial(PART, bh, split, blk, col, cd, ce, D, DV):
    """``PART[bh, split] = [blk | col]`` (``[D, DV + 1]``)."""
    base = PART + (bh * tl.num_programs(1) + split) * D * (DV + 1) + cd[:, None] * (DV + 1)
    tl.store(base + ce[None, :], blk, mask=(cd < D)[:, None] & (ce < DV)[None, :])
    tl.store(PART + (bh * tl.num_programs(1) + split) * D * (DV + 1) + cd * (DV + 1) + DV, col, mask=cd < D)


@triton.jit
def _la_kv_kernel(K, POS, V, INV_S, STATS, PART, H, n, D, DV, TILES_PER_SPLIT,
                  skb, skl, spb, spl, svb, svl, P,
                  HAS_POS: tl.constexpr, FOCUS: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``PART[bh, split] = sum over the split's keys of phi_k^T [v | 1]`` (``[D, DV + 1]``, fp32)."""
    bh, split, b, h, cd, ce = _split_program(H, BLOCK_D, BLOCK_DV)
    acc = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    ksum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(TILES_PER_SPLIT):
        rows = (split * TILES_PER_SPLIT + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        w, r = _phi_tile(K, POS, INV_S, STATS, b, h, rows, n, D, skb, skl, spb, spl, P, HAS_POS, FOCUS, BLOCK_D)
        phi = w * r[:, None]
        vok = (rows < n)[:, None] & (ce < DV)[None, :]
        v = tl.load(V + b * svb + rows[:, None] * svl + h * DV + ce[None, :], mask=vok, other=0.0).to(tl.float32)
        acc += _mma(tl.trans(phi), v, PRECISION)
        ksum += tl.sum(phi, 0)
    _store_partial(PART, bh, split, acc, ksum, cd, ce, D, DV)


@triton.jit
def _la_out_kernel(Q, INV_S, STATS, KVB, OUT, H, N, D, DV, sqb, sql, sob, sol, P, eps,
                   FOCUS: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``out = (w @ KV) / (w . kbar + eps / r)`` for one query tile of one (batch, head)."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ce = tl.arange(0, BLOCK_DV)
    kv, kbar = _load_kvb(KVB, bh, D, DV, BLOCK_D, BLOCK_DV)
    w, r = _phi_tile(Q, Q, INV_S, STATS, b, h, rows, N, D, sqb, sql, 0, 0, P, False, FOCUS, BLOCK_D)
    num = _mma(w, kv, PRECISION)
    den = tl.sum(w * kbar[None, :], 1) + eps / r
    out = num / den[:, None]
    ok = (rows < N)[:, None] & (ce < DV)[None, :]
    tl.store(OUT + b * sob + rows[:, None] * sol + h * DV + ce[None, :], out.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _la_dq_kernel(Q, DOUT, INV_S, STATS, KVB, GQ, PART, H, N, D, DV, C, TILES_PER_SPLIT,
                  sqb, sql, sdb, sdl, P, eps,
                  FOCUS: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Per query tile: ``GQ = dphi_q`` (fp32 ``[B, N, C]``); per split: ``PART = dKVb`` partial sums."""
    bh, split, b, h, cd, ce = _split_program(H, BLOCK_D, BLOCK_DV)
    kv, kbar = _load_kvb(KVB, bh, D, DV, BLOCK_D, BLOCK_DV)
    dkv = tl.zeros((BLOCK_D, BLOCK_DV), dtype=tl.float32)
    dkbar = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(TILES_PER_SPLIT):
        rows = (split * TILES_PER_SPLIT + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        w, r = _phi_tile(Q, Q, INV_S, STATS, b, h, rows, N, D, sqb, sql, 0, 0, P, False, FOCUS, BLOCK_D)
        den = tl.sum(w * kbar[None, :], 1) + eps / r  # den' = den / r
        out = _mma(w, kv, PRECISION) / den[:, None]
        dok = row_ok[:, None] & (ce < DV)[None, :]
        dout = tl.load(DOUT + b * sdb + rows[:, None] * sdl + h * DV + ce[None, :], mask=dok,
                       other=0.0).to(tl.float32)
        c = -tl.sum(out * dout, 1)
        dn = dout / den[:, None]  # dout / den' (= r dout / den)
        cn = c / den
        g = (_mma(dn, tl.trans(kv), PRECISION) + cn[:, None] * kbar[None, :]) / r[:, None]
        gok = row_ok[:, None] & (cd < D)[None, :]
        tl.store(GQ + (b * N + rows[:, None]) * C + h * D + cd[None, :], g, mask=gok)
        dkv += _mma(tl.trans(w), dn, PRECISION)
        dkbar += tl.sum(w * cn[:, None], 0)
    _store_partial(PART, bh, split, dkv, dkbar, cd, ce, D, DV)


@triton.jit
def _la_dk_kernel(K, POS, V, INV_S, STATS, DKVB, GK, DVO, H, n, D, DV, C,
                  skb, skl, spb, spl, svb, svl, sdvb, sdvl, P, inv_n,
                  HAS_POS: tl.constexpr, FOCUS: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Per key tile: ``GK = dphi_k = ([v | 1] dKVb^T) / n`` (fp32) and ``dv = phi_k dKV / n``."""
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    cd = tl.arange(0, BLOCK_D)
    ce = tl.arange(0, BLOCK_DV)
    dkv, dkbar = _load_kvb(DKVB, bh, D, DV, BLOCK_D, BLOCK_DV)
    w, r = _phi_tile(K, POS, INV_S, STATS, b, h, rows, n, D, skb, skl, spb, spl, P, HAS_POS, FOCUS, BLOCK_D)
    vok = row_ok[:, None] & (ce < DV)[None, :]
    v = tl.load(V + b * svb + rows[:, None] * svl + h * DV + ce[None, :], mask=vok, other=0.0).to(tl.float32)
    g = (_mma(v, tl.trans(dkv), PRECISION) + dkbar[None, :]) * inv_n
    tl.store(GK + (b * n + rows[:, None]) * C + h * D + cd[None, :], g, mask=row_ok[:, None] & (cd < D)[None, :])
    dv = _mma(w, dkv, PRECISION) * (r * inv_n)[:, None]
    tl.store(DVO + b * sdvb + rows[:, None] * sdvl + h * DV + ce[None, :], dv.to(DVO.dtype.element_ty), mask=vok)


@triton.jit
def _la_feat_bwd_kernel(X, POS, INV_S, STATS, G, DX, SPART, L, C, sxb, sxl, spb, spl, P,
                        HAS_POS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """``DX = dL/dy inv_s [x > 0]`` (fp32) from ``G = dL/dphi`` on whole rows; ``SPART[program] =
    sum over its tokens of dL/dy * y`` (the scale gradient's partial sums)."""
    b, rows, cols, row_ok, ok, x, inv_s, y = _row_tile(X, POS, INV_S, L, C, sxb, sxl, spb, spl, P, HAS_POS,
                                                       BLOCK_T, BLOCK_C)
    r, m, s = _load_stats(STATS, b, rows, row_ok, L)
    w = _direction(y, m, s, ok, P)
    g = tl.load(G + (b * L + rows[:, None]) * C + cols[None, :], mask=ok, other=0.0)
    a = tl.sum(g * w, 1)
    dy = a[:, None] * y / r[:, None] + (P * r)[:, None] * (w / y) * (g - a[:, None] * w)
    dy = tl.where(ok, dy, 0.0)
    tl.store(DX + (b * L + rows[:, None]) * C + cols[None, :], tl.where(x > 0, dy * inv_s[None, :], 0.0), mask=ok)
    pid = b * tl.num_programs(0) + tl.program_id(0)
    tl.store(SPART + pid * C + cols, tl.sum(dy * y, 0), mask=cols < C)
