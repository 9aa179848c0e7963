"""agent_attn: the reference against a first-principles oracle (loops over agents and queries) and
gradcheck; the reference (fp32) and cpu paths against the float64 reference (output and every gradient,
biases included) on awkward shapes through the shared backend tester; argument errors."""
import functools

import pytest
import torch

from visionzoo.ops import _testing, agent_attn

from ._backend_tester import BackendTester

NAMES = ("dq", "dk", "dv", "dagents", "dbias_kv", "dbias_q")

# (B, heads, N, M, n, D, Dv, bias batch (0: [heads, ...] 3-D, bias_q transposed; 1: broadcast; B: per image))
CASES = [
    (2, 3, 13, 13, 4, 5, 7, 0),  # N not a square, Dv != D
    (1, 2, 20, 20, 9, 8, 8, 1),
    (2, 1, 31, 23, 16, 6, 3, 2),  # M != N (keys from a reduced map), per-image biases
    (1, 2, 50, 50, 49, 4, 4, 0),  # as many agents as tokens, almost
    (2, 1, 3, 3, 9, 2, 5, 1),  # fewer tokens than agents
]


def _inputs(B, heads, N, M, n, D, Dv, bb, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    lead = (heads,) if bb == 0 else (bb, heads)
    # 3-D biases: bias_q as the transposed view of an [heads, n, N] tensor (the block's layout)
    bias_q = r(*lead, n, N).transpose(-2, -1) if bb == 0 else r(*lead, N, n)
    return r(B, heads, N, D), r(B, heads, M, D), r(B, heads, M, Dv), r(B, heads, n, D), r(*lead, n, M), bias_q


def _oracle(q, k, v, agents, bias_kv, bias_q, scale):
    """One agent, then one query at a time, straight from the definition."""
    B, heads, N, _ = q.shape
    n = agents.shape[2]
    bias_kv, bias_q = (b.expand(B, *b.shape[-3:]) for b in (bias_kv, bias_q))
    out = q.new_zeros(B, heads, N, v.shape[-1])
    for b in range(B):
        for h in range(heads):
            agent_v = torch.stack([torch.softmax(k[b, h] @ agents[b, h, a] * scale + bias_kv[b, h, a], 0) @ v[b, h]
                                   for a in range(n)])
            for i in range(N):
                out[b, h, i] = torch.softmax(agents[b, h] @ q[b, h, i] * scale + bias_q[b, h, i], 0) @ agent_v
    return out


@pytest.mark.parametrize("case", CASES[:3] + CASES[4:], ids=str)
def test_reference_matches_oracle(case):
    q, k, v, a, bkv, bq = _inputs(*case)
    _testing.assert_close(agent_attn(q, k, v, a, bkv, bq, backend="reference"),
                          _oracle(q, k, v, a, bkv, bq, q.shape[-1] ** -0.5))  # the default scale
    _testing.assert_close(agent_attn(q, k, v, a, bkv, bq, scale=0.3, backend="reference"),
                          _oracle(q, k, v, a, bkv, bq, 0.3))


def test_no_biases_is_two_plain_attentions():
    q, k, v, a, _, _ = _inputs(2, 2, 10, 10, 4, 3, 3, 0)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, a, torch.nn.functional.scaled_dot_product_attention(a, k, v))
    for backend in ("reference", "cpu"):
        _testing.assert_close(agent_attn(q, k, v, a, None, None, backend=backend), want)


@functools.lru_cache(maxsize=None)
def agent_tester(case) -> BackendTester:
    def op(q, k, v, agents, bias_kv, bias_q, backend):
        return agent_attn(q, k, v, agents, bias_kv, bias_q, backend=backend)
    return BackendTester("agent_attn", op, _inputs(*case), NAMES, label=f"case={case}")


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("cpu", torch.float32),
                                           ("cpu", torch.bfloat16)])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_with_grads(case, backend, dtype):
    agent_tester(case).check(backend, dtype)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck(backend):
    inputs = [t.requires_grad_() for t in _inputs(2, 2, 5, 4, 4, 3, 2, 1)]
    assert torch.autograd.gradcheck(lambda *t: agent_attn(*t, backend=backend), inputs)


def test_cpu_under_compile_is_plain_aten():
    inputs = [t.float().requires_grad_() for t in _inputs(1, 2, 7, 7, 4, 4, 4, 0)]
    fn = functools.partial(agent_attn, backend="cpu")
    from ._backend_tester import assert_compiles_like_eager
    assert_compiles_like_eager(fn, inputs, NAMES)


def _args(**change):
    q, k, v, a, bkv, bq = (t.float() for t in _inputs(2, 2, 6, 6, 4, 3, 3, 0))
    return dict(q=q, k=k, v=v, agents=a, bias_kv=bkv, bias_q=bq) | change


@pytest.mark.parametrize("change,match,exc", [
    (dict(q=torch.zeros(2, 6, 3)), r"q must be \[B, heads, N, D\]", ValueError),
    (dict(k=torch.zeros(2, 2, 6, 4)), r"k must be \[B, heads, M, D\]", ValueError),
    (dict(v=torch.zeros(2, 2, 5, 3)), r"v must be \[B, heads, M, Dv\]", ValueError),
    (dict(agents=torch.zeros(2, 3, 4, 3)), r"agents must be \[B, heads, n, D\]", ValueError),
    (dict(agents=torch.zeros(2, 2, 4, 3, dtype=torch.float64)), "agents must have q's dtype", TypeError),
    (dict(bias_kv=torch.zeros(2, 4, 5)), r"bias_kv must be \[heads, n, M\]", ValueError),
    (dict(bias_kv=torch.zeros(3, 2, 4, 6)), r"bias_kv must be .* with B = 2", ValueError),
    (dict(bias_q=torch.zeros(2, 4, 6)), r"bias_q must be \[heads, N, n\]", ValueError),
    (dict(bias_q=torch.zeros(2, 6, 4, dtype=torch.float16)), "bias_q must have q's dtype", TypeError),
    (dict(bias_q=[0.0]), "bias_q must be None or a tensor", TypeError),
    (dict(q=torch.zeros(2, 2, 6, 3, dtype=torch.int64)), "share one floating dtype", TypeError),
])
def test_bad_arguments_raise(change, match, exc):
    with pytest.raises(exc, match=match):
        agent_attn(**_args(**change))
