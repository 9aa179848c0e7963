"""Triton na2d kernels against the reference: output, dq, dk, dv and d(rpb), each on its own.

Without CUDA the kernels run on CPU tensors through ``TRITON_INTERPRET=1`` (set in conftest), which
is slow: default-tier maps stay <= 14 x 14 with B = 1; wider sweeps are marked ``extended``.
Every buffer the launchers allocate is NaN-filled here, so an element a kernel forgets to write
fails the comparison.
"""
import functools
import random
from dataclasses import dataclass

import pytest
import torch

import visionzoo

pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of na2d cannot run")

import visionzoo.ops.neighborhood.triton as na_triton  # noqa: E402
from visionzoo.ops import _testing  # noqa: E402
from visionzoo.ops.neighborhood import na1d, na2d  # noqa: E402
from visionzoo.ops.neighborhood.reference import na2d_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("out", "dq", "dk", "dv", "drpb")


@dataclass(frozen=True)
class Case:
    H: int
    W: int
    heads: int
    D: int
    Dv: int
    kernel: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    rpb: bool = True
    valid: tuple[int, int] | None = None  # real size of a zero-padded map
    shift: tuple[int, int] | None = None  # Swin's shifted windows (stride == kernel)

    def __str__(self):
        return (f"{self.H}x{self.W}-h{self.heads}-D{self.D}v{self.Dv}-k{self.kernel[0]}x{self.kernel[1]}"
                f"-d{self.dilation[0]}x{self.dilation[1]}-s{self.stride[0]}x{self.stride[1]}"
                f"{'-rpb' if self.rpb else ''}{'-valid%dx%d' % self.valid if self.valid else ''}"
                f"{'-shift%dx%d' % self.shift if self.shift else ''}")


CASES = [
    Case(9, 11, 2, 16, 16, (3, 5)),  # odd, non-square map and kernel
    Case(5, 6, 1, 16, 16, (7, 7)),  # map smaller than the window
    Case(13, 10, 1, 16, 16, (3, 3), (3, 2)),  # dilation, unequal group lengths (5, 4, 4 rows)
    Case(2, 9, 1, 16, 16, (3, 3), (3, 2)),  # dilation above the map height: an empty group
    Case(11, 9, 1, 16, 16, (5, 5), (1, 1), (2, 3)),  # GNA stride
    Case(13, 12, 2, 32, 16, (3, 5), (2, 2), (2, 3), rpb=False),  # dilation + stride, Dv != D, no rpb
    Case(7, 8, 1, 24, 24, (4, 2), (1, 1), (2, 1)),  # even kernel, D not a power of two
    Case(6, 7, 1, 16, 16, (1, 1)),  # kernel 1: out = v
    Case(14, 14, 1, 16, 16, (13, 13)),  # largest kernel, window clamped at every border
    Case(1, 14, 2, 16, 16, (1, 7), (1, 2)),  # 1-D map (na1d's shape)
    Case(10, 12, 1, 64, 64, (5, 5), (2, 1)),  # head dim 64
    Case(12, 8, 1, 16, 16, (4, 4), (1, 1), (4, 4), valid=(9, 7)),  # blocked attention on a padded map
    Case(12, 9, 1, 16, 16, (3, 3), (4, 3), valid=(10, 8)),  # grid attention on a padded map
]
# Swin's shifted windows (the front door pads every side and masks through a valid region with a lower
# bound): odd sizes, maps smaller than the window, shift on one axis only, rectangular windows
SHIFTED = [
    Case(13, 9, 2, 16, 16, (4, 3), stride=(4, 3), shift=(1, 2)),
    Case(3, 5, 1, 16, 16, (7, 7), stride=(7, 7), shift=(3, 0)),  # map smaller than the window
    Case(11, 10, 1, 16, 16, (5, 4), stride=(5, 4), shift=(0, 2), rpb=False),  # one axis, no bias
    Case(9, 13, 1, 16, 16, (4, 4), stride=(4, 4), valid=(7, 12), shift=(2, 3)),  # and a caller's padding
]
LOW_PRECISION = [
    pytest.param(torch.float16, CASES[0], id="fp16-" + str(CASES[0])),
    pytest.param(torch.bfloat16, CASES[5], id="bf16-" + str(CASES[5])),
]


@pytest.fixture(autouse=True)
def _nan_buffers(monkeypatch):
    monkeypatch.setattr(na_triton, "_empty",
                        lambda shape, dtype, device: _testing.nan_like(torch.empty(shape, dtype=dtype, device=device)))


def _inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    """Leaf tensors q, k, v, rpb (rpb None without bias), drawn in float64 and rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, case.H, case.W, case.heads)
    ts = [torch.randn(*shape, case.D, generator=g, dtype=torch.float64),
          torch.randn(*shape, case.D, generator=g, dtype=torch.float64),
          torch.randn(*shape, case.Dv, generator=g, dtype=torch.float64),
          torch.randn(case.heads, 2 * case.kernel[0] - 1, 2 * case.kernel[1] - 1, generator=g, dtype=torch.float64)
          if case.rpb else None]
    dout = torch.randn(*shape, case.Dv, generator=g, dtype=torch.float64)
    cast = [None if t is None else t.to(dtype).to(DEVICE).requires_grad_() for t in ts]
    return cast, dout.to(dtype).to(DEVICE)


def _run(fn, case, tensors, dout):
    q, k, v, rpb = tensors
    extra = () if case.valid is None and case.shift is None else (case.valid,)
    extra += () if case.shift is None else (case.shift,)
    out = fn(q, k, v, case.kernel, case.dilation, case.stride, rpb, case.D ** -0.5, *extra)
    leaves = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(out, leaves, dout)
    return dict(zip(NAMES, (out.detach(), *grads)))


@functools.lru_cache(maxsize=None)
def _reference(case: Case, dtype: torch.dtype):
    """Reference output and gradients in float64 from the same (rounded) inputs, computed once per case."""
    tensors, dout = _inputs(case, dtype)
    tensors = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    return _run(na2d_reference, case, tensors, dout.double())


def _na2d_triton(q, k, v, kernel_size, dilation, stride, rpb, scale, valid=None, shift=None):
    """Through the public front door, so argument handling, padding and dispatch are covered too (the
    reference takes ``shift`` directly: its cells are the spec)."""
    return na2d(q, k, v, kernel_size, dilation, stride, rpb, scale, backend="triton", valid=valid, shift=shift or 0)


def _triton(case: Case, dtype: torch.dtype):
    tensors, dout = _inputs(case, dtype)
    return _run(_na2d_triton, case, tensors, dout)


_compare = _testing.assert_all_close


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_fp32(case):
    _compare(_triton(case, torch.float32), _reference(case, torch.float32))


@pytest.mark.parametrize("case", SHIFTED, ids=str)
def test_shifted_matches_reference_fp32(case):
    _compare(_triton(case, torch.float32), _reference(case, torch.float32))


def test_pad_matches_reference():
    """``pad=True`` (grid attention on a map that is no multiple of the window) is the caller's padding."""
    case = Case(10, 7, 1, 16, 16, (4, 4), (3, 2), (4, 4))
    (q, k, v, rpb), _ = _inputs(case, torch.float32)
    got = na2d(q, k, v, 4, (3, 2), 4, rpb, backend="triton", pad=True)
    padded = [torch.nn.functional.pad(t.detach(), (0, 0, 0, 0, 0, 1, 0, 2)) for t in (q, k, v)]
    want = na2d(*padded, 4, (3, 2), 4, rpb, backend="reference", valid=(10, 7))[:, :10, :7]
    _testing.assert_close(got, want)


@pytest.mark.parametrize("dtype, case", LOW_PRECISION)
def test_matches_reference_low_precision(dtype, case):
    got = _triton(case, dtype)
    assert all(t.dtype == dtype for t in got.values())
    _compare(got, _reference(case, dtype))


def test_na1d():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 17, 2, 16, generator=g, device="cpu").to(DEVICE) for _ in range(3))
    rpb = torch.randn(2, 9, generator=g).to(DEVICE)
    got = na1d(q, k, v, 5, dilation=3, stride=2, rpb=rpb, backend="triton")
    want = na1d(q, k, v, 5, dilation=3, stride=2, rpb=rpb, backend="reference")
    _testing.assert_close(got, want)


def test_strided_inputs():
    """q, k, v as views into a packed qkv projection: the kernels read through strides, no copies."""
    case = CASES[0]
    qkv = torch.randn(1, case.H, case.W, 3, case.heads, case.D, device=DEVICE)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    got = na2d(q, k, v, case.kernel, rpb=None, backend="triton")
    want = na2d(q.contiguous(), k.contiguous(), v.contiguous(), case.kernel, backend="reference")
    _testing.assert_close(got, want)


def test_repeatable():
    """Forward, dq, dk and dv are free of atomics: two runs agree bit for bit (d(rpb) is not checked)."""
    case = CASES[4]
    first, second = _triton(case, torch.float32), _triton(case, torch.float32)
    for name in ("out", "dq", "dk", "dv"):
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("with_rpb", [True, False], ids=["rpb", "no-rpb"])
def test_opcheck(with_rpb):
    case = Case(4, 5, 1, 16, 16, (3, 3), (1, 2), rpb=with_rpb)
    (q, k, v, rpb), dout = _inputs(case, torch.float32)
    geometry = (list(case.kernel), list(case.dilation), list(case.stride), 0.25, [1, 0, case.H, case.W - 1])
    torch.library.opcheck(torch.ops.visionzoo.na2d_fwd.default, (q, k, v, rpb, *geometry))
    out, lse = torch.ops.visionzoo.na2d_fwd(q, k, v, rpb, *geometry)
    detached = [None if t is None else t.detach() for t in (q, k, v, out, lse, rpb)]
    torch.library.opcheck(torch.ops.visionzoo.na2d_bwd.default, (dout, *detached, *geometry))


def _compile_check(fn):
    case = Case(6, 7, 2, 16, 16, (3, 5), (2, 1))
    (q, k, v, rpb), _ = _inputs(case, torch.float32)
    eager_out = fn(q, k, v, rpb)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), (q, k, v, rpb))
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, rpb)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, rpb))
    _testing.assert_close(out, eager_out)
    for name, a, b in zip(("dq", "dk", "dv", "drpb"), grads, eager_grads):
        _testing.assert_close(a, b, "grad", name)


def test_compile_fullgraph_op():
    _compile_check(lambda q, k, v, rpb: na_triton.na2d_triton(q, k, v, (3, 5), (2, 1), (1, 1), rpb, 0.25))


def test_compile_fullgraph_front_door():
    visionzoo.ops._backend.preload()  # compile cannot trace a first-time import
    _compile_check(lambda q, k, v, rpb: na2d(q, k, v, (3, 5), (2, 1), rpb=rpb, scale=0.25, backend="triton"))


def _random_cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        kernel = (rng.randint(1, 13), rng.randint(1, 13))
        dil = (rng.randint(1, 3), rng.randint(1, 3))
        stride = tuple(rng.randint(1, kk) for kk in kernel)
        H, W = rng.randint(1, 24), rng.randint(1, 24)
        D = rng.choice((16, 32, 48, 64))
        cases.append(Case(H, W, rng.randint(1, 3), D, rng.choice((D, 16)), kernel, dil, stride, rng.random() < 0.7))
    return cases


@pytest.mark.extended
@pytest.mark.parametrize("case", _random_cases(24) + [Case(9, 10, 1, 128, 128, (7, 7)),
                                                      Case(5, 6, 1, 200, 100, (3, 3), (1, 2))], ids=str)
def test_sweep_fp32(case):
    _compare(_triton(case, torch.float32), _reference(case, torch.float32))


@pytest.mark.extended
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", _random_cases(6, seed=1), ids=str)
def test_sweep_low_precision(dtype, case):
    _compare(_triton(case, dtype), _reference(case, dtype))


def _build_for_sm90():
    """Every NA kernel as launched for a dilated, strided case, per dtype (see ``tests/ops/_sm90.py``)."""
    from _sm90 import build_for_sm90

    from visionzoo.ops.neighborhood import triton_kernels

    def launch_all(dtype):
        case = Case(28, 30, 2, 64, 64, (7, 7), (2, 1), (1, 2))
        (q, k, v, rpb), dout = _inputs(case, dtype)
        q, k, v, rpb = (t.detach() for t in (q, k, v, rpb))
        out, lse = na_triton.na2d_forward(q, k, v, rpb, case.kernel, case.dilation, case.stride, 0.125)
        na_triton.na2d_backward(dout, q, k, v, out, lse, rpb, case.kernel, case.dilation, case.stride, 0.125)
    return build_for_sm90(triton_kernels, launch_all)


@pytest.mark.extended
def test_builds_for_sm90():
    """The kernels compile for an H100 as launched (the interpreter checks numerics, not this)."""
    pytest.importorskip("triton.backends.nvidia", reason="this Triton install has no CUDA backend")
    from ._sm90 import run_in_subprocess
    rows = run_in_subprocess("test_neighborhood_triton", "_build_for_sm90")
    assert len(rows) == 3 * 4, rows  # fwd, delta, dq, dkdv per dtype
    # half precision must not spill more than a few words; fp32 (tf32x3) is the slow path anyway
    assert all(int(spill) <= 64 for _, kind, spill in rows if kind != "*fp32"), rows
