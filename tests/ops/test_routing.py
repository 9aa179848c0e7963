"""Bi-level routing attention: reference against a dense masked-attention oracle (float64) and
gradcheck; the reference (fp32) and cpu (both formulations) paths against the float64 reference with
gradients through the shared backend tester; padding invariance; routing indices; argument errors."""
import functools

import pytest
import torch

from visionzoo.ops import _testing
from visionzoo.ops.routing import bra, bra_routing, cpu as bra_cpu_mod

from ._backend_tester import BackendTester

NAMES = ("dq", "dk", "dv")


def _inputs(H, W, heads, D, Dv, dtype=torch.float64, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(batch, H, W, heads, D, generator=g, dtype=torch.float64),
          torch.randn(batch, H, W, heads, D, generator=g, dtype=torch.float64),
          torch.randn(batch, H, W, heads, Dv, generator=g, dtype=torch.float64)]
    return [t.to(dtype).requires_grad_() for t in ts]


@functools.lru_cache(maxsize=None)
def bra_tester(case, batch: int = 2) -> BackendTester:
    """The shared tester of one ``(H, W, heads, D, Dv, n_win, topk)`` case (one float64 reference per
    case, whichever backends and dtypes are checked)."""
    *shape, n_win, topk = case
    inputs = [t.detach() for t in _inputs(*shape, batch=batch)]

    def op(q, k, v, backend):
        return bra(q, k, v, n_win, topk, backend=backend)
    return BackendTester("bra", op, inputs, NAMES, label=f"case={case}, batch={batch}")


def _oracle(q, k, v, n_win, topk, scale):
    """Dense attention over all real tokens with the token mask implied by the routing, computed
    from the definition: regions of the padded map, means over real tokens, top-k."""
    B, H, W, heads, D = q.shape
    rh, rw = -(-H // n_win), -(-W // n_win)
    region = (torch.arange(H)[:, None] // rh * n_win + torch.arange(W)[None, :] // rw).reshape(-1)  # [H*W]
    R = n_win * n_win
    qf, kf = q.reshape(B, H * W, -1), k.reshape(B, H * W, -1)
    out = torch.zeros(B, H * W, heads, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        members = [(region == r).nonzero().flatten() for r in range(R)]
        qm = torch.stack([qf[b, m].mean(0) if len(m) else torch.zeros(qf.shape[-1], dtype=q.dtype) for m in members])
        km = torch.stack([kf[b, m].mean(0) if len(m) else torch.zeros(kf.shape[-1], dtype=q.dtype) for m in members])
        logits = qm @ km.t()
        logits[:, [len(m) == 0 for m in members]] = float("-inf")
        routed = torch.topk(logits, min(topk, R), -1).indices
        allowed = torch.zeros(R, R, dtype=torch.bool)
        allowed[torch.arange(R)[:, None], routed] = True
        mask = allowed[region][:, region]  # [HW, HW]
        qh, kh, vh = (t[b].reshape(H * W, heads, -1).transpose(0, 1) for t in (q, k, v))
        s = (qh * scale) @ kh.transpose(1, 2)
        p = s.masked_fill(~mask, float("-inf")).softmax(-1)
        out[b] = (p @ vh).transpose(0, 1)
    return out.view(B, H, W, heads, -1)


# (H, W, heads, D, Dv, n_win, topk)
CASES = [
    (14, 14, 2, 8, 8, 7, 4),  # divisible (BiFormer stage-3 geometry, reduced)
    (13, 10, 1, 8, 12, 7, 3),  # padded, non-square, Dv != D
    (5, 3, 2, 4, 4, 7, 4),  # map smaller than n_win: empty regions are never routed
    (16, 24, 1, 8, 8, 2, 2),  # few large regions
    (9, 9, 1, 4, 4, 3, 9),  # topk = every region: dense attention
    (8, 8, 1, 4, 4, 4, 30),  # topk above n_win^2: clamped
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_dense_oracle(case):
    *shape, n_win, topk = case
    q, k, v = _inputs(*shape)
    _testing.assert_close(bra(q, k, v, n_win, topk, scale=0.4, backend="reference"),
                          _oracle(q, k, v, n_win, topk, 0.4))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_fp32_matches_float64(case):
    bra_tester(case).check("reference", torch.float32)


@pytest.mark.parametrize("dense_share", [0.0, 2.0], ids=["masked_dense", "gather_sdpa"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_matches_reference_with_grads(case, dense_share, monkeypatch):
    monkeypatch.setattr(bra_cpu_mod, "DENSE_SHARE", dense_share)
    bra_tester(case).check("cpu", torch.float32)


def test_gradcheck():
    q, k, v = _inputs(5, 6, 1, 4, 4)
    for backend in ("reference", "cpu"):
        assert torch.autograd.gradcheck(lambda *t: bra(*t, 3, 2, backend=backend), (q, k, v))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_padding_never_reaches_real_tokens(backend):
    """Backends get zero-padded maps; garbage in the padding instead changes no real output or
    real-token gradient (padded keys are masked, not merely zero)."""
    from visionzoo.ops import _backend
    from visionzoo.ops.partition import pad_to_size
    from visionzoo.ops.routing import _route
    q, k, v = _inputs(13, 10, 2, 8, 8)
    fn, _ = _backend.resolve("bra", q, k, v, backend=backend)
    idx = _route(pad_to_size(q, (14, 14)).detach(), pad_to_size(k, (14, 14)).detach(), 7, 3, (13, 10))
    results = []
    for fill in (0.0, 1e3):
        padded = []
        for t in (q, k, v):
            p = pad_to_size(t, (14, 14))
            garbage = torch.zeros_like(p)
            garbage[:, 13:], garbage[:, :, 10:] = fill, -fill
            padded.append(p + garbage)
        out = fn(*padded, idx, 7, 8 ** -0.5, (13, 10))[:, :13, :10]
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        _testing.assert_close(a, b, "out" if name == "out" else "grad", name)


def test_routing_indices_exposed():
    q, k, _ = (t.detach() for t in _inputs(14, 14, 2, 8, 8))
    idx = bra_routing(q, k, 7, 4)
    assert idx.shape == (2, 49, 4) and idx.dtype == torch.int64
    qm = q.reshape(2, 7, 2, 7, 2, 16).mean((2, 4)).reshape(2, 49, 16)
    km = k.reshape(2, 7, 2, 7, 2, 16).mean((2, 4)).reshape(2, 49, 16)
    assert torch.equal(idx, torch.topk(qm @ km.transpose(1, 2), 4, -1).indices)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(n_win=0), ValueError, "n_win"),
    (dict(topk=0), ValueError, "topk"),
    (dict(topk=2.5), ValueError, "topk"),
])
def test_bad_arguments_raise(kwargs, exc, match):
    q = torch.zeros(1, 8, 8, 1, 8)
    with pytest.raises(exc, match=match):
        bra(q, q, q, **(dict(n_win=2, topk=1) | kwargs))


def test_bad_layout_raises():
    with pytest.raises(ValueError, match=r"\[B, H, W, heads, D\]"):
        bra(torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), torch.zeros(8, 8, 8), 2, 1)
    with pytest.raises(ValueError, match="equal shapes"):
        bra(torch.zeros(1, 8, 8, 1, 8), torch.zeros(1, 8, 8, 1, 4), torch.zeros(1, 8, 8, 1, 8), 2, 1)
