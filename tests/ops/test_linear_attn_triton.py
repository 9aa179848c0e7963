"""Triton linear attention against the float64 reference through the shared backend tester: output and
dq, dk, dv, dscale, dpos on awkward token counts (1, 7, 49, 3137) and head dims (16, 32, 48, 64), n != N,
Dv != D, per-batch pos, no focusing; strided (qkv-sliced) inputs; opcheck, torch.compile, sm_90a builds.

Without CUDA they run through ``TRITON_INTERPRET=1`` (set in conftest), where the launchers use tiles of
16 tokens and 4 splits, so even the short sequences span several tiles and partial splits. Output
buffers the launchers allocate are NaN-filled, so an element a kernel forgets to write fails.
"""
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of linear_attn cannot run")

from visionzoo.ops import _testing, linear_attn  # noqa: E402

from ._backend_tester import assert_compiles_like_eager, device_for  # noqa: E402
from .test_linear_attn import NAMES, _inputs, _oracle, la_tester  # noqa: E402

# (B, N, n, C, Cv, heads, p, pos_batch)
TRITON_CASES = [
    (1, 1, 1, 16, 16, 1, 3.0, 1),  # one token, head dim 16
    (1, 7, 7, 64, 64, 2, 2.5, 1),  # head dim 32, fractional p
    (1, 49, 49, 96, 96, 2, 3.0, 1),  # head dim 48 (not a power of two)
    (1, 3137, 3137, 64, 64, 1, 4.0, 1),  # 56 x 56 + 1 tokens, head dim 64, many tiles per split
    (2, 13, 5, 96, 48, 2, 3.0, 2),  # n != N, Dv != D (48 / 24), per-batch pos
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_matches_reference_fp32(case):
    la_tester(case).check("triton", torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.float16, TRITON_CASES[2]), (torch.bfloat16, TRITON_CASES[4]),
                                        (torch.float16, TRITON_CASES[4])], ids=str)
def test_matches_reference_low_precision(dtype, case):
    la_tester(case).check("triton", dtype)


def test_identity_feature_map():
    """No focusing: phi is the identity on the caller's non-negative features (q, k + pos)."""
    q, k, v, _, pos = _inputs(2, 21, 9, 32, 32)
    q, k, pos = q.abs(), k.abs(), pos.abs()
    dev = device_for("triton")
    with _testing.nan_filled_outputs():
        got = linear_attn(*(t.float().to(dev) for t in (q, k, v)), num_heads=2, pos=pos.float().to(dev),
                          backend="triton")
    _testing.assert_close(got.cpu(), _oracle(q, k, v, 2, None, None, pos))


def test_strided_qkv_and_grads():
    """q, k, v as the blocks produce them: slices of one qkv projection (token stride 3C); gradients flow
    back into the shared tensor."""
    q, k, v, scale, pos = _inputs(2, 19, 19, 32, 32)
    got, want = {}, {}
    for backend, res in (("triton", got), ("reference", want)):
        dt = torch.float32 if backend == "triton" else torch.float64
        dev = device_for(backend)
        qkv = torch.stack([q, k, v], 2).to(dev, dt).requires_grad_()
        s, p_ = scale.to(dev, dt).requires_grad_(), pos.to(dev, dt).requires_grad_()
        with _testing.nan_filled_outputs():
            out = linear_attn(*qkv.unbind(2), num_heads=2, focusing_factor=3, scale=s, pos=p_, backend=backend)
        grads = torch.autograd.grad(out.square().sum(), (qkv, s, p_))
        res.update(out=out.detach().cpu(), dqkv=grads[0].cpu(), dscale=grads[1].cpu(), dpos=grads[2].cpu())
    _testing.assert_all_close(got, {k_: t.double() for k_, t in want.items()})


def _float32_args(case, requires_grad=False):
    B, N, n, C, Cv, h, p, pb = case
    dev = device_for("triton")
    q, k, v, scale, pos = (t.float().to(dev).requires_grad_(requires_grad) for t in _inputs(B, N, n, C, Cv, pb))
    return q, k, v, scale, pos, h, p


@pytest.mark.parametrize("with_pos", [True, False])
def test_opcheck(with_pos):
    q, k, v, scale, pos, h, p = _float32_args(TRITON_CASES[4], requires_grad=True)
    inv_s = (1.0 / torch.nn.functional.softplus(scale)).detach().requires_grad_()
    pos = pos if with_pos else None
    torch.library.opcheck(torch.ops.visionzoo.linear_attn_fwd.default, (q, k, v, inv_s, pos, h, p, 1e-6))
    out, stats_q, stats_k, kvb = torch.ops.visionzoo.linear_attn_fwd(q, k, v, inv_s, pos, h, p, 1e-6)
    dout = torch.randn_like(out)
    detached = [None if t is None else t.detach() for t in (q, k, v, inv_s, pos)]
    torch.library.opcheck(torch.ops.visionzoo.linear_attn_bwd.default,
                          (dout, *detached, stats_q, stats_k, kvb, h, p, 1e-6))


def test_compile_fullgraph_front_door():
    q, k, v, scale, pos, h, p = _float32_args(TRITON_CASES[4], requires_grad=True)

    def fn(q, k, v, scale, pos):
        return linear_attn(q, k, v, num_heads=h, focusing_factor=p, scale=scale, pos=pos, backend="triton")
    assert_compiles_like_eager(fn, (q, k, v, scale, pos), NAMES)


def _build_for_sm90():
    """Every kernel as launched at FLatten-PVT-T's stage-2 geometry (28 x 28, C = 128, two heads of 64) and
    at stage 4 (7 x 7, C = 512, eight heads of 64), per dtype."""
    from _sm90 import build_for_sm90

    from visionzoo.ops.linear_attn import triton as la_triton
    from visionzoo.ops.linear_attn import triton_kernels

    def launch_all(dtype):
        for N, C, h in ((784, 128, 2), (49, 512, 8)):
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(2, N, C, generator=g).to(dtype) for _ in range(3))
            pos, inv_s = torch.randn(1, N, C, generator=g), torch.rand(C, generator=g) + 0.5
            out, sq, sk, kvb = la_triton.linear_attn_forward(q, k, v, inv_s, pos, h, 3.0, 1e-6)
            la_triton.linear_attn_backward(torch.randn_like(q), q, k, v, inv_s, pos, sq, sk,
                                           torch.randn(2 * h, C // h, C // h + 1), h, 3.0, 1e-6)
    return build_for_sm90(triton_kernels, launch_all)


@pytest.mark.extended
def test_builds_for_sm90():
    """The kernels compile for an H100 as launched without spills (the interpreter checks numerics, not this)."""
    pytest.importorskip("triton.backends.nvidia", reason="this Triton install has no CUDA backend")
    from ._sm90 import run_in_subprocess
    rows = run_in_subprocess("test_linear_attn_triton", "_build_for_sm90")
    # per dtype and geometry: stats x2, kv, out (forward); dq, dk, feature backward x2 (backward)
    assert len(rows) == 3 * 2 * 8, rows
    assert all(int(spill) == 0 for *_, spill in rows), rows
