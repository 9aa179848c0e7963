"""Triton LKA kernels against the float64 reference through the shared backend tester
(:mod:`._backend_tester`): output, dx, dw0, db0, dw1, db1; no biases and non-contiguous input;
opcheck, torch.compile, sm_90a builds.

Without CUDA they run through ``TRITON_INTERPRET=1`` (set in conftest). Output buffers the
launchers allocate are NaN-filled, so an element a kernel forgets to write fails the comparison.
"""
import pytest
import torch


pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of lka cannot run")

from visionzoo.ops.lka import triton as lka_triton  # noqa: E402  (visionzoo.ops.lka is the function)
from visionzoo.ops import _testing, lka  # noqa: E402

from ._backend_tester import assert_compiles_like_eager, device_for  # noqa: E402
from .test_lka import CASES, NAMES, _inputs, lka_tester  # noqa: E402

# (B, C, H, W, k0, k1, dilation, channels_last): CASES of test_lka (9x13, 3x5 channels_last, 1x1,
# 26x24 = one full 32-tile with a border, other kernels) plus multi-tile maps and a channel count that
# is not a multiple of the channel block
TRITON_CASES = CASES + [
    (2, 5, 17, 10, 5, 7, 3, False),  # 2 x 1 tiles of 16, 5 channels (blocks of 4)
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_matches_reference_fp32(case):
    lka_tester(case).check("triton", torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.float16, CASES[0]), (torch.bfloat16, CASES[1])], ids=str)
def test_matches_reference_low_precision(dtype, case):
    lka_tester(case).check("triton", dtype)


def test_no_bias_non_contiguous_input():
    """Biases None (their gradients stay None) and an input that is a strided slice."""
    x, w0, _, w1, _ = _inputs(2, 3, 11, 16, bias=False)
    dev = device_for("triton")
    x = x[:, :, :, ::2].float().to(dev)  # 11 x 8, not contiguous
    w0, w1 = w0.float().to(dev), w1.float().to(dev)
    dy = torch.randn(x.shape, dtype=torch.float64)
    got, want = {}, {}
    for backend, out in (("triton", got), ("reference", want)):
        leaves = [t.detach().clone().double().requires_grad_() if backend == "reference" else
                  t.detach().clone().requires_grad_() for t in (x, w0, w1)]
        with _testing.nan_filled_outputs():
            y = lka(leaves[0], leaves[1], None, leaves[2], None, 3, backend=backend)
        grads = torch.autograd.grad(y, leaves, dy.to(y))
        out.update(out=y.detach().cpu(), **{n: g.cpu() for n, g in zip(("dx", "dw0", "dw1"), grads)})
    _testing.assert_all_close(got, want)


def _float32_inputs(case, bias=True):
    B, C, H, W, k0, k1, d, _ = case
    return [None if t is None else t.float().to(device_for("triton")) for t in _inputs(B, C, H, W, k0, k1, d, bias)]


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    x, w0, b0, w1, b1 = _float32_inputs(CASES[0], bias)
    args = [t if t is None else t.requires_grad_() for t in (x, w0, b0, w1, b1)] + [3]
    torch.library.opcheck(torch.ops.visionzoo.lka_fwd.default, tuple(args))
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.visionzoo.lka_bwd.default,
                          (dy, *[t if t is None else t.detach() for t in (x, w0, b0, w1, b1)], 3))


def test_compile_fullgraph_front_door():
    tensors = [t.requires_grad_() for t in _float32_inputs(CASES[0])]

    def fn(x, w0, b0, w1, b1):
        return lka(x, w0, b0, w1, b1, 3, backend="triton")

    assert_compiles_like_eager(fn, tensors, NAMES)


def _build_for_sm90():
    """Both kernels as launched at VAN's stage-1 geometry (32 x 32 tiles, 5x5 then 7x7 dilation 3), per dtype."""
    from _sm90 import build_for_sm90

    from visionzoo.ops.lka import triton_kernels

    def launch_all(dtype):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 56, 56, generator=g).to(dtype)
        w0, w1 = torch.randn(8, 1, 5, 5, generator=g).to(dtype), torch.randn(8, 1, 7, 7, generator=g).to(dtype)
        b0, b1 = torch.randn(8, generator=g).to(dtype), torch.randn(8, generator=g).to(dtype)
        y = torch.randn_like(x)
        lka_triton.lka_forward(x, w0, b0, w1, b1, 3)
        # the input gradient is the fused kernel again (flipped kernels, no bias): the forward covers it
        lka_triton.lka_backward(y, x, w0, b0, w1, b1, 3)
    return build_for_sm90(triton_kernels, launch_all)


@pytest.mark.extended
def test_builds_for_sm90():
    """The kernels compile for an H100 as launched without spills (the interpreter checks numerics, not this)."""
    pytest.importorskip("triton.backends.nvidia", reason="this Triton install has no CUDA backend")
    from ._sm90 import run_in_subprocess
    rows = run_in_subprocess("test_lka_triton", "_build_for_sm90")
    assert len(rows) == 3 * 3, rows  # forward, the input gradient's fused kernel, the weight gradients; per dtype
    # fp16/bf16 at most 64 B like the other ops' kernels (measured: 28 / 12 B in the weight-gradient kernel,
    # 0 elsewhere; the 2048-value chunks on 8 warps spilled 452-500 B); fp32 stays within it too (<= 40 B)
    assert all(int(spill) <= 64 for *_, spill in rows), rows
