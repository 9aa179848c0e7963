"""The optional C++ CPU attention backward (visionzoo/ops/_cpu) against autograd of explicit attention."""
import pytest
import torch

from visionzoo.ops import _cpu
from visionzoo.ops.neighborhood import cpu as na_cpu
from visionzoo.ops.neighborhood import na2d

REASON = _cpu.cpu_ext_unavailable()
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"C++ CPU kernels unavailable here: {REASON}")


def _problem(n, h, lq, lk, d, dv, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(n, h, lq, d, generator=g), torch.randn(n, h, lk, d, generator=g)
    v, dout = torch.randn(n, h, lk, dv, generator=g), torch.randn(n, h, lq, dv, generator=g)
    mask = None
    if mask_kind is not None:
        shape = {"per_head": (1, h, lq, lk), "per_batch": (n, 1, lq, lk), "full": (n, h, lq, lk),
                 "band": (1, h, lq, lk)}[mask_kind]
        mask = torch.randn(shape, generator=g)
        if mask_kind == "band":  # query i sees keys near i * lk / lq: whole query blocks skip most keys
            centre = torch.arange(lq).view(-1, 1) * lk // lq
            mask.masked_fill_((torch.arange(lk) - centre).abs() > 3, float("-inf"))
        else:
            mask.masked_fill_(torch.rand(shape, generator=g) < 0.4, float("-inf"))
            mask[..., 0] = 0.5  # every query keeps a key
    return q, k, v, dout, mask


def _reference(q, k, v, dout, mask, scale):
    """Output, log-sum-exp (float32, as the forward gives them) and float64 autograd gradients."""
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    s = scale * q64 @ k64.transpose(-1, -2)
    if mask is not None:
        s = s + mask.double()
    lse = torch.logsumexp(s, -1)
    out = torch.softmax(s, -1) @ v64
    out.backward(dout.double())
    return out.float(), lse.float(), (q64.grad, k64.grad, v64.grad)


@needs_ext
@pytest.mark.parametrize("n,h,lq,lk,d,dv", [(2, 3, 1, 5, 16, 16), (2, 3, 33, 17, 32, 32), (1, 4, 70, 200, 32, 24),
                                            (3, 2, 64, 196, 32, 32), (1, 1, 97, 13, 8, 40)])
@pytest.mark.parametrize("mask_kind", [None, "per_head", "per_batch", "full", "band"])
@pytest.mark.parametrize("block", [64, 5])
def test_attn_bwd_matches_autograd(n, h, lq, lk, d, dv, mask_kind, block):
    q, k, v, dout, mask = _problem(n, h, lq, lk, d, dv, mask_kind)
    scale = d ** -0.5
    out, lse, want = _reference(q, k, v, dout, mask, scale)
    got = _cpu.attn_bwd(dout, q, k, v, out, lse, mask, scale, block=block)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.shape == w.shape and g.is_contiguous(), name
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=2e-5, msg=name)


@needs_ext
def test_attn_bwd_takes_strided_inputs():
    """Flash-style layouts: [N, L, H, D] memory seen as [N, H, L, D]; lse as [N, Lq, H] memory."""
    q, k, v, dout, mask = _problem(2, 3, 40, 50, 32, 32, "per_head")
    scale = 0.2
    out, lse, want = _reference(q, k, v, dout, mask, scale)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (dout, q, k, v, out)]
    lse_t = lse.transpose(1, 2).contiguous().transpose(1, 2)
    got = _cpu.attn_bwd(*strided, lse_t, mask, scale)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=2e-5)


@needs_ext
@pytest.mark.parametrize("kv", ["tiles", "written", "summed"])
def test_attn_bwd_row_maps(kv):
    """dout read from and dq / dk / dv written to token maps through per-slot rows: problem u uses map
    u // P and rows[u % P]; -1 query slots (duplicates) read a zero gradient and write nothing. Key rows
    are either a permutation (written) or overlap inside runs of kv_group problems (summed)."""
    n_maps, p, lq, lk, d, dv = 2, 3, 12, 12, 16, 24
    q, k, v, _, mask = _problem(n_maps, p, lq, lk, d, dv, "band", seed=4)
    g = torch.Generator().manual_seed(5)
    rows = p * lq  # each map row is one query slot's
    q_rows = torch.randperm(rows, generator=g).view(p, lq)
    if kv == "summed":  # key slots share rows within and across the 3 problems of a map (one run)
        kv_rows = torch.randint(0, rows, (p, lk), generator=g)
    else:
        kv_rows = torch.randperm(rows, generator=g).view(p, lk)
    q_rows_dup = torch.cat([q_rows, torch.full((p, 2), -1)], 1)  # two duplicate slots per problem
    q = torch.cat([q, q[:, :, :2]], 2)
    mask = torch.cat([mask, mask[:, :, :2]], 2)
    dout_map = torch.randn(n_maps, rows, dv, generator=g)
    dout = dout_map[:, q_rows_dup.clamp(min=0)] * (q_rows_dup >= 0)[..., None]  # [N, P, Lq + 2, Dv]
    out, lse, (dq, dk, dv_) = _reference(q, k, v, dout, mask, 0.25)
    got = _cpu.attn_bwd(dout_map, q, k, v, out, lse, mask, 0.25, block=5, q_rows=q_rows_dup,
                        kv_rows=None if kv == "tiles" else kv_rows, map_rows=rows, kv_group=p if kv == "summed" else 0)
    want_dq = torch.empty(n_maps, rows, d, dtype=torch.float64)
    want_dq[:, q_rows.reshape(-1)] = dq[:, :, :lq].reshape(n_maps, -1, d)
    torch.testing.assert_close(got[0].double(), want_dq, rtol=1e-4, atol=2e-5)
    for name, gk, wk in (("dk", got[1], dk), ("dv", got[2], dv_)):
        if kv != "tiles":
            wk = torch.zeros(n_maps, rows, wk.shape[-1], dtype=torch.float64).index_add_(
                1, kv_rows.reshape(-1), wk.reshape(n_maps, rows, -1))
        torch.testing.assert_close(gk.double(), wk, rtol=1e-4, atol=2e-5, msg=name)
    with pytest.raises(RuntimeError, match="q_rows must hold rows"):
        _cpu.attn_bwd(dout_map, q, k, v, out, lse, mask, 0.25, q_rows=q_rows_dup + rows, map_rows=rows)
    with pytest.raises(RuntimeError, match="kv_rows needs q_rows"):
        _cpu.attn_bwd(dout, q, k, v, out, lse, mask, 0.25, kv_rows=kv_rows, map_rows=rows)
    with pytest.raises(RuntimeError, match="kv_group must be 0"):
        _cpu.attn_bwd(dout_map, q, k, v, out, lse, mask, 0.25, q_rows=q_rows_dup, kv_rows=kv_rows, map_rows=rows,
                      kv_group=4)


@needs_ext
def test_attn_bwd_fully_masked_blocks():
    """Query blocks whose mask hides every key (an empty key span) get zero dq and add nothing to
    dk / dv; blocks after them still write dk / dv from scratch (no stale memory)."""
    q, k, v, dout, mask = _problem(2, 3, 12, 10, 16, 16, "band", seed=7)
    hidden = [0, 1, 2, 3, 8, 9, 10, 11]  # blocks 0 and 2 of 4 rows: every key masked
    mask[:, :, hidden] = float("-inf")
    seen = [4, 5, 6, 7]
    out, lse, (dq_seen, dk, dv) = _reference(q[:, :, seen], k, v, dout[:, :, seen], mask[:, :, seen], 0.3)
    full_out, full_lse = torch.zeros(2, 3, 12, 16), torch.zeros(2, 3, 12)
    full_out[:, :, seen], full_lse[:, :, seen] = out, lse
    got = _cpu.attn_bwd(dout, q, k, v, full_out, full_lse, mask, 0.3, block=4)
    assert torch.equal(got[0][:, :, hidden], torch.zeros(2, 3, len(hidden), 16))
    torch.testing.assert_close(got[0][:, :, seen].double(), dq_seen, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(got[1].double(), dk, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(got[2].double(), dv, rtol=1e-4, atol=2e-5)


@needs_ext
def test_attn_bwd_empty_queries():
    q, k, v = torch.randn(1, 2, 0, 16), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 8)
    dq, dk, dv = _cpu.attn_bwd(torch.zeros(1, 2, 0, 8), q, k, v, torch.zeros(1, 2, 0, 8), torch.zeros(1, 2, 0),
                               None, 0.25)
    assert dq.shape == (1, 2, 0, 16) and torch.equal(dk, torch.zeros_like(k)) and torch.equal(dv, torch.zeros_like(v))


@needs_ext
def test_attn_bwd_rejects_bad_inputs():
    q, k, v, dout, _ = _problem(1, 2, 8, 9, 16, 16, None)
    out, lse = torch.zeros_like(dout), torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="float32"):
        _cpu.attn_bwd(dout.double(), q, k, v, out, lse, None, 1.0)
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        _cpu.attn_bwd(dout, q, k[:, :, :5], v, out, lse, None, 1.0)
    with pytest.raises(RuntimeError, match="rows must not overlap"):  # sgemm would skip it silently
        _cpu.attn_bwd(dout, q[:, :, :1].expand_as(q), k, v, out, lse, None, 1.0)
    with pytest.raises(RuntimeError, match="kv_group must be 0"):
        _cpu.attn_bwd(dout, q, k, v, out, lse, None, 1.0, kv_group=-1)


def test_unavailable_names_the_reason():
    x = torch.zeros(1)
    for t in (x.double(), x.bfloat16()):
        assert "float32" in _cpu.cpu_ext_unavailable(x, t)
    assert _cpu.cpu_ext_unavailable(x) == REASON


def test_env_switch_disables(monkeypatch):
    """``VISIONZOO_CPU_EXT=0`` is read through ``visionzoo._env`` (the one reader of the environment)."""
    monkeypatch.setenv("VISIONZOO_CPU_EXT", "0")
    assert _cpu._static_reason() == "disabled by VISIONZOO_CPU_EXT=0"
    monkeypatch.setenv("VISIONZOO_CPU_EXT", "1")
    assert _cpu._static_reason() != "disabled by VISIONZOO_CPU_EXT=0"


@needs_ext
@pytest.mark.parametrize("size,dilation,rpb,plan", [((11, 13), 1, True, "identity"), ((10, 10), 2, False, "cells"),
                                                   ((11, 13), 2, False, "gathered"), ((33, 29), 1, True, "gathered"),
                                                   ((31, 27), 3, False, "gathered")])
@pytest.mark.parametrize("runs_per_thread", [0, 10 ** 6])
def test_na2d_cpu_backward_uses_it(monkeypatch, size, dilation, rpb, plan, runs_per_thread):
    """The NA cpu path's fp32 backward runs the kernel on every plan (whole map, partitions, gathered
    tiles with overlapping halos and duplicate query slots, summed in the kernel or scattered after),
    and its gradients equal the reference's."""
    monkeypatch.setattr(na_cpu, "_RUNS_PER_THREAD", runs_per_thread)
    calls = []
    real = _cpu.attn_bwd
    monkeypatch.setattr(na_cpu._cpu, "attn_bwd", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, *size, 2, 16, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 9, 9, generator=g, requires_grad=True) if rpb else None
    dout = torch.randn(2, *size, 2, 16, generator=g)
    p = na_cpu._plan_for(*size, 2, (5, 5), (dilation,) * 2, (1, 1), q.device, q.dtype, None)
    assert ("identity" if p.identity else "cells" if p.cells is not None else "gathered") == plan
    grads = {}
    for backend in ("cpu", "reference"):
        out = na2d(q, k, v, 5, dilation, rpb=bias, backend=backend)
        params = [q, k, v] + ([bias] if rpb else [])
        grads[backend] = torch.autograd.grad(out, params, dout)
    assert calls and calls[0]["q_rows"] is not None
    # dk / dv: written into the map for disjoint halos, summed in the kernel or scattered after otherwise
    summed = plan == "gathered" and runs_per_thread == 0
    assert (calls[0]["kv_rows"] is not None) == (plan != "gathered" or summed)
    assert calls[0]["kv_group"] == (p.tiles if summed else 0)
    for a, b in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_ext
def test_scatter_add_rows_matches_index_add():
    g = torch.Generator().manual_seed(3)
    B, R, C, G, n, out_rows = 3, 50, 20, 2, 40, 30
    base = torch.randn(B, R + 7, C, generator=g)
    src = base[:, 3:3 + R]  # rows C apart, batch stride (R + 7) * C
    src_rows = torch.randint(0, R, (G, n), generator=g)
    # group g writes rows of parity g only (disjoint), with repeats inside a group
    dst_rows = torch.randint(0, out_rows // 2, (G, n), generator=g) * 2 + torch.arange(G).view(-1, 1)
    want = torch.zeros(B, out_rows, C).index_add_(1, dst_rows.reshape(-1), src[:, src_rows.reshape(-1)])
    torch.testing.assert_close(_cpu.scatter_add_rows(src, src_rows, dst_rows, out_rows), want)
    with pytest.raises(RuntimeError, match="out of range"):
        _cpu.scatter_add_rows(src, src_rows, dst_rows + out_rows, out_rows)


@pytest.mark.parametrize("dilation,rpb,dv", [(1, True, 16), (2, False, 16), (1, False, 24)])
def test_na2d_cpu_backward_without_kernel(monkeypatch, dilation, rpb, dv):
    """The ATen fallback (no compiler / no AVX-512): flash backward for masked tiles, explicit matmuls for
    unmasked ones and Dv != D, scatter_add for the halos; float32 gradients equal the reference's."""
    monkeypatch.setattr(na_cpu._cpu, "cpu_ext_unavailable", lambda *t: "disabled by the test")
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(2, 14, 9, 2, 16, generator=g, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 14, 9, 2, dv, generator=g, requires_grad=True)
    bias = torch.randn(2, 5, 5, generator=g, requires_grad=True) if rpb else None
    dout = torch.randn(2, 14, 9, 2, dv, generator=g)
    params = [q, k, v] + ([bias] if rpb else [])
    got = torch.autograd.grad(na2d(q, k, v, 3, dilation, rpb=bias, backend="cpu"), params, dout)
    want = torch.autograd.grad(na2d(q, k, v, 3, dilation, rpb=bias, backend="reference"), params, dout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ depthwise convolution weight gradient
def _wgrad_problem(b, c, h, w, k, dilation, seed=0):
    """The LKA cpu path's geometry: taps that can only read padding are cropped (per axis), the map is
    padded explicitly; float32 ``dy`` / ``xpad`` and the float64 autograd ``(dw, db)`` of the 'valid'
    ``F.conv2d`` on the cropped kernel."""
    import torch.nn.functional as F

    from visionzoo.ops.lka import cpu as lka_cpu

    g = torch.Generator().manual_seed(seed)
    (rows, cols), pad = lka_cpu._geometry(torch.empty(c, 1, k, k), dilation, (h, w))
    xpad = F.pad(torch.randn(b, c, h, w, generator=g, dtype=torch.float64), pad)
    wc = torch.randn(c, 1, k, k, generator=g, dtype=torch.float64)[:, :, rows, cols].contiguous().requires_grad_()
    bias = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(xpad, wc, bias, dilation=dilation, groups=c)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(dy)
    return dy.float(), xpad.float(), tuple(wc.shape[-2:]), (wc.grad, bias.grad)


def _check_wgrad(b, c, h, w, k, dilation, layout="channels_last"):
    dy, xpad, ksize, (want_w, want_b) = _wgrad_problem(b, c, h, w, k, dilation)
    if layout == "channels_last":
        dy, xpad = (t.contiguous(memory_format=torch.channels_last) for t in (dy, xpad))
    dw, db = _cpu.dwconv_wgrad(dy, xpad, ksize, dilation, bias=True)
    assert dw.shape == want_w.shape and dw.dtype == torch.float32 and dw.is_contiguous()
    # float32 sums of up to b * h * w products: tolerance relative to the gradient's scale
    scale = want_w.abs().max().item() + 1
    torch.testing.assert_close(dw.double(), want_w, rtol=1e-5, atol=2e-6 * scale)
    torch.testing.assert_close(db.double(), want_b, rtol=1e-5, atol=2e-6 * (want_b.abs().max().item() + 1))


# (B, C, H, W, k, dilation): every channel count (1, a 16-lane tail, whole blocks, a tail after whole
# blocks), map sizes from 1x1 (only the centre tap) through maps narrower than the dilated kernel (cropped
# taps, rectangular kernels) to VAN's stage-1 width; d = 5 runs the runtime-dilation loop (d > 4)
WGRAD_CASES = [
    (1, 1, 1, 1, 7, 3), (3, 3, 1, 1, 5, 1), (1, 17, 3, 5, 7, 3), (3, 64, 3, 5, 5, 1), (1, 130, 7, 7, 7, 3),
    (3, 17, 7, 7, 5, 1), (3, 3, 19, 23, 7, 3), (1, 130, 19, 23, 5, 1), (1, 64, 56, 56, 7, 3), (3, 1, 56, 56, 5, 1),
    (2, 17, 19, 23, 7, 5), (1, 20, 9, 31, 5, 2),
]


@needs_ext
@pytest.mark.parametrize("case", WGRAD_CASES, ids=str)
def test_dwconv_wgrad_matches_autograd(case):
    _check_wgrad(*case)


@needs_ext
@pytest.mark.extended  # 200 float64 references, ~ minutes on 2 cores
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("c", [1, 3, 17, 64, 130])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (7, 7), (19, 23), (56, 56)], ids=str)
@pytest.mark.parametrize("k,dilation", [(5, 1), (7, 3), (5, 3), (7, 1)])
def test_dwconv_wgrad_sweep(b, c, hw, k, dilation):
    _check_wgrad(b, c, *hw, k, dilation)


@needs_ext
def test_dwconv_wgrad_layouts_and_threads():
    """NCHW, non-contiguous (sliced) and channels_last inputs give the same bits, at any thread count
    (the sum order depends on the shape only)."""
    dy, xpad, ksize, _ = _wgrad_problem(2, 19, 11, 13, 7, 3, seed=3)
    want = _cpu.dwconv_wgrad(dy.contiguous(memory_format=torch.channels_last),
                             xpad.contiguous(memory_format=torch.channels_last), ksize, 3, bias=True)
    big = torch.zeros(2, 25, 11, 13 + 4).contiguous(memory_format=torch.channels_last)
    big[:, 3:22, :, 2:15] = dy
    sliced = big[:, 3:22, :, 2:15]  # unit channel stride, other strides of the bigger map
    assert sliced.stride(1) == 1 and not sliced.is_contiguous(memory_format=torch.channels_last)
    variants = {"nchw": (dy, xpad), "sliced": (sliced, xpad),
                "transposed": (dy.transpose(2, 3).contiguous().transpose(2, 3), xpad)}
    threads = torch.get_num_threads()
    try:
        for name, (d, x) in variants.items():
            for n in (1, 2):
                torch.set_num_threads(n)
                got = _cpu.dwconv_wgrad(d, x, ksize, 3, bias=True)
                assert all(torch.equal(a, b) for a, b in zip(got, want)), (name, n)
    finally:
        torch.set_num_threads(threads)
    dw, db = _cpu.dwconv_wgrad(dy, xpad, ksize, 3)
    assert db is None and torch.equal(dw, want[0])


@needs_ext
def test_dwconv_wgrad_empty_batch():
    dw, db = _cpu.dwconv_wgrad(torch.zeros(0, 4, 5, 5), torch.zeros(0, 4, 9, 9), 5, 1, bias=True)
    assert dw.shape == (4, 1, 5, 5) and not dw.any() and db.shape == (4,) and not db.any()


@pytest.mark.parametrize("args,match,exc", [
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 9), 0, 1), r"kernel_size must be an int >= 1", ValueError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 9), (5, 5, 5), 1), "kernel_size must be", ValueError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 9), 5, 0), "dilation must be an int >= 1", ValueError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 9), 5, True), "dilation must be an int >= 1", ValueError),
    ((torch.zeros(4, 5, 5), torch.zeros(1, 4, 9, 9), 5, 1), r"dy must be a \[B, C, H, W\] tensor", ValueError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 9).double(), 5, 1), "xpad must be a float32 CPU", TypeError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 8), 5, 1), r"xpad must be \[B, C, H \+ dilation", ValueError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 3, 9, 9), 5, 1), r"= \[1, 4, 9, 9\]", ValueError),
    ((torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 9, 9), (5, 3), 2), r"= \[1, 4, 13, 9\]", ValueError),
])
def test_dwconv_wgrad_rejects_bad_inputs(args, match, exc):
    """Checked in Python before the kernel is built or called (so also where it is unavailable)."""
    with pytest.raises(exc, match=match):
        _cpu.dwconv_wgrad(*args)
