"""LKA (VAN's two depthwise convolutions): the reference against a first-principles oracle and
gradcheck; the reference (fp32) and cpu paths against the float64 reference (output and every
gradient) on awkward shapes through the shared backend tester; argument errors."""

import functools

import pytest
import torch

from visionzoo.ops import _cpu, _testing, lka
from visionzoo.ops.lka import cpu as lka_cpu

from ._backend_tester import BackendTester

NAMES = ("dx", "dw0", "db0", "dw1", "db1")


def _oracle(x, w0, b0, w1, b1, dilation):
    """From the definition, pixel by pixel: zero outside the map for x and for the intermediate."""
    _B, _C, H, W = x.shape
    k0, k1 = w0.shape[-1], w1.shape[-1]
    p0, p1 = k0 // 2, dilation * (k1 // 2)

    def dw(inp, w, b, pad, dil):
        out = torch.zeros_like(inp) + (0 if b is None else b[None, :, None, None])
        k = w.shape[-1]
        for i in range(k):
            for j in range(k):
                dy, dx = i * dil - pad, j * dil - pad
                if abs(dy) >= H or abs(dx) >= W:
                    continue  # the tap reads only padding
                src = inp[:, :, max(0, dy) : H + min(0, dy), max(0, dx) : W + min(0, dx)]
                tap = w[None, :, 0, i, j, None, None]
                out[:, :, max(0, -dy) : H - max(0, dy), max(0, -dx) : W - max(0, dx)] += src * tap
        return out

    return dw(dw(x, w0, b0, p0, 1), w1, b1, p1, dilation)


def _inputs(B, C, H, W, k0=5, k1=7, dilation=3, bias=True, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w0 = torch.randn(C, 1, k0, k0, generator=g, dtype=torch.float64) / k0
    w1 = torch.randn(C, 1, k1, k1, generator=g, dtype=torch.float64) / k1
    b0, b1 = (torch.randn(C, generator=g, dtype=torch.float64) if bias else None for _ in range(2))
    return x, w0, b0, w1, b1


# (B, C, H, W, k0, k1, dilation, channels_last)
CASES = [
    (2, 3, 9, 13, 5, 7, 3, False),  # VAN geometry, map smaller than the 23-pixel receptive field
    (1, 5, 3, 5, 5, 7, 3, True),  # tiny map, channels_last
    (2, 4, 1, 1, 5, 7, 3, False),  # 1x1 map: only the centre taps
    (1, 2, 26, 24, 5, 7, 3, False),  # larger than the receptive field
    (1, 3, 7, 6, 3, 5, 2, False),  # other kernel sizes and dilation
]
# cpu-specific cases (the C++ weight-gradient kernel), kept out of CASES, which test_lka_triton also runs
# (the Triton interpreter takes ~20 s on the first)
CPU_CASES = [
    (2, 17, 19, 23, 5, 7, 3, False),  # channels past a 16-lane block (the kernel's masked tail)
    (1, 3, 12, 11, 5, 7, 5, True),  # dilation 5: the kernel's runtime-dilation loop; cropped taps
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_reference_matches_oracle(case, bias):
    B, C, H, W, k0, k1, d, cl = case
    x, w0, b0, w1, b1 = _inputs(B, C, H, W, k0, k1, d, bias, channels_last=cl)
    _testing.assert_close(lka(x, w0, b0, w1, b1, d, backend="reference"), _oracle(x, w0, b0, w1, b1, d))


@functools.cache
def lka_tester(case) -> BackendTester:
    """The shared tester of one ``(B, C, H, W, k0, k1, dilation, channels_last)`` case (with biases: the
    tester asks ``can_run`` with the first three inputs, so ``b0`` must be a tensor)."""
    B, C, H, W, k0, k1, d, cl = case
    inputs = _inputs(B, C, H, W, k0, k1, d, channels_last=cl)

    def op(x, w0, b0, w1, b1, backend):
        return lka(x, w0, b0, w1, b1, d, backend=backend)

    return BackendTester("lka", op, inputs, NAMES, label=f"case={case}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", CASES + CPU_CASES, ids=str)
def test_matches_reference_with_grads(case, backend):
    lka_tester(case).check(backend, torch.float32)


def test_gradcheck_reference():
    x, w0, b0, w1, b1 = (t.requires_grad_() for t in _inputs(1, 2, 4, 5, 3, 3, 2))
    assert torch.autograd.gradcheck(lambda *t: lka(*t, 2, backend="reference"), (x, w0, b0, w1, b1))


@pytest.mark.parametrize(
    "change,match,exc",
    [
        ({"x": torch.zeros(3, 8, 8)}, r"x must be a \[B, C, H, W\]", ValueError),
        ({"w0": torch.zeros(4, 1, 4, 4)}, "w0 must have an odd kernel size", ValueError),
        ({"w1": torch.zeros(3, 1, 7, 7)}, r"w1 must be a depthwise kernel \[C, 1, k, k\] with C = 4", ValueError),
        ({"w0": torch.zeros(4, 1, 5, 3)}, r"w0 must be a depthwise kernel", ValueError),
        ({"b0": torch.zeros(5)}, r"b0 must be None or a \[C\]", ValueError),
        ({"b1": torch.zeros(4, dtype=torch.float64)}, "b1 must have x's dtype", TypeError),
        ({"w1": torch.zeros(4, 1, 7, 7, dtype=torch.float16)}, "w1 must have x's dtype", TypeError),
        ({"x": torch.zeros(1, 4, 8, 8, dtype=torch.int64)}, "x must be a floating tensor", TypeError),
        ({"dilation": 0}, "dilation must be an int >= 1", ValueError),
    ],
)
def test_bad_arguments_raise(change, match, exc):
    args = {
        "x": torch.zeros(1, 4, 8, 8),
        "w0": torch.zeros(4, 1, 5, 5),
        "b0": torch.zeros(4),
        "w1": torch.zeros(4, 1, 7, 7),
        "b1": torch.zeros(4),
        "dilation": 3,
    } | change
    with pytest.raises(exc, match=match):
        lka(**args)


# ---------------------------------------------------- the cpu backward's weight gradients (C++ kernel / ATen)
LEAVES = {"all": NAMES, "x": ("dx",), "weights": ("dw0", "dw1"), "biases": ("db0", "db1"), "mixed": ("dw0", "db1")}


def _grads_vs_reference(case, leaves):
    """The cpu path's float32 gradients of the chosen inputs against the float64 reference's."""
    B, C, H, W, k0, k1, d, cl = case
    inputs = _inputs(B, C, H, W, k0, k1, d, channels_last=cl)
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    grads = {}
    for backend, dtype in (("cpu", torch.float32), ("reference", torch.float64)):
        ts = [t.to(dtype).requires_grad_(name in LEAVES[leaves]) for t, name in zip(inputs, NAMES)]
        out = lka(*ts, d, backend=backend)
        wanted = [t for t, name in zip(ts, NAMES) if name in LEAVES[leaves]]
        grads[backend] = torch.autograd.grad(out, wanted, dout.to(dtype))
    for name, a, b in zip(LEAVES[leaves], grads["cpu"], grads["reference"]):
        _testing.assert_close(a, b, kind="grad", what=f"{name} of {case}")


@pytest.mark.skipif(
    _cpu.cpu_ext_unavailable() is not None, reason=f"C++ CPU kernels unavailable here: {_cpu.cpu_ext_unavailable()}"
)
@pytest.mark.parametrize("leaves", list(LEAVES))
@pytest.mark.parametrize("case", [CASES[0], *CPU_CASES], ids=str)
def test_cpu_backward_uses_wgrad_kernel(monkeypatch, case, leaves):
    """float32 weight gradients go through ``_cpu.dwconv_wgrad`` (one call per convolution whose weight
    needs a gradient, bias gradient in the same pass, cropped kernels on small maps)."""
    calls = []
    real = _cpu.dwconv_wgrad
    monkeypatch.setattr(
        lka_cpu._cpu, "dwconv_wgrad", lambda *a, **kw: calls.append((a[2], a[3], a[4])) or real(*a, **kw)
    )
    _grads_vs_reference(case, leaves)
    _B, C, H, W, k0, k1, d, _cl = case
    want = []
    if "dw1" in LEAVES[leaves]:
        rows, cols = lka_cpu._geometry(torch.empty(C, 1, k1, k1), d, (H, W))[0]
        want.append(((rows.stop - rows.start, cols.stop - cols.start), d, "db1" in LEAVES[leaves]))
    if "dw0" in LEAVES[leaves]:
        want.append(((k0, k0), 1, "db0" in LEAVES[leaves]))
    assert calls == want


@pytest.mark.parametrize("leaves", ["all", "mixed"])
@pytest.mark.parametrize("case", [CASES[0], CPU_CASES[0]], ids=str)
def test_cpu_backward_without_kernel(monkeypatch, case, leaves):
    """``VISIONZOO_CPU_EXT=0``: the kernels are never built or called, ATen's convolution_backward gives the
    weight gradients, equal to the reference's."""
    monkeypatch.setenv("VISIONZOO_CPU_EXT", "0")
    monkeypatch.setattr(_cpu, "_state", {})  # forget the built module: the switch is read again

    def fail(*a, **kw):
        raise AssertionError("the C++ kernel ran with VISIONZOO_CPU_EXT=0")

    monkeypatch.setattr(lka_cpu._cpu, "dwconv_wgrad", fail)
    assert _cpu.cpu_ext_unavailable() == "disabled by VISIONZOO_CPU_EXT=0"
    _grads_vs_reference(case, leaves)
