"""Halo attention: the reference against a first-principles oracle and timm's ``HaloAttn``; the
reference (fp32) and cpu paths against the float64 reference (outputs and gradients) on awkward
shapes through the shared backend tester; argument errors."""
import functools

import pytest
import torch

from visionzoo.ops import _backend, _testing
from visionzoo.ops.halo import cpu as halo_cpu_mod, halo_attn

from ._backend_tester import BackendTester

NAMES = ("dq", "dk", "dv", "drel_h", "drel_w")


def _oracle(q, k, v, block, halo, rel_h, rel_w, stride, scale):
    """Per query, from the definition: window rows/cols of its block on the unpadded map; keys
    outside the map are zero vectors; bias from the tables at key-minus-query window offsets."""
    B, hq, wq, heads, _ = q.shape
    _, H, W, _, D = k.shape
    win, bq = block + 2 * halo, block // stride
    out = torch.zeros(B, hq, wq, heads, v.shape[-1], dtype=q.dtype)
    for y in range(hq):
        for x in range(wq):
            i, j = y % bq, x % bq
            rows = [y // bq * block - halo + a for a in range(win)]
            cols = [x // bq * block - halo + c for c in range(win)]
            ks = torch.zeros(B, win, win, heads, D, dtype=q.dtype)
            vs = torch.zeros(B, win, win, heads, v.shape[-1], dtype=q.dtype)
            for a, r in enumerate(rows):
                for c, s in enumerate(cols):
                    if 0 <= r < H and 0 <= s < W:
                        ks[:, a, c], vs[:, a, c] = k[:, r, s], v[:, r, s]
            logits = torch.einsum("bhd,bachd->bhac", q[:, y, x] * scale, ks)
            if rel_h is not None:
                bh = torch.stack([q[:, y, x] @ rel_h[a - i + win - 1] for a in range(win)], -1)
                bw = torch.stack([q[:, y, x] @ rel_w[c - j + win - 1] for c in range(win)], -1)
                logits = logits + bh[..., :, None] + bw[..., None, :]
            p = logits.flatten(-2).softmax(-1).view_as(logits)
            out[:, y, x] = torch.einsum("bhac,bachd->bhd", p, vs)
    return out


def _inputs(H, W, heads, D, Dv, block, halo, stride, bias=True, dtype=torch.float64, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    hq, wq = -(-H // stride), -(-W // stride)
    win = block + 2 * halo
    ts = [torch.randn(batch, hq, wq, heads, D, generator=g, dtype=torch.float64),
          torch.randn(batch, H, W, heads, D, generator=g, dtype=torch.float64),
          torch.randn(batch, H, W, heads, Dv, generator=g, dtype=torch.float64)]
    tables = [torch.randn(2 * win - 1, D, generator=g, dtype=torch.float64) * 0.5 for _ in range(2)]
    ts += tables if bias else [None, None]
    return [None if t is None else t.to(dtype).requires_grad_() for t in ts]


# (H, W, heads, D, Dv, block, halo, stride, bias)
CASES = [
    (8, 8, 2, 8, 8, 4, 1, 1, True),  # divisible map
    (7, 10, 1, 8, 12, 4, 2, 1, True),  # non-divisible, non-square, Dv != D
    (9, 6, 2, 8, 8, 4, 1, 2, True),  # strided, odd map
    (3, 2, 1, 4, 4, 8, 3, 1, True),  # map smaller than one block
    (6, 5, 1, 4, 4, 3, 0, 1, False),  # no halo, no bias: plain blocked attention
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_oracle(case):
    *shape, block, halo, stride, bias = case
    q, k, v, rh, rw = _inputs(*shape, block, halo, stride, bias)
    got = halo_attn(q, k, v, block, halo, rh, rw, stride=stride, scale=0.3, backend="reference")
    _testing.assert_close(got, _oracle(q, k, v, block, halo, rh, rw, stride, 0.3))


@functools.lru_cache(maxsize=None)
def halo_tester(case, batch: int = 2) -> BackendTester:
    """The shared tester of one ``(H, W, heads, D, Dv, block, halo, stride, bias)`` case (one float64
    reference per case, whichever backends and dtypes are checked)."""
    *shape, block, halo, stride, bias = case
    inputs = [None if t is None else t.detach() for t in _inputs(*shape, block, halo, stride, bias, batch=batch)]

    def op(q, k, v, rel_h, rel_w, backend):
        return halo_attn(q, k, v, block, halo, rel_h, rel_w, stride=stride, backend=backend)
    return BackendTester("halo_attn", op, inputs, NAMES, label=f"case={case}, batch={batch}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_with_grads(case, backend):
    halo_tester(case).check(backend, torch.float32)


def test_tester_names_the_failing_tensor(monkeypatch):
    """The tester cannot be fooled by a backend that is wrong in one gradient only."""
    real = halo_cpu_mod.halo_cpu

    class _WrongDk(torch.autograd.Function):
        @staticmethod
        def forward(ctx, k):
            return k.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 1.01

    # the registry caches the loaded implementation: replace it there
    monkeypatch.setitem(_backend._OPS["halo_attn"].loaded, "cpu", lambda q, k, *a: real(q, _WrongDk.apply(k), *a))
    with pytest.raises(AssertionError, match=r"(?s)backend 'cpu', torch.float32.*dk \(grad") as e:
        halo_tester(CASES[0]).check("cpu", torch.float32)
    assert "dq (grad" not in str(e.value) and "out (out" not in str(e.value)


def test_gradcheck_reference_and_cpu():
    q, k, v, rh, rw = _inputs(5, 6, 1, 4, 4, 4, 1, 2)
    for backend in ("reference", "cpu"):
        assert torch.autograd.gradcheck(
            lambda *t: halo_attn(*t[:3], 4, 1, *t[3:], stride=2, backend=backend), (q, k, v, rh, rw))


@pytest.mark.parametrize("stride,dim_head", [(1, None), (2, None), (1, 16)])
def test_matches_timm_halo_attn(stride, dim_head):
    """timm's HaloAttn (the only runnable HaloNet code) through its own projections."""
    from timm.layers.halo_attn import HaloAttn
    m = HaloAttn(32, 32, stride=stride, num_heads=4, block_size=4, halo_size=2, dim_head=dim_head).double()
    torch.nn.init.normal_(m.pos_embed.height_rel)
    torch.nn.init.normal_(m.pos_embed.width_rel)
    x = torch.randn(2, 32, 12, 8, dtype=torch.float64)
    heads, dqk, dv = m.num_heads, m.dim_head_qk, m.dim_head_v
    q = m.q(x)
    q = q.view(2, heads, dqk, *q.shape[-2:]).permute(0, 3, 4, 1, 2)
    k, v = m.kv(x).view(2, heads, dqk + dv, 12, 8).permute(0, 3, 4, 1, 2).split([dqk, dv], -1)
    for backend in ("reference", "cpu"):
        out = halo_attn(q, k, v, 4, 2, m.pos_embed.height_rel, m.pos_embed.width_rel, stride=stride,
                        scale=m.scale, backend=backend)
        out = out.permute(0, 3, 4, 1, 2).reshape(2, heads * dv, *out.shape[1:3])
        _testing.assert_close(out, m(x))


def test_padding_equals_zero_border():
    """A non-divisible map gives what a divisible map with the extra rows/cols zeroed gives."""
    q, k, v, rh, rw = (t.detach() for t in _inputs(6, 7, 1, 8, 8, 4, 1, 1))
    out = halo_attn(q, k, v, 4, 1, rh, rw)
    qz, kz, vz = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, 1, 0, 2)) for t in (q, k, v))
    _testing.assert_close(out, halo_attn(qz, kz, vz, 4, 1, rh, rw)[:, :6, :7])


@pytest.mark.parametrize("kwargs,match", [
    (dict(block_size=6, stride=4), "multiple of stride"),
    (dict(halo_size=-1), "halo_size"),
    (dict(block_size=0), "block_size"),
    (dict(stride=2), "q must be"),
    (dict(rel_h=torch.zeros(3, 8)), "together"),
    (dict(rel_h=torch.zeros(3, 8), rel_w=torch.zeros(3, 8)), r"rel_h must be \[2"),
])
def test_bad_arguments_raise(kwargs, match):
    q = k = v = torch.zeros(1, 8, 8, 1, 8)
    args = dict(block_size=4, halo_size=1) | kwargs
    with pytest.raises(ValueError, match=match):
        halo_attn(q, k, v, **args)


def test_bad_layout_raises():
    with pytest.raises(ValueError, match=r"\[B, H, W, heads, D\]"):
        halo_attn(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), 4, 1)
    with pytest.raises(TypeError, match="dtype"):
        halo_attn(torch.zeros(1, 4, 4, 1, 8), torch.zeros(1, 4, 4, 1, 8, dtype=torch.float64),
                  torch.zeros(1, 4, 4, 1, 8), 4, 1)
