"""Triton bi-level routing kernels against the float64 reference through the shared backend tester
(:mod:`._backend_tester`): output, dq, dk, dv (interpreted without CUDA; buffers the launchers allocate
are NaN-filled so unwritten elements fail); opcheck, torch.compile, sm_90a builds."""
import pytest
import torch


pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of bra cannot run")

import visionzoo.ops.routing.triton as bra_triton  # noqa: E402
from visionzoo.ops.routing import bra  # noqa: E402

from ._backend_tester import assert_compiles_like_eager  # noqa: E402
from .test_routing import NAMES, bra_tester  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels need CUDA tensors where there is a GPU

# (H, W, heads, D, Dv, n_win, topk)
CASES = [
    (14, 14, 2, 16, 16, 7, 4),  # divisible, 2x2 regions (queries padded to 16)
    (13, 10, 1, 16, 24, 7, 3),  # padded map: masked keys, Dv != D
    (5, 3, 2, 16, 16, 7, 4),  # map smaller than n_win: empty regions
    (16, 24, 1, 32, 32, 2, 2),  # 8x12 regions: two query tiles per region
    (12, 12, 1, 64, 64, 3, 9),  # topk = all regions, head dim 64
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_fp32(case):
    bra_tester(case, batch=1).check("triton", torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.float16, CASES[0]), (torch.bfloat16, CASES[1])], ids=str)
def test_matches_reference_low_precision(dtype, case):
    bra_tester(case, batch=1).check("triton", dtype)


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 6, 1, 16, generator=g).to(DEVICE) for _ in range(3))  # small: opcheck runs ~20x
    idx = torch.randint(0, 9, (1, 9, 2), generator=g).to(DEVICE)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), idx, 3, 0.25, [5, 6])
    torch.library.opcheck(torch.ops.visionzoo.bra_fwd.default, args)
    out, lse = torch.ops.visionzoo.bra_fwd(*args)
    torch.library.opcheck(torch.ops.visionzoo.bra_bwd.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), idx, out.detach(), lse,
                           3, 0.25, [5, 6]))


def test_compile_fullgraph_front_door():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(1, 6, 6, 1, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]

    def fn(q, k, v):
        return bra(q, k, v, 3, 2, backend="triton")

    assert_compiles_like_eager(fn, ts, NAMES)


def test_bad_routing_indices_raise():
    q = torch.zeros(1, 14, 14, 1, 16)
    with pytest.raises(ValueError, match="idx must be int64"):
        bra_triton.bra_forward(q, q, q, torch.zeros(1, 49, 2, dtype=torch.int32), 7, 0.25, [14, 14])


def _build_for_sm90():
    """Both routing kernels as launched for BiFormer's stage-1 shape (8x8 regions, topk 4), per dtype."""
    from _sm90 import build_for_sm90

    from visionzoo.ops.routing import triton_kernels

    def launch_all(dtype):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 56, 56, 2, 32, generator=g).to(dtype) for _ in range(3))
        idx = torch.randint(0, 49, (2, 49, 4), generator=g)
        out, lse = bra_triton.bra_forward(q, k, v, idx, 7, 0.125, (56, 56))
        bra_triton.bra_backward(torch.randn_like(out), q, k, v, idx, out, lse, 7, 0.125, (56, 56))
    return build_for_sm90(triton_kernels, launch_all)


@pytest.mark.extended
def test_builds_for_sm90():
    """The kernels compile for an H100 as launched (the interpreter checks numerics, not this)."""
    pytest.importorskip("triton.backends.nvidia", reason="this Triton install has no CUDA backend")
    from ._sm90 import run_in_subprocess
    rows = run_in_subprocess("test_routing_triton", "_build_for_sm90")
    assert len(rows) == 3 * 2, rows  # fwd and bwd per dtype
    assert all(int(spill) <= 64 for _, kind, spill in rows if kind != "*fp32"), rows
