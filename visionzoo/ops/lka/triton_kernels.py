"""Triton kernels for LKA's two fused depthwise convolutions (launchers and custom ops: ``triton.py``).

Algorithm. ``y = conv_B(conv_A(x))``, both 'same' depthwise convolutions (``A``: ``KA x KA``, dilation
``DA``, padding ``PA``; ``B``: ``KB x KB``, dilation ``DB``, padding ``PB``), the intermediate ``a`` zero
outside the map. One program per (image, block of ``BC`` channels, ``TILE x TILE`` output tile), looping
over tiles (persistent grid): phase 1 reads the input tile once with its full halo (``PB + PA`` pixels on
each side; VAN: 9 + 2) and computes ``a`` on the tile grown by ``PB`` (``(TILE + 2 PB)^2`` pixels) in fp32,
into the program's own scratch slot; phase 2 reads that slot ``KB^2`` times at the dilated offsets and
writes only ``y``. Nothing of ``a`` is written to a tensor. The input gradient is the same kernel on
``dy`` with the flipped kernels in reverse order (a 'same' depthwise convolution's transpose is the
convolution with the flipped kernel; ``da`` is zeroed outside the map like ``a``). The weight/bias
gradients (``_lka_wgrad_kernel``) recompute ``a`` the same way (recomputing costs ``KA^2`` MACs per
pixel; storing it would cost a full write + read of ``a``, more bytes than the whole fused forward),
form ``da`` on the tile from ``dy`` (one load per tap, L1/L2 hits), and reduce ``a * dy`` and ``x * da``
per tap over the tile into fp32 accumulators with one atomic add per (tile, channel, tap).

Why the slot is in global memory: Triton cannot index shared memory at arbitrary (dilated) offsets,
nor shift register tensors. The slot (``BC x (TILE + 2 PB) x pow2(TILE + 2 PB)`` fp32, 51 KB for VAN's
32 x 32 tiles and BC = 4) is written once and read right after by the same CTA (``debug_barrier``
orders it), and the persistent grid reuses it for every tile, so the slots of all resident programs
(~2 x 132 x 51 KB = 13.5 MB) stay in the H100's 50 MB L2: its DRAM traffic is ~0 by design, not by
guarantee (L2 eviction can write some lines back). A CUDA C++ kernel would keep it in shared memory.

Arithmetic (fp16 I/O, per output pixel and channel; H100 SXM: 3.35 TB/s HBM, 67 TFLOP/s fp32 FMA,
ridge point ~20 FLOP/byte):
* unfused (two cuDNN depthwise kernels): read x (2 B) + write a (2 B) + read a (2 B) + write y (2 B)
  = 8 B ideal (halo re-reads hit L2), 148 FLOP: 2.4 ps of HBM time at best. fp32: 16 B, 4.8 ps.
* fused: read x with the tile's halo ((32 + 22)^2 / 32^2 = 2.85 reads of each pixel, mostly L2 hits:
  the neighbouring tiles read the same halo; HBM ~2 B) + write y (2 B) = ~4 B; FLOPs: the 5x5
  on the 50 x 50 region per 32 x 32 tile (2.44 x 25 MACs) + 49 = 110 MACs = 220 FLOP.
  220 FLOP / 4 B = 55 FLOP/B, above the ridge: compute-bound at 3.3 ps (fp16) and 3.3 ps (fp32,
  8 B -> 27 FLOP/B, still above the ridge). So it beats the unfused pair's memory floor in fp32
  (4.8 ps), and for fp16 it only wins where cuDNN's depthwise kernels run below ~75 % of HBM
  bandwidth; dilated depthwise convolutions usually do (they are not its tuned case), but that is
  to be measured, not assumed. The tile's 9-pixel halo is what costs: 16 x 16 tiles would need
  4.5 x 25 + 49 = 162 MACs. Known improvements: bigger tiles in the row direction (stream rows,
  keep a rolling 19-row window: 25 x 1.3 + 49 = 81 MACs), packed fp16x2 FMAs.

Constraints: NCHW contiguous inputs (the launcher makes them so), odd kernels, paddings <= 16;
kernel geometry is compile-time. Tested dtypes: fp32, fp16, bf16 (fp32 accumulation, ``a`` in fp32),
under ``TRITON_INTERPRET=1`` only unless a GPU run says otherwise. Known limits: atomics make the
weight/bias gradients' summation order non-deterministic; no autotuning; the scratch slot lives in
global memory (see above).
"""
import triton
import triton.language as tl


@triton.jit
def _tile_coords(t, NCB, TILES_H, TILES_W):
    tw = t % TILES_W
    r = t // TILES_W
    th = r % TILES_H
    r = r // TILES_H
    return r // NCB, r % NCB, th, tw


@triton.jit
def _first_conv_to_slot(X, WA, BA, SLOT, b, ch, c_ok, y0, x0, H, W, sx_b, sx_c, sx_h,
                        KA: tl.constexpr, DA: tl.constexpr, PA: tl.constexpr, HAS_BA: tl.constexpr,
                        BC: tl.constexpr, RROWS: tl.constexpr, RCOLS: tl.constexpr, RC: tl.constexpr,
                        RR: tl.constexpr):
    """``a`` (fp32, zero outside the map) on the region ``[y0, y0 + RROWS) x [x0, x0 + RCOLS)`` into
    ``SLOT [BC, RROWS, RC]``, ``RR`` region rows at a time."""
    c_off = tl.arange(0, BC)
    q = tl.arange(0, RR * RC)
    xb = X + b * sx_b + ch[:, None] * sx_c
    if HAS_BA:
        ba = tl.load(BA + ch, mask=c_ok, other=0.0).to(tl.float32)
    for r0 in range(0, RROWS, RR):
        rr = r0 + q // RC
        cc = q % RC
        ry = y0 + rr
        rx = x0 + cc
        acc = tl.zeros([BC, RR * RC], tl.float32)
        for i in tl.static_range(KA):
            sy = ry + (i * DA - PA)
            row_ok = (sy >= 0) & (sy < H) & (cc < RCOLS)
            for j in tl.static_range(KA):
                sx = rx + (j * DA - PA)
                ok = row_ok & (sx >= 0) & (sx < W)
                v = tl.load(xb + (sy * sx_h + sx)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                w = tl.load(WA + ch * (KA * KA) + (i * KA + j), mask=c_ok, other=0.0)
                acc += v.to(tl.float32) * w.to(tl.float32)[:, None]
        if HAS_BA:
            acc += ba[:, None]
        inside = (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
        acc = tl.where(inside[None, :], acc, 0.0)
        tl.store(SLOT + c_off[:, None] * (RROWS * RC) + (rr * RC + cc)[None, :], acc,
                 mask=(rr < RROWS)[None, :] & (cc < RCOLS)[None, :])


@triton.jit
def _lka_fused_kernel(X, WA, BA, WB, BB, Y, SCRATCH, H, W, C, NCB, TILES_H, TILES_W, N_TILES,
                      sx_b, sx_c, sx_h,
                      KA: tl.constexpr, DA: tl.constexpr, PA: tl.constexpr, HAS_BA: tl.constexpr,
                      KB: tl.constexpr, DB: tl.constexpr, PB: tl.constexpr, HAS_BB: tl.constexpr,
                      BC: tl.constexpr, TILE: tl.constexpr, RC: tl.constexpr, RR: tl.constexpr):
    """``Y = conv_B(conv_A(X))`` (``X``/``Y`` NCHW with the same strides)."""
    RROWS: tl.constexpr = TILE + 2 * PB
    pid = tl.program_id(0)
    slot = SCRATCH + pid * (BC * RROWS * RC)
    c_off = tl.arange(0, BC)
    p = tl.arange(0, TILE * TILE)
    oy, ox = p // TILE, p % TILE
    for t in range(pid, N_TILES, tl.num_programs(0)):
        b, cb, th, tw = _tile_coords(t, NCB, TILES_H, TILES_W)
        ch = cb * BC + c_off
        c_ok = ch < C
        _first_conv_to_slot(X, WA, BA, slot, b, ch, c_ok, th * TILE - PB, tw * TILE - PB, H, W, sx_b, sx_c, sx_h,
                            KA, DA, PA, HAS_BA, BC, RROWS, RROWS, RC, RR)
        tl.debug_barrier()
        acc = tl.zeros([BC, TILE * TILE], tl.float32)
        for i in tl.static_range(KB):
            for j in tl.static_range(KB):
                a = tl.load(slot + c_off[:, None] * (RROWS * RC) + ((oy + i * DB) * RC + ox + j * DB)[None, :])
                w = tl.load(WB + ch * (KB * KB) + (i * KB + j), mask=c_ok, other=0.0)
                acc += a * w.to(tl.float32)[:, None]
        if HAS_BB:
            acc += tl.load(BB + ch, mask=c_ok, other=0.0).to(tl.float32)[:, None]
        gy, gx = th * TILE + oy, tw * TILE + ox
        ok = c_ok[:, None] & ((gy < H) & (gx < W))[None, :]
        tl.store(Y + b * sx_b + ch[:, None] * sx_c + (gy * sx_h + gx)[None, :], acc.to(Y.dtype.element_ty), mask=ok)
        tl.debug_barrier()  # the next tile overwrites the slot


@triton.jit
def _lka_wgrad_kernel(X, W0, B0, W1, DY, SCRATCH, DW0, DB0, DW1, DB1, H, W, C, NCB, TILES_H, TILES_W, N_TILES,
                      sx_b, sx_c, sx_h,
                      K0: tl.constexpr, P0: tl.constexpr, HAS_B0: tl.constexpr,
                      K1: tl.constexpr, D1: tl.constexpr, P1: tl.constexpr,
                      BC: tl.constexpr, TILE: tl.constexpr, RC: tl.constexpr, RR: tl.constexpr):
    """fp32 ``DW0 [C, K0*K0]``, ``DB0 [C]``, ``DW1 [C, K1*K1]``, ``DB1 [C]`` (zero-initialised, atomics);
    ``X``, ``DY`` NCHW with the same strides."""
    RROWS: tl.constexpr = TILE + 2 * P1
    pid = tl.program_id(0)
    slot = SCRATCH + pid * (BC * RROWS * RC)
    c_off = tl.arange(0, BC)
    p = tl.arange(0, TILE * TILE)
    oy, ox = p // TILE, p % TILE
    for t in range(pid, N_TILES, tl.num_programs(0)):
        b, cb, th, tw = _tile_coords(t, NCB, TILES_H, TILES_W)
        ch = cb * BC + c_off
        c_ok = ch < C
        _first_conv_to_slot(X, W0, B0, slot, b, ch, c_ok, th * TILE - P1, tw * TILE - P1, H, W, sx_b, sx_c, sx_h,
                            K0, 1, P0, HAS_B0, BC, RROWS, RROWS, RC, RR)
        tl.debug_barrier()
        gy, gx = th * TILE + oy, tw * TILE + ox
        in_map = (gy < H) & (gx < W)
        base = b * sx_b + ch[:, None] * sx_c
        dy = tl.load(DY + base + (gy * sx_h + gx)[None, :], mask=c_ok[:, None] & in_map[None, :],
                     other=0.0).to(tl.float32)
        tl.atomic_add(DB1 + ch, tl.sum(dy, 1), mask=c_ok)
        da = tl.zeros([BC, TILE * TILE], tl.float32)
        for i in tl.static_range(K1):
            sy = gy + (P1 - i * D1)
            for j in tl.static_range(K1):
                a = tl.load(slot + c_off[:, None] * (RROWS * RC) + ((oy + i * D1) * RC + ox + j * D1)[None, :])
                tl.atomic_add(DW1 + ch * (K1 * K1) + (i * K1 + j), tl.sum(a * dy, 1), mask=c_ok)
                sx = gx + (P1 - j * D1)
                ok = in_map & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
                g = tl.load(DY + base + (sy * sx_h + sx)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                w = tl.load(W1 + ch * (K1 * K1) + (i * K1 + j), mask=c_ok, other=0.0)
                da += g.to(tl.float32) * w.to(tl.float32)[:, None]
        if HAS_B0:
            tl.atomic_add(DB0 + ch, tl.sum(da, 1), mask=c_ok)
        for i in tl.static_range(K0):
            sy = gy + (i - P0)
            for j in tl.static_range(K0):
                sx = gx + (j - P0)
                ok = in_map & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
                v = tl.load(X + base + (sy * sx_h + sx)[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
                tl.atomic_add(DW0 + ch * (K0 * K0) + (i * K0 + j), tl.sum(v.to(tl.float32) * da, 1), mask=c_ok)
        tl.debug_barrier()  # the next tile overwrites the slot
