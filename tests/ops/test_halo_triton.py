"""Triton halo-attention kernels against the reference: output, dq, dk, dv, d(rel_h), d(rel_w).

Without CUDA they run through ``TRITON_INTERPRET=1`` (set in conftest). Output buffers the
launchers allocate are NaN-filled, so an element a kernel forgets to write fails the comparison.
"""
import pytest
import torch

import visionzoo

pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of halo_attn cannot run")

import visionzoo.ops.halo.triton as halo_triton  # noqa: E402
import visionzoo.ops.neighborhood.triton as na_triton  # noqa: E402
from visionzoo.ops import _testing  # noqa: E402
from visionzoo.ops.halo import halo_attn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("out", "dq", "dk", "dv", "drel_h", "drel_w")

# (H, W, heads, D, Dv, block, halo, stride, bias)
CASES = [
    (8, 12, 2, 16, 16, 4, 1, 1, True),  # divisible, non-square
    (9, 7, 1, 16, 24, 4, 2, 2, True),  # strided, odd map, Dv != D and not a power of two
    (5, 6, 1, 16, 16, 3, 1, 1, True),  # odd block (9 queries padded to 16), border blocks
    (3, 4, 2, 16, 16, 8, 3, 1, True),  # map smaller than one block: mostly zero keys
    (10, 10, 1, 32, 32, 5, 0, 1, False),  # no halo, no bias
    (16, 8, 1, 64, 64, 8, 3, 2, True),  # HaloNet's b=8, h=3, strided, head dim 64
]


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    monkeypatch.setattr(halo_triton, "_empty",
                        lambda shape, dtype, device: _testing.nan_like(torch.empty(shape, dtype=dtype, device=device)))


def _inputs(case, dtype):
    H, W, heads, D, Dv, block, halo, stride, bias = case
    g = torch.Generator().manual_seed(0)
    hq, wq, win = -(-H // stride), -(-W // stride), block + 2 * halo
    ts = [torch.randn(1, hq, wq, heads, D, generator=g, dtype=torch.float64),
          torch.randn(1, H, W, heads, D, generator=g, dtype=torch.float64),
          torch.randn(1, H, W, heads, Dv, generator=g, dtype=torch.float64)]
    tables = [torch.randn(2 * win - 1, D, generator=g, dtype=torch.float64) * 0.3 for _ in range(2)]
    ts += tables if bias else [None, None]
    dout = torch.randn(1, hq, wq, heads, Dv, generator=g, dtype=torch.float64)
    return [None if t is None else t.to(dtype).to(DEVICE).requires_grad_() for t in ts], dout.to(dtype).to(DEVICE)


def _run(case, tensors, dout, backend):
    block, halo, stride = case[5:8]
    out = halo_attn(*tensors[:3], block, halo, *tensors[3:], stride=stride, backend=backend)
    leaves = [t for t in tensors if t is not None]
    return dict(zip(NAMES, (out.detach(), *torch.autograd.grad(out, leaves, dout))))


def _check(case, dtype):
    tensors, dout = _inputs(case, dtype)
    got = _run(case, tensors, dout, "triton")
    want = _run(case, [None if t is None else t.detach().double().requires_grad_() for t in tensors],
                dout.double(), "reference")
    _testing.assert_all_close(got, want)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_fp32(case):
    _check(case, torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.float16, CASES[0]), (torch.bfloat16, CASES[1])], ids=str)
def test_matches_reference_low_precision(dtype, case):
    _check(case, dtype)


def test_opcheck():
    case = CASES[1]
    tensors, dout = _inputs(case, torch.float32)
    q, k, v, rh, rw = (t.detach() for t in tensors)
    kp, vp = (torch.nn.functional.pad(t, (0, 0, 0, 0, 2, 3, 2, 5)) for t in (k, v))  # 9x7 -> 16x12
    qp = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, 0, 0, 1))
    eh, ew = qp @ rh.t(), qp @ rw.t()
    args = (qp.requires_grad_(), kp.requires_grad_(), vp.requires_grad_(), eh.requires_grad_(), ew.requires_grad_(),
            2, 4, 2, 0.25)
    torch.library.opcheck(torch.ops.visionzoo.halo_fwd.default, args)
    out, lse = torch.ops.visionzoo.halo_fwd(*args)
    detached = [t.detach() for t in args[:5]]
    torch.library.opcheck(torch.ops.visionzoo.halo_bwd.default,
                          (torch.randn_like(out), *detached, out.detach(), lse, 2, 4, 2, 0.25))


def test_compile_fullgraph_front_door():
    visionzoo.ops._backend.preload()  # compile cannot trace a first-time import
    tensors, _ = _inputs(CASES[0], torch.float32)

    def fn(q, k, v, rh, rw):
        return halo_attn(q, k, v, 4, 1, rh, rw, backend="triton")

    eager = fn(*tensors)
    eager_grads = torch.autograd.grad(eager.square().sum(), tensors)
    torch._dynamo.reset()
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(*tensors)
    grads = torch.autograd.grad(out.square().sum(), tensors)
    _testing.assert_close(out, eager)
    for name, a, b in zip(NAMES[1:], grads, eager_grads):
        _testing.assert_close(a, b, "grad", name)


def test_shares_the_na_launcher_helpers():
    """One definition of the buffer allocator / precision policy for both ops' launchers."""
    assert halo_triton._precision is na_triton._precision


def _build_for_sm90():
    """Both halo kernels as launched for HaloNet's b=8, h=3 at head dim 64, strided and not, per dtype."""
    from _sm90 import build_for_sm90

    from visionzoo.ops.halo import triton_kernels

    def launch_all(dtype):
        for stride in (1, 2):
            g = torch.Generator().manual_seed(0)
            bq, hq = 8 // stride, 16 // stride
            qp = torch.randn(2, hq, hq, 2, 64, generator=g).to(dtype)
            kp, vp = (torch.randn(2, 22, 22, 2, 64, generator=g).to(dtype) for _ in range(2))
            eh, ew = (torch.randn(2, hq, hq, 2, 27, generator=g).to(dtype) for _ in range(2))
            out, lse = halo_triton.halo_forward(qp, kp, vp, eh, ew, bq, 8, 3, 0.125)
            halo_triton.halo_backward(torch.randn_like(out), qp, kp, vp, eh, ew, out, lse, bq, 8, 3, 0.125)
    return build_for_sm90(triton_kernels, launch_all)


@pytest.mark.extended
def test_builds_for_sm90():
    """The kernels compile for an H100 as launched (the interpreter checks numerics, not this)."""
    pytest.importorskip("triton.backends.nvidia", reason="this Triton install has no CUDA backend")
    from ._sm90 import run_in_subprocess
    rows = run_in_subprocess("test_halo_triton", "_build_for_sm90")
    assert len(rows) == 3 * 2 * 2, rows  # fwd and bwd, two strides, per dtype
    assert all(int(spill) <= 64 for _, kind, spill in rows if kind != "*fp32"), rows
