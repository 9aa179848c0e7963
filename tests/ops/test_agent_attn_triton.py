"""Triton agent-attention kernels against the float64 reference through the shared backend tester
(:mod:`._backend_tester`): output and the gradients of q, k, v, agents and both biases on awkward
shapes (N not a square, n = 4, 9, 16, 49, M != N, Dv != D, shared and per-image biases); no biases and
strided inputs; opcheck, torch.compile, sm_90a builds.

Without CUDA they run through ``TRITON_INTERPRET=1`` (set in conftest; the launchers then use 16-row
tiles and four stage-1 programs, so these short sequences still span several tiles and key splits).
Output buffers the launchers allocate are NaN-filled, so an element a kernel forgets to write fails.
"""
import pytest
import torch

pytest.importorskip("triton", reason="Triton is not importable, so the triton backend of agent_attn cannot run")

from visionzoo.ops import _testing, agent_attn  # noqa: E402
from visionzoo.ops.agent_attn import triton as agent_triton  # noqa: E402

from ._backend_tester import assert_compiles_like_eager, device_for  # noqa: E402
from .test_agent_attn import CASES, NAMES, _inputs, agent_tester  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_fp32(case):
    agent_tester(case).check("triton", torch.float32)


@pytest.mark.parametrize("dtype,case", [(torch.float16, CASES[0]), (torch.bfloat16, CASES[1]),
                                        (torch.float16, CASES[3])], ids=str)
def test_matches_reference_low_precision(dtype, case):
    agent_tester(case).check("triton", dtype)


def test_no_biases_strided_inputs():
    """Biases None (their gradients stay None) and q, k, v as strided views of one fused projection,
    as the block passes them."""
    g = torch.Generator().manual_seed(3)
    dev = device_for("triton")
    B, heads, N, n, D = 2, 2, 21, 9, 8
    qkv = torch.randn(B, N, 3, heads, D, generator=g, dtype=torch.float64)
    agents = torch.randn(B, heads, n, D, generator=g, dtype=torch.float64)
    dout = torch.randn(B, heads, N, D, generator=g, dtype=torch.float64)
    got, want = {}, {}
    for backend, result in (("triton", got), ("reference", want)):
        dt = torch.float32 if backend == "triton" else torch.float64
        x = qkv.to(device=dev if backend == "triton" else "cpu", dtype=dt).requires_grad_()
        a = agents.to(x).requires_grad_()
        q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, D] views, not contiguous
        with _testing.nan_filled_outputs():
            out = agent_attn(q, k, v, a, backend=backend)
        gx, ga = torch.autograd.grad(out, (x, a), dout.to(out))
        result.update(out=out.detach().cpu(), dqkv=gx.cpu(), dagents=ga.cpu())
    _testing.assert_all_close(got, want)


def _float32_inputs(case, bias=True):
    ts = [t.float().to(device_for("triton")) for t in _inputs(*case)]
    return ts if bias else ts[:4] + [None, None]


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    q, k, v, a, bkv, bq = _float32_inputs(CASES[0], bias)
    args = tuple(t if t is None else t.requires_grad_() for t in (q, k, v, a, bkv, bq)) + (0.4,)
    torch.library.opcheck(torch.ops.visionzoo.agent_attn_fwd.default, args)
    with torch.no_grad():
        out, agent_v, lse = torch.ops.visionzoo.agent_attn_fwd(*args)
    plain = tuple(t if t is None else t.detach() for t in args[:6])
    torch.library.opcheck(torch.ops.visionzoo.agent_attn_bwd.default,
                          (torch.randn_like(out), *plain, out, agent_v, lse, 0.4))


def test_compile_fullgraph_front_door():
    tensors = [t.requires_grad_() for t in _float32_inputs(CASES[1])]

    def fn(q, k, v, agents, bias_kv, bias_q):
        return agent_attn(q, k, v, agents, bias_kv, bias_q, backend="triton")

    assert_compiles_like_eager(fn, tensors, NAMES)


def _build_for_sm90():
    """Every kernel as launched at Agent-PVT-T stage 1 (56 x 56 tokens, 1 head, D 64, 9 agents) and an
    Agent-Swin-T global stage (7 x 7, 49 agents, D 32), per dtype."""
    from _sm90 import build_for_sm90

    from visionzoo.ops.agent_attn import triton_kernels

    def launch_all(dtype):
        g = torch.Generator().manual_seed(0)
        for B, heads, N, n, D in ((2, 1, 3136, 9, 64), (2, 24, 49, 49, 32)):
            q, k, v = (torch.randn(B, heads, N, D, generator=g).to(dtype) for _ in range(3))
            a = torch.randn(B, heads, n, D, generator=g).to(dtype)
            bkv, bq = torch.randn(1, heads, n, N).to(dtype), torch.randn(1, heads, N, n).to(dtype)
            out = torch.randn_like(q)
            agent_v, lse = torch.randn(B, heads, n, D), torch.randn(B, heads, n)
            agent_triton.agent_attn_forward(q, k, v, a, bkv, bq, D ** -0.5)
            agent_triton.agent_attn_backward(out, q, k, v, a, bkv, bq, out, agent_v, lse, D ** -0.5)
    return build_for_sm90(triton_kernels, launch_all)


@pytest.mark.extended
def test_builds_for_sm90():
    """The kernels compile for an H100 as launched without spills (the interpreter checks numerics, not this)."""
    pytest.importorskip("triton.backends.nvidia", reason="this Triton install has no CUDA backend")
    from ._sm90 import run_in_subprocess
    rows = run_in_subprocess("test_agent_attn_triton", "_build_for_sm90")
    assert len(rows) == 3 * 2 * 5, rows  # 3 forward + 2 backward kernels, per geometry and dtype
    # measured: no spill in any dtype; fp32 (tf32x3 dots) is allowed the 64 B of the other ops' kernels
    # (64 agents at the full 64-row tiles spilled 48-168 B in fp16/bf16, 620-976 B in fp32)
    assert all(int(spill) == 0 for _, kind, spill in rows if kind != "*fp32"), rows
    assert all(int(spill) <= 64 for *_, spill in rows), rows
