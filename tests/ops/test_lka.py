"""LKA (VAN's two depthwise convolutions): the reference against a first-principles oracle and
gradcheck; the reference (fp32) and cpu paths against the float64 reference (output and every
gradient) on awkward shapes through the shared backend tester; argument errors."""
import functools

import pytest
import torch

from visionzoo.ops import _testing, lka

from ._backend_tester import BackendTester

NAMES = ("dx", "dw0", "db0", "dw1", "db1")


def _oracle(x, w0, b0, w1, b1, dilation):
    """From the definition, pixel by pixel: zero outside the map for x and for the intermediate."""
    B, C, H, W = x.shape
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
                src = inp[:, :, max(0, dy):H + min(0, dy), max(0, dx):W + min(0, dx)]
                tap = w[None, :, 0, i, j, None, None]
                out[:, :, max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)] += src * tap
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


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_reference_matches_oracle(case, bias):
    B, C, H, W, k0, k1, d, cl = case
    x, w0, b0, w1, b1 = _inputs(B, C, H, W, k0, k1, d, bias, channels_last=cl)
    _testing.assert_close(lka(x, w0, b0, w1, b1, d, backend="reference"), _oracle(x, w0, b0, w1, b1, d))


@functools.lru_cache(maxsize=None)
def lka_tester(case) -> BackendTester:
    """The shared tester of one ``(B, C, H, W, k0, k1, dilation, channels_last)`` case (with biases: the
    tester asks ``can_run`` with the first three inputs, so ``b0`` must be a tensor)."""
    B, C, H, W, k0, k1, d, cl = case
    inputs = _inputs(B, C, H, W, k0, k1, d, channels_last=cl)

    def op(x, w0, b0, w1, b1, backend):
        return lka(x, w0, b0, w1, b1, d, backend=backend)
    return BackendTester("lka", op, inputs, NAMES, label=f"case={case}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_with_grads(case, backend):
    lka_tester(case).check(backend, torch.float32)


def test_gradcheck_reference():
    x, w0, b0, w1, b1 = (t.requires_grad_() for t in _inputs(1, 2, 4, 5, 3, 3, 2))
    assert torch.autograd.gradcheck(lambda *t: lka(*t, 2, backend="reference"), (x, w0, b0, w1, b1))


@pytest.mark.parametrize("change,match,exc", [
    (dict(x=torch.zeros(3, 8, 8)), r"x must be a \[B, C, H, W\]", ValueError),
    (dict(w0=torch.zeros(4, 1, 4, 4)), "w0 must have an odd kernel size", ValueError),
    (dict(w1=torch.zeros(3, 1, 7, 7)), r"w1 must be a depthwise kernel \[C, 1, k, k\] with C = 4", ValueError),
    (dict(w0=torch.zeros(4, 1, 5, 3)), r"w0 must be a depthwise kernel", ValueError),
    (dict(b0=torch.zeros(5)), r"b0 must be None or a \[C\]", ValueError),
    (dict(b1=torch.zeros(4, dtype=torch.float64)), "b1 must have x's dtype", TypeError),
    (dict(w1=torch.zeros(4, 1, 7, 7, dtype=torch.float16)), "w1 must have x's dtype", TypeError),
    (dict(x=torch.zeros(1, 4, 8, 8, dtype=torch.int64)), "x must be a floating tensor", TypeError),
    (dict(dilation=0), "dilation must be an int >= 1", ValueError),
])
def test_bad_arguments_raise(change, match, exc):
    args = dict(x=torch.zeros(1, 4, 8, 8), w0=torch.zeros(4, 1, 5, 5), b0=torch.zeros(4), w1=torch.zeros(4, 1, 7, 7),
                b1=torch.zeros(4), dilation=3) | change
    with pytest.raises(exc, match=match):
        lka(**args)
