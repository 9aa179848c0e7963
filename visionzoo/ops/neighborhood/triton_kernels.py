"""Triton kernels for fused 2-D neighborhood attention (launchers and custom ops: ``triton.py``).

Algorithm (tiled, after flash-attention 2 and NATTEN's fused NA): queries are tiled in the
coordinates of their dilation group, ``TQH x TQW`` per program. Window starts are monotone in
the query position, so the union of a tile's windows is one rectangle of keys, walked in
``TKH x TKW`` key tiles: ``S = Q K^T`` on tensor cores, the per-pair window mask and the RPB term
added in registers, online softmax in fp32 (base 2). Keys are gathered by address arithmetic
from the ``[B, H, W, heads, D]`` tensors; nothing k-fold is materialised.

Backward: ``delta = rowsum(dO * O)`` first; then ``_na2d_bwd_dq_kernel`` (query-centric, same
walk as the forward) produces dQ and accumulates d(rpb) with fp32 atomics into a per-batch
buffer; ``_na2d_bwd_dkdv_kernel`` is key-centric: a key tile's inverse neighbourhood (the
queries whose windows reach it) is again one rectangle, found exactly by probing the
monotone window-start function, so dK/dV need no atomics and are deterministic.

Constraints: last dim contiguous (other strides free); D and Dv padded to powers of two
>= 16 with masks; kernel size, dilation and stride are compile-time constants.
Tested dtypes: fp32 (dots in ``tf32x3``), fp16, bf16 (fp32 accumulation), numerically only under
``TRITON_INTERPRET=1``. Built offline for sm_90a as launched (``test_builds_for_sm90``: ptxas
reports no spills for fp16/bf16, some for fp32) but never run on a GPU: no timings, no autotuning.
Known limits: d(rpb) summation order is non-deterministic (atomics); a T x T query tile computes
``(T + k - 1)^2`` logits per query where ``k^2`` are used (4x for T = 8, k = 7: the usual
fused-NA trade of wasted MACs for tensor-core tiles; GNA-style token permutation would remove it
for strided windows); no Hopper-specific paths (TMA, warp specialisation); no double backward.
"""
import triton
import triton.language as tl

from .._triton import _mma

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _axis_tile(t, N, DIL: tl.constexpr, TILES, TILE: tl.constexpr, KS: tl.constexpr):
    """Tile ``t`` of one axis -> (dilation group, first position in group, group length, clamped kernel)."""
    g = t // TILES
    p0 = (t % TILES) * TILE
    n_g = (N - g + DIL - 1) // DIL
    k_g = tl.minimum(n_g, KS)
    return g, p0, n_g, k_g


@triton.jit
def _window_start(p, n_g, k_g, KS: tl.constexpr, ST: tl.constexpr):
    """First key (group coordinates) of query ``p``'s window; non-decreasing in ``p``."""
    leader = tl.minimum((p // ST) * ST + ST // 2, n_g - 1)
    return tl.minimum(tl.maximum(leader - KS // 2, 0), n_g - k_g)


@triton.jit
def _window_union(p0, n_g, k_g, KS: tl.constexpr, ST: tl.constexpr, TILE: tl.constexpr):
    """Keys ``[lo, hi)`` reached by the queries ``[p0, p0 + TILE)`` (empty for an empty tile)."""
    lo = _window_start(p0, n_g, k_g, KS, ST)
    hi = _window_start(tl.minimum(p0 + TILE, n_g) - 1, n_g, k_g, KS, ST) + k_g
    return lo, tl.where(p0 < n_g, hi, lo)


@triton.jit
def _inverse_union(r0, n_g, k_g, KS: tl.constexpr, ST: tl.constexpr, TILE: tl.constexpr, PROBE: tl.constexpr):
    """Queries ``[lo, hi)`` whose windows reach a key of ``[r0, r0 + TILE)``.

    A window always holds its leader, which is within ``ST - 1`` of the query, so such a query
    lies within ``KS + ST - 2`` of the key tile; PROBE covers that span and the min/max of the
    hits is exact because window starts are monotone.
    """
    r1 = tl.minimum(r0 + TILE, n_g) - 1
    p = r0 - (KS + ST - 2) + tl.arange(0, PROBE)
    w = _window_start(p, n_g, k_g, KS, ST)
    hit = (p >= 0) & (p < n_g) & (w <= r1) & (w + k_g > r0)
    lo = tl.min(tl.where(hit, p, n_g), 0)
    hi = tl.max(tl.where(hit, p + 1, 0), 0)
    return lo, tl.maximum(hi, lo)


@triton.jit
def _rpb_offset(dr, dc, KH: tl.constexpr, KW: tl.constexpr):
    """Offset of the key-minus-query offset ``(dr, dc)`` in one head's ``[2KH-1, 2KW-1]`` table."""
    return (dr + KH - 1) * (2 * KW - 1) + dc + KW - 1


@triton.jit
def _query_tile(pid, H, W, TILES_H, TILES_W, KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr,
                DW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, TQH: tl.constexpr, TQW: tl.constexpr):
    """Query tile ``pid`` -> its dilation groups, the per-axis group lengths and clamped kernels, each
    query's group position, validity and window start, and the key rectangle its windows reach."""
    gh, ph0, ngh, kgh = _axis_tile(pid // (DW * TILES_W), H, DH, TILES_H, TQH, KH)
    gw, pw0, ngw, kgw = _axis_tile(pid % (DW * TILES_W), W, DW, TILES_W, TQW, KW)
    offs_q = tl.arange(0, TQH * TQW)
    ph = ph0 + offs_q // TQW
    pw = pw0 + offs_q % TQW
    q_ok = (ph < ngh) & (pw < ngw)
    wh = _window_start(ph, ngh, kgh, KH, SH)
    ww = _window_start(pw, ngw, kgw, KW, SW)
    r_lo, r_hi = _window_union(ph0, ngh, kgh, KH, SH, TQH)
    c_lo, c_hi = _window_union(pw0, ngw, kgw, KW, SW, TQW)
    return gh, gw, kgh, kgw, ph, pw, q_ok, wh, ww, r_lo, r_hi, c_lo, c_hi


@triton.jit
def _scores(a, b_t, dr, dc, win, RPB, head, qk_scale, KH: tl.constexpr, KW: tl.constexpr,
            HAS_RPB: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits ``a @ b_t * qk_scale`` (+ RPB at key-minus-query offsets ``(dr, dc)``), ``-inf``
    outside ``win``; also the RPB offsets (for d(rpb)). Serves ``[queries, keys]`` and transposed tiles."""
    rel = _rpb_offset(dr, dc, KH, KW)
    s = _mma(a, b_t, PRECISION) * qk_scale
    if HAS_RPB:
        s += tl.load(RPB + head * ((2 * KH - 1) * (2 * KW - 1)) + rel, mask=win, other=0.0).to(tl.float32) * _LOG2E
    return tl.where(win, s, float("-inf")), rel


@triton.jit
def _in_window(r, c, wh, ww, kgh, kgw, ok):
    """Key ``(r, c)`` (group coordinates) lies in the window starting at ``(wh, ww)``, and ``ok``."""
    return ok & (r >= wh) & (r < wh + kgh) & (c >= ww) & (c < ww + kgw)


@triton.jit
def _na2d_fwd_kernel(
    Q, K, V,  # [B, H, W, heads, D], [B, H, W, heads, D], [B, H, W, heads, DV]; last dim contiguous
    RPB,  # [heads, 2KH-1, 2KW-1] (any tensor when not HAS_RPB)
    OUT,  # [B, H, W, heads, DV] contiguous
    LSE,  # [B, H, W, heads] fp32 contiguous: natural-log logsumexp of each query's logits
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, HEADS, D, DV,
    VH0, VW0, VH, VW,  # real keys: rows [VH0, VH) x columns [VW0, VW); the rest is zero padding, masked
    qk_scale,  # scale * log2(e)
    TILES_H, TILES_W,  # query tiles per dilation group along each axis
    KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
    TQH: tl.constexpr, TQW: tl.constexpr, TKH: tl.constexpr, TKW: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    head = bh % HEADS
    gh, gw, kgh, kgw, ph, pw, q_ok, wh, ww, r_lo, r_hi, c_lo, c_hi = _query_tile(
        pid, H, W, TILES_H, TILES_W, KH, KW, DH, DW, SH, SW, TQH, TQW)
    ih = ph * DH + gh
    iw = pw * DW + gw
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + (b * sqb + ih * sqh + iw * sqw + head * sqn)[:, None] + offs_d[None, :],
                mask=q_ok[:, None] & (offs_d < D)[None, :], other=0.0)

    m_i = tl.full([TQH * TQW], -1.0e30, tl.float32)  # finite: a fully masked key tile keeps alpha = 1
    l_i = tl.zeros([TQH * TQW], tl.float32)
    acc = tl.zeros([TQH * TQW, BLOCK_DV], tl.float32)
    offs_k = tl.arange(0, TKH * TKW)
    for r0 in range(r_lo, r_hi, TKH):
        for c0 in range(c_lo, c_hi, TKW):
            r = r0 + offs_k // TKW
            c = c0 + offs_k % TKW
            k_ok = (r < r_hi) & (c < c_hi)
            jh = r * DH + gh
            jw = c * DW + gw
            kt = tl.load(K + (b * skb + jh * skh + jw * skw + head * skn)[:, None] + offs_d[None, :],
                         mask=k_ok[:, None] & (offs_d < D)[None, :], other=0.0)
            win = _in_window(r[None, :], c[None, :], wh[:, None], ww[:, None], kgh, kgw,
                             q_ok[:, None] & ((jh >= VH0) & (jh < VH) & (jw >= VW0) & (jw < VW))[None, :])
            s, _ = _scores(q, tl.trans(kt), r[None, :] - ph[:, None], c[None, :] - pw[:, None], win, RPB, head,
                           qk_scale, KH, KW, HAS_RPB, PRECISION)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = tl.load(V + (b * svb + jh * svh + jw * svw + head * svn)[:, None] + offs_dv[None, :],
                         mask=k_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
            acc = acc * alpha[:, None] + _mma(p.to(vt.dtype), vt, PRECISION)
            m_i = m_new

    l_i = tl.where(l_i > 0, l_i, 1.0)  # padding rows only: every real query has >= 1 key
    row = ((b * H + ih) * W + iw) * HEADS + head
    tl.store(OUT + row[:, None] * DV + offs_dv[None, :], (acc / l_i[:, None]).to(OUT.dtype.element_ty),
             mask=q_ok[:, None] & (offs_dv < DV)[None, :])
    tl.store(LSE + row, (m_i + tl.log2(l_i)) * _LN2, mask=q_ok)


@triton.jit
def _na2d_bwd_delta_kernel(
    OUT, DO,  # [rows, DV] contiguous
    DELTA,  # [rows] fp32: rowsum(dO * O), the softmax-backward correction term
    ROWS, DV, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_DV)
    mask = (rows < ROWS)[:, None] & (cols < DV)[None, :]
    offs = rows.to(tl.int64)[:, None] * DV + cols[None, :]
    o = tl.load(OUT + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < ROWS)


@triton.jit
def _na2d_bwd_dq_kernel(
    Q, K, V,  # as in the forward
    RPB,  # [heads, 2KH-1, 2KW-1]
    DO,  # [B, H, W, heads, DV] contiguous
    LSE, DELTA,  # [B, H, W, heads] fp32
    DQ,  # [B, H, W, heads, D] contiguous
    DRPB,  # [B, heads, 2KH-1, 2KW-1] fp32 zero-initialised; one slab per batch element cuts atomic contention
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, HEADS, D, DV,
    VH0, VW0, VH, VW,
    qk_scale, scale,
    TILES_H, TILES_W,
    KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
    TQH: tl.constexpr, TQW: tl.constexpr, TKH: tl.constexpr, TKW: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    RPB_SIZE: tl.constexpr = (2 * KH - 1) * (2 * KW - 1)
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    head = bh % HEADS
    gh, gw, kgh, kgw, ph, pw, q_ok, wh, ww, r_lo, r_hi, c_lo, c_hi = _query_tile(
        pid, H, W, TILES_H, TILES_W, KH, KW, DH, DW, SH, SW, TQH, TQW)
    ih = ph * DH + gh
    iw = pw * DW + gw
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row = ((b * H + ih) * W + iw) * HEADS + head
    q = tl.load(Q + (b * sqb + ih * sqh + iw * sqw + head * sqn)[:, None] + offs_d[None, :],
                mask=q_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    do = tl.load(DO + row[:, None] * DV + offs_dv[None, :], mask=q_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
    lse2 = tl.load(LSE + row, mask=q_ok, other=0.0) * _LOG2E
    delta = tl.load(DELTA + row, mask=q_ok, other=0.0)

    dq = tl.zeros([TQH * TQW, BLOCK_D], tl.float32)
    offs_k = tl.arange(0, TKH * TKW)
    for r0 in range(r_lo, r_hi, TKH):
        for c0 in range(c_lo, c_hi, TKW):
            r = r0 + offs_k // TKW
            c = c0 + offs_k % TKW
            k_ok = (r < r_hi) & (c < c_hi)
            jh = r * DH + gh
            jw = c * DW + gw
            kt = tl.load(K + (b * skb + jh * skh + jw * skw + head * skn)[:, None] + offs_d[None, :],
                         mask=k_ok[:, None] & (offs_d < D)[None, :], other=0.0)
            vt = tl.load(V + (b * svb + jh * svh + jw * svw + head * svn)[:, None] + offs_dv[None, :],
                         mask=k_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
            win = _in_window(r[None, :], c[None, :], wh[:, None], ww[:, None], kgh, kgw,
                             q_ok[:, None] & ((jh >= VH0) & (jh < VH) & (jw >= VW0) & (jw < VW))[None, :])
            s, rel = _scores(q, tl.trans(kt), r[None, :] - ph[:, None], c[None, :] - pw[:, None], win, RPB, head,
                             qk_scale, KH, KW, HAS_RPB, PRECISION)
            p = tl.exp2(s - lse2[:, None])
            dp = _mma(do, tl.trans(vt), PRECISION)
            ds = p * (dp - delta[:, None])
            dq += _mma(ds.to(kt.dtype), kt, PRECISION)
            if HAS_RPB:
                tl.atomic_add(DRPB + (b * HEADS + head) * RPB_SIZE + rel, ds, mask=win, sem="relaxed")

    tl.store(DQ + row[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=q_ok[:, None] & (offs_d < D)[None, :])


@triton.jit
def _na2d_bwd_dkdv_kernel(
    Q, K, V,  # as in the forward
    RPB,  # [heads, 2KH-1, 2KW-1]
    DO,  # [B, H, W, heads, DV] contiguous
    LSE, DELTA,  # [B, H, W, heads] fp32
    DK, DV_,  # [B, H, W, heads, D], [B, H, W, heads, DV] contiguous
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, HEADS, D, DV,
    VH0, VW0, VH, VW,
    qk_scale, scale,
    TILES_H, TILES_W,  # key tiles (TKH x TKW, this program's) per dilation group along each axis
    KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    HAS_RPB: tl.constexpr, PRECISION: tl.constexpr,
    TQH: tl.constexpr, TQW: tl.constexpr, TKH: tl.constexpr, TKW: tl.constexpr,  # query step tile, own key tile
    PROBE_H: tl.constexpr, PROBE_W: tl.constexpr,  # pow2 >= TK + 2 (K + S - 2): see _inverse_union
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    head = bh % HEADS
    gh, rh0, ngh, kgh = _axis_tile(pid // (DW * TILES_W), H, DH, TILES_H, TKH, KH)
    gw, rw0, ngw, kgw = _axis_tile(pid % (DW * TILES_W), W, DW, TILES_W, TKW, KW)

    offs_k = tl.arange(0, TKH * TKW)
    r = rh0 + offs_k // TKW
    c = rw0 + offs_k % TKW
    k_ok = (r < ngh) & (c < ngw)
    jh = r * DH + gh
    jw = c * DW + gw
    k_real = (jh >= VH0) & (jh < VH) & (jw >= VW0) & (jw < VW)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kt = tl.load(K + (b * skb + jh * skh + jw * skw + head * skn)[:, None] + offs_d[None, :],
                 mask=k_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    vt = tl.load(V + (b * svb + jh * svh + jw * svw + head * svn)[:, None] + offs_dv[None, :],
                 mask=k_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)

    dk = tl.zeros([TKH * TKW, BLOCK_D], tl.float32)
    dv = tl.zeros([TKH * TKW, BLOCK_DV], tl.float32)
    p_lo_h, p_hi_h = _inverse_union(rh0, ngh, kgh, KH, SH, TKH, PROBE_H)
    p_lo_w, p_hi_w = _inverse_union(rw0, ngw, kgw, KW, SW, TKW, PROBE_W)
    offs_q = tl.arange(0, TQH * TQW)
    for p0h in range(p_lo_h, p_hi_h, TQH):
        for p0w in range(p_lo_w, p_hi_w, TQW):
            ph = p0h + offs_q // TQW
            pw = p0w + offs_q % TQW
            q_ok = (ph < p_hi_h) & (pw < p_hi_w)
            wh = _window_start(ph, ngh, kgh, KH, SH)
            ww = _window_start(pw, ngw, kgw, KW, SW)
            ih = ph * DH + gh
            iw = pw * DW + gw
            row = ((b * H + ih) * W + iw) * HEADS + head
            q = tl.load(Q + (b * sqb + ih * sqh + iw * sqw + head * sqn)[:, None] + offs_d[None, :],
                        mask=q_ok[:, None] & (offs_d < D)[None, :], other=0.0)
            do = tl.load(DO + row[:, None] * DV + offs_dv[None, :],
                         mask=q_ok[:, None] & (offs_dv < DV)[None, :], other=0.0)
            lse2 = tl.load(LSE + row, mask=q_ok, other=0.0) * _LOG2E
            delta = tl.load(DELTA + row, mask=q_ok, other=0.0)
            # transposed tiles [keys, queries]: rows of the dots are this program's keys
            win = _in_window(r[:, None], c[:, None], wh[None, :], ww[None, :], kgh, kgw,
                             q_ok[None, :] & k_real[:, None])
            s_t, _ = _scores(kt, tl.trans(q), r[:, None] - ph[None, :], c[:, None] - pw[None, :], win, RPB, head,
                             qk_scale, KH, KW, HAS_RPB, PRECISION)
            p_t = tl.exp2(s_t - lse2[None, :])
            dv += _mma(p_t.to(do.dtype), do, PRECISION)
            dp_t = _mma(vt, tl.trans(do), PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += _mma(ds_t.to(q.dtype), q, PRECISION)

    row_k = ((b * H + jh) * W + jw) * HEADS + head
    tl.store(DK + row_k[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=k_ok[:, None] & (offs_d < D)[None, :])
    tl.store(DV_ + row_k[:, None] * DV + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
             mask=k_ok[:, None] & (offs_dv < DV)[None, :])
