"""Neighborhood attention: the reference against independent oracles, every backend against the
reference (outputs and each gradient separately, per-dtype tolerances), and argument errors."""
from __future__ import annotations

import functools

import pytest
import torch

from visionzoo.ops._testing import assert_close
from visionzoo.ops.neighborhood import na1d, na2d
from visionzoo.ops.neighborhood.reference import na2d_reference

# ----------------------------------------------------------------------------- brute force oracle


def _window(i: int, n: int, k: int, d: int, s: int) -> tuple[list[int], list[int]]:
    """Keys and RPB indices of query ``i`` on one axis, restated from NATTEN's definition with plain
    integers: dilation group, window clamped to the group, stride leader, shifted in at borders."""
    g, p = i % d, i // d
    n_g = len(range(g, n, d))
    k_g = min(k, n_g)
    leader = min((p // s) * s + s // 2, n_g - 1)
    start = max(0, min(leader - k // 2, n_g - k_g))
    pos = [start + j for j in range(k_g)]
    return [x * d + g for x in pos], [x - p + k - 1 for x in pos]


def _cell(i: int, n: int, p: int, s: int) -> tuple[list[int], list[int]]:
    """Keys and RPB indices of query ``i`` in Swin's shifted windows, restated with plain integers: the
    axis is cut at ``s, s + p, s + 2p, ...``; a query sees the keys between its two cuts."""
    cuts = [0] + list(range(s if s else p, n, p)) + [n]
    lo = max(c for c in cuts if c <= i)
    hi = min(c for c in cuts if c > i)
    return list(range(lo, hi)), [j - i + p - 1 for j in range(lo, hi)]


def _dense_oracle(q, k, v, kernel, dilation, stride, rpb, scale, valid=None, shift=None):
    """Full ``HW x HW`` masked attention in float64 with the bias placed from :func:`_window` (or
    :func:`_cell` with ``shift``); keys outside the ``valid`` top-left rectangle are padding."""
    b, h, w, heads, _ = q.shape
    vh, vw = valid or (h, w)
    bias = torch.full((heads, h * w, h * w), float("-inf"), dtype=torch.float64)
    for y in range(h):
        ky, ry = (_window(y, h, kernel[0], dilation[0], stride[0]) if shift is None
                  else _cell(y, h, kernel[0], shift[0]))
        for x in range(w):
            kx, rx = (_window(x, w, kernel[1], dilation[1], stride[1]) if shift is None
                      else _cell(x, w, kernel[1], shift[1]))
            for a, rya in zip(ky, ry):
                for c, rxc in zip(kx, rx):
                    if a >= vh or c >= vw:
                        continue
                    bias[:, y * w + x, a * w + c] = 0.0 if rpb is None else rpb[:, rya, rxc].double()
    qf, kf, vf = (t.double().reshape(b, h * w, heads, -1).transpose(1, 2) for t in (q, k, v))
    attn = (qf @ kf.transpose(-1, -2) * scale + bias).softmax(-1)
    return (attn @ vf).transpose(1, 2).reshape(b, h, w, heads, -1)


def _inputs(b, h, w, heads, d, dv=None, kernel=(3, 3), rpb=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, w, heads, d, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(b, h, w, heads, dv or d, generator=g, dtype=dtype)
    bias = torch.randn(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=g, dtype=dtype) if rpb else None
    return q, k, v, bias


# (H, W, kernel, dilation, stride): maps smaller than the window, unequal dilation groups, strides,
# even kernels, non-square everything
AWKWARD = [
    (5, 7, (3, 3), (1, 1), (1, 1)),
    (9, 6, (4, 3), (2, 1), (1, 1)),       # even kernel, H % d != 0
    (7, 10, (3, 5), (3, 2), (2, 3)),      # unequal groups on both axes, strides
    (4, 3, (7, 5), (1, 1), (1, 1)),       # map smaller than the window
    (6, 11, (3, 3), (4, 5), (1, 1)),      # groups shorter than the kernel
    (8, 8, (4, 4), (1, 1), (4, 4)),       # stride == kernel: blocked attention
    (3, 2, (3, 3), (5, 4), (2, 1)),       # dilation larger than the map
]


@pytest.mark.parametrize("case", AWKWARD, ids=str)
@pytest.mark.parametrize("use_rpb", [True, False])
def test_reference_matches_dense_oracle(case, use_rpb):
    h, w, kernel, dil, st = case
    q, k, v, rpb = _inputs(2, h, w, 2, 4, dv=3, kernel=kernel, rpb=use_rpb)
    out = na2d(q, k, v, kernel, dil, st, rpb=rpb, scale=0.4, backend="reference")
    assert_close(out, _dense_oracle(q, k, v, kernel, dil, st, rpb, 0.4), what=f"reference {case}")


# (H, W, kernel, dilation, stride, valid): zero-padded maps, as MaxViT pads to its window
PADDED = [
    (12, 8, (4, 4), (1, 1), (4, 4), (9, 7)),     # blocked attention, last block partly padding
    (12, 9, (3, 3), (4, 3), (1, 1), (10, 8)),    # grid attention (groups of exactly k)
    (9, 10, (5, 3), (1, 2), (1, 1), (7, 9)),     # plain NA, padding inside some windows
]


@pytest.mark.parametrize("case", PADDED, ids=str)
def test_reference_padded_matches_dense_oracle(case):
    h, w, kernel, dil, st, valid = case
    q, k, v, rpb = _inputs(2, h, w, 2, 4, kernel=kernel)
    out = na2d(q, k, v, kernel, dil, st, rpb=rpb, scale=0.4, backend="reference", valid=valid)
    assert_close(out, _dense_oracle(q, k, v, kernel, dil, st, rpb, 0.4, valid), what=f"reference {case}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", PADDED, ids=str)
def test_padding_never_reaches_real_queries(case, backend):
    """Whatever the padded keys hold, the real queries' outputs and the real keys' gradients stay."""
    h, w, kernel, dil, st, valid = case
    outs, grads = [], []
    for fill in (0.0, 1e3):
        q, k, v, rpb = _inputs(1, h, w, 2, 8, kernel=kernel, dtype=torch.float32)
        for t in (k, v):
            t[:, valid[0]:] = fill
            t[:, :, valid[1]:] = fill
        k.requires_grad_(True)
        out = na2d(q, k, v, kernel, dil, st, rpb=rpb, backend=backend, valid=valid)
        out[:, :valid[0], :valid[1]].sum().backward()
        outs.append(out[:, :valid[0], :valid[1]].detach())
        grads.append(k.grad)
    assert_close(outs[1], outs[0], what=f"{backend} padded output {case}")
    assert_close(grads[1], grads[0], kind="grad", what=f"{backend} padded dk {case}")
    assert (grads[0][:, valid[0]:] == 0).all() and (grads[0][:, :, valid[1]:] == 0).all()


def test_reference_gradcheck():
    q, k, v, rpb = _inputs(1, 5, 4, 2, 3, kernel=(3, 2))
    for t in (q, k, v, rpb):
        t.requires_grad_(True)
    fn = functools.partial(na2d_reference, kernel_size=(3, 2), dilation=(2, 1), stride=(1, 2), scale=0.5)
    assert torch.autograd.gradcheck(lambda a, b, c, r: fn(a, b, c, rpb=r), (q, k, v, rpb), fast_mode=True)


NATTEN_CASES = [(9, 9, 3, 1), (12, 17, 5, 2), (13, 10, 3, 3), (14, 14, 7, 2), (11, 8, (3, 5), (3, 1))]


@pytest.mark.parametrize("case", NATTEN_CASES, ids=str)
def test_reference_matches_natten(case):
    natten = pytest.importorskip("natten", reason="natten is the external oracle; it failed to import")
    h, w, kernel, dil = case
    q, k, v, _ = _inputs(2, h, w, 2, 8, rpb=False, dtype=torch.float32)
    ours = na2d(q, k, v, kernel, dil, backend="reference")
    with torch.no_grad():
        theirs = natten.na2d(q, k, v, kernel, dilation=dil)
    assert_close(ours, theirs, what=f"reference vs natten {case}")


# ------------------------------------------------------------------------ fast paths vs reference
CPU_CASES = AWKWARD + [
    (14, 14, (7, 7), (2, 2), (1, 1)),     # groups exactly k x k: no mask
    (18, 13, (7, 5), (1, 1), (1, 1)),     # tiled with an inward-shifted last tile
    (20, 23, (5, 5), (3, 2), (1, 1)),     # tiled, unequal groups
    (16, 16, (6, 6), (1, 1), (3, 2)),     # tiled, even kernel, stride
] + PADDED
# maps large enough that blocked / grid attention take the reshape-permute (cells) path
PARTITIONS = [
    (28, 21, (7, 7), (1, 1), (7, 7)),
    (28, 28, (7, 7), (4, 4), (1, 1)),
    (28, 28, (7, 7), (1, 1), (7, 7), (26, 23)),
]
CPU_CASES += PARTITIONS
GRADS = ("out", "dq", "dk", "dv", "drpb")


@functools.lru_cache(maxsize=None)
def _pair(case, dtype, dv_differs, backend="cpu"):
    """Reference (float64, from the same rounded inputs) and backend forward/backward, once per case."""
    h, w, kernel, dil, st, *valid = case
    q, k, v, rpb = _inputs(2, h, w, 3, 8, dv=6 if dv_differs else None, kernel=kernel, dtype=dtype, seed=1)
    grad = torch.randn(2, h, w, 3, v.shape[-1], generator=torch.Generator().manual_seed(2), dtype=dtype)
    results = []
    for bk, dt in (("reference", torch.float64), (backend, dtype)):
        ins = [t.detach().to(dt).requires_grad_(True) for t in (q, k, v, rpb)]
        out = na2d(*ins[:3], kernel, dil, st, rpb=ins[3], scale=0.3, backend=bk, valid=valid[0] if valid else None)
        out.backward(grad.to(dt))
        results.append(dict(zip(GRADS, [out.detach()] + [t.grad for t in ins])))
    return results


@pytest.mark.parametrize("what", GRADS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_cpu_matches_reference(case, dtype, what):
    ref, got = _pair(case, dtype, dv_differs=False)
    assert_close(got[what], ref[what], kind="out" if what == "out" else "grad", what=f"cpu {what} {case}")


@pytest.mark.parametrize("what", GRADS)
@pytest.mark.parametrize("case", CPU_CASES[::3], ids=str)
def test_cpu_matches_reference_dv_differs(case, what):
    ref, got = _pair(case, torch.float32, dv_differs=True)
    assert_close(got[what], ref[what], kind="out" if what == "out" else "grad", what=f"cpu Dv!=D {what} {case}")


@pytest.mark.parametrize("case", [AWKWARD[1], AWKWARD[2], CPU_CASES[-2]], ids=str)
def test_cpu_frozen_rpb_and_strided_inputs(case):
    """rpb without gradient takes the flash path with a bias; q, k, v as views of one qkv tensor
    (what a model's projection gives) are read through their strides, without a copy."""
    h, w, kernel, dil, st, *valid = case
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, h, w, 3, 3, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    rpb = torch.randn(3, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=g, dtype=torch.float64)
    grad = torch.randn(2, h, w, 3, 8, generator=g, dtype=torch.float64)
    outs, grads = [], []
    for backend in ("reference", "cpu"):
        out = na2d(*qkv.unbind(3), kernel, dil, st, rpb=rpb, backend=backend, valid=valid[0] if valid else None)
        outs.append(out)
        grads.append(torch.autograd.grad(out, qkv, grad)[0])
    assert_close(outs[1], outs[0], what="strided out")
    assert_close(grads[1], grads[0], kind="grad", what="strided dqkv")


@pytest.mark.parametrize("geometry,cells", [
    (PARTITIONS[0][:5], (4, 7, 1, 3, 7, 1)),    # blocked attention
    (PARTITIONS[1][:5], (1, 7, 4, 1, 7, 4)),    # grid attention
    (PARTITIONS[2][:5], (4, 7, 1, 4, 7, 1)),    # blocked, padded
    ((18, 13, (7, 5), (1, 1), (1, 1)), None),                    # overlapping halos: index tables
])
def test_cpu_partition_plans(geometry, cells):
    """Blocked and grid geometries take the reshape-permute path that the cases above check."""
    from visionzoo.ops.neighborhood import cpu
    h, w, kernel, dil, st = geometry
    plan = cpu._plan_for(h, w, 2, kernel, dil, st, torch.device("cpu"), torch.float32, None)
    assert plan.cells == cells


def test_cpu_gradcheck():
    q, k, v, rpb = _inputs(1, 6, 5, 2, 3, kernel=(3, 3))
    for t in (q, k, v, rpb):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b, c, r: na2d(a, b, c, 3, (2, 1), (1, 2), rpb=r, backend="cpu"), (q, k, v, rpb), fast_mode=True)


@pytest.mark.extended
@pytest.mark.parametrize("h,w", [(56, 56), (28, 31), (57, 43)])
@pytest.mark.parametrize("dil", [1, 2, 3, 8])
def test_cpu_matches_reference_large(h, w, dil):
    q, k, v, rpb = _inputs(2, h, w, 2, 16, kernel=(7, 7), dtype=torch.float32)
    for r in (None, rpb):
        assert_close(na2d(q, k, v, 7, dil, rpb=r, backend="cpu"), na2d(q, k, v, 7, dil, rpb=r, backend="reference"),
                     what=f"cpu {h}x{w} dil {dil}")


# ---------------------------------------------------------------------------------------- na1d
def _na1d_oracle(q, k, v, kernel, dil, st, rpb, scale):
    b, n, heads, _ = q.shape
    bias = torch.full((heads, n, n), float("-inf"), dtype=torch.float64)
    for i in range(n):
        keys, rel = _window(i, n, kernel, dil, st)
        for j, r in zip(keys, rel):
            bias[:, i, j] = 0.0 if rpb is None else rpb[:, r].double()
    qf, kf, vf = (t.double().transpose(1, 2) for t in (q, k, v))
    return ((qf @ kf.transpose(-1, -2) * scale + bias).softmax(-1) @ vf).transpose(1, 2)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("n,kernel,dil,st", [(11, 3, 1, 1), (13, 4, 3, 2), (5, 7, 2, 1), (20, 5, 4, 5)])
def test_na1d_matches_oracle(backend, n, kernel, dil, st):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, n, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel - 1, generator=g, dtype=torch.float64)
    for r in (None, rpb):
        out = na1d(q, k, v, kernel, dil, st, rpb=r, scale=0.6, backend=backend)
        assert_close(out, _na1d_oracle(q, k, v, kernel, dil, st, r, 0.6), what=f"na1d {backend}")


# ------------------------------------------------------------------------------ argument errors
def _ok(**over):
    args = dict(q=torch.randn(1, 6, 6, 2, 4), k=torch.randn(1, 6, 6, 2, 4), v=torch.randn(1, 6, 6, 2, 4),
                kernel_size=3)
    args.update(over)
    return args


@pytest.mark.parametrize("over,err,match", [
    (dict(q=torch.randn(6, 6, 2, 4)), ValueError, r"^q must be \[B, H, W, heads, D\]"),
    (dict(k=torch.randn(1, 6, 5, 2, 4)), ValueError, r"q, k must have equal shapes"),
    (dict(v=torch.randn(1, 6, 6, 3, 4)), ValueError, r"v the same except D"),
    (dict(v=torch.randn(1, 6, 6, 2, 4, dtype=torch.float64)), TypeError, r"q, k, v must share one floating dtype"),
    (dict(stride=4), ValueError, r"stride .* must not exceed kernel_size"),
    (dict(rpb=torch.randn(2, 5, 4)), ValueError, r"rpb must be \[heads, 2k-1"),
    (dict(rpb=torch.randn(3, 5, 5)), ValueError, r"rpb must be"),
    (dict(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size must be an int or a sequence of 2"),
    (dict(dilation=0), ValueError, r"dilation must be >= 1"),
    (dict(q="x"), TypeError, r"q must be a tensor"),
    (dict(valid=(7, 6)), ValueError, r"valid \(7, 6\) must not exceed the map size \(6, 6\)"),
    (dict(valid=(6, 0)), ValueError, r"valid must be >= 1"),
    (dict(valid=(6, 3), kernel_size=2, stride=2), ValueError, r"on axis 1 some windows .* hold only padding"),
])
def test_na2d_argument_errors(over, err, match):
    with pytest.raises(err, match=match):
        na2d(**_ok(**over))


def test_na1d_argument_errors():
    with pytest.raises(ValueError, match=r"q must be \[B, L, heads, D\]"):
        na1d(torch.randn(1, 6, 6, 2, 4), torch.randn(1, 6, 6, 2, 4), torch.randn(1, 6, 6, 2, 4), 3)
    with pytest.raises(ValueError, match=r"rpb must be"):
        q = torch.randn(1, 9, 2, 4)
        na1d(q, q, q, 3, rpb=torch.randn(2, 3))



# ------------------------------------------------------------- shifted windows (Swin) and padding
# (H, W, kernel, shift, valid): odd sizes, maps smaller than the window, shift on one axis only,
# rectangular windows, a caller-padded map
SHIFTED = [
    (14, 14, (7, 7), (3, 3), None),
    (13, 9, (4, 3), (1, 2), None),
    (3, 5, (7, 7), (3, 0), None),       # map smaller than the window
    (11, 10, (5, 4), (0, 2), None),     # shift on one axis only
    (9, 13, (4, 4), (2, 3), (7, 12)),   # and a caller's padding
    (16, 15, (7, 5), (6, 1), None),
]


@pytest.mark.parametrize("case", SHIFTED, ids=str)
def test_shifted_reference_matches_dense_oracle(case):
    """The reference's shifted cells (direct) and the front door's (padded map, masked, cropped) are
    Swin's windows restated with plain integers."""
    h, w, kernel, shift, valid = case
    q, k, v, rpb = _inputs(2, h, w, 2, 4, dv=3, kernel=kernel)
    want = _dense_oracle(q, k, v, kernel, (1, 1), kernel, rpb, 0.4, valid, shift)
    direct = na2d_reference(q, k, v, kernel, (1, 1), kernel, rpb, 0.4, valid, shift)
    assert_close(direct, want, what=f"reference.na2d_reference shift {case}")
    front = na2d(q, k, v, kernel, stride=kernel, rpb=rpb, scale=0.4, backend="reference", valid=valid, shift=shift)
    assert_close(front, want, what=f"na2d(backend='reference') shift {case}")


@functools.lru_cache(maxsize=None)
def _shift_pair(case, dtype, backend="cpu"):
    """The spec (``na2d_reference`` with cells, float64) and ``na2d(shift=...)`` on ``backend``."""
    h, w, kernel, shift, valid = case
    q, k, v, rpb = _inputs(2, h, w, 3, 8, kernel=kernel, dtype=dtype, seed=5)
    grad = torch.randn(2, h, w, 3, 8, generator=torch.Generator().manual_seed(6), dtype=dtype)
    ins = [t.detach().double().requires_grad_(True) for t in (q, k, v, rpb)]
    out = na2d_reference(*ins[:3], kernel, (1, 1), kernel, ins[3], 0.3, valid, shift)
    out.backward(grad.double())
    ref = dict(zip(GRADS, [out.detach()] + [t.grad for t in ins]))
    ins = [t.detach().requires_grad_(True) for t in (q, k, v, rpb)]
    out = na2d(*ins[:3], kernel, stride=kernel, rpb=ins[3], scale=0.3, backend=backend, valid=valid, shift=shift)
    out.backward(grad)
    return ref, dict(zip(GRADS, [out.detach()] + [t.grad for t in ins]))


@pytest.mark.parametrize("what", GRADS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SHIFTED, ids=str)
def test_cpu_shifted_matches_reference(case, dtype, what):
    ref, got = _shift_pair(case, dtype)
    assert_close(got[what], ref[what], kind="out" if what == "out" else "grad", what=f"cpu shift {what} {case}")


def test_cpu_shifted_takes_the_partition_path():
    """A shifted 56 x 56 map is padded to 63 x 63 (4 rows / columns of padding at the top / left, 3 at the
    bottom / right): the cpu backend runs it as a masked partition (no index tables)."""
    from visionzoo.ops.neighborhood import _layout, cpu
    layout = _layout((56, 56), None, (3, 3), False, (7, 7), (1, 1), (7, 7))
    assert layout.before == (4, 4) and layout.size == (63, 63) and layout.region == (4, 4, 60, 60)
    plan = cpu._plan_for(63, 63, 2, (7, 7), (1, 1), (7, 7), torch.device("cpu"), torch.float32, layout.region)
    assert plan.cells == (9, 7, 1, 9, 7, 1) and plan.mask is not None
    q, k, v, _ = _inputs(1, 56, 56, 2, 8, rpb=False, dtype=torch.float32)  # shared mask, no bias
    assert_close(na2d(q, k, v, 7, stride=7, shift=3, backend="cpu"),
                 na2d_reference(q, k, v, (7, 7), (1, 1), (7, 7), None, 8 ** -0.5, shift=(3, 3)), what="no rpb")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("h,w,p,grid", [(10, 7, 4, False), (13, 11, 5, False), (10, 7, 4, True), (23, 9, 7, True)])
def test_pad_equals_caller_padding(backend, h, w, p, grid):
    """``pad=True`` is the caller's old bottom/right zero padding + ``valid`` + crop (MaxViT's block and
    grid attention), outputs and gradients bit for bit."""
    q, k, v, rpb = _inputs(2, h, w, 2, 8, kernel=(p, p), dtype=torch.float32, seed=7)
    hp, wp = -(-h // p) * p, -(-w // p) * p
    dil = (hp // p, wp // p) if grid else (1, 1)
    outs, grads = [], []
    for mine in (True, False):
        ins = [t.detach().requires_grad_(True) for t in (q, k, v, rpb)]
        if mine:
            out = na2d(*ins[:3], p, dil, p, rpb=ins[3], backend=backend, pad=True)
        else:
            padded = [torch.nn.functional.pad(t, (0, 0, 0, 0, 0, wp - w, 0, hp - h)) for t in ins[:3]]
            out = na2d(*padded, p, dil, 1 if grid else p, rpb=ins[3], backend=backend, valid=(h, w))[:, :h, :w]
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in ins])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        assert_close(a, b, kind="grad", what=f"pad {backend} {(h, w, p, grid)}")


def test_pad_with_shift_zero_is_clipped_blocks():
    """``pad=True`` (shift 0) clips the last window at the border; the default shifts it inward (NATTEN)."""
    q, k, v, rpb = _inputs(1, 10, 9, 2, 4, kernel=(4, 4))
    clipped = na2d(q, k, v, 4, stride=4, rpb=rpb, backend="reference", pad=True)
    assert_close(clipped, _dense_oracle(q, k, v, (4, 4), (1, 1), (4, 4), rpb, 0.5, shift=(0, 0)), what="pad")
    natten = na2d(q, k, v, 4, stride=4, rpb=rpb, backend="reference")
    assert not torch.allclose(natten, clipped)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_na1d_shift(backend):
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(2, 17, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 9, generator=g, dtype=torch.float64)
    got = na1d(q, k, v, 5, stride=5, shift=2, rpb=rpb, backend=backend)
    want = na2d(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), (1, 5), stride=(1, 5), shift=(0, 2),
                rpb=rpb.unsqueeze(1), backend="reference").squeeze(1)
    assert_close(got, want, what=f"na1d shift {backend}")


def test_swin_rpb_conversion():
    """timm's Swin table (query minus key) lands where na2d (key minus query) reads it, round trip exact."""
    from timm.models.swin_transformer import get_relative_position_index

    from visionzoo.ops.neighborhood import na_rpb_to_swin, swin_rpb_to_na
    wh, ww = 3, 4
    table = torch.randn((2 * wh - 1) * (2 * ww - 1), 5)
    rpb = swin_rpb_to_na(table, (wh, ww))
    assert rpb.shape == (5, 2 * wh - 1, 2 * ww - 1)
    swin_bias = table[get_relative_position_index(wh, ww).view(-1)].view(wh * ww, wh * ww, 5)  # [query, key, head]
    for qi in range(wh * ww):
        for ki in range(wh * ww):
            dr, dc = ki // ww - qi // ww, ki % ww - qi % ww
            assert torch.equal(rpb[:, dr + wh - 1, dc + ww - 1], swin_bias[qi, ki])
    assert torch.equal(na_rpb_to_swin(rpb), table)
    with pytest.raises(ValueError, match=r"a Swin table for window \(3, 3\) has"):
        swin_rpb_to_na(table, 3)


@pytest.mark.parametrize("over,match", [
    (dict(shift=3, stride=3), r"shift 3 must be in \[0, kernel_size\)"),
    (dict(shift=-1), r"shift -1 must be in \[0, kernel_size\)"),
    (dict(shift=1), r"shift 1 needs stride == kernel_size and dilation 1"),
    (dict(shift=(0, 1), stride=3, dilation=(1, 2)), r"shift \(0, 1\) needs stride == kernel_size"),
    (dict(shift=(1, 1, 1), stride=3), r"shift must be an int or a sequence of 2 ints"),
    (dict(pad=True, dilation=(9, 1)), r"on axis 0 some windows .* hold only padding"),
])
def test_shift_and_pad_argument_errors(over, match):
    with pytest.raises(ValueError, match=match):
        na2d(**_ok(**over))
