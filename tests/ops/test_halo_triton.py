"""Triton halo-attention kernels against the float64 reference through the shared backend tester
(:mod:`._backend_tester`): output, dq, dk, dv, d(rel_h), d(rel_w); opcheck, torch.compile, sm_90a builds.

Without CUDA they run through ``TRITON_INTERPRET=1`` (set in conftest). Output buffers the
launchers allocate are NaN-filled, so an element a kernel forgets to write fails the comparison.
"""
import pytest
import torch


pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of halo_attn cannot run")

import visionzoo.ops.halo.triton as halo_triton  # noqa: E402
from visionzoo.ops.halo import halo_attn  # noqa: E402
from visionzoo.ops.partition import pad_map, pad_to_size  # noqa: E402

from ._backend_tester import assert_compiles_like_eager  # noqa: E402
from .test_halo import NAMES, _inputs, halo_tester  # noqa: E402

# (H, W, heads, D, Dv, block, halo, stride, bias)
CASES = [
    (8, 12, 2, 16, 16, 4, 1, 1, True),  # divisible, non-square
    (9, 7, 1, 16, 24, 4, 2, 2, True),  # strided, odd map, Dv != D and not a power of two
    (5, 6, 1, 16, 16, 3, 1, 1, True),  # odd block (9 queries padded to 16), border blocks
    (3, 4, 2, 16, 16, 8, 3, 1, True),  # map smaller than one block: mostly zero keys
    (10, 10, 1, 32, 32, 5, 0, 1, False),  # no halo, no bias
    (16, 8, 1, 64, 64, 8, 3, 2, True),  # HaloNet's b=8, h=3, strided, head dim 64
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_fp32(case):
    halo_tester(case, batch=1).check("triton", torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.float16, CASES[0]), (torch.bfloat16, CASES[1])], ids=str)
def test_matches_reference_low_precision(dtype, case):
    halo_tester(case, batch=1).check("triton", dtype)


def _float32_inputs(case):
    """fp32 inputs on the device the kernels run on (CUDA where there is a GPU, else interpreted on CPU)."""
    *shape, block, halo, stride, bias = case
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [t.detach().float().to(device) for t in _inputs(*shape, block, halo, stride, bias, batch=1)]


def test_opcheck():
    q, k, v, rh, rw = _float32_inputs(CASES[1])
    kp, vp = (pad_map(t, 2, 5, 2, 3) for t in (k, v))  # 9x7 -> blocks of 4 (12x8) + halo 2 = 16x12
    qp = pad_to_size(q, (6, 4))
    eh, ew = qp @ rh.t(), qp @ rw.t()
    args = (qp.requires_grad_(), kp.requires_grad_(), vp.requires_grad_(), eh.requires_grad_(), ew.requires_grad_(),
            2, 4, 2, 0.25)
    torch.library.opcheck(torch.ops.visionzoo.halo_fwd.default, args)
    out, lse = torch.ops.visionzoo.halo_fwd(*args)
    detached = [t.detach() for t in args[:5]]
    torch.library.opcheck(torch.ops.visionzoo.halo_bwd.default,
                          (torch.randn_like(out), *detached, out.detach(), lse, 2, 4, 2, 0.25))


def test_compile_fullgraph_front_door():
    tensors = [t.requires_grad_() for t in _float32_inputs(CASES[0])]

    def fn(q, k, v, rh, rw):
        return halo_attn(q, k, v, 4, 1, rh, rw, backend="triton")

    assert_compiles_like_eager(fn, tensors, NAMES)


def test_shared_triton_helpers():
    """Halo, routing and neighborhood launchers and kernels share one set of helpers (``ops/_triton``)
    and halo / routing do not reach into the neighborhood package."""
    import inspect

    import visionzoo.ops.neighborhood.triton as na_triton
    import visionzoo.ops.routing.triton as bra_triton
    from visionzoo.ops import _triton
    from visionzoo.ops.halo import triton_kernels as halo_kernels
    from visionzoo.ops.routing import triton_kernels as bra_kernels
    for name in ("_empty", "_pow2", "_precision", "_LOG2E"):
        assert getattr(halo_triton, name) is getattr(bra_triton, name) is getattr(na_triton, name) \
            is getattr(_triton, name), name
    for name in ("_mma", "_online_softmax_step"):
        assert getattr(halo_kernels, name) is getattr(bra_kernels, name) is getattr(_triton, name), name
    for module in (halo_triton, bra_triton, halo_kernels, bra_kernels):
        assert "neighborhood" not in inspect.getsource(module).split('"""', 2)[2], module.__name__


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
