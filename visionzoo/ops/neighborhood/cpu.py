"""Fast CPU neighborhood attention: query tiles against key halos through flash SDPA.

Algorithm (per axis, then combined as an outer product of the two axes):

1. Dilation groups. With dilation ``d`` an axis of length ``n`` splits into ``min(d, n)`` groups
   ``g = i mod d`` of ``ceil((n - g) / d)`` positions (the groups differ by one position when
   ``d`` does not divide ``n``). Inside a group the op is un-dilated NA, so every index below is
   a *group position* mapped back to a map coordinate ``p * d + g``; no tensor is regrouped.
2. Query tiles. Each group is cut into ``T`` tiles of ``t`` consecutive positions; the last tile
   is shifted inward to end at the group's end (a few queries are computed twice, never padded),
   and groups shorter than ``t`` repeat their last position. Every group of an axis gets the same
   ``T`` and ``t`` so that all tiles have one shape.
3. Key halos. A tile's queries see the union of their windows (``axis_tables`` of the reference
   gives each window), at most ``L`` consecutive positions; the halo is the ``L`` positions from
   the first window's start, shifted inward at the group's end. Slots past a short group's end
   are masked, and so are keys in the zero padding of a map with a ``valid`` region (the front
   door pads for shifted windows on every side, for whole windows at the bottom/right).
4. One attention call. Queries ``[B, heads * tiles, t_h * t_w, D]`` and halo keys/values
   ``[B, heads * tiles, L_h * L_w, D]`` are gathered with a single ``index_select`` each from the
   ``[B, H * W * heads, D]`` rows of the input (a (token, head) row index, so no permute copy),
   and go through the CPU flash kernel with a 4-D additive float mask: ``-inf`` outside each
   query's window, plus the relative position bias gathered from ``rpb`` (a 3-D mask would drop
   SDPA off its flash path). Without bias the mask is ``[1, tiles, Lq, Lk]``, broadcast over
   ``B * heads``; a mask that masks nothing is dropped.
5. Outputs are gathered back to ``[B, H, W, heads, Dv]`` from each query's canonical tile slot.

Partitions: when the tiles are equal disjoint cells that are their own halos (blocked attention,
``stride == kernel`` on a divisible map, and grid attention, dilation groups of exactly ``kernel``:
MaxViT's two attentions and DiNAT's dilated layers at 224 px), tiles are gathered and scattered
by one reshape-permute copy instead of index tables, and no key gradient is summed.

Small maps: the tile length per axis is picked by a cost model over the attended area plus a
per-tile overhead; when one tile covers a whole group this is masked dense attention per
dilation group (whole-map masked dense attention when ``d == 1``), which wins for maps of a few
hundred tokens.

Autograd: one ``autograd.Function`` saves the gathered tiles, the tile output and the
log-sum-exp (re-gathering them cost about a third of the backward). float32 tiles go through
visionzoo's C++ kernel (:mod:`visionzoo.ops._cpu`, AVX-512, built on first use): problems are handed
to threads one at a time; each recomputes P from the log-sum-exp and runs the five GEMMs on 32-row
query blocks, restricted to the keys the mask lets the block see (a whole-map 196 x 196 problem at
kernel 7 touches about 60 % of them). It reads the output gradient from the map and writes dQ into it
through each slot's map row (no tile gather / untile copies), and dK / dV likewise: written for
disjoint halos (whole map, partitions), summed for overlapping ones by runs of one (batch, head)'s
tiles per thread (no atomics; with fewer than 4 runs per thread, a head-parallel scatter-add after
the kernel). Against ATen's flash backward plus its copies this roughly halves the backward; fwd+bwd
is 2.0-2.7x the forward at DiNAT-tiny shapes. Without the kernel (another CPU, no compiler, other
dtypes): the flash backward for masked tiles, and for unmasked tiles (partitions) and ``Dv != D`` an
explicit-matmul backward in chunks of at most 32 MiB of logits, with ``scatter_add`` for the halos.
``d rpb`` (the flash kernel gives none for the mask) comes from explicit logits: ``dS`` summed
over the batch and scattered into ``rpb``.

Tested against :mod:`.reference` in float64, float32 and bfloat16 (forward and all gradients).
Limits: the index tables and masks are cached per geometry (``lru_cache``), so a model that sees
many different resolutions holds one small table set per resolution.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .. import _cpu
from .reference import as_region, axis_tables

__all__ = ["na2d_cpu"]

# cost model for picking tiles (units: one query-key score), calibrated on the 2-core Zen 4 host
_TILE_OVERHEAD = 4000
_QBLOCK_PAD = 32
_ROW_COST = 12
#: the C++ backward sums overlapping halo gradients in the kernel when there are this many (batch, head)
#: runs per thread (balance); below, a separate scatter-add
_RUNS_PER_THREAD = 4
#: query rows per block of the C++ backward: masked tiles skip the keys a whole block cannot see, which
#: pays for smaller blocks (32 measured best of 16-64 at DiNAT-tiny shapes); unmasked ones take larger
_MASKED_QBLOCK, _QBLOCK = 32, 64
_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@dataclass(frozen=True)
class _Axis:
    q: torch.Tensor  # [G, T, t] map coordinate of each query slot
    k: torch.Tensor  # [G, T, L] map coordinate of each halo slot
    allow: torch.Tensor  # [G, T, t, L] halo slot in the query's window
    rel: torch.Tensor  # [G, T, t, L] RPB index of the slot (0 where not allowed)
    tile: torch.Tensor  # [n] canonical tile (flat over G, T) of each coordinate
    row: torch.Tensor  # [n] row of each coordinate inside its canonical tile


def _axis_plan(n: int, kernel: int, dilation: int, stride: int, t: int,
               real: tuple[int, int] | None = None) -> _Axis:
    """``real``: ``(lo, hi)``, the coordinates of real keys on a zero-padded axis (the rest is masked)."""
    idx, _, valid = axis_tables(n, kernel, dilation, stride)
    groups, longest = min(dilation, n), -(-n // dilation)
    t = min(t, longest)
    tiles = -(-longest // t)
    g = torch.arange(groups)
    n_g = (n - g + dilation - 1) // dilation  # [G]
    start = torch.clamp(torch.minimum(torch.arange(tiles) * t, n_g[:, None] - t), min=0)  # [G, T]
    q_pos = torch.minimum(start[..., None] + torch.arange(t), n_g[:, None, None] - 1)  # [G, T, t]
    q = q_pos * dilation + g[:, None, None]
    first = (idx[:, 0] // dilation)[q]  # window [first, last) in group positions
    last = first + valid.sum(1)[q]
    halo = int((last.amax(-1) - first.amin(-1)).max())
    k_start = torch.clamp(torch.minimum(first.amin(-1), n_g[:, None] - halo), min=0)  # [G, T]
    k_pos = k_start[..., None] + torch.arange(halo)  # [G, T, L]
    inside = k_pos < n_g[:, None, None]
    k = torch.minimum(k_pos, n_g[:, None, None] - 1) * dilation + g[:, None, None]
    kp = k_pos[:, :, None, :]
    allow = (kp >= first[..., None]) & (kp < last[..., None]) & inside[:, :, None, :]
    if real is not None:  # keys in the zero padding
        allow &= ((k >= real[0]) & (k < real[1]))[:, :, None, :]
    rel = torch.where(allow, kp - q_pos[..., None] + kernel - 1, 0)
    coord = torch.arange(n)
    gc, pc = coord % dilation, coord // dilation
    tc = torch.clamp(pc // t, max=tiles - 1)
    return _Axis(q, k, allow, rel, gc * tiles + tc, pc - start[gc, tc])


def _axis_shape(n: int, kernel: int, dilation: int, stride: int, t: int) -> tuple[int, int, int, bool]:
    """(tiles incl. groups, tile length, halo length, in order) of one axis for tile length ``t``."""
    a = _axis_plan(n, kernel, dilation, stride, t)
    in_order = a.q.numel() == n and a.k.numel() == n and bool((a.k.flatten() == torch.arange(n)).all())
    return a.q.shape[0] * a.q.shape[1], a.q.shape[2], a.k.shape[2], in_order


@functools.lru_cache(maxsize=256)
def _pick_tile(h: int, w: int, kernel: tuple, dilation: tuple, stride: tuple) -> tuple[int, int]:
    """Tile lengths minimising a cost model of the flash kernel on this CPU (in units of one
    query-key score): scores, padded by ~32 rows per tile for its 32-row query blocks, a fixed
    cost per tile, and the gathers (a 32-float row costs ~12 scores), which masked dense attention
    on the whole map (one tile, tokens in order) does not need."""
    axes = []
    for n, kk, d, s in zip((h, w), kernel, dilation, stride):
        longest = -(-n // d)
        cands = sorted({min(c, longest) for c in (4, 5, 6, 7, 8, 10, 12, 14, 16, longest)})
        axes.append([(c,) + _axis_shape(n, kk, d, s, c) for c in cands])
    best = None
    for th, nh, lqh, lkh, oh in axes[0]:
        for tw, nw, lqw, lkw, ow in axes[1]:
            tiles, lq, lk = nh * nw, lqh * lqw, lkh * lkw
            cost = tiles * (lk * (lq + _QBLOCK_PAD) + _TILE_OVERHEAD)
            if not (oh and ow):
                cost += tiles * (2 * lq + 2 * lk) * _ROW_COST
            if best is None or cost < best[0]:
                best = (cost, th, tw)
    return best[1], best[2]


@dataclass(frozen=True)
class _Plan:
    q_yx: tuple[torch.Tensor, torch.Tensor]  # [X * Lq] row / column of every query slot
    k_yx: tuple[torch.Tensor, torch.Tensor]  # [X * Lk] row / column of every halo slot
    out_slot: torch.Tensor  # [H * W] canonical slot (tile * Lq + row) of each token
    dup: torch.Tensor | None  # [heads * X * Lq'] tile rows that repeat a token's canonical slot
    mask: torch.Tensor | None  # [1, X, Lq, Lk] additive 0/-inf, None if nothing is masked
    rel: torch.Tensor  # [X * Lq * Lk] flat index into rpb.flatten(1), or its numel outside windows
    heads: int
    tiles: int
    lq: int
    lk: int
    identity: bool  # one tile holding the whole map in order: masked dense attention, no gathers
    #: the tiles partition the map into equal cells that are their own halos (blocked attention with
    #: stride == kernel, grid attention with groups of exactly ``kernel``): per axis ``(T, t, d)``
    #: (tiles per group, tile length, dilation), so tiles are a permuted view and need no index
    cells: tuple[int, ...] | None
    width: int  # W of the map
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    def rows(self, kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, H, W, heads, C]`` (any strides with unit, C-aligned inner strides) as per-batch
        rows ``[B, R, C]`` without a copy, and the row of every (head, tile, slot) for ``kind``
        ``"q"`` (queries) or ``"k"`` (halo keys), cached per stride pattern."""
        c = x.shape[-1]
        sh, sw, sd = (st // c for st in x.stride()[1:4])
        rows = (x.shape[1] - 1) * sh + (x.shape[2] - 1) * sw + (x.shape[3] - 1) * sd + 1
        return x.as_strided((x.shape[0], rows, c), (x.stride(0), c, 1)), self.row_index(kind, sh, sw, sd)

    def row_index(self, kind: str, sh: int, sw: int, sd: int) -> torch.Tensor:
        """Row of every (head, tile, slot) in a map with row strides ``sh, sw, sd`` (in rows)."""
        key = (kind, sh, sw, sd)
        idx = self.cache.get(key)
        if idx is None:
            y, xx = self.q_yx if kind == "q" else self.k_yx
            hd = torch.arange(self.heads, device=y.device).view(-1, 1) * sd
            idx = self.cache.setdefault(key, (hd + (y * sh + xx * sw)).reshape(-1))
        return idx

    def slot_rows(self, kind: str) -> torch.Tensor:
        """``[heads * X, L]`` row of every query (``"q"``) or halo (``"k"``) slot in a contiguous
        ``[H, W, heads]`` token map (``H * W * heads`` rows); query slots that repeat a token's canonical
        slot get ``-1``."""
        key = ("slots", kind)
        idx = self.cache.get(key)
        if idx is None:
            heads = self.heads
            idx = self.row_index(kind, self.width * heads, heads, 1)
            if kind == "q" and self.dup is not None:
                idx = idx.clone().index_fill_(0, self.dup, -1)
            idx = self.cache.setdefault(key, idx.view(heads * self.tiles, -1))
        return idx


def _aligned(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    return x if x.stride(-1) == 1 and all(st % c == 0 for st in x.stride()[:-1]) else x.contiguous()


@functools.lru_cache(maxsize=64)
def _plan(h, w, heads, kernel, dilation, stride, tile, device, dtype, valid=None) -> _Plan:
    vh, vw = (None, None) if valid is None else ((valid[0], valid[2]), (valid[1], valid[3]))
    ah = _axis_plan(h, kernel[0], dilation[0], stride[0], tile[0], vh)
    aw = _axis_plan(w, kernel[1], dilation[1], stride[1], tile[1], vw)
    gh, th, lqh = ah.q.shape
    gw, tw, lqw = aw.q.shape
    lkh, lkw = ah.k.shape[2], aw.k.shape[2]
    xh, xw = gh * th, gw * tw
    tiles, lq, lk = xh * xw, lqh * lqw, lkh * lkw

    def grid(a, b, la, lb):  # [xh, xw, la, lb] row and column of every slot, flattened
        return (a.view(xh, 1, la, 1).expand(xh, xw, la, lb).reshape(-1),
                b.view(1, xw, 1, lb).expand(xh, xw, la, lb).reshape(-1))

    allow = (ah.allow.view(xh, 1, lqh, 1, lkh, 1) & aw.allow.view(1, xw, 1, lqw, 1, lkw)).reshape(-1)
    rel = (ah.rel.view(xh, 1, lqh, 1, lkh, 1) * (2 * kernel[1] - 1)
           + aw.rel.view(1, xw, 1, lqw, 1, lkw)).reshape(-1)
    rel = torch.where(allow, rel, (2 * kernel[0] - 1) * (2 * kernel[1] - 1))
    out_slot = ((ah.tile.view(h, 1) * xw + aw.tile.view(1, w)) * lq
                + ah.row.view(h, 1) * lqw + aw.row.view(1, w)).reshape(-1)
    canon = torch.zeros(tiles * lq, dtype=torch.bool).index_fill_(0, out_slot, True)
    dup = None
    if not bool(canon.all()):
        dup = ((~canon).nonzero()[:, 0] + torch.arange(heads).view(-1, 1) * (tiles * lq)).reshape(-1).to(device)
    mask = None
    if not bool(allow.all()):
        mask = torch.zeros(tiles * lq * lk, dtype=dtype).masked_fill_(~allow, float("-inf"))
        mask = mask.view(1, tiles, lq, lk).to(device)
    q_yx, k_yx = grid(ah.q, aw.q, lqh, lqw), grid(ah.k, aw.k, lkh, lkw)
    flat = torch.arange(h * w)
    identity = tiles == 1 and all(torch.equal(yx[0] * w + yx[1], flat) for yx in (q_yx, k_yx))
    cells = None
    if not identity and _is_partition(ah, h, dilation[0]) and _is_partition(aw, w, dilation[1]):
        cells = (th, lqh, min(dilation[0], h), tw, lqw, min(dilation[1], w))
    dev = functools.partial(torch.Tensor.to, device=device)
    return _Plan(tuple(map(dev, q_yx)), tuple(map(dev, k_yx)), dev(out_slot), dup, mask, dev(rel),
                 heads, tiles, lq, lk, identity, cells, w)


def _is_partition(a: _Axis, n: int, dilation: int) -> bool:
    """The axis' tiles are equal, disjoint cells covering it, each its own halo, in the order
    ``(group, tile)`` of coordinates ``(tile * t + i) * d + group``."""
    groups, tiles, t = a.q.shape
    if a.k.shape != a.q.shape or not torch.equal(a.k, a.q) or groups * tiles * t != n:
        return False
    g, tt, i = torch.meshgrid(torch.arange(groups), torch.arange(tiles), torch.arange(t), indexing="ij")
    return bool(torch.equal(a.q, (tt * t + i) * dilation + g))


def _bias(plan: _Plan, rpb: torch.Tensor, outside: float = float("-inf")) -> torch.Tensor:
    """``[1, heads * X, Lq, Lk]`` additive mask: rpb gathered per slot, ``outside`` outside windows
    (those slots index an extra column appended to the flattened rpb)."""
    ext = torch.cat([rpb.flatten(1), rpb.new_full((rpb.shape[0], 1), outside)], 1)
    return ext.index_select(1, plan.rel).view(1, plan.heads * plan.tiles, plan.lq, plan.lk)


def _tiles(x: torch.Tensor, kind: str, plan: _Plan) -> torch.Tensor:
    """``[B, H, W, heads, C]`` -> ``[B, heads * X, L, C]`` query tiles (``"q"``) or key halos (``"k"``)."""
    if plan.identity and x.stride(1) == x.shape[2] * x.stride(2):
        return x.flatten(1, 2).transpose(1, 2)
    if plan.cells is not None:  # [B, (T t d)_h, (T t d)_w, heads, C] -> [B, (heads d_h T_h d_w T_w), (t_h t_w), C]
        th, lh, dh, tw, lw, dw = plan.cells
        cells = x.reshape(x.shape[0], th, lh, dh, tw, lw, dw, plan.heads, x.shape[-1])
        return cells.permute(0, 7, 3, 1, 6, 4, 2, 5, 8).reshape(x.shape[0], plan.heads * plan.tiles, -1, x.shape[-1])
    flat, idx = plan.rows(kind, x)
    return _gather(flat, idx).view(x.shape[0], plan.heads * plan.tiles, -1, x.shape[-1])


def _gather(x3: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of every batch element of ``x3`` ``[B, R, C]`` (row stride C, batch stride a
    multiple of C) as ``[B * len(idx), C]``: one index_select over a flat 2-D view of the storage.
    (index_select on dim 1 of a strided 3-D view, e.g. q inside a packed qkv, copies the whole
    input first: 5-8x slower.)"""
    b, r, c = x3.shape
    sb = x3.stride(0) // c if b > 1 else r
    flat = x3.as_strided(((b - 1) * sb + r, c), (c, 1))
    return flat.index_select(0, (idx + (torch.arange(b, device=idx.device) * sb).view(-1, 1)).reshape(-1))


def _physical(y: torch.Tensor, plan: _Plan):
    """Flat per-batch rows ``[B, R, C]`` of a tile tensor ``[B, heads * X, L, C]`` in either memory
    order, and the physical row of every logical (head, tile, slot) row. Flash returns outputs and
    gradients as ``[N, L, M, C]`` memory transposed to ``[N, M, L, C]``; strides avoid a copy."""
    c, length = y.shape[-1], y.shape[-2]
    y5 = y.view(-1, plan.heads, plan.tiles, length, c)
    sb, sh, sx, sl, _ = y5.stride()
    flat = y5.as_strided((y5.shape[0], plan.heads * plan.tiles * length, c), (sb, c, 1))
    ar = functools.partial(torch.arange, device=y.device)
    phys = ((ar(plan.heads) * (sh // c)).view(-1, 1, 1) + (ar(plan.tiles) * (sx // c)).view(1, -1, 1)
            + (ar(length) * (sl // c)).view(1, 1, -1))
    return flat, phys.reshape(-1)


def _untile(y: torch.Tensor, plan: _Plan, shape) -> torch.Tensor:
    """Tile outputs ``[B, heads * X, Lq, C]`` -> ``[B, H, W, heads, C]`` from canonical slots."""
    if plan.identity:
        return y.transpose(1, 2).reshape(shape)
    if plan.cells is not None:  # the inverse permutation of _tiles
        th, lh, dh, tw, lw, dw = plan.cells
        # [B, heads, X, Lq, C] from either SDPA shape: [B, heads * X, ...] or (shared mask) [B * heads, X, ...]
        y = y.unflatten(0, (shape[0], plan.heads)) if y.shape[0] != shape[0] else y.unflatten(1, (plan.heads, -1))
        cells = y.unflatten(3, (lh, lw)).unflatten(2, (dh, th, dw, tw))
        return cells.permute(0, 3, 6, 2, 5, 7, 4, 1, 8).reshape(shape)
    flat, phys = _physical(y, plan)
    slots = plan.cache.get("out")
    if slots is None:
        hd = torch.arange(plan.heads, device=y.device) * (plan.tiles * plan.lq)
        slots = plan.cache.setdefault("out", (plan.out_slot.view(-1, 1) + hd).reshape(-1))
    return _gather(flat, phys.index_select(0, slots)).view(shape)


def _scatter_keys(y: torch.Tensor, plan: _Plan, shape) -> torch.Tensor:
    """Adjoint of ``_tiles(x, "k")`` for ``x`` of ``shape``: sum halo rows back into a zero tensor."""
    if plan.identity or plan.cells is not None:  # halos are disjoint: a permutation back
        return _untile(y, plan, shape)
    flat, phys = _physical(y, plan)
    # grouped by head (disjoint map rows): parallel, no atomics, no per-element index
    if _cpu.cpu_ext_unavailable(y) is None:
        idx = plan.row_index("k", shape[2] * shape[3], shape[3], 1)  # rows of a contiguous map
        out = _cpu.scatter_add_rows(flat, phys.view(plan.heads, -1), idx.view(plan.heads, -1),
                                    shape[1] * shape[2] * shape[3])
        return out.view(shape)
    out = torch.zeros(shape, dtype=y.dtype, device=y.device)
    _, idx = plan.rows("k", out)
    index = torch.empty_like(idx).scatter_(0, phys, idx)
    # scatter_add on 2-D rows with a broadcast index runs in parallel, unlike index_add (2-4x faster here)
    b, r, c = shape[0], out[0].numel() // y.shape[-1], y.shape[-1]
    index = (index + (torch.arange(b, device=y.device) * r).view(-1, 1)).view(-1, 1).expand(-1, c)
    return out.view(-1, c).scatter_add_(0, index, flat.reshape(-1, c)).view(shape)


def _sdpa_shape(ts, plan: _Plan, per_head_mask: bool):
    """A ``[1, X, Lq, Lk]`` mask broadcasts over ``B * heads``: view the tiles accordingly."""
    if per_head_mask or plan.tiles == 1:
        return ts
    return tuple(t.view(-1, plan.tiles, *t.shape[2:]) for t in ts)


def _forward(q, k, v, rpb, plan: _Plan, scale: float):
    """Output ``[B, H, W, heads, Dv]``, and for the backward the SDPA-shaped tiles and log-sum-exp."""
    mask = plan.mask if rpb is None else _bias(plan, rpb)
    per_head = mask is None or rpb is not None
    qt, kt, vt = _sdpa_shape((_tiles(q, "q", plan), _tiles(k, "k", plan), _tiles(v, "k", plan)), plan, per_head)
    if q.shape[-1] == v.shape[-1]:
        out_t, lse = _flash_fwd(qt, kt, vt, 0.0, False, attn_mask=mask, scale=scale)
    else:  # the CPU flash kernel needs one head size
        out_t, lse = _math_attend(qt, kt, vt, mask, scale)
    return _untile(out_t, plan, v.shape), (qt, kt, vt, out_t, lse)


class _NA2dTiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rpb, plan: _Plan, scale: float):
        # the tiles are saved rather than re-gathered: the gathers cost about a third of the backward
        out, saved = _forward(q, k, v, rpb, plan, scale)
        ctx.save_for_backward(rpb, *saved)
        ctx.plan, ctx.scale, ctx.shapes = plan, scale, (q.shape, k.shape, v.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        rpb, qt, kt, vt, out_t, lse = ctx.saved_tensors
        plan, scale, shapes = ctx.plan, ctx.scale, ctx.shapes
        mask = plan.mask if rpb is None else _bias(plan, rpb.detach())
        rpb_grad = rpb is not None and ctx.needs_input_grad[3]
        kernel = _cpu.cpu_ext_unavailable(qt, kt, vt, out_t, dout) is None
        dout_t = None
        if rpb_grad or not kernel:
            dout_t = _tiles(_aligned(dout), "q", plan)
            if plan.dup is not None:  # a token's gradient enters through its canonical slot only
                dout_t.view(dout_t.shape[0], -1, dout_t.shape[-1]).index_fill_(1, plan.dup, 0)
            (dout_t,) = _sdpa_shape((dout_t,), plan, mask is None or rpb is not None)
        if kernel:
            dq, dk, dv = _kernel_backward(dout, qt, kt, vt, out_t, lse, mask, scale, plan, shapes)
        else:
            dq, dk, dv = _aten_backward(dout_t, qt, kt, vt, out_t, lse, mask, scale, plan, shapes)
        drpb = _rpb_grad(plan, rpb.detach(), qt, kt, vt, out_t, dout_t, lse, scale) if rpb_grad else None
        needs = ctx.needs_input_grad
        return dq if needs[0] else None, dk if needs[1] else None, dv if needs[2] else None, drpb, None, None


def _kernel_backward(dout, qt, kt, vt, out_t, lse, mask, scale, plan: _Plan, shapes):
    """visionzoo's C++ kernel (whole-tile GEMMs, no zero fill). It reads ``dout`` and writes ``dq`` in the
    token map through each slot's row, and ``dk`` / ``dv`` too: written when the halos are disjoint (whole
    map, partitions), summed otherwise, by runs of one (batch, head)'s tiles (one thread each, so no
    atomics) when there are enough of them to keep the threads busy; else the halos are summed into the
    map afterwards by a head-parallel scatter-add."""
    q_shape, k_shape, v_shape = shapes
    b, h, w, heads = q_shape[:4]
    rows = h * w * heads
    disjoint = plan.identity or plan.cells is not None
    summed = not disjoint and b * heads >= _RUNS_PER_THREAD * torch.get_num_threads()
    dq, dk, dv = _cpu.attn_bwd(dout.contiguous().view(b, rows, -1), qt, kt, vt, out_t, lse, mask, scale,
                               q_rows=plan.slot_rows("q"), kv_rows=plan.slot_rows("k") if disjoint or summed else None,
                               map_rows=rows, kv_group=plan.tiles if summed else 0,
                               block=_MASKED_QBLOCK if mask is not None else _QBLOCK)
    if disjoint or summed:
        return dq.view(q_shape), dk.view(k_shape), dv.view(v_shape)
    return dq.view(q_shape), _scatter_keys(dk, plan, k_shape), _scatter_keys(dv, plan, v_shape)


def _aten_backward(dout_t, qt, kt, vt, out_t, lse, mask, scale, plan: _Plan, shapes):
    """ATen's flash backward for masked tiles; for unmasked tiles (partitions) and ``Dv != D`` (which
    flash does not take) explicit matmuls, faster there. Gradients back to the map."""
    if qt.shape[-1] == vt.shape[-1] and mask is not None:
        dq, dk, dv = _flash_bwd(dout_t, qt, kt, vt, out_t, lse, 0.0, False, attn_mask=mask, scale=scale)
    else:
        dq, dk, dv = _chunked(_math_backward, (qt, kt, vt, out_t, dout_t, lse), (mask, scale))
    # a duplicate query slot got zero output gradient, so its dq is zero: dq is a plain gather
    q_shape, k_shape, v_shape = shapes
    return _untile(dq, plan, q_shape), _scatter_keys(dk, plan, k_shape), _scatter_keys(dv, plan, v_shape)


def _math_attend(q, k, v, mask, scale):
    """Attention on explicit logits (Dv != D, or rpb gradients): returns output and log-sum-exp."""
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)).mul_(scale)
    if mask is not None:
        s = s + mask.to(acc)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s.sub_(lse[..., None]))
    return torch.matmul(p, v.to(acc)).to(q.dtype), lse


def _math_backward(qt, kt, vt, out_t, dout_t, lse, mask, scale):
    """Attention backward on explicit logits (only for Dv != D, which flash does not take)."""
    dt = qt.dtype
    acc = torch.float32 if dt in (torch.float16, torch.bfloat16) else dt
    qt, kt, vt, out_t, dout_t = (t.to(acc) for t in (qt, kt, vt, out_t, dout_t))
    s = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale)
    if mask is not None:
        s = s + mask.to(acc)
    p = torch.exp(s.sub_(lse[..., None]))
    dv = torch.matmul(p.transpose(-1, -2), dout_t)
    delta = (dout_t * out_t).sum(-1, keepdim=True)
    ds = p.mul_(torch.matmul(dout_t, vt.transpose(-1, -2)).sub_(delta))
    dq = torch.matmul(ds, kt).mul_(scale)
    dk = torch.matmul(ds.transpose(-1, -2), qt).mul_(scale)
    return dq.to(dt), dk.to(dt), dv.to(dt)


def _chunked(fn, tensors, args, budget: int = 32 << 20):
    """``fn(*tensors, *args)`` over chunks of the leading (tile batch) dim, each with at most about
    ``budget`` bytes of logits; outputs concatenated along that dim."""
    q, k = tensors[0], tensors[1]
    per_row = q[0, ..., :1].numel() * k.shape[-2] * 4
    step = max(1, budget // max(per_row, 1))
    if step >= q.shape[0]:
        return fn(*tensors, *args)
    outs = [fn(*(t[i:i + step] for t in tensors), *args) for i in range(0, q.shape[0], step)]
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _rpb_grad(plan: _Plan, rpb, qt, kt, vt, out_t, dout_t, lse, scale):
    """``d rpb``: the logits' gradient ``dS = P * (dO V^T - rowsum(dO * O))`` summed over the batch
    and scattered by RPB index (flash gives no mask gradient). Few, large ops (each small op costs an
    OpenMP barrier), in batch chunks of at most ~32 MiB of logits. Slots outside the windows get a
    zero bias and a clamped exponent, so no ``-inf`` or denormal reaches ``exp`` (both are slow paths
    on x86); their junk lands in the extra RPB column that is dropped."""
    acc = torch.float32 if qt.dtype in (torch.float16, torch.bfloat16) else qt.dtype
    bias = _bias(plan, rpb.to(acc), 0.0)
    delta = (dout_t.to(acc) * out_t.to(acc)).sum(-1, keepdim=True)
    dbias = torch.zeros_like(bias[0])
    step = max(1, (32 << 20) // (bias.numel() * bias.element_size()))
    for b in range(0, qt.shape[0], step):
        c = slice(b, b + step)
        p = torch.matmul(qt[c].to(acc), kt[c].to(acc).transpose(-1, -2)).mul_(scale).add_(bias)
        p.sub_(lse[c].to(acc).unsqueeze(-1)).clamp_(-80.0, 0.0).exp_()
        p.mul_(torch.matmul(dout_t[c].to(acc), vt[c].to(acc).transpose(-1, -2)).sub_(delta[c]))
        dbias += p.sum(0)
    drpb = torch.zeros(rpb.shape[0], rpb[0].numel() + 1, dtype=acc, device=rpb.device)
    drpb.index_add_(1, plan.rel, dbias.view(rpb.shape[0], -1))
    return drpb[:, :-1].reshape(rpb.shape).to(rpb.dtype)


@functools.lru_cache(maxsize=64)
def _plan_for(h, w, heads, kernel, dilation, stride, device, dtype, valid) -> _Plan:
    tile = _pick_tile(h, w, kernel, dilation, stride)
    return _plan(h, w, heads, kernel, dilation, stride, tile, device, dtype, valid)


def na2d_cpu(q, k, v, kernel_size, dilation, stride, rpb, scale, valid=None):
    """``[B, H, W, heads, D]`` in, ``[B, H, W, heads, Dv]`` out; arguments already validated.
    ``valid``: the real keys of a zero-padded map, ``(Hv, Wv)`` or ``(H0, W0, H1, W1)``; its padding
    keys are masked (see ``na2d``)."""
    _, h, w, heads, _ = q.shape
    plan = _plan_for(h, w, heads, tuple(kernel_size), tuple(dilation), tuple(stride), q.device, q.dtype,
                     as_region(valid))
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                    or (rpb is not None and rpb.requires_grad)):
        return _NA2dTiled.apply(q, k, v, rpb, plan, float(scale))
    return _forward(q, k, v, rpb, plan, float(scale))[0]
