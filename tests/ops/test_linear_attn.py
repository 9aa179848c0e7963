"""Focused linear attention: the reference against a dense first-principles oracle and gradcheck; the
reference (fp32) and cpu paths (fp32 / fp16 / bf16) against the float64 reference for the output and
every gradient (q, k, v, scale, pos) on awkward shapes through the shared backend tester; the cpu
path under torch.compile; argument errors."""
import functools

import pytest
import torch

from visionzoo.ops import _testing, linear_attn

from ._backend_tester import BackendTester

NAMES = ("dq", "dk", "dv", "dscale", "dpos")


def _phi(x, p, scale):
    """The official feature map, written as the paper states it (fp64, no rescaling)."""
    y = (torch.relu(x) + 1e-6) / torch.nn.functional.softplus(scale)
    return y.norm(dim=-1, keepdim=True) * y ** p / (y ** p).norm(dim=-1, keepdim=True)


def _oracle(q, k, v, heads, p, scale, pos, eps=1e-6):
    """Dense form: attention weights ``A_ij = phi(q_i) . phi(k_j)`` per head, ``out = A v / (sum_j A + n eps)``."""
    B, N, C = q.shape
    n, Cv = v.shape[1:]
    fq, fk = (_phi(q, p, scale), _phi(k + pos, p, scale)) if p is not None else (q, k if pos is None else k + pos)
    out = torch.empty(B, N, Cv, dtype=q.dtype)
    d, dv = C // heads, Cv // heads
    for h in range(heads):
        a = fq[..., h * d:(h + 1) * d] @ fk[..., h * d:(h + 1) * d].transpose(1, 2)
        out[..., h * dv:(h + 1) * dv] = (a @ v[..., h * dv:(h + 1) * dv]) / (a.sum(-1, keepdim=True) + n * eps)
    return out


def _inputs(B, N, n, C, Cv, pos_batch=1, seed=0, scale_std=0.5):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, L, C, generator=g, dtype=torch.float64) for L in (N, n))
    v = torch.randn(B, n, Cv, generator=g, dtype=torch.float64)
    scale = torch.randn(C, generator=g, dtype=torch.float64) * scale_std
    pos = torch.randn(pos_batch, n, C, generator=g, dtype=torch.float64) * 0.5
    return q, k, v, scale, pos


# (B, N, n, C, Cv, heads, p, pos_batch)
CASES = [
    (2, 7, 7, 12, 12, 2, 3.0, 1),  # FLatten's p, two heads
    (1, 1, 1, 16, 16, 1, 3.0, 1),  # a single token
    (2, 13, 5, 9, 6, 3, 2.5, 2),  # n != N (spatial reduction), Dv != D, fractional p, per-batch pos
    (1, 49, 49, 32, 32, 2, 1.0, 1),  # p = 1: the plain normalised ReLU map
    (3, 20, 11, 10, 15, 5, 5.5, 1),  # large p, five heads of 2
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_dense_oracle(case):
    B, N, n, C, Cv, h, p, pb = case
    q, k, v, scale, pos = _inputs(B, N, n, C, Cv, pb)
    got = linear_attn(q, k, v, num_heads=h, focusing_factor=p, scale=scale, pos=pos, backend="reference")
    _testing.assert_close(got, _oracle(q, k, v, h, p, scale, pos))


def test_identity_feature_map_matches_dense_oracle():
    q, k, v, _, pos = _inputs(2, 9, 6, 8, 4)
    q, k, pos = q.abs(), k.abs(), pos.abs()
    for backend in ("reference", "cpu"):
        got = linear_attn(q, k, v, num_heads=2, pos=pos, eps=1e-3, backend=backend)
        _testing.assert_close(got, _oracle(q, k, v, 2, None, None, pos, eps=1e-3))


def test_reference_gradcheck():
    q, k, v, scale, pos = (t.requires_grad_() for t in _inputs(1, 5, 4, 6, 4))
    assert torch.autograd.gradcheck(
        lambda *a: linear_attn(*a[:3], num_heads=2, focusing_factor=2.5, scale=a[3], pos=a[4], backend="reference"),
        (q, k, v, scale, pos))


@functools.lru_cache(maxsize=None)
def la_tester(case) -> BackendTester:
    B, N, n, C, Cv, h, p, pb = case

    def op(q, k, v, scale, pos, backend):
        return linear_attn(q, k, v, num_heads=h, focusing_factor=p, scale=scale, pos=pos, backend=backend)
    return BackendTester("linear_attn", op, _inputs(B, N, n, C, Cv, pb), NAMES, label=f"case={case}")


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("cpu", torch.float32),
                                           ("cpu", torch.float16), ("cpu", torch.bfloat16)])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_with_grads(case, backend, dtype):
    la_tester(case).check(backend, dtype)


@pytest.mark.parametrize("pos_batch", [1, 2])
def test_cpu_inference_chunks_equal_the_autograd_path(monkeypatch, pos_batch):
    """Without autograd the cpu path runs over token chunks (here 64-token chunks: 5 of the queries, 3 of
    the keys, the last ones partial); with autograd over whole maps. Both give the same values."""
    from visionzoo.ops.linear_attn import cpu
    monkeypatch.setattr(cpu, "CHUNK_BYTES", 1024)
    q, k, v, scale, pos = (t.float() for t in _inputs(2, 300, 150, 16, 8, pos_batch))
    kw = dict(num_heads=2, focusing_factor=3, scale=scale, pos=pos, backend="cpu")
    with torch.no_grad():
        plain = linear_attn(q, k, v, **kw)
    tracked = linear_attn(q.requires_grad_(), k, v, **kw)
    _testing.assert_close(plain, tracked.detach())
    _testing.assert_close(plain, linear_attn(q.detach(), k, v, **kw | dict(backend="reference")))


@pytest.mark.parametrize("focusing_factor,pos_batch", [(3.0, 1), (2.5, 2), (None, 1)])
def test_cpu_chunked_backward(monkeypatch, focusing_factor, pos_batch):
    """The cpu backward over 64-token chunks (5 of the queries, 3 of the keys) gives the reference's gradients."""
    from visionzoo.ops.linear_attn import cpu
    monkeypatch.setattr(cpu, "CHUNK_BYTES", 1024)
    q, k, v, scale, pos = _inputs(2, 300, 150, 16, 8, pos_batch)
    if focusing_factor is None:
        q, k, pos, scale = q.abs(), k.abs(), pos.abs(), None
    grads = {}
    for backend in ("cpu", "reference"):
        leaves = [t if t is None else t.clone().requires_grad_() for t in (q, k, v, scale, pos)]
        out = linear_attn(*leaves[:3], num_heads=2, focusing_factor=focusing_factor, scale=leaves[3], pos=leaves[4],
                          backend=backend)
        given = [t for t in leaves if t is not None]
        grads[backend] = dict(zip(("out", *NAMES), (out, *torch.autograd.grad(out.square().sum(), given))))
    _testing.assert_all_close(grads["cpu"], grads["reference"])


def test_cpu_compiles_like_eager():
    """Under torch.compile the cpu backend steps aside for the reference formulation (plain ATen ops)."""
    from ._backend_tester import assert_compiles_like_eager
    q, k, v, scale, pos = (t.float().requires_grad_() for t in _inputs(2, 12, 12, 8, 8))

    def fn(q, k, v, scale, pos):
        return linear_attn(q, k, v, num_heads=2, focusing_factor=3, scale=scale, pos=pos, backend="cpu")
    assert_compiles_like_eager(fn, (q, k, v, scale, pos), NAMES)


def test_output_dtype_and_mixed_parameter_dtypes():
    """fp16 tokens with fp32 scale / pos (a module under autocast): output in v's dtype."""
    q, k, v, scale, pos = _inputs(1, 6, 6, 8, 8)
    for backend in ("reference", "cpu"):
        out = linear_attn(q.half(), k.half(), v.half(), num_heads=2, focusing_factor=3, scale=scale.float(),
                          pos=pos.float(), backend=backend)
        assert out.dtype == torch.float16
        want = linear_attn(q.half().double(), k.half().double(), v.half().double(), num_heads=2, focusing_factor=3,
                           scale=scale, pos=pos, backend="reference")
        _testing.assert_close(out, want)


def test_meta_tensors_give_shapes():
    """Meta tensors (shape inference, the hub export) pass through the reference: output shape and dtype."""
    q, k, v = torch.empty(2, 9, 8, device="meta"), torch.empty(2, 4, 8, device="meta"), torch.empty(2, 4, 6,
                                                                                                  device="meta")
    out = linear_attn(q, k, v, num_heads=2, focusing_factor=3, scale=torch.empty(8, device="meta"),
                      pos=torch.empty(1, 4, 8, device="meta"))
    assert out.shape == (2, 9, 6) and out.device.type == "meta"


@pytest.mark.parametrize("change,match", [
    (dict(q=torch.randn(2, 5)), r"q must be \[B, N, C\]"),
    (dict(k=torch.randn(2, 5, 9)), "k must have q's channels"),
    (dict(v=torch.randn(2, 4, 8)), "v must have k's number of tokens"),
    (dict(v=torch.randn(3, 5, 8)), "batch size"),
    (dict(q=torch.randn(2, 5, 8, dtype=torch.float64)), "one floating dtype"),
    (dict(num_heads=3), "num_heads .* must divide"),
    (dict(num_heads=0), "num_heads must be an int"),
    (dict(focusing_factor=0), "focusing_factor"),
    (dict(focusing_factor=float("nan")), "focusing_factor"),
    (dict(focusing_factor=None), "scale needs the focused feature map"),
    (dict(scale=torch.zeros(7)), "scale must have shape"),
    (dict(pos=torch.zeros(1, 4, 8)), "pos must have shape"),
    (dict(pos=torch.zeros(3, 5, 8)), "pos must have shape"),
    (dict(pos=torch.zeros(1, 5, 8, dtype=torch.long)), "pos must be a floating tensor"),
    (dict(eps=-1.0), "eps"),
    (dict(backend="nope"), "unknown backend"),
])
def test_bad_arguments(change, match):
    args = dict(q=torch.randn(2, 5, 8), k=torch.randn(2, 5, 8), v=torch.randn(2, 5, 8), num_heads=2,
                focusing_factor=3, scale=torch.zeros(8), pos=torch.zeros(1, 5, 8))
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        linear_attn(args.pop("q"), args.pop("k"), args.pop("v"), **args)
