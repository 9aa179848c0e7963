"""AMP safety of linear_attn: under ``torch.autocast`` (CPU, fp16 and bf16; the Triton path under the
interpreter in fp16) the forward and backward stay finite for activations scaled x1e2 and x1e4 at up to
112 x 112 tokens, and match the float64 result of the same rounded inputs within the dtype's tolerance
(relative to each tensor's largest value); and a control: the original unnormalised FLatten formulation
(before the official May-2024 fix), run the same way under autocast, overflows on the same inputs, so
these tests are known to bite.
"""
import pytest
import torch
import torch.nn.functional as F

from visionzoo.ops import _testing, linear_attn

from ._backend_tester import device_for

P = 3.0  # FLatten's focusing factor
MAGNITUDES = (1e2, 1e4)


def _stress_inputs(N, C, mag, dtype, device="cpu", seed=0):
    """Token activations as a projection under autocast hands them over (``dtype``), scaled by ``mag``; the
    learnable scale and positional encoding stay fp32 parameters."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = ((torch.randn(1, N, C, generator=g) * mag).to(dtype) for _ in range(3))
    scale = torch.randn(C, generator=g) * 0.5
    pos = torch.randn(1, N, C, generator=g) * 0.5
    return [t.to(device) for t in (q, k, v, scale, pos)]


def _run(inputs, heads, backend, device_type, dtype):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.autocast(device_type, dtype=dtype):
        out = linear_attn(*leaves[:3], num_heads=heads, focusing_factor=P, scale=leaves[3], pos=leaves[4],
                          backend=backend)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, leaves, dout)
    return dict(zip(("out", "dq", "dk", "dv", "dscale", "dpos"), (out.detach(), *grads))), dout


def _float64_result(inputs, heads, dout):
    leaves = [t.detach().cpu().double().requires_grad_() for t in inputs]
    out = linear_attn(*leaves[:3], num_heads=heads, focusing_factor=P, scale=leaves[3], pos=leaves[4],
                      backend="reference")
    grads = torch.autograd.grad(out, leaves, dout.cpu().double())
    return dict(zip(("out", "dq", "dk", "dv", "dscale", "dpos"), (out.detach(), *grads)))


def _assert_finite_and_close(got, want, dtype):
    errors = []
    for name, t in got.items():
        t = t.detach().cpu()
        if not torch.isfinite(t).all():
            errors.append(f"{name}: non-finite values")
            continue
        atol, rtol = _testing.TOLERANCES[dtype]["out" if name == "out" else "grad"]
        top = want[name].abs().max().clamp_min(1e-30)
        try:  # relative to the tensor's largest value: gradients of x1e4 inputs are ~1e-4
            torch.testing.assert_close(t.double() / top, want[name] / top, atol=atol, rtol=rtol)
        except AssertionError as e:
            errors.append(f"{name} ({t.dtype}): {e}")
    assert not errors, "\n\n".join(errors)


@pytest.mark.parametrize("mag", MAGNITUDES, ids=lambda m: f"x{m:.0e}")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("side,C,heads,backend", [(56, 64, 1, "cpu"), (112, 64, 1, "cpu"), (56, 64, 2, "reference")],
                         ids=str)
def test_autocast_stays_finite_and_accurate(side, C, heads, backend, dtype, mag):
    inputs = _stress_inputs(side * side, C, mag, dtype)
    got, dout = _run(inputs, heads, backend, "cpu", dtype)
    assert got["out"].dtype == dtype
    _assert_finite_and_close(got, _float64_result(inputs, heads, dout), dtype)


@pytest.mark.parametrize("mag", MAGNITUDES, ids=lambda m: f"x{m:.0e}")
def test_autocast_triton_fp16(mag):
    pytest.importorskip("triton", reason="Triton is not importable, so the triton backend cannot run")
    device = device_for("triton")
    inputs = _stress_inputs(14 * 14, 64, mag, torch.float16, device)
    with _testing.nan_filled_outputs():
        got, dout = _run(inputs, 2, "triton", device, torch.float16)
    _assert_finite_and_close(got, _float64_result(inputs, 2, dout), torch.float16)


def _original_flatten(q, k, v, heads, scale, pos):
    """FLatten's attention before the May-2024 fix, as its code runs under autocast: the feature map
    (promoted to fp32 by the fp32 scale), then ``kv = k^T v`` and ``z = 1 / (q k_sum^T + eps)`` through
    autocast's fp16 matmuls, no ``1 / n`` rescaling."""
    B, N, C = q.shape
    k = k + pos
    s = F.softplus(scale)
    q, k = (F.relu(q) + 1e-6) / s, (F.relu(k) + 1e-6) / s
    q_norm, k_norm = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q ** P, k ** P
    q = q / q.norm(dim=-1, keepdim=True) * q_norm
    k = k / k.norm(dim=-1, keepdim=True) * k_norm
    q, k, v = (t.reshape(B, -1, heads, C // heads).permute(0, 2, 1, 3) for t in (q, k, v))
    z = 1 / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = k.transpose(-2, -1) @ v
    return (q @ kv * z).transpose(1, 2).reshape(B, N, C)


@pytest.mark.parametrize("mag", MAGNITUDES, ids=lambda m: f"x{m:.0e}")
def test_control_original_formulation_overflows_in_fp16(mag):
    """The same inputs through the unnormalised formulation under fp16 autocast give inf / NaN (bf16 has
    fp32's exponent range, so there the original form loses precision but does not overflow)."""
    q, k, v, scale, pos = _stress_inputs(56 * 56, 64, mag, torch.float16)
    with torch.autocast("cpu", dtype=torch.float16):
        out = _original_flatten(q, k, v, 1, scale, pos)
        ours = linear_attn(q, k, v, num_heads=1, focusing_factor=P, scale=scale, pos=pos, backend="cpu")
    assert not torch.isfinite(out).all()
    assert torch.isfinite(ours).all()
